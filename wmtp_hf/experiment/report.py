"""`report.json` and `report.md`: what each run trained, its held-out numbers, and whether weighting helped."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..stats import auroc_bootstrap, crossed_bootstrap, verdict
from .stage_runs import START, start_runs

# (weighted run, the run it is compared with): verifiable with the equally trained baseline when it exists.
COMPARISONS = (("verifiable", ("baseline_matched", "baseline")), ("rho1", ("baseline",)))
ROW_KEYS = ("ce_rows", "critic_rows", "pass_at_k_problems")  # per-example data: measurements.json only
CONTROL_WHAT = {
    "rho1": "baseline and rho1 train on rows with random tokens planted, the reference on clean rows",
    "verifiable": "incorrect rows go wrong at planted random tokens; policy_on: all, both runs on the same rows",
}
MEANING = (
    "Each comparison is weighted − baseline on the same held-out examples (problems for pass@k). `ci95` is "
    "a 95% percentile interval from a paired bootstrap: held-out examples are resampled (and, with several "
    "seeds, the seeds too, independently: the spread between seeds widens the interval). **better**: the "
    "whole interval is on the good side of 0 (lower CE, higher pass@k); **worse**: on the bad side; "
    "**inconclusive**: it contains 0, so this run cannot tell the two apart. The intervals cover the "
    "variation of the held-out sample (and of seeds), not of other data sets or model sizes."
)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _interval(stats_out: dict[str, float]) -> dict[str, Any]:
    return {"estimate": stats_out["estimate"], "ci95": [stats_out["low"], stats_out["high"]]}


def _ce_cells(runs: list[dict[str, Any]], order: list[str], heads: int) -> tuple[np.ndarray, np.ndarray]:
    """`(mean CE [S, N, H], token counts [S, N, H])` of each seed's run on the examples `order`."""
    values = np.full((len(runs), len(order), heads), np.nan)
    weights = np.zeros((len(runs), len(order), heads))
    for s, m in enumerate(runs):
        rows = m["ce_rows"]
        at = {t: i for i, t in enumerate(rows["task_id"])}
        for j, task in enumerate(order):
            if task in at:
                sums = np.asarray(rows["sum"][at[task]][:heads], dtype=np.float64)
                counts = np.asarray(rows["count"][at[task]][:heads], dtype=np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    values[s, j] = np.where(counts > 0, sums / counts, np.nan)
                weights[s, j] = counts
    return values, weights


def _same_rows(runs: list[dict[str, Any]], key: str) -> bool:
    """Whether every run's `key` rows name the same examples (the pairing of a paired interval)."""
    return len({frozenset(m[key]["task_id"]) for m in runs}) == 1


def _problem_cells(runs: list[dict[str, Any]], order: list[str], k: str) -> np.ndarray:
    out = np.full((len(runs), len(order)), np.nan)
    for s, m in enumerate(runs):
        per = m.get("pass_at_k_problems") or {}
        at = dict(zip(per.get("task_id", []), per.get(k, []), strict=False))
        out[s] = [at.get(t, np.nan) for t in order]
    return out


def _has_rows(runs: list[dict[str, Any]], key: str) -> bool:
    return all(m.get(key) for m in runs)


def summarize_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run over its seeds: mean held-out numbers with 95% intervals (seeds and examples resampled)."""
    out: dict[str, Any] = {"seeds": len(runs)}
    ce = [m["ce_per_head"] for m in runs if m.get("ce_per_head")]
    if ce:
        heads = min(len(c) for c in ce)
        out["ce_per_head"] = [{"estimate": _mean([c[h] for c in ce]), "ci95": None} for h in range(heads)]
        if _has_rows(runs, "ce_rows"):
            order = runs[0]["ce_rows"]["task_id"]
            values, weights = _ce_cells(runs, order, heads)
            out["ce_per_head"] = [
                _interval(crossed_bootstrap(values[:, :, h], weights[:, :, h])) for h in range(heads)
            ]
    ks = sorted({k for m in runs for k in (m.get("pass_at_k") or {})})
    if ks:
        out["pass_at_k"] = {}
        for k in ks:
            point = _mean([(m.get("pass_at_k") or {}).get(k) for m in runs])
            entry: dict[str, Any] = {"estimate": point, "ci95": None}
            if _has_rows(runs, "pass_at_k_problems"):
                order = runs[0]["pass_at_k_problems"]["task_id"]
                entry = _interval(crossed_bootstrap(_problem_cells(runs, order, k)))
            out["pass_at_k"][k] = entry
    if _has_rows(runs, "critic_rows"):
        rows = [m["critic_rows"] for m in runs]
        out["auroc"] = _interval(auroc_bootstrap([r["value"] for r in rows], rows[0]["is_correct"]))
    elif any(m.get("auroc") is not None for m in runs):
        out["auroc"] = {"estimate": _mean([m.get("auroc") for m in runs]), "ci95": None}
    else:
        out["auroc_unavailable"] = next(
            (m["auroc_unavailable"] for m in runs if m.get("auroc_unavailable")), "not measured"
        )
    for key in ("tokens_per_forward",):
        values = [m.get(key) for m in runs if m.get(key) is not None]
        if values:
            out[key] = _mean(values)
    return out


def _difference(w: float, b: float, boot: dict[str, float] | None, lower_is_better: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"weighted": w, "baseline": b, "difference": w - b}
    if lower_is_better:
        entry["relative"] = (w - b) / b if b else math.nan
    if boot is None:
        entry.update(ci95=None, verdict="inconclusive")
    else:
        entry.update(
            ci95=[boot["low"], boot["high"]], verdict=verdict(boot["low"], boot["high"], lower_is_better)
        )
    return entry


def compare(weighted: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any]:
    """Held-out CE (head 0, mean over heads) and pass@k of a weighted run against its baseline, seed by
    seed on the same examples: difference, 95% interval (crossed bootstrap) and verdict."""
    out: dict[str, Any] = {}
    heads = min(len(weighted[0]["ce_per_head"]), len(base[0]["ce_per_head"]))
    paired = _has_rows(weighted, "ce_rows") and _has_rows(base, "ce_rows")
    if paired and not _same_rows(weighted + base, "ce_rows"):
        paired = False  # an interval over the shared rows would not be about the two means compared
        out["unpaired"] = "the runs were measured on different held-out rows: no paired interval"
    if paired:
        order = base[0]["ce_rows"]["task_id"]
        wv, _ = _ce_cells(weighted, order, heads)
        bv, bw = _ce_cells(base, order, heads)
    for key, pick, cells in (
        ("ce_head_0", lambda m: m["ce_per_head"][0], slice(0, 1)),
        ("ce_mean", lambda m: _mean(m["ce_per_head"][:heads]), slice(0, heads)),
    ):
        w, b = _mean([pick(m) for m in weighted]), _mean([pick(m) for m in base])
        boot = crossed_bootstrap(wv[:, :, cells] - bv[:, :, cells], bw[:, :, cells]) if paired else None
        out[key] = _difference(w, b, boot, lower_is_better=True)
    for k in weighted[0].get("pass_at_k") or {}:
        if k not in (base[0].get("pass_at_k") or {}):
            continue
        w = _mean([(m.get("pass_at_k") or {}).get(k) for m in weighted])
        b = _mean([(m.get("pass_at_k") or {}).get(k) for m in base])
        boot = None
        if _has_rows(weighted, "pass_at_k_problems") and _has_rows(base, "pass_at_k_problems"):
            order = base[0]["pass_at_k_problems"]["task_id"]
            boot = crossed_bootstrap(_problem_cells(weighted, order, k) - _problem_cells(base, order, k))
        out[k] = _difference(w, b, boot, lower_is_better=False)
    out["helped"] = out["ce_head_0"]["verdict"] == "better" and all(
        v["verdict"] != "worse" for k, v in out.items() if k.startswith("pass@")
    )
    return out


def _lean(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ROW_KEYS}


def build_report(
    plan: Any, records: dict[str, dict[str, Any]], metrics: dict[str, dict[str, Any]], plots: dict[str, str]
) -> dict[str, Any]:
    """The report as a JSON-able dict (also the source of `report.md`)."""
    runs = {}
    for run in plan.stages:
        summary = records[run.key].get("summary", {})
        runs[run.key] = {
            "name": run.name,
            "seed": run.seed,
            "stage": run.stage,
            "reused": records[run.key].get("reused", False),
            "start_model": run.config.model_name_or_path or "micro preset",
            "dataset": str(run.config.dataset),
            "steps": summary.get("steps"),
            "train_runtime_s": summary.get("train_runtime_s"),
            "final_train_loss": summary.get("final_loss"),
            "final_model": str(run.final_dir),
            "fingerprint": run.fingerprint,
            "heldout": _lean(metrics.get(run.key, {})),
        }
    names = list(dict.fromkeys(run.name for run in plan.stages))
    by_name = {name: [metrics.get(r.key, {}) for r in plan.runs_named(name)] for name in names}
    summary_by_name = {}
    for name in names:
        keys = [r.key for r in plan.runs_named(name)]
        entry = summarize_run(by_name[name]) if all("ce_per_head" in m for m in by_name[name]) else {}
        entry.update(
            stage=runs[keys[0]]["stage"],
            reused=all(runs[k]["reused"] for k in keys),
            steps=_mean([runs[k]["steps"] for k in keys]),
            final_train_loss=_mean([runs[k]["final_train_loss"] for k in keys]),
        )
        summary_by_name[name] = entry
    start = [metrics[k] for k in sorted(metrics, key=str) if Path(k).name == START]
    from_start = {}
    if start and all("ce_per_head" in m for m in start):
        entry = summarize_run(start)
        entry.update(stage=START, reused=False, steps=0, final_train_loss=None)
        summary_by_name = {START: entry, **summary_by_name}
        for name in names:
            if all("ce_per_head" in m for m in by_name[name]) and len(by_name[name]) == len(start):
                from_start[name] = {"against": START, **compare(by_name[name], start)}
                from_start[name].pop("helped")
    comparisons = {}
    for weighted, bases in COMPARISONS:
        has_ce = {n: all("ce_per_head" in m for m in by_name.get(n, [{}])) for n in names}
        base = next((b for b in bases if b in by_name and has_ce[b]), None)
        if weighted in by_name and base is not None and has_ce[weighted]:
            entry = {"against": base, **compare(by_name[weighted], by_name[base])}
            if weighted == "verifiable" and "auroc" in summary_by_name.get("critic", {}):
                entry["critic_auroc"] = summary_by_name["critic"]["auroc"]
            if plan.control is not None:
                entry.update(expected="better", control=CONTROL_WHAT[weighted])
                planted = [m.get("planted_weights") for m in by_name[weighted] if m.get("planted_weights")]
                if planted:
                    entry["planted_weights"] = {key: _mean([p[key] for p in planted]) for key in planted[0]}
            comparisons[weighted] = entry
    return {
        "config": plan.source,
        "output_dir": str(plan.output_dir),
        "dataset": plan.stages[0].config.dataset,
        "seeds": list(plan.seeds),
        "control": None if plan.control is None else dataclasses.asdict(plan.control),
        "verdicts_mean": MEANING,
        "summary": summary_by_name,
        "comparisons": comparisons,
        "start": start_entry(plan, start),
        "from_start": from_start,
        "controls": read_control_verdicts(plan),
        "runs": runs,
        "plots": plots,
    }


def start_entry(plan: Any, start: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the `start` row is: the model the first run started from, per seed (None: not measured)."""
    runs = start_runs(plan)
    if not start or not runs:
        return None
    return {"model": plan.raw.get("model") or "micro preset", "start_of": runs[0].name,
            "path": [m.get("start_model_path") for m in start]}  # fmt: skip


def read_control_verdicts(plan: Any) -> dict[str, Any] | None:
    """The positive control's verdicts (from its report.json) to show beside the real comparisons."""
    if plan.control is not None:
        return None
    path = plan.raw.get("control_report")
    if not path:
        return None
    try:
        control = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"report": str(path), "missing": True}
    return {
        "report": str(path),
        "missing": False,
        "comparisons": {
            name: {"against": c["against"], "verdict": c["ce_head_0"]["verdict"],
                   "difference": c["ce_head_0"]["difference"], "ci95": c["ce_head_0"]["ci95"]}
            for name, c in control.get("comparisons", {}).items()
        },
    }  # fmt: skip


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _pm(entry: dict[str, Any] | None, digits: int = 4) -> str:
    """`estimate ± half-width` of an interval entry (`estimate` alone without an interval)."""
    if not entry:
        return "–"
    est, ci = entry["estimate"], entry.get("ci95")
    if ci is None or not all(math.isfinite(x) for x in ci):
        return _fmt(est, digits)
    return f"{est:.{digits}f} ± {(ci[1] - ci[0]) / 2:.{digits}f}"


def _diff_text(label: str, d: dict[str, Any]) -> str:
    ci = d.get("ci95")
    interval = f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else " (no interval)"
    return f"{label} {d['difference']:+.4f}{interval} → {d['verdict']}"


def verdict_line(weighted: str, c: dict[str, Any]) -> str:
    """One line: the head-0 CE verdict first, then mean over heads and pass@k."""
    parts = [_diff_text("held-out CE head 0", c["ce_head_0"]), _diff_text("mean over heads", c["ce_mean"])]
    parts += [_diff_text(k, v) for k, v in c.items() if k.startswith("pass@")]
    if c.get("unpaired"):
        parts.append(c["unpaired"])
    return f"**{weighted}** vs **{c['against']}**: **{c['ce_head_0']['verdict']}** — " + "; ".join(parts)


def render_markdown(report: dict[str, Any]) -> str:
    summary, comparisons = report["summary"], report["comparisons"]
    seeds = report.get("seeds") or [0]
    n_heads = max((len(r.get("ce_per_head", [])) for r in summary.values()), default=0)
    ks = sorted({k for r in summary.values() for k in (r.get("pass_at_k") or {})})
    head = ["run", "stage", "steps", "train loss", *[f"CE head {k}" for k in range(n_heads)], *ks, "AUROC"]
    if any("tokens_per_forward" in r for r in summary.values()):
        head.append("tokens/forward")
    title = "WMTP positive control report" if report.get("control") else "WMTP experiment report"
    lines = [f"# {title}", ""]
    if not comparisons:
        lines.append("No weighted run with a baseline to compare against.")
    for weighted, c in comparisons.items():
        line = "- " + verdict_line(weighted, c)
        if c.get("expected"):
            line += f" (expected: {c['expected']})"
        lines.append(line + ".")
    controls = report.get("controls")
    if controls and not controls["missing"]:
        for weighted, c in controls["comparisons"].items():
            lines.append(f"- positive control, **{weighted}** vs **{c['against']}**: **{c['verdict']}** "
                         f"(expected better; CE head 0 {c['difference']:+.4f}).")  # fmt: skip
    lines += [
        "",
        f"Config: `{report['config']}`; data set: `{report['dataset']}`; runs in `{report['output_dir']}`; "
        f"seeds: {', '.join(map(str, seeds))}.",
        "",
        "**What the verdicts mean.** " + report["verdicts_mean"],
        "",
        "## Held-out numbers",
        "",
        "Per-head cross-entropy teacher-forced on the held-out correct solutions; pass@k of sampled "
        "completions in the sandbox; AUROC of the critic's last value against is_correct. Each cell: the "
        f"mean over {len(seeds)} seed(s) ± the half-width of its 95% interval.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, r in summary.items():
        ce = r.get("ce_per_head", [])
        cells = [name + (" (reused)" if r["reused"] else ""), r["stage"], _fmt(r["steps"], 0),
                 _fmt(r["final_train_loss"])]  # fmt: skip
        cells += [_pm(ce[k]) if k < len(ce) else "–" for k in range(n_heads)]
        cells += [_pm((r.get("pass_at_k") or {}).get(k)) for k in ks]
        cells.append(_pm(r["auroc"]) if r.get("auroc") else r.get("auroc_unavailable") or "–")
        if "tokens/forward" in head:
            cells.append(_fmt(r.get("tokens_per_forward"), 2))
        lines.append("| " + " | ".join(cells) + " |")
    lines += _start_section(report)
    lines += _control_section(report)
    if report["plots"]:
        lines += ["", "## Plots", ""]
        lines += [f"![{title}]({Path(path).name})" for title, path in report["plots"].items()]
    return "\n".join(lines) + "\n"


def _start_section(report: dict[str, Any]) -> list[str]:
    """Each run against the model it all started from (same examples, same paired intervals)."""
    start, from_start = report.get("start"), report.get("from_start") or {}
    if not start:
        return []
    lines = ["", "## Against the start model", "",
             f"The `start` row is `{start['model']}` before any step, as the {start['start_of']} run loaded it, "
             "measured like every final model. Each run − start, on the same held-out examples; **better** "
             "means the run ended better than where it began.", ""]  # fmt: skip
    lines += ["- " + verdict_line(name, c) + "." for name, c in from_start.items()]
    return lines


def _control_section(report: dict[str, Any]) -> list[str]:
    comparisons, controls = report["comparisons"], report.get("controls")
    lines = ["", "## Positive controls", ""]
    if report.get("control"):
        lines.append("This report *is* the positive control: data where, by construction, weighting must "
                     "help. If a verdict is not `better`, the pipeline could not see an effect that exists.")  # fmt: skip
        lines += ["", "| control | data | verdict (expected better) | why |", "|---|---|---|---|"]
        for weighted, c in comparisons.items():
            why = []
            if c.get("critic_auroc"):
                why.append(f"critic AUROC {_pm(c['critic_auroc'], 3)}")
            if c.get("planted_weights"):
                p = c["planted_weights"]
                why.append(f"mean weight on planted tokens {p['planted_mean_weight']:.3f} vs "
                           f"{p['other_mean_weight']:.3f} on the rest")  # fmt: skip
            lines.append(
                f"| {weighted} | {c['control']} | {c['ce_head_0']['verdict']} | {'; '.join(why) or '–'} |"
            )
        return lines
    if controls is None:
        lines.append("No control report configured (`control_report`).")
        return lines
    if controls["missing"]:
        lines.append(f"No control report at `{controls['report']}` yet: run `python -m wmtp_hf.experiment "
                     f"--config configs/experiment_control.yaml --output-dir {Path(controls['report']).parent}` to see "
                     "whether this pipeline detects an "
                     "effect where one exists.")  # fmt: skip
        return lines
    lines += [f"From `{controls['report']}`: the same pipeline on data where weighting must help.", "",
              "| weighted run | this experiment | positive control (expected better) |", "|---|---|---|"]  # fmt: skip
    for weighted in sorted(set(comparisons) | set(controls["comparisons"])):
        real = comparisons.get(weighted, {}).get("ce_head_0", {}).get("verdict", "–")
        ctrl = controls["comparisons"].get(weighted, {}).get("verdict", "–")
        lines.append(f"| {weighted} | {real} | {ctrl} |")
    return lines
