"""The experiment end to end: plan, train (or reuse) every run, measure, plot, report, MLflow."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.io import atomic_write_json
from ..fileio import atomic_write_text
from ..train.config import ConfigError
from .plan import ExperimentPlan
from .plots import plot_heldout_ce, plot_training_loss
from .report import build_report, render_markdown
from .stage_runs import MARKER, check_output_dir, measure_stages, mlflow_parent_run, train_stages


def _uses_mlflow(plan: ExperimentPlan) -> bool:
    return any("mlflow" in (run.config.report_to or []) for run in plan.stages)


def make_plots(plan: ExperimentPlan, summary: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every plot the report shows, by title -> file."""
    out = plan.output_dir
    plots = {
        "training loss": plot_training_loss(plan, out / "training_loss.png"),
        "per-head held-out CE": plot_heldout_ce(summary, out / "heldout_ce.png"),
    }
    from .weight_plots import plot_weights

    plots.update(plot_weights(plan, out))
    return {title: str(path) for title, path in plots.items()}


def check_isolation(plan: ExperimentPlan) -> None:
    """ConfigError (one line) where a run's pass@k needs a sandbox mode that cannot be had here: nothing
    runs under a weaker mode than `evaluation.isolation` asks for."""
    from ..evaluation.problems import DEFAULT_SPLITS
    from ..execution.sandbox import resolve_isolation
    from .measure import COMPARED_STAGES

    if not any(s.stage in COMPARED_STAGES and s.config.dataset in DEFAULT_SPLITS for s in plan.stages):
        return
    try:
        resolve_isolation(plan.evaluation.isolation, "evaluation.isolation")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run_experiment(plan: ExperimentPlan, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the plan; returns the report (also written to `report.json` / `report.md`)."""
    check_isolation(plan)  # fails closed before anything is trained or written
    check_output_dir(plan.output_dir)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.output_dir / MARKER, {"config": plan.source, "plan": plan.raw})
    mlflow_on = _uses_mlflow(plan)
    with mlflow_parent_run(mlflow_on, f"experiment:{plan.output_dir.name}") as parent:
        if plan.control is not None:
            from .control import build_control_data

            build_control_data(plan, say)
        records = train_stages(plan, say, mlflow_on)
        metrics = measure_stages(plan, records, say)
        report = build_report(plan, records, metrics, {})
        report["plots"] = make_plots(plan, report["summary"])
        atomic_write_text(plan.output_dir / "report.json", json.dumps(report, indent=2, default=str) + "\n")
        atomic_write_text(plan.output_dir / "report.md", render_markdown(report))
        if parent is not None:
            _log_parent(plan.output_dir, report)
    return report


def parent_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The parent run's metrics: each run's held-out numbers (mean over seeds) with their 95% interval
    (`.ci95_low` / `.ci95_high`), and each comparison's difference, interval and verdict (+1 better,
    -1 worse, 0 inconclusive), also of each run against the start model (`<run>_vs_start.*`)."""
    metrics: dict[str, float] = {}

    def put(prefix: str, entry: dict[str, Any] | None, value_key: str = "estimate") -> None:
        if not entry or entry.get(value_key) is None:
            return
        metrics[prefix] = entry[value_key]
        if entry.get("ci95"):
            metrics[f"{prefix}.ci95_low"], metrics[f"{prefix}.ci95_high"] = entry["ci95"]

    for name, run in report["summary"].items():
        for k, ce in enumerate(run.get("ce_per_head", [])):
            put(f"{name}.heldout_ce_head_{k}", ce)
        for k, v in (run.get("pass_at_k") or {}).items():
            put(f"{name}.{k.replace('@', '_at_')}", v)
        put(f"{name}.auroc", run.get("auroc"))
        if run.get("tokens_per_forward") is not None:
            metrics[f"{name}.tokens_per_forward"] = run["tokens_per_forward"]
    sign = {"better": 1.0, "worse": -1.0, "inconclusive": 0.0}
    pairs = [*report["comparisons"].items(), *(report.get("from_start") or {}).items()]
    for name, c in pairs:
        for key, entry in c.items():
            if isinstance(entry, dict) and "verdict" in entry:
                label = f"{name}_vs_{c['against']}.{key.replace('@', '_at_')}"
                put(f"{label}.difference", entry, "difference")
                metrics[f"{label}.verdict"] = sign[entry["verdict"]]
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}


def _log_parent(out: Path, report: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_metrics(parent_metrics(report))
    for name in ("report.md", "report.json", *(Path(p).name for p in report["plots"].values())):
        mlflow.log_artifact(str(out / name))
