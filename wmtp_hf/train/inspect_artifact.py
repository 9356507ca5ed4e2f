"""The weighted stages' token-weight page, logged to MLflow at the end of training (`inspect/` artifacts).

The page of `python -m wmtp_hf.inspect` for a few held-out rows, computed with the trainer's own model, stage
options, running normaliser (verifiable) and reference (rho1). Only when MLflow reporting is on; a problem with
the held-out data is a warning, never a failed run.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..inspection import Inspection, inspect_examples, select_rows, tokenized_stream, write_outputs
from .components import held_out_split, load_rows, resolve_training_format
from .fsdp import gathered_root

logger = logging.getLogger(__name__)

INSPECTED_ROWS = 3
ARTIFACT_DIR = "inspect"


class InspectionArtifactCallback(TrainerCallback):
    """Runs before MLflow's own `on_train_end` (which ends the run): insert it first in the callback list.

    Every process computes the page (the forward may need all of them, e.g. FSDP); process zero logs it.
    """

    def __init__(self, trainer: Any, uses_reference: bool = False, n_rows: int = INSPECTED_ROWS) -> None:
        self.trainer = trainer
        self.uses_reference = uses_reference
        self.n_rows = n_rows

    def rows(self, args: Any) -> tuple[list[dict[str, Any]], str]:
        """`n_rows` held-out rows, or training rows when there is no held-out split (or, for a cached
        reference, when the held-out rows lack `ref_token_losses`)."""
        tokenizer = self.trainer.processing_class
        needs_column = self.uses_reference and getattr(self.trainer, "ref_model", None) is None
        split = held_out_split(args)
        if split is not None:
            fmt = resolve_training_format(args, tokenizer)
            rows = select_rows(
                tokenized_stream(load_rows(args, split), tokenizer, args.max_length, fmt), self.n_rows
            )
            if rows and (not needs_column or "ref_token_losses" in rows[0]):
                return rows, split
        train = self.trainer.train_dataset
        rows = select_rows(tokenized_stream(train, tokenizer, args.max_length), self.n_rows)
        return rows, f"{args.dataset_split} (training rows: no held-out rows for this view)"

    def build(self, args: Any, step: int) -> Inspection:
        """The inspection of `rows()` with the trainer's model, options, normaliser and reference."""
        rows, split = self.rows(args)
        if not rows:
            raise ValueError("no rows to inspect")
        reference = getattr(self.trainer, "ref_model", None) if self.uses_reference else None
        # The inspection calls submodules directly: under FSDP2 the root units' parameters are gathered first.
        with gathered_root(self.trainer.model), gathered_root(reference):
            return inspect_examples(
                self.trainer.model,
                self.trainer.processing_class,
                rows,
                reference=reference,
                stage_config=args,
                ema=getattr(self.trainer, "ema", None),
                batch_size=args.per_device_eval_batch_size,
                labels={
                    "model": f"{args.stage} stage, step {step}",
                    "dataset": str(args.dataset),
                    "split": split,
                },
            )

    def on_train_end(self, args, state, control, **kwargs):
        if "mlflow" not in (args.report_to or []):
            return
        try:
            inspection = self.build(args, state.global_step)
        except Exception as err:  # an optional artifact must never cost the trained model (saved after this)
            logger.warning("token-weight page not logged to MLflow: %s: %s", type(err).__name__, err)
            return
        if not state.is_world_process_zero:
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_outputs(inspection, Path(tmp) / ARTIFACT_DIR)
            mlflow.log_artifacts(str(folder), ARTIFACT_DIR)
