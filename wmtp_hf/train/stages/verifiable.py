"""`verifiable`: MTP loss weighted by the critic's TD errors (docs/design.md §4.3), the critic still learning.

From the detached values `V_j` of the model's own value head: `delta_j = gamma V_j - V_{j-1}` (last response
token: `R - V_{T-1}`), advantage `A = delta` or GAE, optional normalisation, and weight
`w_j = clip(exp(A_j / beta), w_min, w_max)`; head k's target `x_{t+1+k}` gets that token's weight. Total
loss = weighted MTP loss (correct rows by default) + `value_coef` x value loss (every row).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch

from ...data.sampling import curriculum_indices, read_metadata
from ...losses import target_weights_per_head, value_regression_loss
from ...weighting import (
    EmaNormalizer,
    explained_variance,
    gae,
    mc_returns,
    normalize_advantages,
    response_token_mask,
    td_errors,
    td_weights,
    tensor_stats,
    value_positions,
    weight_stats,
)
from ..components import load_model
from ..config import ConfigError, WmtpTrainingConfig, _help
from ..inspect_artifact import InspectionArtifactCallback
from ..trainer import WeightedMTPTrainer

CRITIC_STAGES = ("critic", "verifiable")


@dataclass
class VerifiableConfig(WmtpTrainingConfig):
    """`verifiable`: TD-error token weights from the model's trained value head."""

    stage: typing.ClassVar[str] = "verifiable"
    model_made_by: typing.ClassVar[dict[str, str]] = {
        "runs/critic/final": "python -m wmtp_hf.train --stage critic"
    }

    advantage: str = field(
        default="td", metadata=_help("td (A = delta) or gae (A = sum_l (gamma lam)^l delta).")
    )
    gamma: float = field(default=1.0, metadata=_help("Discount of TD errors and returns."))
    lam: float = field(default=0.95, metadata=_help("GAE lambda (advantage: gae)."))
    normalize: str = field(
        default="none",
        metadata=_help(
            "Advantage normalisation: none, zscore (this micro-batch, all processes) or ema (running "
            "mean/std updated once per optimizer step, all-reduced, saved in checkpoints)."
        ),
    )
    ema_momentum: float = field(default=0.1, metadata=_help("Momentum of the ema normalisation."))
    ema_warmup_steps: int = field(
        default=10, metadata=_help("Steps over which the ema averages its first statistics.")
    )
    beta: float = field(default=0.9, metadata=_help("Temperature of w = exp(A / beta)."))
    weight_min: float = field(default=0.1, metadata=_help("Lower clip of the token weights."))
    weight_max: float = field(default=5.0, metadata=_help("Upper clip of the token weights."))
    value_coef: float = field(
        default=0.5, metadata=_help("Weight of the value loss (the critic keeps learning).")
    )
    policy_on: str = field(
        default="correct",
        metadata=_help(
            "Rows the MTP loss imitates: correct (default) or all (incorrect ones down-weighted)."
        ),
    )

    model_name_or_path: str | None = field(
        default="runs/critic/final",
        metadata=_help("A critic stage output (a WMTP model with a trained value head)."),
    )
    output_dir: str | None = field(
        default="runs/verifiable", metadata=_help("Checkpoints and the final model.")
    )

    def __post_init__(self) -> None:
        choices = {
            "advantage": ("td", "gae"),
            "normalize": ("none", "zscore", "ema"),
            "policy_on": ("correct", "all"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma: expected a number in (0, 1], got {self.gamma}")
        if not 0 <= self.lam <= 1:
            raise ConfigError(f"lam: expected a number in [0, 1], got {self.lam}")
        if self.beta <= 0:
            raise ConfigError(f"beta: expected a positive number, got {self.beta}")
        if not 0 <= self.weight_min <= self.weight_max:
            raise ConfigError(
                f"weight_min, weight_max: expected 0 <= weight_min <= weight_max, got {self.weight_min}, {self.weight_max}"
            )
        if self.value_coef < 0:
            raise ConfigError(f"value_coef: expected >= 0, got {self.value_coef}")
        if not 0 < self.ema_momentum <= 1:
            raise ConfigError(f"ema_momentum: expected a number in (0, 1], got {self.ema_momentum}")
        super().__post_init__()


def td_token_weights(
    values: torch.Tensor,
    labels: torch.Tensor,
    rewards: torch.Tensor,
    options: Any,
    ema: EmaNormalizer | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`([B, T] TD errors, [B, T] token weights)` of the verifiable stage, from the value head's `values`.

    `options` carries the stage's `advantage`, `gamma`, `lam`, `normalize`, `beta`, `weight_min` and
    `weight_max` (a `VerifiableConfig`, or any object with them); `ema` is the running normaliser of
    `normalize: ema`. The stage's loss and `wmtp_hf.inspection` both call this, so the page shows the
    weights training uses.
    """
    values = values.detach().float()
    vmask, tmask = value_positions(labels), response_token_mask(labels)
    deltas = td_errors(values, rewards, vmask, options.gamma)
    adv = deltas if options.advantage == "td" else gae(deltas, tmask, options.gamma, options.lam)
    adv = normalize_advantages(adv, tmask, options.normalize, ema)
    weights = td_weights(adv, options.beta, options.weight_min, options.weight_max, tmask)
    return deltas, weights


def nonempty_stats(stats: dict[str, float], prefix: str) -> dict[str, float]:
    """`stats`, or neutral extremes when a batch had no token (so every process logs the same keys)."""
    return stats or {f"{prefix}_min": math.inf, f"{prefix}_max": -math.inf}


class VerifiableTrainer(WeightedMTPTrainer):
    """TD-error weighted MTP loss plus the continuing value loss; see the module docstring."""

    trains_value_head = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ema = EmaNormalizer(self.args.ema_momentum, self.args.ema_warmup_steps)
        self.callback_handler.callbacks.insert(0, InspectionArtifactCallback(self))

    @classmethod
    def load_model(cls, config: VerifiableConfig, path: str, tokenizer: Any) -> Any:
        model = load_model(config, path, tokenizer)
        if model.value_head is None or not model.config.use_value_head:
            raise ConfigError(
                f"model_name_or_path '{path}': has no value head; the verifiable stage starts from a critic "
                "output (python -m wmtp_hf.train --stage critic)"
            )
        if model.config.value_head_stage not in CRITIC_STAGES:
            raise ConfigError(
                f"model_name_or_path '{path}': its value head was not trained by a critic stage "
                f"(value_head_stage={model.config.value_head_stage!r}); run python -m wmtp_hf.train --stage critic first"
            )
        model.config.value_head_stage = "verifiable"
        return model

    @classmethod
    def sample_order(cls, config: VerifiableConfig, dataset: datasets.Dataset) -> np.ndarray:
        """The difficulty curriculum over the whole run (`n_samples` defaults to the rows training reads)."""
        is_correct, difficulty = read_metadata(dataset)
        n = config.n_samples
        if n is None:
            per_step = (
                config.per_device_train_batch_size * config.gradient_accumulation_steps * config.world_size
            )
            n = config.max_steps * per_step if config.max_steps > 0 else len(is_correct)
        return curriculum_indices(is_correct, difficulty, n, seed=config.seed)

    # ------------------------------------------------------------------ loss

    def policy_mask(self, inputs: dict[str, torch.Tensor], target_mask: torch.Tensor) -> torch.Tensor:
        if self.args.policy_on == "all":
            return target_mask
        return target_mask & (inputs["reward"] > 0.5)[:, None, None].to(target_mask.device)

    def window_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        counts = super().window_counts(batch)
        counts["value_positions"] = value_positions(batch["labels"]).sum()
        return counts

    def token_weights(self, model, inputs, outputs, target_mask):
        labels = inputs["labels"]
        deltas, weights = td_token_weights(outputs.value, labels, inputs["reward"], self.args, self.ema)
        tmask = response_token_mask(labels)
        count = float(tmask.sum())
        self.record_stats(nonempty_stats(tensor_stats(deltas, tmask, "td"), "td"), count)
        stats = weight_stats(weights, tmask, self.args.weight_min, self.args.weight_max)
        self.record_stats(nonempty_stats(stats, "weight"), count)
        return target_weights_per_head(weights, self.n_heads)

    def auxiliary_loss(self, model, inputs, outputs, counts):
        labels, rewards = inputs["labels"], inputs["reward"]
        mask = value_positions(labels)
        values = outputs.value.float()
        targets = mc_returns(rewards, mask, self.args.gamma)
        count = counts["value_positions"] if counts is not None else None
        loss = value_regression_loss(values, targets, mask, "mse", count)
        self.record(
            "value_loss", value_regression_loss(values.detach(), targets, mask, "mse"), float(mask.sum())
        )
        self.record(
            "explained_variance", explained_variance(values.detach(), targets, mask), float(mask.sum())
        )
        return self.args.value_coef * loss

    # ------------------------------------------------------------------ running state

    def on_optimizer_step_end(self) -> None:
        if self.args.normalize == "ema":
            self.ema.step()

    def stage_state(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict()} if self.args.normalize == "ema" else {}

    def load_stage_state(self, state: dict[str, Any]) -> None:
        if "ema" in state:
            self.ema.load_state_dict(state["ema"])
