"""`WeightedMTPTrainer`: the weighted MTP loss of docs/design.md §4.1 on top of `transformers.Trainer`.

A stage subclasses it and overrides `token_weights` (which targets count and how much), and, if it trains
more than the heads, `auxiliary_loss` (e.g. the value loss) or `stage_loss` (the whole loss, e.g. the
critic's). Every term is normalised by counts of the whole gradient-accumulation window across all
processes (`window_counts`), so accumulation and data parallelism equal one large batch.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..data.packing import EXAMPLE_LENGTHS, PACKED_INPUTS, is_packed, padded_view, unpack
from ..data.sampling import order_indices
from ..losses import mtp_target_mask, resolve_head_weights, weighted_mtp_loss
from . import components
from .fsdp import Fsdp2TrainerMixin
from .head_warmup import HeadWarmupMixin
from .outputs import FinalFolderPush
from .recipe import trained_head_weights
from .tokens import TokenCountMixin

BATCH_EXTRAS = ("reward", "difficulty", "ref_token_losses", "row_id", EXAMPLE_LENGTHS)
STAGE_STATE_FILE = "wmtp_stage_state.json"


class _StageStateCallback(TrainerCallback):
    """Calls the trainer's `on_optimizer_step_end` and saves its `stage_state` into every checkpoint."""

    def __init__(self, trainer: WeightedMTPTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.on_optimizer_step_end()

    def on_save(self, args, state, control, **kwargs):
        extra = self.trainer.stage_state()
        if extra and state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / STAGE_STATE_FILE).write_text(json.dumps(extra), encoding="utf-8")


class StageHooks:
    """How a stage gets its model and data; the CLI calls these before the trainer exists."""

    sample_order_name: str = "correct"  # the stage's row order, a key of wmtp_hf.data.sampling.ORDERS

    @classmethod
    def resolve_model_path(cls, config: Any) -> str:
        """The model folder or Hub id to start from (where the micro preset goes when none is given)."""
        return components.resolve_model_path(config)

    @classmethod
    def start_tokenizer(cls, config: Any, path: str) -> Any:
        """The starting model's tokenizer (built in memory while the preset is not on disk yet)."""
        return components.start_tokenizer(config, path)

    @classmethod
    def build_preset(cls, config: Any, path: str, tokenizer: Any) -> None:
        """Write the micro preset to `path` when it is the starting model and not built yet."""
        components.build_preset(config, path, tokenizer)

    @classmethod
    def load_model(cls, config: Any, path: str, tokenizer: Any) -> Any:
        """The model to train, checked against the stage's needs."""
        return components.load_model(config, path, tokenizer)

    @classmethod
    def sample_order(cls, config: Any, dataset: Any) -> Any:
        """Row order of the training data (docs/design.md §3.4): the order `sample_order_name`."""
        return order_indices(cls.sample_order_name, dataset, n_samples=config.n_samples, seed=config.seed)

    @classmethod
    def build_eval_dataset(cls, config: Any, tokenizer: Any) -> Any:
        """Held-out rows for `Trainer.evaluate`, or None when the stage does not evaluate."""
        return None

    @classmethod
    def lora_scope(cls, config: Any, model: Any) -> tuple[str, ...]:
        """Module-name prefixes whose projections get LoRA adapters with `use_peft` (default: every block)."""
        return ("",)

    @classmethod
    def prepare_data(
        cls, config: Any, tokenizer: Any, train_dataset: Any, dry_run: bool = False
    ) -> tuple[Any, dict[str, Any]]:
        """Last checks and additions to the training rows before the model loads; returns the rows and
        extra keyword arguments for the trainer (`dry_run`: check only, compute nothing expensive)."""
        return train_dataset, {}


def forward_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The batch entries a model's forward takes; a packed batch (`data/packing.py`) runs without a cache,
    the condition under which transformers keeps attention inside each example."""
    batch = inputs.get(PACKED_INPUTS, inputs)
    out = {k: v for k, v in batch.items() if k not in BATCH_EXTRAS}
    if is_packed(batch):
        out["use_cache"] = False
    return out


def unpack_outputs(outputs: Any, inputs: dict[str, Any]) -> Any:
    """Model outputs of a packed batch with their per-token fields (`token_losses`, `value`) in the padded
    layout `[B, W, ...]` (`data.packing.padded_view`); a padded batch's outputs as they are."""
    batch = inputs.get(PACKED_INPUTS, inputs)
    if not is_packed(batch):
        return outputs
    for name in ("token_losses", "value"):
        if getattr(outputs, name, None) is not None:
            setattr(outputs, name, unpack(getattr(outputs, name), batch[EXAMPLE_LENGTHS]))
    return outputs


class WeightedMTPTrainer(
    StageHooks, HeadWarmupMixin, FinalFolderPush, Fsdp2TrainerMixin, TokenCountMixin, Trainer
):
    """Trains a `WmtpForMultiTokenPrediction` on `sum_k alpha_k sum_t w_k(t) m_k(t) CE_k(t) / N_k`.

    With `packing` the model runs on the packed row and every stage computes on the padded view of the
    batch (`data/packing.py`): `window_counts`, `token_weights`, `policy_mask` and `auxiliary_loss` see
    `[B, W]` tensors and `[B, W, ...]` outputs exactly as without packing.
    """

    # compute_loss already divides by the accumulation window's counts; Trainer must not rescale.
    loss_is_scaled_for_ga = True
    # Whether the stage's loss uses the value head; if not, it is frozen (so DDP needs no unused-parameter scan).
    trains_value_head = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # so Trainer hands `num_items_in_batch` to compute_loss
        unwrapped = self.accelerator.unwrap_model(self.model)
        self.n_heads = unwrapped.config.n_future_tokens
        if getattr(unwrapped, "value_head", None) is not None and not self.trains_value_head:
            unwrapped.value_head.requires_grad_(False)
        self.head_weights = resolve_head_weights(trained_head_weights(self.args, self.n_heads), self.n_heads)
        self._sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        self._extremes: dict[str, float] = {}
        self._last_log_time = time.perf_counter()
        # First in line, so the stage state is on disk before any user `on_save` callback runs.
        self.callback_handler.callbacks.insert(0, _StageStateCallback(self))
        self.setup_head_warmup()

    # ------------------------------------------------------------------ stage hooks

    def token_weights(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any, target_mask: torch.Tensor
    ) -> torch.Tensor | None:
        """`[B, T, n]` detached weights `w_k(t)`, or None for uniform weights (baseline)."""
        return None

    def policy_mask(self, inputs: dict[str, torch.Tensor], target_mask: torch.Tensor) -> torch.Tensor:
        """The targets the MTP loss covers (`m_k(t)`); a stage may restrict it (e.g. to correct rows)."""
        return target_mask

    def auxiliary_loss(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any, counts: dict[str, Any]
    ) -> torch.Tensor | None:
        """An extra loss term added to the weighted MTP loss (e.g. the verifiable stage's value loss)."""
        return None

    def window_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalisers of one micro-batch; summed over the accumulation window and all processes.

        `targets`: `[n]` response targets per head of the MTP loss (`sum_t m_k(t)`, within `policy_mask`).
        """
        labels = batch["labels"]
        return {"targets": self.policy_mask(batch, mtp_target_mask(labels, self.n_heads)).sum(dim=(0, 1))}

    def model_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch entries the model's forward takes (the packed row of a packed batch)."""
        return forward_inputs(inputs)

    def on_optimizer_step_end(self) -> None:
        """Called once after every optimizer step (e.g. to update running statistics)."""

    def stage_state(self) -> dict[str, Any]:
        """Extra state saved in checkpoints (JSON-able) so resume is exact; `{}` when there is none."""
        return {}

    def load_stage_state(self, state: dict[str, Any]) -> None:
        """Restore what `stage_state` returned."""

    # ------------------------------------------------------------------ loss

    def _get_num_items_in_batch(
        self, batch_samples: list, device: torch.device
    ) -> dict[str, torch.Tensor] | None:
        """`window_counts` summed over the accumulation window and over processes (one all-reduce)."""
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        totals: dict[str, torch.Tensor] = {}
        for batch in batch_samples:
            for name, value in self.window_counts(padded_view(batch)).items():
                value = torch.as_tensor(value, dtype=torch.float64).cpu()
                totals[name] = totals[name] + value if name in totals else value
        names = list(totals)
        flat = torch.cat([totals[n].reshape(-1) for n in names]).to(device)
        if self.args.world_size > 1:
            flat = self.accelerator.reduce(flat, reduction="sum")
        parts = flat.split([totals[n].numel() for n in names])
        return {n: part.reshape(totals[n].shape) for n, part in zip(names, parts, strict=True)}

    def stage_loss(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], counts: dict[str, Any]
    ) -> tuple[torch.Tensor, Any]:
        """The stage's loss of one micro-batch, normalised by the window `counts`, and the model outputs."""
        outputs = model(**self.model_inputs(inputs))
        inputs = padded_view(inputs)
        outputs = unpack_outputs(outputs, inputs)
        labels = inputs["labels"]
        target_mask = mtp_target_mask(labels, self.n_heads)
        weights = self.token_weights(model, inputs, outputs, target_mask)
        loss = weighted_mtp_loss(
            outputs.token_losses,
            self.policy_mask(inputs, target_mask),
            weights,
            self.head_weights,
            counts["targets"] if counts is not None else None,
        )
        extra = self.auxiliary_loss(model, inputs, outputs, counts)
        if extra is not None:
            loss = loss + extra
        self._record_head_metrics(
            outputs.token_losses.detach(), self.policy_mask(inputs, target_mask), inputs.get("attention_mask")
        )
        return loss, outputs

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: dict[str, torch.Tensor] | None = None,
    ):
        counts = num_items_in_batch
        if counts is None:  # e.g. `Trainer.evaluate`: this batch alone
            counts = self._get_num_items_in_batch([inputs], inputs["input_ids"].device)
        loss, outputs = self.stage_loss(model, inputs, counts)
        if num_items_in_batch is not None and self.args.world_size > 1:
            # Each process normalised by the global count; DDP/FSDP average gradients over processes.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """`Trainer.train`, restoring the stage's own state (`stage_state`) from the checkpoint too."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, str) and (Path(checkpoint) / STAGE_STATE_FILE).is_file():
            self.load_stage_state(
                json.loads((Path(checkpoint) / STAGE_STATE_FILE).read_text(encoding="utf-8"))
            )
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ------------------------------------------------------------------ metrics

    def record(self, name: str, value: torch.Tensor | float, weight: float = 1.0) -> None:
        """Accumulate a metric; it is logged as the weighted mean since the last log.

        Call it on every micro-batch (weight 0, or a non-finite value, adds nothing) so every process logs
        the same metric names: the log all-reduces them in one tensor.
        """
        if not self.model.training:
            return
        value, weight = float(value), float(weight)
        usable = weight > 0 and math.isfinite(value)
        self._sums[f"{name}/sum"] += value * weight if usable else 0.0
        self._sums[f"{name}/n"] += weight if usable else 0.0

    def record_extreme(self, name: str, value: torch.Tensor | float, mode: str) -> None:
        """Track the minimum (`mode="min"`) or maximum (`"max"`) of a metric since the last log."""
        if not self.model.training:
            return
        value = float(value)
        old = self._extremes.get(name)
        if old is None or (value < old if mode == "min" else value > old):
            self._extremes[name] = value

    def record_stats(self, stats: dict[str, float], count: float) -> None:
        """Record a `weighting.tensor_stats`-style dict: `*_min` / `*_max` as extremes, the rest as means."""
        for key, value in stats.items():
            if key.endswith("_min"):
                self.record_extreme(key, value, "min")
            elif key.endswith("_max"):
                self.record_extreme(key, value, "max")
            else:
                self.record(key, value, count)

    def _record_head_metrics(
        self, token_losses: torch.Tensor, target_mask: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> None:
        if not self.model.training:
            return
        sums = (token_losses * target_mask).sum(dim=(0, 1)).double().cpu()
        counts = target_mask.sum(dim=(0, 1)).double().cpu()
        for k in range(self.n_heads):
            self._sums[f"ce_head_{k}/sum"] += sums[k]
            self._sums[f"ce_head_{k}/n"] += counts[k]
        self.record_tokens(attention_mask, token_losses.shape[:2])

    def record_tokens(self, attention_mask: torch.Tensor | None, shape: tuple[int, ...]) -> None:
        """Count this micro-batch's tokens for `tokens_per_second`."""
        if self.model.training:
            tokens = attention_mask.sum() if attention_mask is not None else shape[0] * shape[1]
            self._sums["tokens"] += float(tokens)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._sums:
            keys = sorted(self._sums)
            values = torch.stack([torch.as_tensor(self._sums[k], dtype=torch.float64) for k in keys])
            if self.args.world_size > 1:
                values = self.accelerator.reduce(values.to(self.args.device), reduction="sum").cpu()
            totals = dict(zip(keys, values.tolist(), strict=True))
            now = time.perf_counter()
            logs["tokens_per_second"] = round(
                totals.pop("tokens", 0.0) / max(now - self._last_log_time, 1e-9), 1
            )
            self._last_log_time = now
            for key in keys:
                if key.endswith("/sum"):
                    name = key[: -len("/sum")]
                    count = totals[f"{name}/n"]
                    if count > 0:
                        logs[name] = round(totals[key] / count, 6)
                    if name.startswith("ce_head_"):
                        logs[f"tokens_{name[3:]}"] = int(count)
            self._sums.clear()
        if "loss" in logs and self._extremes:
            logs.update(self._reduce_extremes())
            self._extremes.clear()
        super().log(logs, start_time)

    def _reduce_extremes(self) -> dict[str, float]:
        names = sorted(self._extremes)
        values = torch.tensor([self._extremes[n] for n in names], dtype=torch.float64)
        if self.args.world_size > 1:  # min via max of negated values; names are the same on every process
            signs = torch.tensor([-1.0 if n.endswith("_min") else 1.0 for n in names], dtype=torch.float64)
            values = (
                self.accelerator.reduce((values * signs).to(self.args.device), reduction="max").cpu() * signs
            )
        return {n: round(v, 6) for n, v in zip(names, values.tolist(), strict=True)}
