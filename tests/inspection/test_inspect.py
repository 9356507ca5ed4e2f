"""`python -m wmtp_hf.inspect` and `wmtp_hf.inspection`: the page's tokens and numbers against hand
computations, the PNG, a real browser when one is installed, bad input, and the MLflow artifact of a stage."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import datasets
import pytest
import torch
from stage_fixtures import MARKER, stage_args
from train_fixtures import write_llama, write_marker_dataset, write_mbpp_fixture, write_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from wmtp_hf.data import WmtpDataCollator, encode_example
from wmtp_hf.inspect import main as inspect_main
from wmtp_hf.inspection import inspect_examples, render_html, render_png, write_outputs
from wmtp_hf.losses import mtp_target_mask
from wmtp_hf.train.cli import main as train_main
from wmtp_hf.train.stages import build_config

# Code that needs faithful whitespace and escaping.
RESPONSES = [
    ("def add(a, b):\n\treturn a < b & 'x' \"q\"\n\n", True),
    ("</script><script>alert(1)</script>\n  if x > 0:\n      y = -x\n", False),
    ("for i in range(10):\r\n    print(i)   # &amp; <b>\n", True),
]


class ResponseTokens(HTMLParser):
    """The `span.tok` elements inside `pre.response` blocks: attributes and text, per example."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.examples: list[list[dict]] = []
        self.in_response = False
        self.token: dict | None = None
        self.tags: dict[str, int] = {}
        self.body: dict = {}

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        if tag == "pre" and attrs.get("class") == "response":
            self.in_response = True
            self.examples.append([])
        elif tag == "span" and self.in_response and "tok" in (attrs.get("class") or "").split():
            self.token = {**attrs, "text": ""}

    def handle_endtag(self, tag):
        if tag == "span" and self.token is not None:
            self.examples[-1].append(self.token)
            self.token = None
        elif tag == "pre":
            self.in_response = False

    def handle_data(self, data):
        if self.token is not None:
            self.token["text"] += data
        elif self.in_response:
            assert not data.strip(), f"text outside a token span: {data!r}"


def parse_page(page: str) -> ResponseTokens:
    parser = ResponseTokens()
    parser.feed(page)
    parser.close()
    return parser


def per_head(text: str) -> list[float | None]:
    return [float(v) if v else None for v in text.split(",")]


@pytest.fixture()
def tiny(tmp_path, tiny_tokenizer):
    """A tiny WMTP model with a (critic-marked) value head, a tiny LLaMA reference, and three rows."""
    folder = write_tiny_model(tmp_path / "model", tiny_tokenizer, n_future=2)
    model = AutoModelForCausalLM.from_pretrained(folder, use_value_head=True)
    torch.manual_seed(3)
    torch.nn.init.normal_(model.value_head.weight, std=0.5)  # values far enough apart to give varied weights
    model.config.value_head_stage = "critic"
    model.eval()
    reference = AutoModelForCausalLM.from_pretrained(write_llama(tmp_path / "ref", tiny_tokenizer)).eval()
    rows = []
    for i, (code, correct) in enumerate(RESPONSES):
        example = {"instruction": f"Write function {i}.", "input": "", "output": code, "source": "mbpp"}
        ids, prompt_length = encode_example(example, tiny_tokenizer)
        rows.append(
            {"input_ids": ids, "prompt_length": prompt_length, "is_correct": correct, "task_id": f"t{i}"}
        )
    return model, reference, rows


def hand_numbers(model, reference, rows, tokenizer):
    """Per row and response token j: CE_k from full logits, V_j, CE_ref(j), by plain loops."""
    n = model.config.n_future_tokens
    out = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            result = model(ids, return_all_heads=True)
            logp = torch.log_softmax(result.mtp_logits[0].double(), dim=-1)  # [T, n, V]
            ref_logp = torch.log_softmax(reference(ids).logits[0].double(), dim=-1)
            tokens = []
            for j in range(row["prompt_length"], len(row["input_ids"])):
                x = row["input_ids"][j]
                ce = [float(-logp[j - 1 - k, k, x]) if j - 1 - k >= 0 else None for k in range(n)]
                tokens.append(
                    {"id": x, "ce": ce, "value": float(result.value[0, j]), "ref": float(-ref_logp[j - 1, x])}
                )
            out.append({"tokens": tokens, "value_before": float(result.value[0, row["prompt_length"] - 1])})
    return out


def test_page_tokens_and_numbers_equal_hand_computations(tiny, tiny_tokenizer):
    model, reference, rows = tiny
    inspection = inspect_examples(model, tiny_tokenizer, rows, reference=reference, batch_size=2)
    page = render_html(inspection)
    parsed = parse_page(page)
    hand = hand_numbers(model, reference, rows, tiny_tokenizer)

    # Self-contained and escaped: one script (ours), nothing fetched, the data's markup never raw.
    assert parsed.tags.get("script") == 1 and "<script>alert" not in page
    assert not re.search(r"https?:|\bsrc=|\bhref=|@import|url\(", page)

    assert len(parsed.examples) == len(rows)
    kept_by_head: dict[int, dict[tuple[int, int], bool]] = {0: {}, 1: {}}
    excess_by_head: dict[int, dict[tuple[int, int], float]] = {0: {}, 1: {}}
    for b, (row, spans, expected) in enumerate(zip(rows, parsed.examples, hand, strict=True)):
        response = row["input_ids"][row["prompt_length"] :]
        # Every response token once, in order, its own text (the fixtures are ASCII), whitespace intact.
        assert [int(s["data-id"]) for s in spans] == response
        assert [s["text"] for s in spans] == [tiny_tokenizer.decode([i]) for i in response]
        assert "".join(s["text"] for s in spans) == tiny_tokenizer.decode(response)
        # TD errors and weights by a naive loop (gamma 1, beta 0.9, clip [0.1, 5]: the stage's defaults).
        previous = expected["value_before"]
        reward = 1.0 if row["is_correct"] else 0.0
        for i, (span, token) in enumerate(zip(spans, expected["tokens"], strict=True)):
            assert per_head(span["data-ce"]) == pytest.approx(token["ce"], rel=1e-4, abs=1e-5)
            assert float(span["data-value"]) == pytest.approx(token["value"], rel=1e-4, abs=1e-6)
            last = i == len(spans) - 1
            delta = (reward if last else token["value"]) - previous
            previous = token["value"]
            assert float(span["data-td"]) == pytest.approx(delta, rel=1e-4, abs=1e-6)
            weight = min(max(math.exp(delta / 0.9), 0.1), 5.0)
            assert float(span["data-weight"]) == pytest.approx(weight, rel=1e-4)
            assert float(span["data-ref"]) == pytest.approx(token["ref"], rel=1e-4, abs=1e-5)
            j = row["prompt_length"] + i
            for k, (ce, excess, kept) in enumerate(
                zip(token["ce"], per_head(span["data-excess"]), per_head(span["data-kept"]), strict=True)
            ):
                assert excess == pytest.approx(ce - token["ref"], rel=1e-4, abs=1e-4)
                excess_by_head[k][(b, j - 1 - k)] = ce - token["ref"]
                kept_by_head[k][(b, j - 1 - k)] = bool(kept)
            assert f"weight {float(span['data-weight']):.4g}" in span["title"]  # hover text
    # Rho-1 keeps, per head, the top round(0.6 * valid) targets of all three rows as one batch.
    width = max(len(r["input_ids"]) for r in rows)
    for k in (0, 1):
        ranked = sorted(excess_by_head[k], key=lambda bt: (-excess_by_head[k][bt], bt[0] * width + bt[1]))
        keep = set(ranked[: max(round(0.6 * len(ranked)), 1)])
        assert {bt for bt, kept in kept_by_head[k].items() if kept} == keep

    # A cached `ref_token_losses` column gives the same Rho-1 view as the live reference.
    cached_rows = []
    for row, expected in zip(rows, hand, strict=True):
        ref = [0.0] * row["prompt_length"] + [t["ref"] for t in expected["tokens"]]
        cached_rows.append({**row, "ref_token_losses": ref})
    cached = inspect_examples(model, tiny_tokenizer, cached_rows)
    for live_example, cached_example in zip(inspection.examples, cached.examples, strict=True):
        assert [t.kept for t in cached_example.tokens] == [t.kept for t in live_example.tokens]


def test_weights_equal_the_verifiable_stages_token_weights(tmp_path, tiny, tiny_tokenizer):
    from wmtp_hf.train.stages import VerifiableTrainer

    model, _, rows = tiny
    options = {"advantage": "gae", "lam": 0.8, "gamma": 0.9, "normalize": "zscore", "beta": 0.5,
               "report_to": "none", "output_dir": str(tmp_path / "v")}  # fmt: skip
    config = build_config("verifiable", None, options)
    trainer = VerifiableTrainer(model=model, args=config, data_collator=WmtpDataCollator(tiny_tokenizer))
    batch = WmtpDataCollator(tiny_tokenizer)(rows)
    with torch.no_grad():
        outputs = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
    mask = mtp_target_mask(batch["labels"], 2)
    stage = trainer.token_weights(model, batch, outputs, mask)  # [B, T, n]: head k at t gets token t+1+k's
    inspection = inspect_examples(model, tiny_tokenizer, rows, stage_config=config, batch_size=1)
    assert inspection.settings["verifiable"]["normalize"] == "zscore"
    for b, example in enumerate(inspection.examples):
        for token in example.tokens:
            for k in range(2):
                assert token.weight == pytest.approx(float(stage[b, token.position - 1 - k, k]), rel=1e-5)


def test_png_is_written_and_not_blank(tmp_path, tiny, tiny_tokenizer):
    import matplotlib.image

    model, reference, rows = tiny
    inspection = inspect_examples(model, tiny_tokenizer, rows, reference=reference)
    for color_by in ("weight", "kept"):
        path = tmp_path / f"{color_by}.png"
        path.write_bytes(render_png(inspection, examples=[1], head=1, color_by=color_by))
        pixels = matplotlib.image.imread(path)[..., :3]
        assert pixels.shape[0] > 100 and pixels.shape[1] > 300
        colours = {tuple(p) for p in (pixels.reshape(-1, 3) * 255).round().astype(int).tolist()}
        assert len(colours) > 20  # text, frames and several token colours, not a blank canvas
    with pytest.raises(ValueError, match="color_by"):
        render_png(inspection, color_by="nope")


def test_outputs_are_all_or_nothing(tmp_path, tiny, tiny_tokenizer, monkeypatch):
    import wmtp_hf.inspection.outputs as outputs

    model, _, rows = tiny
    inspection = inspect_examples(model, tiny_tokenizer, rows)
    assert sorted(p.name for p in write_outputs(inspection, tmp_path / "ok").iterdir()) == [
        "tokens.html", "tokens.json", "tokens.png"]  # fmt: skip

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs, "write_json", broken)
    with pytest.raises(RuntimeError):
        write_outputs(inspection, tmp_path / "out" / "page")
    assert list((tmp_path / "out").iterdir()) == []  # no folder, no temporary leftovers


NODE_HARNESS = """
const fs = require("fs");
const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
function element(attrs) {
  return { attrs: attrs, style: {}, getAttribute: function (n) { return n in this.attrs ? this.attrs[n] : null; } };
}
const spans = input.tokens.map(element);
const listeners = {};
function control(id) {
  return { id: id, value: "0", selectedIndex: 0, options: [element({ "data-legend": "legend" })],
           addEventListener: function (_, fn) { listeners[id] = fn; } };
}
const controls = { head: control("head"), "color-by": control("color-by"), legend: {}, details: {} };
controls["color-by"].value = input.modes[0];
global.document = {
  body: element(input.body),
  getElementById: function (id) { return controls[id]; },
  querySelectorAll: function () { return spans; },
  addEventListener: function () {}
};
eval(input.script);
const out = {};
for (const mode of input.modes) {
  for (let k = 0; k < input.heads; k++) {
    controls["color-by"].value = mode;
    controls.head.value = String(k);
    listeners.head();
    out[mode + "/" + k] = spans.map(function (s) { return s.style.backgroundColor; });
  }
}
process.stdout.write(JSON.stringify(out));
"""


def test_page_script_colours_equal_the_python_colours(tmp_path, tiny, tiny_tokenizer):
    """The script's recolouring (run in node with a stub DOM) matches `colours.token_colour` for every
    colour-by choice and head, so the selectors show what the PNG and the initial page show."""
    import shutil
    import subprocess

    from wmtp_hf.inspection.colours import available_modes, page_scales, token_colour
    from wmtp_hf.inspection.html_page import SCRIPT

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page script is checked by the browser test only")
    model, reference, rows = tiny
    inspection = inspect_examples(model, tiny_tokenizer, rows, reference=reference)
    parsed = parse_page(render_html(inspection))
    spans = [s for example in parsed.examples for s in example]
    modes = available_modes(inspection)
    (tmp_path / "harness.js").write_text(NODE_HARNESS)
    (tmp_path / "input.json").write_text(json.dumps({"tokens": spans, "body": parsed.body, "modes": modes,
                                                     "heads": 2, "script": SCRIPT}))  # fmt: skip
    done = subprocess.run([node, tmp_path / "harness.js", tmp_path / "input.json"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    colours = json.loads(done.stdout)
    scales = page_scales(inspection)
    tokens = [t for example in inspection.examples for t in example.tokens]
    assert set(modes) == {"weight", "td", "value", "kept", "excess", "ce"}
    for mode in modes:
        for k in range(2):
            want = ["rgb({},{},{})".format(*token_colour(t, mode, k, scales)) for t in tokens]
            assert colours[f"{mode}/{k}"] == want, (mode, k)
    # The page's initial colours are Python's for the first choice and head 0.
    first = ["background-color: rgb({},{},{})".format(*token_colour(t, modes[0], 0, scales)) for t in tokens]
    assert [s["style"] for s in spans] == first


# ------------------------------------------------------------------------------------------ real browser


def installed_browser_driver() -> str:
    """ "playwright" or "selenium", whichever is importable; skips the test when neither is."""
    for name in ("playwright.sync_api", "selenium.webdriver"):
        try:
            __import__(name)
        except ImportError:
            continue
        return name.split(".")[0]
    pytest.skip("no headless browser: neither playwright nor selenium is installed")


def with_playwright(page_path: Path, shot: Path) -> tuple[str, list[str], list[str]]:
    from playwright.sync_api import Error, sync_playwright

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch()
            page = browser.new_page(viewport={"width": 1200, "height": 1600})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
            page.select_option("#head", "1")  # the selector recolours without errors
            page.screenshot(path=str(shot), full_page=True)
            text = page.eval_on_selector_all("pre.response", "els => els.map(e => e.innerText).join('')")
            spans = page.eval_on_selector_all("span.tok", "els => els.map(e => e.textContent)")
            browser.close()
    except Error as err:
        pytest.skip(f"playwright is installed but cannot start chromium: {str(err).splitlines()[0]}")
    return text, spans, [u for u in requests if u != page_path.as_uri()]


def with_selenium(page_path: Path, shot: Path) -> tuple[str, list[str], list[str]]:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException

    for make in (_chrome, _firefox):
        try:
            driver = make(webdriver)
        except WebDriverException:
            continue
        try:
            driver.get(page_path.as_uri())
            driver.save_screenshot(str(shot))
            text = driver.execute_script(
                "return Array.from(document.querySelectorAll('pre.response')).map(e => e.innerText).join('')"
            )
            spans = driver.execute_script(
                "return Array.from(document.querySelectorAll('span.tok')).map(e => e.textContent)"
            )
            requests = driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
            )
            return text, spans, requests
        finally:
            driver.quit()
    pytest.skip("selenium is installed but neither chrome nor firefox could be started headless")


def _chrome(webdriver):
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options)


def _firefox(webdriver):
    options = webdriver.FirefoxOptions()
    options.add_argument("-headless")
    return webdriver.Firefox(options=options)


def test_page_renders_in_a_headless_browser(tmp_path, tiny, tiny_tokenizer):
    import matplotlib.image

    driver = installed_browser_driver()
    model, reference, rows = tiny
    inspection = inspect_examples(model, tiny_tokenizer, rows, reference=reference)
    folder = write_outputs(inspection, tmp_path / "out")
    render = with_playwright if driver == "playwright" else with_selenium
    text, spans, requests = render(folder / "tokens.html", tmp_path / "shot.png")
    assert requests == []
    pixels = matplotlib.image.imread(tmp_path / "shot.png")[..., :3]
    assert pixels.std() > 0.01 and len({tuple(p) for p in pixels.reshape(-1, 3).tolist()}) > 20
    tokens = [t.text for ex in inspection.examples for t in ex.tokens]
    assert spans == tokens
    rendered = re.sub(r"\s+", "", text.replace("\u21b5", ""))
    expected = re.sub(r"\s+", "", "".join(tokens))
    assert rendered == expected  # every token's text is on the page, in order


# ------------------------------------------------------------------------------------------ command line


def write_critic_model(folder: Path, tokenizer) -> Path:
    """A tiny WMTP model whose (untrained) value head is marked as a critic's, as the critic stage saves it."""
    model = AutoModelForCausalLM.from_pretrained(
        write_tiny_model(folder / "init", tokenizer), use_value_head=True
    )
    model.config.value_head_stage = "critic"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def cli_setup(tmp_path, tiny_tokenizer):
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl", n=6)
    return (
        write_critic_model(tmp_path / "critic", tiny_tokenizer),
        data,
        write_llama(tmp_path / "ref", tiny_tokenizer),
    )


def run_cli(*argv) -> int:
    return inspect_main([str(a) for a in argv])


def test_cli_writes_the_page_png_and_json(tmp_path, cli_setup, capsys):
    model, data, ref = cli_setup
    out = tmp_path / "inspect"
    common = ["--model", model, "--dataset", "mbpp", "--dataset-path", data, "--split", "train"]
    assert run_cli(*common, "--reference", ref, "--n", 2, "--output", out) == 0
    assert "2 examples" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["tokens.html", "tokens.json", "tokens.png"]
    numbers = json.loads((out / "tokens.json").read_text())
    assert [e["task_id"] for e in numbers["examples"]] == ["mbpp/601", "mbpp/602"]
    assert numbers["has_value"] and numbers["has_reference"]
    assert numbers["settings"]["rho1"] == {"k_percent": 0.6, "selection": "batch"}
    spans = parse_page((out / "tokens.html").read_text()).examples
    assert [len(s) for s in spans] == [len(e["tokens"]) for e in numbers["examples"]]
    # --overwrite replaces an inspect folder; --task-id picks rows.
    assert run_cli(*common, "--task-id", "mbpp/605", "--output", out, "--overwrite") == 0
    assert [e["task_id"] for e in json.loads((out / "tokens.json").read_text())["examples"]] == ["mbpp/605"]


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, cli_setup, tiny_tokenizer, capsys):
    model, data, ref = cli_setup
    out = tmp_path / "inspect"
    common = ["--dataset", "mbpp", "--dataset-path", data, "--split", "train", "--output", out]
    other = AutoTokenizer.from_pretrained(ref)
    other.add_tokens(["<extra_token>"])
    other_ref = tmp_path / "other_ref"
    AutoModelForCausalLM.from_pretrained(ref).save_pretrained(other_ref)
    other.save_pretrained(other_ref)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    cases = [
        (["--model", tmp_path / "nonexistent", *common], "no such folder, and not a Hub id"),
        (["--model", model, "--dataset", "nope", "--output", out], "'nope' is neither a source"),
        (["--model", model, "--dataset", "mbpp", "--dataset-path", data, "--split", "bogus", "--output", out],
         "bogus"),
        (["--model", model, "--dataset", "mbpp", "--dataset-path", tmp_path / "missing.jsonl", "--output", out],
         "file not found"),
        (["--model", model, *common[:-1], tmp_path / "full"], "already exists and is not empty"),
        (["--model", model, *common[:-1], tmp_path / "full", "--overwrite"], "only replaces a folder written by inspect"),
        (["--model", model, "--reference", other_ref, *common], "different tokenizer"),
        (["--model", ref, *common], "expected a WMTP model"),
        (["--model", model, "--n", "0", *common], "--n: expected a positive integer"),
        (["--model", model, "--task-id", "mbpp/999", *common], "--task-id: not in the split"),
    ]  # fmt: skip
    capsys.readouterr()
    for argv, message in cases:
        assert run_cli(*argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
        assert not out.exists()
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------------------------------ MLflow artifact


def test_verifiable_stage_logs_the_page_to_mlflow(tmp_path, tiny_tokenizer, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # the SQLite store keeps artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "inspect-test")
    critic = write_critic_model(tmp_path / "critic", tiny_tokenizer)
    data = write_marker_dataset(tmp_path / "marker", len(tiny_tokenizer), MARKER, n_problems=12,
                                eos=tiny_tokenizer.eos_token_id)  # fmt: skip
    out = tmp_path / "verifiable"
    assert (
        train_main(stage_args("verifiable", critic, data, out, report_to="mlflow", **{"max-steps": 1})) == 0
    )

    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("inspect-test").experiment_id])
    names = sorted(Path(a.path).name for a in client.list_artifacts(run.info.run_id, "inspect"))
    assert names == ["tokens.html", "tokens.json", "tokens.png"]
    local = client.download_artifacts(run.info.run_id, "inspect/tokens.json", str(tmp_path / "downloaded"))
    logged = json.loads(Path(local).read_text())
    assert logged["labels"]["split"] == "eval" and len(logged["examples"]) == 3
    # The logged weights are the final model's on the same held-out rows.
    held_out = [dict(r) for r in datasets.load_from_disk(str(data / "eval"))]
    rows = [next(r for r in held_out if r["task_id"] == e["task_id"]) for e in logged["examples"]]
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    again = inspect_examples(final, tiny_tokenizer, rows).to_dict()
    for logged_example, example in zip(logged["examples"], again["examples"], strict=True):
        got, want = ([t["weight"] for t in e["tokens"]] for e in (logged_example, example))
        assert got == pytest.approx(want, rel=1e-4)


def test_rho1_page_uses_the_stages_reference(tmp_path, tiny_tokenizer):
    """Live reference: held-out rows, the trainer's reference. Cached column only in the training rows:
    the page falls back to training rows and reads their column."""
    from wmtp_hf.train.inspect_artifact import InspectionArtifactCallback
    from wmtp_hf.train.stages import Rho1Trainer

    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_marker_dataset(tmp_path / "marker", len(tiny_tokenizer), MARKER, n_problems=6,
                                eos=tiny_tokenizer.eos_token_id)  # fmt: skip
    ref = write_llama(tmp_path / "ref", tiny_tokenizer)
    train = datasets.load_from_disk(str(data / "train"))
    reference = AutoModelForCausalLM.from_pretrained(ref).eval()
    rng = torch.Generator().manual_seed(0)
    cached = train.add_column(
        "ref_token_losses", [torch.rand(len(r), generator=rng).tolist() for r in train["input_ids"]]
    )
    for rows, live in ((train, True), (cached, False)):
        config = build_config("rho1", None, {"model_name_or_path": str(model), "dataset": str(data), "report_to": "none",
                                             "output_dir": str(tmp_path / "out"), "reference_model": str(ref)})  # fmt: skip
        policy = AutoModelForCausalLM.from_pretrained(model)
        trainer = Rho1Trainer(model=policy, args=config, train_dataset=rows, processing_class=tiny_tokenizer,
                              data_collator=WmtpDataCollator(tiny_tokenizer), reference=str(ref) if live else None)  # fmt: skip
        callback = trainer.callback_handler.callbacks[0]
        assert isinstance(callback, InspectionArtifactCallback)  # before MLflow's, which ends the run
        inspection = callback.build(config, 0)
        assert inspection.has_reference and not inspection.has_value
        assert inspection.labels["split"] == (
            "eval" if live else "train (training rows: no held-out rows for this view)"
        )
        source = datasets.load_from_disk(str(data / "eval")) if live else cached
        by_id = {r["task_id"]: dict(r) for r in source}
        picked = [by_id[e.task_id] for e in inspection.examples]
        assert [r["is_correct"] for r in picked] == [True, False, True]
        again = inspect_examples(policy, tiny_tokenizer, picked, reference=reference if live else None)
        assert [[t.kept for t in e.tokens] for e in inspection.examples] == [
            [t.kept for t in e.tokens] for e in again.examples
        ]
