"""Shared loss math of the training stages (SPEC §4), as plain functions over per-token losses.

The model computes `token_losses[b, t, k] = CE_k(t)` chunk by chunk (see `modeling_wmtp`); everything
here works on those `[B, T, n]` tensors and never sees logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .modeling_wmtp import (
    IGNORE_INDEX,
    chunked_cross_entropy,
    mtp_target_mask,
    shift_labels_for_head,
    weighted_mtp_loss,
)

__all__ = [
    "IGNORE_INDEX",
    "chunked_cross_entropy",
    "mtp_target_mask",
    "shift_labels_for_head",
    "head_target_counts",
    "resolve_head_weights",
    "weighted_mtp_loss",
    "target_weights_per_head",
    "value_error_terms",
    "value_regression_loss",
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


def value_error_terms(values: torch.Tensor, targets: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-position `l(V_t, G_t)`: squared error (`mse`) or Huber with delta 1 (`huber`); targets detached."""
    diff = values.float() - targets.detach().float()
    if kind == "mse":
        return diff.square()
    if kind == "huber":
        return torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=1.0)
    raise ValueError(f"value loss: expected 'mse' or 'huber', got {kind!r}")


def value_regression_loss(
    values: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "mse",
    count: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """`sum_t l(V_t, G_t) m(t) / count` with `l` squared error (`mse`) or Huber (`huber`, delta 1).

    `count` is the number of value positions of the whole accumulation window (across processes), so
    accumulation equals one large batch; defaults to this batch's `sum m`. Targets are detached.
    """
    total = (value_error_terms(values, targets, kind) * mask).sum()
    if count is None:
        count = mask.sum()
    return total / torch.as_tensor(count, device=total.device, dtype=total.dtype).clamp(min=1)
