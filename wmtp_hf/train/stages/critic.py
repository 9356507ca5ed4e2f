"""`critic`: train the value head on is_correct (docs/design.md §4.2); the trunk stays frozen by default.

The forward runs the trunk only (`value_only=True`: no head block, no unembedding, no LM loss). Targets
are Monte-Carlo returns `G_t = gamma^L_t R` or lambda-returns over the critic's own detached values;
`pairwise` is Bradley–Terry over correct/incorrect pairs of the same problem. `evaluate` reports the
held-out value loss, explained variance and `eval_auroc` (last value of each response vs is_correct).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch

from ...data.packing import padded_view
from ...data.sampling import pair_indices, read_metadata, read_problem_ids
from ...losses import bradley_terry_loss, masked_row_mean, value_error_terms, value_regression_loss
from ...stats import binary_auroc, explained_variance
from ...weighting import lambda_returns, mc_returns, value_positions
from ..components import held_out_split, load_model, tokenized_rows
from ..config import ConfigError, WmtpTrainingConfig, _help
from ..trainer import WeightedMTPTrainer, forward_inputs, unpack_outputs

CRITIC_LOSSES = ("mse", "huber", "pairwise")


@dataclass
class CriticConfig(WmtpTrainingConfig):
    """`critic`: a value head on `norm(h_trunk)` regressed on is_correct; everything else frozen."""

    stage: typing.ClassVar[str] = "critic"
    model_made_by: typing.ClassVar[dict[str, str]] = {
        "runs/baseline/final": "python -m wmtp_hf.train --stage baseline"
    }

    critic_loss: str = field(
        default="mse",
        metadata=_help(
            "mse | huber over value positions, or pairwise (Bradley–Terry over correct/incorrect pairs of "
            "the same problem; the sampler then yields pairs, so the batch size must be even)."
        ),
    )
    gamma: float = field(default=1.0, metadata=_help("Discount of the return `G_t = gamma^L_t R`."))
    lam: float = field(
        default=1.0,
        metadata=_help("lambda of the lambda-return targets (1: Monte-Carlo returns; < 1 bootstraps on V)."),
    )
    unfreeze_last_n_layers: int = field(
        default=0, metadata=_help("Trunk blocks (counted from the top) trained with the value head.")
    )
    eval_split: str | None = field(
        default="auto",
        metadata=_help(
            "Held-out split for evaluation: auto (offline: eval, codecontests: valid, mbpp: validation), "
            "a split name, or null for none."
        ),
    )

    # Stage defaults (equal to configs/critic.yaml).
    model_name_or_path: str | None = field(
        default="runs/baseline/final", metadata=_help("The WMTP model to add a value head to.")
    )
    output_dir: str | None = field(default="runs/critic", metadata=_help("Checkpoints and the final model."))
    max_steps: int = field(default=200, metadata=_help("Optimizer steps."))
    learning_rate: float | None = field(default=1e-3, metadata=_help("Peak AdamW learning rate."))
    head_warmup_steps: int | None = field(
        default=0, metadata=_help("Unused: the critic trains the value head, not the prediction heads.")
    )
    eval_strategy: str = field(default="steps", metadata=_help("When to evaluate: no, steps, epoch."))
    eval_steps: float | None = field(default=50, metadata=_help("Evaluate every N steps."))
    per_device_eval_batch_size: int = field(default=16, metadata=_help("Batch size of evaluation."))

    def __post_init__(self) -> None:
        if self.critic_loss not in CRITIC_LOSSES:
            raise ConfigError(
                f"critic_loss: expected one of {', '.join(CRITIC_LOSSES)}, got {self.critic_loss!r}"
            )
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma: expected a number in (0, 1], got {self.gamma}")
        if not 0 <= self.lam <= 1:
            raise ConfigError(f"lam: expected a number in [0, 1], got {self.lam}")
        if self.unfreeze_last_n_layers < 0:
            raise ConfigError(f"unfreeze_last_n_layers: expected >= 0, got {self.unfreeze_last_n_layers}")
        if self.critic_loss == "pairwise" and self.per_device_train_batch_size % 2:
            raise ConfigError(
                "per_device_train_batch_size: pairwise needs an even batch size (rows come in pairs), "
                f"got {self.per_device_train_batch_size}"
            )
        super().__post_init__()


def add_value_head(model: Any, seed: int) -> Any:
    """Give `model` a value head (seeded init) unless it has one."""
    if model.value_head is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.add_value_head()
    return model


class CriticTrainer(WeightedMTPTrainer):
    """Value-head regression (or pairwise ranking) on the frozen trunk; see the module docstring."""

    trains_value_head = True
    trains_heads = False
    sample_order_name = "balanced"  # correct/incorrect 50:50; critic_loss pairwise: same-problem pairs

    @classmethod
    def load_model(cls, config: CriticConfig, path: str, tokenizer: Any) -> Any:
        model = add_value_head(load_model(config, path, tokenizer), config.seed)
        trunk = model.model.layers[:-1]
        if config.unfreeze_last_n_layers > len(trunk):
            raise ConfigError(
                f"unfreeze_last_n_layers: the trunk has {len(trunk)} blocks, got {config.unfreeze_last_n_layers}"
            )
        model.requires_grad_(False)
        model.value_head.requires_grad_(True)
        for block in list(trunk)[len(trunk) - config.unfreeze_last_n_layers :]:
            block.requires_grad_(True)
        model.config.value_head_stage = "critic"
        return model

    @classmethod
    def lora_scope(cls, config: CriticConfig, model: Any) -> tuple[str, ...]:
        """With use_peft, LoRA adapts the `unfreeze_last_n_layers` top trunk blocks (instead of training them)."""
        n_trunk = len(model.model.layers) - 1
        if config.unfreeze_last_n_layers == 0:
            raise ConfigError(
                "use_peft: the critic trains only the value head unless unfreeze_last_n_layers > 0 (LoRA then "
                "adapts those trunk blocks); set unfreeze_last_n_layers or drop use_peft"
            )
        return tuple(f"model.layers.{i}." for i in range(n_trunk - config.unfreeze_last_n_layers, n_trunk))

    @classmethod
    def sample_order(cls, config: CriticConfig, dataset: datasets.Dataset) -> np.ndarray:
        if config.critic_loss != "pairwise":
            return super().sample_order(config, dataset)
        is_correct, _ = read_metadata(dataset)
        n_pairs = None if config.n_samples is None else max(1, config.n_samples // 2)
        return pair_indices(is_correct, read_problem_ids(dataset), n_pairs, seed=config.seed)

    @classmethod
    def build_eval_dataset(cls, config: CriticConfig, tokenizer: Any) -> datasets.Dataset | None:
        split = held_out_split(config) if config.eval_split == "auto" else config.eval_split
        if split is None or config.eval_strategy == "no":
            return None
        try:
            rows, _, _ = tokenized_rows(config, tokenizer, split)
        except ConfigError as err:
            raise ConfigError(
                f"eval_split: {err}; set eval_split: null and eval_strategy: no, or name a split with rows"
            ) from None
        return rows

    # ------------------------------------------------------------------ loss

    def window_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "value_positions": value_positions(batch["labels"]).sum(),
            "pairs": torch.tensor(batch["labels"].shape[0] // 2),
        }

    def value_targets(self, values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Monte-Carlo returns (`lam == 1`) or lambda-returns over the detached values."""
        if self.args.lam == 1.0:
            return mc_returns(rewards, mask, self.args.gamma)
        return lambda_returns(values.detach(), rewards, mask, self.args.gamma, self.args.lam)

    @staticmethod
    def value_forward(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The trunk-only forward (`value_only`) of a padded or packed batch: `(outputs, padded view)`,
        `outputs.value` in the padded layout `[B, W]`."""
        batch = {k: v for k, v in forward_inputs(inputs).items() if k != "labels"}
        view = padded_view(inputs)
        return unpack_outputs(model(**batch, value_only=True), view), view

    def stage_loss(self, model, inputs, counts):
        outputs, inputs = self.value_forward(model, inputs)
        labels, rewards = inputs["labels"], inputs["reward"]
        values = outputs.value.float()
        mask = value_positions(labels)
        if self.args.critic_loss == "pairwise":
            correct, incorrect = rewards[0::2], rewards[1::2]
            if len(correct) != len(incorrect) or not bool(((correct > 0.5) & (incorrect < 0.5)).all()):
                raise ValueError("pairwise critic: batches must hold (correct, incorrect) row pairs")
            means = masked_row_mean(values, mask)
            pair_losses = bradley_terry_loss(means[0::2], means[1::2])
            loss = pair_losses.sum() / counts["pairs"].clamp(min=1)
            self.record("value_loss", pair_losses.detach().mean(), len(pair_losses))
        else:
            targets = self.value_targets(values, rewards, mask)
            kind = self.args.critic_loss
            loss = value_regression_loss(values, targets, mask, kind, counts["value_positions"])
            n = float(mask.sum())
            self.record("value_loss", value_regression_loss(values.detach(), targets, mask, kind), n)
            self.record("explained_variance", explained_variance(values.detach(), targets, mask), n)
        self.record_tokens(inputs.get("attention_mask"), labels.shape)
        return loss, outputs

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self,
        eval_dataset: datasets.Dataset | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Held-out `value_loss`, `explained_variance` and `auroc` (last value of each response vs is_correct)."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("critic evaluate: no eval_dataset (eval_split found nothing)")
        rows = self._per_row_eval(dataset)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self._eval_metrics(rows, dataset).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    @torch.no_grad()
    def _per_row_eval(self, dataset: datasets.Dataset) -> torch.Tensor:
        """`[N, 10]` per-row sums, gathered over processes and sorted by row id (see `_eval_metrics`)."""
        dataset = dataset.add_column("row_id", list(range(len(dataset))))
        collate = self.data_collator

        def collate_with_ids(features):
            batch = collate(features)
            batch["row_id"] = torch.tensor([f["row_id"] for f in features])
            return batch

        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=collate_with_ids
        )
        loader = self.accelerator.prepare(loader)
        model = self.model
        was_training = model.training
        model.eval()
        parts = []
        for batch in loader:
            outputs, batch = self.value_forward(model, batch)
            labels, rewards = batch["labels"], batch["reward"]
            values = outputs.value.float()
            mask = value_positions(labels)
            targets = self.value_targets(values, rewards, mask).float()
            kind = "mse" if self.args.critic_loss == "pairwise" else self.args.critic_loss
            diff = values - targets
            maskf = mask.float()
            last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & mask  # the last value position
            columns = [
                batch["row_id"].float(),
                rewards,
                (values * last).sum(1),  # the last value V_{T-1} of the response
                masked_row_mean(values, mask),
                (value_error_terms(values, targets, kind) * maskf).sum(1),
                maskf.sum(1),
                (targets * maskf).sum(1),
                (targets.square() * maskf).sum(1),
                (diff * maskf).sum(1),
                (diff.square() * maskf).sum(1),
            ]
            parts.append(torch.stack(columns, dim=1).double())
        model.train(was_training)
        rows = self.accelerator.gather_for_metrics(torch.cat(parts))
        return rows[rows[:, 0].argsort()]

    def _eval_metrics(self, rows: torch.Tensor, dataset: datasets.Dataset) -> dict[str, float]:
        row_id, reward, last, mean = rows[:, 0].long(), rows[:, 1], rows[:, 2], rows[:, 3]
        loss_sum, count, t_sum, t_sq, r_sum, r_sq = (rows[:, i].sum() for i in range(4, 10))
        n = count.clamp(min=1)
        var_t = t_sq / n - (t_sum / n) ** 2
        var_r = r_sq / n - (r_sum / n) ** 2
        ev = float(1 - var_r / var_t) if float(var_t) > 0 else math.nan
        has_response = rows[:, 5] > 0
        auroc = binary_auroc(last[has_response], reward[has_response] > 0.5)
        if self.args.critic_loss == "pairwise":
            value_loss = _pairwise_eval_loss(mean, reward, [dataset[int(i)]["problem_id"] for i in row_id])
        else:
            value_loss = float(loss_sum / n)
        return {"value_loss": value_loss, "explained_variance": ev, "auroc": auroc}


def _pairwise_eval_loss(means: torch.Tensor, rewards: torch.Tensor, problems: list[str]) -> float:
    """Mean Bradley–Terry loss over every correct/incorrect pair of the same problem."""
    losses = []
    for problem in dict.fromkeys(problems):
        rows = [i for i, p in enumerate(problems) if p == problem]
        good = means[[i for i in rows if rewards[i] > 0.5]]
        bad = means[[i for i in rows if rewards[i] <= 0.5]]
        if len(good) and len(bad):
            losses.append(
                bradley_terry_loss(good[:, None].expand(-1, len(bad)), bad[None, :].expand(len(good), -1))
            )
    return float(torch.cat([x.reshape(-1) for x in losses]).mean()) if losses else math.nan
