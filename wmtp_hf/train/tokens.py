"""Token accounting of a run: non-padding and padding tokens of every training batch, for `run_summary.json`.

transformers' `num_input_tokens_seen` counts non-padding tokens from the attention mask, or, without one,
tokens that differ from the pad id; a packed batch has no mask and its EOS tokens may equal the pad id.
`TokenCountMixin` counts both numbers from the batch layout instead (`data.packing.batch_token_counts`),
summed over all processes, and keeps `num_input_tokens_seen` on the same count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..data.packing import batch_token_counts
from ..fileio import atomic_write_text

TOKENS_FILE = "wmtp_tokens.json"


class _SaveTokenCounts(TrainerCallback):
    """Writes the run's token counts so far into every checkpoint (a resumed run continues them)."""

    def __init__(self, trainer: TokenCountMixin) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            atomic_write_text(folder / TOKENS_FILE, json.dumps(self.trainer.token_totals()))


class TokenCountMixin:
    """For a `transformers.Trainer` (put it before `Trainer` in the bases): `token_totals()` is
    `{"non_padding": N, "padding": M}` over every training micro-batch of the run, all processes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._token_totals = [0, 0]
        self.add_callback(_SaveTokenCounts(self))

    def token_totals(self) -> dict[str, int]:
        return {"non_padding": self._token_totals[0], "padding": self._token_totals[1]}

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        real, pad = batch_token_counts(inputs)
        counts = torch.tensor([real, pad], dtype=torch.int64, device=self.args.device)
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts).reshape(-1, 2).sum(0)
        real, pad = counts.tolist()
        self._token_totals = [self._token_totals[0] + real, self._token_totals[1] + pad]
        mode = self.args.include_num_input_tokens_seen
        if mode not in ("no", False):
            self.state.num_input_tokens_seen += real if mode == "non_padding" else real + pad

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """`Trainer.train`; a resumed run starts from the checkpoint's token counts."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        saved = Path(checkpoint) / TOKENS_FILE if isinstance(checkpoint, str) else None
        if saved is not None and saved.is_file():
            counts = json.loads(saved.read_text(encoding="utf-8"))
            self._token_totals = [int(counts["non_padding"]), int(counts["padding"])]
        return super().train(resume_from_checkpoint, *args, **kwargs)
