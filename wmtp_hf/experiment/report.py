"""`report.json` and `report.md`: what each run trained, its held-out numbers, and whether weighting helped."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# (weighted run, the run it is compared with): verifiable with the equally trained baseline when it exists.
COMPARISONS = (("verifiable", ("baseline_matched", "baseline")), ("rho1", ("baseline",)))
SAME_CE = 0.005  # relative CE differences below this are reported as "about equal"


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def compare(weighted: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Held-out CE (head 0 and mean over heads) and pass@k of a weighted run against its baseline."""
    out: dict[str, Any] = {}
    for key, pick in (
        ("ce_head_0", lambda m: m["ce_per_head"][0]),
        ("ce_mean", lambda m: _mean(m["ce_per_head"])),
    ):
        w, b = pick(weighted), pick(base)
        rel = (w - b) / b if b else math.nan
        word = "about equal" if abs(rel) < SAME_CE else ("lower (better)" if w < b else "higher (worse)")
        out[key] = {"weighted": w, "baseline": b, "difference": w - b, "relative": rel, "verdict": word}
    for k, w in (weighted.get("pass_at_k") or {}).items():
        b = (base.get("pass_at_k") or {}).get(k)
        if b is not None:
            word = "equal" if w == b else ("higher (better)" if w > b else "lower (worse)")
            out[k] = {"weighted": w, "baseline": b, "difference": w - b, "verdict": word}
    ce = out["ce_head_0"]["verdict"]
    out["helped"] = ce == "lower (better)" and all(
        v["verdict"] != "lower (worse)" for k, v in out.items() if k.startswith("pass@")
    )
    return out


def build_report(
    plan: Any, records: dict[str, dict[str, Any]], metrics: dict[str, dict[str, Any]], plots: dict[str, str]
) -> dict[str, Any]:
    """The report as a JSON-able dict (also the source of `report.md`)."""
    runs = {}
    for run in plan.stages:
        summary = records[run.name].get("summary", {})
        runs[run.name] = {
            "stage": run.stage,
            "reused": records[run.name].get("reused", False),
            "start_model": run.config.model_name_or_path or "micro preset",
            "steps": summary.get("steps"),
            "train_runtime_s": summary.get("train_runtime_s"),
            "final_train_loss": summary.get("final_loss"),
            "final_model": str(run.final_dir),
            "fingerprint": run.fingerprint,
            "heldout": metrics.get(run.name, {}),
        }
    comparisons = {}
    for weighted, bases in COMPARISONS:
        base = next((b for b in bases if b in runs and "ce_per_head" in runs[b]["heldout"]), None)
        if weighted in runs and base is not None and "ce_per_head" in runs[weighted]["heldout"]:
            comparisons[weighted] = {
                "against": base,
                **compare(runs[weighted]["heldout"], runs[base]["heldout"]),
            }
    return {
        "config": plan.source,
        "output_dir": str(plan.output_dir),
        "dataset": plan.stages[0].config.dataset,
        "runs": runs,
        "comparisons": comparisons,
        "plots": plots,
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    n_heads = max((len(r["heldout"].get("ce_per_head", [])) for r in runs.values()), default=0)
    ks = sorted({k for r in runs.values() for k in (r["heldout"].get("pass_at_k") or {})})
    head = ["run", "stage", "steps", "train loss", *[f"CE head {k}" for k in range(n_heads)], *ks, "AUROC"]
    if any("tokens_per_forward" in r["heldout"] for r in runs.values()):
        head.append("tokens/forward")
    lines = [
        "# WMTP experiment report",
        "",
        f"Config: `{report['config']}`; data set: `{report['dataset']}`; runs in `{report['output_dir']}`.",
        "Held-out numbers: per-head cross-entropy teacher-forced on the held-out correct solutions; pass@k of "
        "sampled completions in the sandbox; AUROC of the critic's last value against is_correct.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, r in runs.items():
        held = r["heldout"]
        ce = held.get("ce_per_head", [])
        cells = [
            name + (" (reused)" if r["reused"] else ""),
            r["stage"],
            _fmt(r["steps"]),
            _fmt(r["final_train_loss"]),
        ]
        cells += [_fmt(ce[k]) if k < len(ce) else "–" for k in range(n_heads)]
        cells += [_fmt((held.get("pass_at_k") or {}).get(k)) for k in ks]
        cells.append(_fmt(held.get("auroc")))
        if "tokens/forward" in head:
            cells.append(_fmt(held.get("tokens_per_forward"), 2))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Did weighting help?", ""]
    if not report["comparisons"]:
        lines.append("No weighted run with a baseline to compare against.")
    for weighted, c in report["comparisons"].items():
        ce0, ce = c["ce_head_0"], c["ce_mean"]
        parts = [
            f"held-out CE head 0 {ce0['weighted']:.4f} vs {ce0['baseline']:.4f} ({ce0['relative']:+.1%}, "
            f"{ce0['verdict']})",
            f"mean over heads {ce['weighted']:.4f} vs {ce['baseline']:.4f} ({ce['verdict']})",
        ]
        parts += [f"{k} {v['weighted']:.4f} vs {v['baseline']:.4f} ({v['verdict']})" for k, v in c.items()
                  if k.startswith("pass@")]  # fmt: skip
        answer = "yes" if c["helped"] else "no"
        lines.append(f"- **{weighted}** vs **{c['against']}**: {answer} — " + "; ".join(parts) + ".")
    lines += [
        "",
        'One seed and one data set: small differences are within run-to-run noise. "Helped" means a lower '
        "held-out head-0 CE with no lower pass@k.",
    ]
    if report["plots"]:
        lines += ["", "## Plots", ""]
        lines += [f"![{title}]({Path(path).name})" for title, path in report["plots"].items()]
    return "\n".join(lines) + "\n"
