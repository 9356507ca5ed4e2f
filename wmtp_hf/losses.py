"""Shared loss math of the training stages (SPEC §4), as plain functions over per-token losses.

The model computes `token_losses[b, t, k] = CE_k(t)` chunk by chunk (see `modeling_wmtp`); everything
here works on those `[B, T, n]` tensors and never sees logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .modeling_wmtp import IGNORE_INDEX, chunked_cross_entropy, mtp_target_mask, shift_labels_for_head

__all__ = [
    "IGNORE_INDEX",
    "chunked_cross_entropy",
    "mtp_target_mask",
    "shift_labels_for_head",
    "head_target_counts",
    "resolve_head_weights",
    "weighted_mtp_loss",
    "target_weights_per_head",
]


def head_target_counts(labels: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`[n]` number of (response) targets of each head in `labels`: `sum_t m_k(t)`."""
    return mtp_target_mask(labels, n_heads).sum(dim=(0, 1))


def resolve_head_weights(head_weights: Sequence[float] | None, n_heads: int) -> torch.Tensor:
    """`alpha_k`: the configured head weights, or `1/n` each."""
    if head_weights is None:
        return torch.full((n_heads,), 1.0 / n_heads)
    if len(head_weights) != n_heads:
        raise ValueError(f"head_weights: expected {n_heads} values (one per head), got {len(head_weights)}")
    return torch.as_tensor(head_weights, dtype=torch.float32)


def target_weights_per_head(token_weights: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Turn per-token weights `[B, T]` (weight of token `x_j` at index j) into `[B, T, n]` per head.

    Head k at position t predicts `x_{t+1+k}`, so it gets `token_weights[:, t + 1 + k]` (0 past the end).
    """
    batch, seq = token_weights.shape
    out = token_weights.new_zeros(batch, seq, n_heads)
    for k in range(n_heads):
        shift = k + 1
        if shift < seq:
            out[:, : seq - shift, k] = token_weights[:, shift:]
    return out


def weighted_mtp_loss(
    token_losses: torch.Tensor,
    target_mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    head_weights: torch.Tensor | None = None,
    num_items: torch.Tensor | None = None,
) -> torch.Tensor:
    """SPEC §4.1: `L = sum_k alpha_k * sum_t w_k(t) m_k(t) CE_k(t) / N_k`.

    Args:
        token_losses: `[B, T, n]` per-token CE (0 where there is no target).
        target_mask: `[B, T, n]` bool `m_k(t)`.
        weights: `[B, T, n]` token weights `w_k(t)` (detached here), or None for `w = 1`.
        head_weights: `[n]` `alpha_k`, default `1/n`.
        num_items: `[n]` token counts `N_k` of the whole accumulation window (across processes);
            defaults to this batch's `sum_t m_k(t)`. Heads with no targets contribute 0.
    """
    n_heads = token_losses.shape[-1]
    terms = token_losses * target_mask
    if weights is not None:
        terms = terms * weights.detach().to(terms.dtype)
    sums = terms.sum(dim=(0, 1))
    counts = target_mask.sum(dim=(0, 1)) if num_items is None else num_items
    counts = counts.to(device=sums.device, dtype=sums.dtype).clamp(min=1)
    if head_weights is None:
        head_weights = resolve_head_weights(None, n_heads)
    return (head_weights.to(sums.device, sums.dtype) * sums / counts).sum()
