"""Rho-1 token selection (docs/design.md §4.4): excess loss over a reference, and per head the top
`k_percent` of a batch's valid targets by it.
"""

from __future__ import annotations

import math

import torch

from ..losses import target_weights_per_head


def ref_losses_per_head(ref_token_losses: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`[B, T, n]` reference loss of each head's target: `[b, t, k] = ref[b, t+1+k]` (0 past the end)."""
    return target_weights_per_head(ref_token_losses, n_heads)


def excess_losses(token_losses: torch.Tensor, ref_token_losses: torch.Tensor) -> torch.Tensor:
    """`[B, T, n]` excess loss `e_k(t) = CE_k(t) - CE_ref(t+1+k)`: how much harder a target is than for
    the reference (only meaningful where the target mask is set)."""
    ref = ref_losses_per_head(ref_token_losses, token_losses.shape[-1])
    return token_losses - ref.to(token_losses.dtype)


def _check_k_percent(k_percent: float) -> None:
    if not 0.0 < k_percent <= 1.0:
        raise ValueError(f"k_percent: expected a value in (0, 1], got {k_percent}")


def rho1_keep_counts(target_mask: torch.Tensor, k_percent: float) -> torch.Tensor:
    """`[n]` long: tokens kept per head, `round(k_percent * valid_k)` and at least 1 when any is valid.

    The same rule as `rho1_weights`, so the trainer can normalise the loss over the accumulation window.
    """
    _check_k_percent(k_percent)
    valid = target_mask.bool().sum(dim=(0, 1)).tolist()
    keep = [max(round(k_percent * v), 1) if v > 0 else 0 for v in valid]
    return torch.tensor(keep, dtype=torch.long, device=target_mask.device)


EXCESS_RESOLUTION = 2.0**-10  # nats: excess losses are ranked on this grid, finer differences are ties


def ranked_excess(excess: torch.Tensor) -> torch.Tensor:
    """`excess` (float32, or float64) rounded to the nearest multiple of `EXCESS_RESOLUTION` (half to even).

    Differences below about 1e-3 nats are float noise (kernel shapes, summation order), not a signal:
    with the start model as reference, head 0's excess is 0 up to that noise, and its kept tokens must
    follow the tie rule, not the noise."""
    excess = excess if excess.dtype == torch.float64 else excess.float()
    return torch.round(excess / EXCESS_RESOLUTION) * EXCESS_RESOLUTION


def rho1_weights(
    token_losses: torch.Tensor, ref_token_losses: torch.Tensor, target_mask: torch.Tensor, k_percent: float
) -> torch.Tensor:
    """`[B, T, n]` 0/1 Rho-1 weights (detached, dtype of `token_losses`): per head, over the whole batch,
    keep the `rho1_keep_counts` valid targets with the largest excess loss (`ranked_excess`: on a grid
    of `EXCESS_RESOLUTION` nats).

    Ties go to the smaller flat index `b * T + t`, so the selection is deterministic.
    """
    keep = rho1_keep_counts(target_mask, k_percent)
    batch, seq, n_heads = token_losses.shape
    mask = target_mask.bool().reshape(batch * seq, n_heads).T
    excess = excess_losses(token_losses.detach(), ref_token_losses.detach())
    excess = ranked_excess(excess).reshape(batch * seq, n_heads).T
    excess = torch.where(mask, excess, torch.full_like(excess, -math.inf))
    # Lexicographic (valid first, largest excess, smallest index) from two stable sorts.
    order = torch.sort(excess, dim=1, descending=True, stable=True).indices
    by_valid = torch.sort(mask.gather(1, order).to(torch.uint8), dim=1, descending=True, stable=True).indices
    order = order.gather(1, by_valid)
    rank = torch.arange(batch * seq, device=token_losses.device)
    selected = (rank[None, :] < keep[:, None]).to(token_losses.dtype)
    out = torch.zeros_like(excess, dtype=token_losses.dtype).scatter(1, order, selected)
    return out.T.reshape(batch, seq, n_heads)
