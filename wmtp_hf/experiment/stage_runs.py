"""Run the experiment's stages in order (reusing finished ones), measure every final model, write the report.

A stage is reused when its folder holds a final model and a record (`experiment_stage.json`) whose
fingerprint equals its resolved config's, and no stage before it (of the same seed) was retrained;
otherwise its folder is cleared and it trains again, and so does every stage after it of that seed. Held-out measurements are cached the same
way (keyed by the stage's fingerprint and the evaluation options).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..data.io import atomic_write_json
from ..micro import is_model_dir
from ..train.config import ConfigError
from .plan import ExperimentPlan, StagePlan

MARKER = "experiment.json"
STAGE_RECORD = "experiment_stage.json"
MEASURE_RECORD = "measurements.json"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_output_dir(output_dir: Path) -> None:
    """An existing `--output-dir` must be an earlier experiment's (so reuse is safe), or empty."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output-dir '{output_dir}': exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / MARKER).is_file():
        raise ConfigError(
            f"--output-dir '{output_dir}': exists, is not empty and holds no {MARKER} (not an experiment "
            "folder); choose another folder or remove it"
        )


@contextlib.contextmanager
def mlflow_parent_run(enabled: bool, name: str) -> Iterator[Any]:
    """One MLflow parent run for the whole experiment (None when MLflow is off)."""
    if not enabled:
        yield None
        return
    from ..train.mlflow_setup import configure_mlflow

    configure_mlflow()
    import mlflow

    with mlflow.start_run(run_name=name) as run:
        yield run


@contextlib.contextmanager
def mlflow_stage_run(enabled: bool, run: StagePlan, reused: bool) -> Iterator[None]:
    """A nested run for one stage. The stage's Trainer finds it active and logs into it; since the
    Trainer did not start it, transformers' MLflowCallback never ends it (nor, later, the parent)."""
    if not enabled:
        yield
        return
    import mlflow

    with mlflow.start_run(run_name=run.name, nested=True):
        mlflow.set_tags({"wmtp.stage": run.stage, "wmtp.run": run.name, "wmtp.reused": str(reused).lower()})
        yield


def has_final_model(final_dir: Path) -> bool:
    """A full model or a LoRA adapter (`use_peft`) was saved there."""
    return is_model_dir(final_dir) or (final_dir / "adapter_model.safetensors").is_file()


def stage_is_reusable(plan: StagePlan) -> dict[str, Any] | None:
    record = read_json(plan.output_dir / STAGE_RECORD)
    if record and record.get("fingerprint") == plan.fingerprint and has_final_model(plan.final_dir):
        return record
    return None


def train_stages(
    plan: ExperimentPlan, say: Callable[[str], None], mlflow_on: bool
) -> dict[str, dict[str, Any]]:
    """Train (or reuse) every run in order; returns each run's record."""
    from ..train.run_stage import run as run_stage

    records: dict[str, dict[str, Any]] = {}
    retrain_rest, seed = False, None
    total = len(plan.stages)
    for i, stage in enumerate(plan.stages, start=1):
        if stage.output_dir.parent != seed:  # each seed's chain of runs is independent
            retrain_rest, seed = False, stage.output_dir.parent
        record = None if retrain_rest else stage_is_reusable(stage)
        if record is not None:
            say(f"[{i}/{total}] {stage.key}: reused (config unchanged) -> {stage.final_dir}")
            record = {**record, "reused": True}
            with mlflow_stage_run(mlflow_on, stage, reused=True):
                log_summary(mlflow_on, record.get("summary", {}))
        else:
            retrain_rest = True
            say(f"[{i}/{total}] {stage.key}: training {stage.config.max_steps} steps -> {stage.output_dir}")
            if stage.output_dir.exists():
                shutil.rmtree(stage.output_dir)
            with mlflow_stage_run(mlflow_on, stage, reused=False):
                summary = run_stage(stage.stage, stage.config)
            record = {"name": stage.name, "stage": stage.stage, "fingerprint": stage.fingerprint,
                      "summary": summary, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
            atomic_write_json(stage.output_dir / STAGE_RECORD, record)
            record = {**record, "reused": False}
        records[stage.key] = record
    return records


def log_summary(enabled: bool, summary: dict[str, Any]) -> None:
    """A reused stage's earlier summary (steps, runtime, final loss) as metrics of its nested run."""
    if enabled:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})


MEASURE_VERSION = 5  # bump when the measurements change, so cached ones are recomputed (5: a control's CE
# and pass@k on the clean held-out rows)


def measurement_key(stage: StagePlan, record: dict[str, Any], plan: ExperimentPlan) -> str:
    """Same stage config, same training run (its finish time), evaluation options and measurement code."""
    payload = json.dumps(
        [
            MEASURE_VERSION,
            stage.fingerprint,
            record.get("finished_at"),
            dataclasses.asdict(plan.evaluation),
            record.get("start", False),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def measure_stages(
    plan: ExperimentPlan, records: dict[str, dict[str, Any]], say: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Held-out measurements of every final model (cached per stage fingerprint + evaluation options)."""
    from .measure import measure_final_model

    results: dict[str, dict[str, Any]] = {}
    for stage in plan.stages:
        folder = plan.output_dir / "evaluation" / stage.key
        key = measurement_key(stage, records[stage.key], plan)
        cached = read_json(folder / MEASURE_RECORD)
        if cached and cached.get("key") == key:
            say(f"measure {stage.key}: reused")
            results[stage.key] = cached["metrics"]
            continue
        say(f"measure {stage.key}: held-out CE, value AUROC, pass@k")
        metrics = measure_final_model(plan, stage, folder)
        if plan.control is not None and stage.stage == "verifiable":
            from .control import planted_weight_means

            metrics["planted_weights"] = planted_weight_means(plan, stage, plan.evaluation.batch_size)
        atomic_write_json(folder / MEASURE_RECORD, {"key": key, "metrics": metrics})
        results[stage.key] = metrics
    results.update(measure_start(plan, records, say))
    return results


START = "start"  # the report's row of the model before any stage


def start_runs(plan: ExperimentPlan) -> list[StagePlan]:
    """Per seed, the run that starts from the experiment's `model:` (baseline, else rho1; none without
    either)."""
    return plan.runs_named("baseline") or plan.runs_named("rho1")


def start_key(stage: StagePlan) -> str:
    """`start`, or `seed_<s>/start` beside the seed's runs."""
    return str(Path(stage.key).parent / START) if Path(stage.key).parent != Path(".") else START


def measure_start(
    plan: ExperimentPlan, records: dict[str, dict[str, Any]], say: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """The start model of every seed measured like the final models (cached like them: keyed by the run
    that starts from it, its training, and the evaluation options)."""
    from .measure import measure_start_model

    results: dict[str, dict[str, Any]] = {}
    for stage in start_runs(plan):
        key_name = start_key(stage)
        folder = plan.output_dir / "evaluation" / key_name
        key = measurement_key(stage, {**records[stage.key], "start": True}, plan)
        cached = read_json(folder / MEASURE_RECORD)
        if cached and cached.get("key") == key:
            say(f"measure {key_name}: reused")
            results[key_name] = cached["metrics"]
            continue
        say(f"measure {key_name} (the model {stage.key} started from): held-out CE, value AUROC, pass@k")
        metrics = measure_start_model(plan, stage, folder)
        atomic_write_json(folder / MEASURE_RECORD, {"key": key, "metrics": metrics})
        results[key_name] = metrics
    return results
