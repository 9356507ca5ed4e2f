"""`WeightedMTPTrainer`: the weighted MTP loss of SPEC §4.1 on top of `transformers.Trainer`.

A stage subclasses it and overrides `token_weights` (and, if it trains more than the heads,
`auxiliary_loss`). Normalisation uses per-head target counts of the whole gradient-accumulation
window across all processes, so accumulation and data parallelism equal one large batch.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer

from ..losses import head_target_counts, mtp_target_mask, resolve_head_weights, weighted_mtp_loss

BATCH_EXTRAS = ("reward", "difficulty")


class WeightedMTPTrainer(Trainer):
    """Trains a `WmtpForMultiTokenPrediction` on `sum_k alpha_k sum_t w_k(t) m_k(t) CE_k(t) / N_k`."""

    # compute_loss already divides by the accumulation window's token counts; Trainer must not rescale.
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
        self.head_weights = resolve_head_weights(getattr(self.args, "head_weights", None), self.n_heads)
        self._sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        self._last_log_time = time.perf_counter()

    # ------------------------------------------------------------------ stage hooks

    def token_weights(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any, target_mask: torch.Tensor
    ) -> torch.Tensor | None:
        """`[B, T, n]` detached weights `w_k(t)`, or None for uniform weights (baseline)."""
        return None

    def auxiliary_loss(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any
    ) -> torch.Tensor | None:
        """An extra loss term added to the weighted MTP loss (e.g. the critic's value loss)."""
        return None

    def model_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch entries the model's forward takes."""
        return {k: v for k, v in inputs.items() if k not in BATCH_EXTRAS}

    # ------------------------------------------------------------------ loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """`[n]` per-head target counts over the accumulation window, summed over processes."""
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        counts = sum(head_target_counts(batch["labels"], self.n_heads) for batch in batch_samples)
        counts = counts.to(device)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return counts

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        labels = inputs["labels"]
        outputs = model(**self.model_inputs(inputs))
        target_mask = mtp_target_mask(labels, self.n_heads)
        weights = self.token_weights(model, inputs, outputs, target_mask)
        loss = weighted_mtp_loss(
            outputs.token_losses, target_mask, weights, self.head_weights, num_items_in_batch
        )
        if num_items_in_batch is not None and self.args.world_size > 1:
            # Each process normalised by the global count; DDP/FSDP average gradients over processes.
            loss = loss * self.accelerator.num_processes
        extra = self.auxiliary_loss(model, inputs, outputs)
        if extra is not None:
            loss = loss + extra
        self._record_head_metrics(outputs.token_losses.detach(), target_mask, inputs.get("attention_mask"))
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------ metrics

    def record(self, name: str, value: torch.Tensor | float, weight: float = 1.0) -> None:
        """Accumulate a metric; it is logged as the weighted mean since the last log."""
        self._sums[f"{name}/sum"] += float(value) * weight
        self._sums[f"{name}/n"] += weight

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
        tokens = (
            attention_mask.sum()
            if attention_mask is not None
            else token_losses.shape[0] * token_losses.shape[1]
        )
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
        super().log(logs, start_time)


class BaselineTrainer(WeightedMTPTrainer):
    """`baseline`: every head, uniform token weights (SPEC §4.1 with w = 1)."""
