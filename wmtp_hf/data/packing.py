"""Padding-free batches (docs/training.md "Packing"): examples flattened into one row, and the padded view.

A packed batch holds the B examples of a batch back to back in one row `[1, N]` (`N` = their total
length) with `position_ids` restarting at 0 at each example and no attention mask, as transformers'
`DataCollatorWithFlattening` writes it; transformers then keeps attention inside each example (sdpa,
eager; flash attention through the varlen `cu_seq_lens_*` / `max_length_*` arguments). Its
`example_lengths` (`[B]`) say where each example ends.

The stages compute every per-example quantity (targets, returns, TD errors, Rho-1's selection, the
normalisers) on the *padded view*: the packed per-token tensors scattered into `[B, W]` rows, exactly as
the right-padded batch lays them out. The model's forward runs on the packed row; only its small
per-token outputs (token losses `[N, n]`, values `[N]`) are unpacked, so no FLOP is spent on padding and
the stage math stays the padded one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

IGNORE_INDEX = -100
EXAMPLE_LENGTHS = "example_lengths"
PACKED_INPUTS = "packed_inputs"
FLASH_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
PER_TOKEN_PADS = {"labels": IGNORE_INDEX, "ref_token_losses": 0.0}
PER_EXAMPLE = ("reward", "difficulty", "row_id")

__all__ = [
    "EXAMPLE_LENGTHS",
    "FLASH_KEYS",
    "PACKED_INPUTS",
    "batch_token_counts",
    "is_packed",
    "pack",
    "padded_view",
    "unpack",
]


def is_packed(batch: Mapping[str, Any]) -> bool:
    """Whether `batch` is a packed batch (it carries `example_lengths`)."""
    return EXAMPLE_LENGTHS in batch


def _positions(lengths: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(example, offset)` of each of the `total` packed positions."""
    lengths = lengths.to(torch.long)
    rows = torch.repeat_interleave(
        torch.arange(len(lengths), device=lengths.device), lengths, output_size=total
    )
    starts = torch.cumsum(lengths, 0) - lengths
    cols = torch.arange(total, device=lengths.device) - starts[rows]
    return rows, cols


def unpack(values: torch.Tensor, lengths: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
    """`[1, N, ...]` packed values -> `[B, W, ...]` right-padded rows, `fill` past each example's end.

    `W = max(lengths)`. Differentiable: the gradient of each padded entry flows back to its packed one.
    """
    if values.dim() < 2 or values.shape[0] != 1:
        raise ValueError(f"unpack: expected packed values [1, N, ...], got shape {tuple(values.shape)}")
    flat = values[0]
    total = flat.shape[0]
    lengths = lengths.to(flat.device)
    if int(lengths.sum()) != total:
        raise ValueError(f"unpack: example_lengths sum to {int(lengths.sum())}, the packed row has {total}")
    rows, cols = _positions(lengths, total)
    width = int(lengths.max()) if len(lengths) else 0
    out = flat.new_full((len(lengths), width, *flat.shape[1:]), fill)
    return out.index_put((rows, cols), flat)


def pack(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`[B, W, ...]` right-padded rows -> `[1, N, ...]`: the first `lengths[b]` entries of each row."""
    lengths = lengths.to(values.device)
    rows, cols = _positions(lengths, int(lengths.sum()))
    return values[rows, cols][None]


def padded_view(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The right-padded layout of a packed `batch` (a padded batch is returned as it is).

    Per-token fields (`labels` -100 past each end, `ref_token_losses` 0) become `[B, W]` and
    `attention_mask` marks each example's tokens, as `WmtpDataCollator` pads them; per-example fields
    (`reward`, `difficulty`, `row_id`) are kept; the packed batch itself is under `packed_inputs` (for
    forwards, which run on the packed row).
    """
    if not is_packed(batch):
        return dict(batch)
    lengths = batch[EXAMPLE_LENGTHS]
    view: dict[str, Any] = {k: batch[k] for k in PER_EXAMPLE if k in batch}
    for key, fill in PER_TOKEN_PADS.items():
        if key in batch:
            view[key] = unpack(batch[key], lengths, fill)
    ones = torch.ones(1, int(lengths.sum()), dtype=torch.long, device=lengths.device)
    view["attention_mask"] = unpack(ones, lengths, 0)
    view[EXAMPLE_LENGTHS] = lengths
    view[PACKED_INPUTS] = batch
    return view


def batch_token_counts(batch: Mapping[str, Any]) -> tuple[int, int]:
    """`(non_padding, padding)` tokens of a collated batch (packed: no padding)."""
    if is_packed(batch):
        return int(batch[EXAMPLE_LENGTHS].sum()), 0
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    real = int(mask.sum()) if mask is not None else ids.numel()
    return real, ids.numel() - real
