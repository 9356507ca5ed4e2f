"""Batch tokenized examples for the HF Trainer: right padding (or packing), prompt/padding labels -100,
reward, difficulty.

Optional per-token columns (cached reference losses for Rho-1) are right-padded (or packed) alongside.
`packing=True` flattens the examples into one row without padding (`data/packing.py`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .packing import EXAMPLE_LENGTHS
from .schema import DataError

IGNORE_INDEX = -100
REF_LOSSES = "ref_token_losses"


class WmtpDataCollator:
    """`data_collator` for `Trainer`: features hold `input_ids` and `prompt_length` (or `labels`).

    Returns `input_ids`, `attention_mask` (1 over prompt + response), `labels` (-100 on the prompt and
    padding), `reward` (float `is_correct`, 0 when absent) and `difficulty` (long, -1 when absent).
    When the features carry `ref_token_losses` (per-token reference losses, one per input id; see
    `wmtp_hf.reference`), the batch also gets `ref_token_losses`: float32 `[B, W]`, right-padded with 0.

    `packing=True` (padding-free, as transformers' `DataCollatorWithFlattening`): `input_ids`, `labels`,
    `position_ids` (restarting at 0 at each example) and `ref_token_losses` are `[1, N]`, the examples back
    to back; no `attention_mask`; `example_lengths` `[B]`; each example's first label is -100 (it is a
    prompt token anyway) so no next-token target crosses into it. `flash_attn_kwargs=True` adds the
    varlen arguments of flash attention (`cu_seq_lens_q/k` int32 `[B + 1]`, `max_length_q/k`).
    """

    def __init__(
        self,
        tokenizer: Any = None,
        pad_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
        packing: bool = False,
        flash_attn_kwargs: bool = False,
    ):
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = (
                tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            )
        if pad_token_id is None:
            raise DataError("collator: expected a tokenizer with a pad_token (or eos_token), or pad_token_id")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packing = packing
        self.flash_attn_kwargs = flash_attn_kwargs

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [list(f["input_ids"]) for f in features]
        labels = [self._labels(f, row) for f, row in zip(features, ids, strict=True)]
        if self.packing:
            return self._packed(features, ids, labels)
        width = max(len(row) for row in ids)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        batch_labels = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, (row, row_labels) in enumerate(zip(ids, labels, strict=True)):
            batch_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            batch_labels[i, : len(row)] = torch.tensor(row_labels, dtype=torch.long)
            mask[i, : len(row)] = 1
        batch = {
            "input_ids": batch_ids,
            "attention_mask": mask,
            "labels": batch_labels,
            "reward": torch.tensor([float(f.get("is_correct", False)) for f in features], dtype=torch.float),
            "difficulty": torch.tensor([int(f.get("difficulty", -1)) for f in features], dtype=torch.long),
        }
        if any(REF_LOSSES in f for f in features):
            batch[REF_LOSSES] = self._pad_per_token(features, ids, REF_LOSSES, width)
        return batch

    def _packed(
        self, features: Sequence[Mapping[str, Any]], ids: list[list[int]], labels: list[list[int]]
    ) -> dict[str, Any]:
        """The examples back to back in one row (see the class docstring)."""
        if any(len(row) == 0 for row in ids):
            raise DataError("collator: packing needs non-empty examples ('input_ids' of length 0)")
        lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
        flat_labels = []
        for row_labels in labels:
            flat_labels += [IGNORE_INDEX, *row_labels[1:]]
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([t for row in ids for t in row], dtype=torch.long)[None],
            "labels": torch.tensor(flat_labels, dtype=torch.long)[None],
            "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()])[None],
            EXAMPLE_LENGTHS: lengths,
            "reward": torch.tensor([float(f.get("is_correct", False)) for f in features], dtype=torch.float),
            "difficulty": torch.tensor([int(f.get("difficulty", -1)) for f in features], dtype=torch.long),
        }
        if any(REF_LOSSES in f for f in features):
            padded = self._pad_per_token(features, ids, REF_LOSSES, int(lengths.max()))
            batch[REF_LOSSES] = torch.cat([row[:n] for row, n in zip(padded, lengths.tolist(), strict=True)])[
                None
            ]
        if self.flash_attn_kwargs:
            bounds = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(torch.int32)
            batch.update(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds.clone(),
                         max_length_q=int(lengths.max()), max_length_k=int(lengths.max()))  # fmt: skip
        return batch

    @staticmethod
    def _pad_per_token(
        features: Sequence[Mapping[str, Any]], ids: list[list[int]], field: str, width: int
    ) -> torch.Tensor:
        """A per-token float field as float32 `[B, width]`, right-padded with 0; one value per input id."""
        out = torch.zeros((len(ids), width), dtype=torch.float32)
        for i, (feature, row) in enumerate(zip(features, ids, strict=True)):
            if feature.get(field) is None:
                raise DataError(f"collator: some features carry '{field}' and feature {i} does not")
            values = torch.as_tensor(feature[field], dtype=torch.float32).reshape(-1)
            if len(values) != len(row):
                raise DataError(f"collator: '{field}' has {len(values)} items, 'input_ids' has {len(row)}")
            out[i, : len(row)] = values
        return out

    @staticmethod
    def _labels(feature: Mapping[str, Any], ids: list[int]) -> list[int]:
        if "labels" in feature:
            labels = list(feature["labels"])
            if len(labels) != len(ids):
                raise DataError(f"collator: 'labels' has {len(labels)} items, 'input_ids' has {len(ids)}")
            return labels
        if "prompt_length" not in feature:
            raise DataError("collator: each feature needs 'prompt_length' or 'labels' besides 'input_ids'")
        n = int(feature["prompt_length"])
        return [IGNORE_INDEX] * n + ids[n:]
