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
from ...stats import explained_variance
from ...weighting import (
    EmaNormalizer,
    VerifiableWeighting,
    mc_returns,
    response_token_mask,
    td_token_weights,
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
        default=VerifiableWeighting.advantage,
        metadata=_help("td (A = delta) or gae (A = sum_l (gamma lam)^l delta)."),
    )
    gamma: float = field(
        default=VerifiableWeighting.gamma, metadata=_help("Discount of TD errors and returns.")
    )
    lam: float = field(default=VerifiableWeighting.lam, metadata=_help("GAE lambda (advantage: gae)."))
    normalize: str = field(
        default=VerifiableWeighting.normalize,
        metadata=_help(
            "Advantage normalisation: none, zscore (this micro-batch, all processes) or ema (running "
            "mean/std updated once per optimizer step, all-reduced, saved in checkpoints)."
        ),
    )
    ema_momentum: float = field(
        default=VerifiableWeighting.ema_momentum, metadata=_help("Momentum of the ema normalisation.")
    )
    ema_warmup_steps: int = field(
        default=VerifiableWeighting.ema_warmup_steps,
        metadata=_help("Steps over which the ema averages its first statistics."),
    )
    beta: float = field(default=VerifiableWeighting.beta, metadata=_help("Temperature of w = exp(A / beta)."))
    weight_min: float = field(
        default=VerifiableWeighting.weight_min, metadata=_help("Lower clip of the token weights.")
    )
    weight_max: float = field(
        default=VerifiableWeighting.weight_max, metadata=_help("Upper clip of the token weights.")
    )
    value_coef: float = field(
        default=0.5, metadata=_help("Weight of the value loss (the critic keeps learning).")
    )
    policy_on: str = field(
        default=VerifiableWeighting.policy_on,
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
    head_warmup_steps: int | None = field(
        default=0,
        metadata=_help("Its start (a critic of a trained model) has trained heads: no warm-up by default."),
    )

    def __post_init__(self) -> None:
        try:
            VerifiableWeighting.of(self)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.value_coef < 0:
            raise ConfigError(f"value_coef: expected >= 0, got {self.value_coef}")
        super().__post_init__()


def nonempty_stats(stats: dict[str, float], prefix: str) -> dict[str, float]:
    """`stats`, or neutral extremes when a batch had no token (so every process logs the same keys)."""
    return stats or {f"{prefix}_min": math.inf, f"{prefix}_max": -math.inf}


class VerifiableTrainer(WeightedMTPTrainer):
    """TD-error weighted MTP loss plus the continuing value loss; see the module docstring."""

    trains_value_head = True
    sample_order_name = "curriculum"  # by difficulty over training progress, correct/incorrect balanced

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
