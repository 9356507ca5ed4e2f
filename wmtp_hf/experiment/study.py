"""The experiment end to end: plan, train (or reuse) every run, measure, plot, report, MLflow."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.io import atomic_write_json
from ..fileio import atomic_write_text
from .plan import ExperimentPlan
from .plots import plot_heldout_ce, plot_training_loss
from .report import build_report, render_markdown
from .stage_runs import MARKER, check_output_dir, measure_stages, mlflow_parent_run, train_stages


def _uses_mlflow(plan: ExperimentPlan) -> bool:
    return any("mlflow" in (run.config.report_to or []) for run in plan.stages)


def make_plots(plan: ExperimentPlan, metrics: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every plot the report shows, by title -> file."""
    out = plan.output_dir
    plots = {
        "training loss": plot_training_loss(plan, out / "training_loss.png"),
        "per-head held-out CE": plot_heldout_ce(metrics, out / "heldout_ce.png"),
    }
    from .weight_plots import plot_weights

    plots.update(plot_weights(plan, out))
    return {title: str(path) for title, path in plots.items()}


def run_experiment(plan: ExperimentPlan, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the plan; returns the report (also written to `report.json` / `report.md`)."""
    check_output_dir(plan.output_dir)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.output_dir / MARKER, {"config": plan.source, "plan": plan.raw})
    mlflow_on = _uses_mlflow(plan)
    with mlflow_parent_run(mlflow_on, f"experiment:{plan.output_dir.name}") as parent:
        records = train_stages(plan, say, mlflow_on)
        metrics = measure_stages(plan, records, say)
        plots = make_plots(plan, metrics)
        report = build_report(plan, records, metrics, plots)
        atomic_write_text(plan.output_dir / "report.json", json.dumps(report, indent=2, default=str) + "\n")
        atomic_write_text(plan.output_dir / "report.md", render_markdown(report))
        if parent is not None:
            _log_parent(plan.output_dir, report)
    return report


def _log_parent(out: Path, report: dict[str, Any]) -> None:
    import mlflow

    metrics = {}
    for name, run in report["runs"].items():
        held = run["heldout"]
        for k, ce in enumerate(held.get("ce_per_head", [])):
            metrics[f"{name}.heldout_ce_head_{k}"] = ce
        for k, v in (held.get("pass_at_k") or {}).items():
            metrics[f"{name}.{k.replace('@', '_at_')}"] = v
        for key in ("auroc", "tokens_per_forward"):
            if held.get(key) is not None:
                metrics[f"{name}.{key}"] = held[key]
    mlflow.log_metrics(metrics)
    for name in ("report.md", "report.json", *(Path(p).name for p in report["plots"].values())):
        mlflow.log_artifact(str(out / name))
