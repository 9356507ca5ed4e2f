"""Each stage's row order by stage name (docs/design.md §3.4): the order its trainer declares
(`sample_order_name`), from `wmtp_hf.data.sampling`."""

from __future__ import annotations

import datasets
import numpy as np

from ..data.sampling import IndexSampler, order_indices
from ..data.schema import DataError
from .stages import STAGE_TRAINERS


def stage_indices(
    stage: str, dataset: datasets.Dataset, n_samples: int | None = None, seed: int = 0
) -> np.ndarray:
    """The row order `stage` trains on. `n_samples` defaults to the dataset size (one pass over the
    correct rows for the stages that train on those)."""
    if stage not in STAGE_TRAINERS:
        raise DataError(f"sampling: unknown stage '{stage}'; valid: {', '.join(STAGE_TRAINERS)}")
    return order_indices(STAGE_TRAINERS[stage].sample_order_name, dataset, n_samples, seed)


def select_for_stage(
    dataset: datasets.Dataset, stage: str, n_samples: int | None = None, seed: int = 0
) -> datasets.Dataset:
    """`dataset.select(stage_indices(...))`: a view in training order (no row text is copied). Train it
    in order (`TrainingArguments(train_sampling_strategy="sequential")`) or use `StageSampler`."""
    return dataset.select(stage_indices(stage, dataset, n_samples, seed))


class StageSampler(IndexSampler):
    """An `IndexSampler` over a stage's order; `start` skips already-consumed positions on resume."""

    @classmethod
    def for_stage(
        cls, stage: str, dataset: datasets.Dataset, n_samples: int | None = None, seed: int = 0
    ) -> StageSampler:
        return cls(stage_indices(stage, dataset, n_samples, seed))
