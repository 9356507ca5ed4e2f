"""The verifiable stage's token weights `clamp(exp(A / beta))` from the value head (docs/design.md §4.3), and
the logging statistics of weights and other masked tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from .masks import response_token_mask, value_positions
from .normalize import EmaNormalizer, normalize_advantages
from .returns import gae, td_errors


def td_weights(
    adv: torch.Tensor, beta: float, w_min: float, w_max: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Token weights `clamp(exp(adv / beta), w_min, w_max)` (0 where `mask` is False, when given).

    Tokens that raised the value are up-weighted, those that lowered it down-weighted; the clamp bounds
    how far one token can dominate or vanish from the MTP loss.
    """
    if not beta > 0:
        raise ValueError(f"beta: expected > 0, got {beta}")
    if not 0 <= w_min:
        raise ValueError(f"w_min: expected >= 0, got {w_min}")
    if not w_min <= w_max:
        raise ValueError(f"w_max: expected >= w_min ({w_min}), got {w_max}")
    weights = torch.exp(adv / beta).clamp(min=w_min, max=w_max)
    if mask is not None:
        weights = torch.where(mask.bool(), weights, torch.zeros_like(weights))
    return weights


def weight_stats(weights: torch.Tensor, mask: torch.Tensor, w_min: float, w_max: float) -> dict[str, float]:
    """Logging statistics of the masked weights: mean, population std, min, max, entropy, clipped fraction.

    `weight_entropy` is the Shannon entropy (nats) of the weights normalised to a distribution over the
    masked entries (0 if they sum to 0); `weight_clipped_frac` the fraction at `w_min` or `w_max`.
    Empty dict when nothing is masked.
    """
    w = weights.detach()[mask.bool()].to(torch.float64)
    if w.numel() == 0:
        return {}
    total = w.sum()
    p = w / total.clamp(min=torch.finfo(torch.float64).tiny)
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum()
    entropy = torch.where(total > 0, entropy, torch.zeros_like(entropy))
    clipped = ((w <= w_min) | (w >= w_max)).to(torch.float64).mean()
    mean = w.mean()
    std = ((w * w).mean() - mean * mean).clamp(min=0.0).sqrt()
    values = torch.stack([mean, std, w.min(), w.max(), entropy, clipped]).tolist()
    names = ["mean", "std", "min", "max", "entropy", "clipped_frac"]
    return {f"weight_{name}": value for name, value in zip(names, values, strict=True)}


def tensor_stats(x: torch.Tensor, mask: torch.Tensor, prefix: str) -> dict[str, float]:
    """`{prefix}_mean/_std/_min/_max` (population std) of the masked entries of `x`; empty if none."""
    v = x.detach()[mask.bool()].to(torch.float64)
    if v.numel() == 0:
        return {}
    mean = v.mean()
    std = ((v * v).mean() - mean * mean).clamp(min=0.0).sqrt()
    values = torch.stack([mean, std, v.min(), v.max()]).tolist()
    return {
        f"{prefix}_{name}": value for name, value in zip(["mean", "std", "min", "max"], values, strict=True)
    }


def td_token_weights(
    values: torch.Tensor,
    labels: torch.Tensor,
    rewards: torch.Tensor,
    options: Any,
    ema: EmaNormalizer | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`([B, T] TD errors, [B, T] token weights)` of the verifiable stage, from the value head's `values`.

    `options` carries `advantage`, `gamma`, `lam`, `normalize`, `beta`, `weight_min` and `weight_max` (a
    `VerifiableWeighting`, a `VerifiableConfig`, or any object with them); `ema` is the running normaliser
    of `normalize: ema`. The stage's loss and `wmtp_hf.inspection` both call this, so the page shows the
    weights training uses.
    """
    values = values.detach().float()
    vmask, tmask = value_positions(labels), response_token_mask(labels)
    deltas = td_errors(values, rewards, vmask, options.gamma)
    adv = deltas if options.advantage == "td" else gae(deltas, tmask, options.gamma, options.lam)
    adv = normalize_advantages(adv, tmask, options.normalize, ema)
    weights = td_weights(adv, options.beta, options.weight_min, options.weight_max, tmask)
    return deltas, weights
