"""`baseline`: every head trained with the uniform MTP loss on correct solutions (docs/design.md §4.1, w = 1).

`train_rows: all` trains on every row instead, for data where correctness is not the point: a
`wmtp_hf.data self-distill` folder, whose rows are the model's own greedy answers, right or wrong, on which
the extra heads learn to draft (docs/training.md "Heads that draft").
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

import datasets
import numpy as np

from ...data.sampling import order_indices
from ..config import ConfigError, WmtpTrainingConfig, _help
from ..trainer import WeightedMTPTrainer

TRAIN_ROWS = ("correct", "all")  # row orders of wmtp_hf.data.sampling.ORDERS


@dataclass
class BaselineConfig(WmtpTrainingConfig):
    """`baseline`: all heads, uniform MTP loss on correct solutions (or on every row)."""

    stage: typing.ClassVar[str] = "baseline"

    train_rows: str = field(
        default="correct",
        metadata=_help(
            "Rows to train on: correct (is_correct rows, the solutions that pass) or all (every row, e.g. "
            "a self-distill folder of the model's own answers, for drafting heads)."
        ),
    )

    def __post_init__(self) -> None:
        if self.train_rows not in TRAIN_ROWS:
            raise ConfigError(f"train_rows: expected one of {', '.join(TRAIN_ROWS)}, got {self.train_rows!r}")
        super().__post_init__()


class BaselineTrainer(WeightedMTPTrainer):
    """`baseline`: every head, uniform token weights (`token_weights` returns None)."""

    @classmethod
    def sample_order(cls, config: BaselineConfig, dataset: datasets.Dataset) -> np.ndarray:
        """The order `train_rows` names (`correct`, the stage's `sample_order_name`, or `all`)."""
        return order_indices(config.train_rows, dataset, n_samples=config.n_samples, seed=config.seed)
