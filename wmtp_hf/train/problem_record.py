"""The run's `trained_problems.json` (wmtp_hf.trained_problems): built from the stage's selected training
rows and the starting model's record, written into every checkpoint and the final folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..trained_problems import TrainedProblems, TrainedProblemsError, build_record, read_record, write_record
from .config import ConfigError, WmtpTrainingConfig


def run_record(config: WmtpTrainingConfig, stage: str, model_path: str, train_rows: Any) -> TrainedProblems:
    """The problems this run trains on (the stage's selected rows, every one counted even if `max_steps`
    ends the run before it is reached) plus those of the model it starts from (`model_path`)."""
    columns = train_rows.column_names
    ids = list(train_rows["problem_id"]) if "problem_id" in columns else []
    sources = list(train_rows["source"]) if "problem_id" in columns and "source" in columns else None
    try:
        parent = read_record(model_path)
    except TrainedProblemsError as err:
        raise ConfigError(f"model_name_or_path '{model_path}': {err}") from None
    run = {
        "stage": stage,
        "dataset": config.dataset,
        "dataset_path": config.dataset_path,
        "split": config.dataset_split,
        "start_model": model_path,
        "rows": len(train_rows),
    }
    if "problem_id" not in columns:
        run["note"] = "the training rows have no problem_id column: their problems are unknown"
    return build_record(ids, sources, run, parent)


class TrainedProblemsCallback(TrainerCallback):
    """Writes the run's record into each `checkpoint-N` folder as it is saved (main process only)."""

    def __init__(self, record: TrainedProblems) -> None:
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_record(folder, self.record)
