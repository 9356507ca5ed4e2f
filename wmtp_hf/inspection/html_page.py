"""`tokens.html`: one self-contained page (inline CSS and script, nothing fetched) of an `Inspection`.

Every response token is a `<span class="tok">` whose text is the token's text, HTML-escaped, inside a
`white-space: pre-wrap` block so code keeps its spaces and newlines. Its numbers sit in `data-*` attributes
(per head: comma-separated, empty without a target) and in its `title` (shown on hover, and in the details
box by the script). The initial colours are written by Python (`colours.token_colour`), so the page reads
without JavaScript; the script recolours on the head and colour-by selectors.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from ..fileio import atomic_write_text
from .colours import MODE_TITLES, PER_HEAD_MODES, Scales, available_modes, legend, page_scales, token_colour
from .records import ExampleRecord, Inspection, TokenRecord

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em 0; }
h2 { font-size: 1.05em; margin: 1.2em 0 .3em 0; }
.meta, .notes { color: #555; font-size: .9em; margin: .2em 0; }
.controls { margin: .8em 0 .4em 0; }
.controls label { margin-right: 1.5em; }
.legend { font-size: .9em; color: #333; margin: .3em 0; }
.details { position: sticky; top: 0; background: #fafafa; border: 1px solid #ddd; padding: .4em .6em;
           font-family: ui-monospace, monospace; font-size: .85em; white-space: pre-wrap; min-height: 3.6em;
           z-index: 1; }
pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; line-height: 1.45;
      white-space: pre-wrap; word-break: break-all; margin: 0; }
pre.response { border: 1px solid #ccc; padding: .5em; }
pre.prompt { color: #666; background: #f6f6f6; padding: .5em; }
.tok { border-radius: 2px; cursor: default; }
.tok:hover { outline: 1px solid #000; }
.tok.nl::before { content: "\\21B5"; color: #aaa; }
.tok.part { padding-left: 3px; }
.tag { display: inline-block; padding: 0 .4em; border-radius: 3px; font-size: .85em; margin-left: .4em; }
.correct { background: #dff0d8; } .incorrect { background: #f2dede; }
"""

SCRIPT = """
(function () {
  "use strict";
  var body = document.body;
  var scale = {
    ce: Number(body.getAttribute("data-ce-max")), excess: Number(body.getAttribute("data-excess-max")),
    td: Number(body.getAttribute("data-td-max")), wlog: Number(body.getAttribute("data-weight-log-max"))
  };
  var NEG = [215, 48, 39], POS = [69, 117, 180], SEQ = [252, 141, 89], KEPT = [145, 207, 96],
      DROPPED = [210, 210, 210], WHITE = [255, 255, 255];
  function mix(c, t) {
    t = Math.min(Math.max(t, 0), 1);
    return c.map(function (x) { return Math.round(255 + (x - 255) * t); });
  }
  function diverging(t) { return t < 0 ? mix(NEG, -t) : mix(POS, t); }
  function one(el, name) {
    var v = el.getAttribute("data-" + name);
    return v === null || v === "" ? null : Number(v);
  }
  function ofHead(el, name, k) {
    var v = el.getAttribute("data-" + name);
    if (v === null) { return null; }
    var parts = v.split(",");
    return k < parts.length && parts[k] !== "" ? Number(parts[k]) : null;
  }
  function colour(el, mode, k) {
    var v;
    if (mode === "weight") {
      v = one(el, "weight");
      return v === null || v <= 0 ? WHITE : diverging(Math.log(v) / scale.wlog);
    }
    if (mode === "td") { v = one(el, "td"); return v === null ? WHITE : diverging(v / scale.td); }
    if (mode === "value") { v = one(el, "value"); return v === null ? WHITE : diverging((v - 0.5) / 0.5); }
    if (mode === "kept") { v = ofHead(el, "kept", k); return v === null ? WHITE : (v ? KEPT : DROPPED); }
    if (mode === "excess") { v = ofHead(el, "excess", k); return v === null ? WHITE : diverging(v / scale.excess); }
    v = ofHead(el, "ce", k);
    return v === null ? WHITE : mix(SEQ, v / scale.ce);
  }
  var head = document.getElementById("head"), by = document.getElementById("color-by");
  var legendBox = document.getElementById("legend"), details = document.getElementById("details");
  var tokens = document.querySelectorAll("span.tok");
  function recolour() {
    var k = Number(head.value), mode = by.value;
    for (var i = 0; i < tokens.length; i++) {
      tokens[i].style.backgroundColor = "rgb(" + colour(tokens[i], mode, k).join(",") + ")";
    }
    legendBox.textContent = by.options[by.selectedIndex].getAttribute("data-legend");
  }
  head.addEventListener("change", recolour);
  by.addEventListener("change", recolour);
  document.addEventListener("mouseover", function (event) {
    var el = event.target.closest ? event.target.closest("span.tok") : null;
    if (el) { details.textContent = el.getAttribute("title"); }
  });
  recolour();
}());
"""


def _num(value: float | None) -> str:
    """Shortest round-trip form: the script reads back exactly the number Python coloured with."""
    return "" if value is None else repr(float(value))


def _per_head(values: Sequence[float | bool | None] | None) -> str:
    if values is None:
        return ""
    return ",".join("" if v is None else str(int(v)) if isinstance(v, bool) else _num(v) for v in values)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def token_title(token: TokenRecord, n_heads: int) -> str:
    """The hover text: every number of the token, one line per kind."""
    lines = [f"token {token.position} {token.text!r} (id {token.token_id})"]
    lines.append("CE:  " + "  ".join(f"head {k} {_fmt(token.ce[k])}" for k in range(n_heads)))
    if token.weight is not None:
        lines.append(
            f"value {_fmt(token.value)}  TD error {_fmt(token.td_error)}  weight {_fmt(token.weight)}"
        )
    if token.excess is not None and token.kept is not None:
        parts = []
        for k in range(n_heads):
            kept = token.kept[k]
            state = "–" if kept is None else "kept" if kept else "dropped"
            parts.append(f"head {k} {_fmt(token.excess[k])} ({state})")
        lines.append(f"reference CE {_fmt(token.ref_ce)}  excess:  " + "  ".join(parts))
    return "\n".join(lines)


def escape_text(text: str) -> str:
    """HTML-escaped text whose carriage returns survive parsing (a raw CR would become a newline)."""
    return html.escape(text, quote=False).replace("\r", "&#13;")


def _token_class(text: str) -> str:
    if not text:
        return "tok part"  # a token inside a multi-byte character: the next token shows the character
    return "tok nl" if not text.strip("\n") else "tok"


def _token_span(token: TokenRecord, n_heads: int, mode: str, scales: Scales) -> str:
    attrs = {
        "class": _token_class(token.text),
        "data-pos": str(token.position),
        "data-id": str(token.token_id),
        "data-ce": _per_head(token.ce),
    }
    if token.weight is not None:
        attrs.update(
            {
                "data-value": _num(token.value),
                "data-td": _num(token.td_error),
                "data-weight": _num(token.weight),
            }
        )
    if token.excess is not None:
        attrs.update(
            {
                "data-ref": _num(token.ref_ce),
                "data-excess": _per_head(token.excess),
                "data-kept": _per_head(token.kept),
            }
        )
    attrs["title"] = token_title(token, n_heads)
    attrs["style"] = "background-color: rgb({},{},{})".format(*token_colour(token, mode, 0, scales))
    rendered = " ".join(f'{name}="{html.escape(value, quote=True)}"' for name, value in attrs.items())
    return f"<span {rendered}>{escape_text(token.text)}</span>"


def _example(example: ExampleRecord, index: int, n_heads: int, mode: str, scales: Scales) -> str:
    kind = "correct" if example.is_correct else "incorrect"
    policy = ""
    if example.in_policy_loss is not None:
        policy = f" · in the verifiable MTP loss: {'yes' if example.in_policy_loss else 'no'}"
    spans = "".join(_token_span(t, n_heads, mode, scales) for t in example.tokens)
    return (
        f'<section class="example" data-index="{index}" data-task-id="{html.escape(example.task_id)}">\n'
        f'<h2>{index + 1}. {html.escape(example.task_id)}<span class="tag {kind}">{kind}</span>'
        f'<span class="meta">{len(example.tokens)} response tokens{policy}</span></h2>\n'
        f'<details><summary>prompt</summary><pre class="prompt">{escape_text(example.prompt)}'
        f"</pre></details>\n"
        f'<pre class="response">{spans}</pre>\n</section>'
    )


def _settings_line(inspection: Inspection) -> str:
    parts = []
    for stage, options in inspection.settings.items():
        text = ", ".join(f"{k}={v}" for k, v in options.items())
        parts.append(f"{stage}: {text}")
    return "; ".join(parts)


def render_html(inspection: Inspection) -> str:
    """The page as a string (see the module docstring)."""
    modes = available_modes(inspection)
    scales = page_scales(inspection)
    mode = modes[0]
    labels = inspection.labels
    described = " · ".join(f"{k}: {v}" for k, v in labels.items() if v)
    head_options = "".join(
        f'<option value="{k}">head {k} ({k + 1} ahead)</option>' for k in range(inspection.n_heads)
    )
    mode_options = "".join(
        f'<option value="{m}" data-legend="{html.escape(legend(m, scales))}">{MODE_TITLES[m]}'
        f"{' (per head)' if m in PER_HEAD_MODES else ''}</option>"
        for m in modes
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in inspection.notes)
    examples = "\n".join(
        _example(ex, i, inspection.n_heads, mode, scales) for i, ex in enumerate(inspection.examples)
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Token weights{" · " + html.escape(labels.get("model", "")) if labels.get("model") else ""}</title>
<style>{STYLE}</style>
</head>
<body data-ce-max="{_num(scales.ce_max)}" data-excess-max="{_num(scales.excess_max)}" data-td-max="{_num(scales.td_max)}" data-weight-log-max="{_num(scales.weight_log_max)}">
<h1>Token weights</h1>
<p class="meta">{html.escape(described)}</p>
<p class="meta">{len(inspection.examples)} examples · {inspection.n_heads} heads · {html.escape(_settings_line(inspection))}</p>
<ul class="notes">{notes}</ul>
<div class="controls">
<label>head <select id="head">{head_options}</select></label>
<label>colour by <select id="color-by">{mode_options}</select></label>
</div>
<p class="legend" id="legend">{html.escape(legend(mode, scales))}</p>
<div class="details" id="details">Hover a token for its numbers: CE per head, value, TD error, weight, reference CE, excess and kept per head.</div>
{examples}
<script>{SCRIPT}</script>
</body>
</html>
"""


def write_html(inspection: Inspection, path: str) -> None:
    """Write `render_html(inspection)` to `path` (temporary file + rename)."""
    atomic_write_text(path, render_html(inspection))
