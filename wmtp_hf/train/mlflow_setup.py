"""MLflow wiring: where runs go, and the resolved config logged as an artifact."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

DEFAULT_EXPERIMENT = "wmtp_hf"


def configure_mlflow(main_process: bool = True) -> str:
    """Use `MLFLOW_TRACKING_URI` when set, else a SQLite store `./mlflow.db` in the working directory.
    Only the main process (the one that logs) opens the store: two processes creating one SQLite store
    at once collide."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    import mlflow

    # transformers' MLflowCallback keeps a URI set earlier in this process, and mlflow the experiment id it
    # used there; make the current store and its experiment win.
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    if main_process:
        mlflow.set_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    return os.environ["MLFLOW_TRACKING_URI"]


class ResolvedConfigCallback(TrainerCallback):
    """Writes the resolved config next to the checkpoints and, when MLflow is active, logs it as artifacts."""

    def __init__(self, config: dict[str, Any], data_report: dict[str, Any]) -> None:
        self.config = config
        self.data_report = data_report

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        text = yaml.safe_dump(self.config, sort_keys=False)
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "resolved_config.yaml").write_text(text, encoding="utf-8")
        if "mlflow" not in (args.report_to or []):
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        mlflow.log_text(text, "config/resolved_config.yaml")
        mlflow.log_text(json.dumps(self.data_report, indent=2), "config/data_report.json")
        mlflow.set_tags(
            {"wmtp.stage": self.config.get("stage", ""), "wmtp.dataset": self.config.get("dataset", "")}
        )
