"""Statistics: a critic's AUROC and explained variance (over tensors, for the stages and the experiment), and
the experiment's confidence intervals: a paired bootstrap over held-out examples, crossed with seeds.

The experiment measures every run on the same held-out examples, and (with `seeds`) trains every run once
per seed. A comparison "weighted − baseline" is therefore a matrix of paired differences `d[s, i]` (seed s,
example i), each with a weight `w[s, i]` (for cross-entropy: the example's target-token count, so the
statistic is the same token-weighted mean as the point estimate; for pass@k: 1 per problem).

`crossed_bootstrap` resamples seeds and examples *independently* (a two-way "pigeonhole" bootstrap, since
every seed is measured on the same examples): one replicate draws S seeds and N examples with replacement
and takes the weighted mean of `d` over the drawn cells. With one seed this is the ordinary paired
bootstrap over examples. The 95% interval is the 2.5th and 97.5th percentile of the replicates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

LEVEL = 0.95
N_RESAMPLES = 2000
VERDICTS = ("better", "worse", "inconclusive")


def weighted_cell_mean(
    values: np.ndarray, weights: np.ndarray, seed_counts: np.ndarray, example_counts: np.ndarray
) -> np.ndarray:
    """`[B]` replicate statistics: `sum_si a_s b_i w_si v_si / sum_si a_s b_i w_si` for each row of the
    count matrices `seed_counts [B, S]` and `example_counts [B, N]` (how often each seed / example was drawn).
    With `values`/`weights` of shape `[S, N, H]` (H heads) it is the mean over h of each head's ratio."""
    v, w = _as_cube(values), _as_cube(weights)
    num = np.einsum("bs,sih,bi->bh", seed_counts, w * v, example_counts)
    den = np.einsum("bs,sih,bi->bh", seed_counts, w, example_counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / den).mean(axis=1)


def _as_matrix(x: Sequence | np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a[None, :] if a.ndim == 1 else a


def _as_cube(x: Sequence | np.ndarray) -> np.ndarray:
    """`[N]` -> `[1, N, 1]`, `[S, N]` -> `[S, N, 1]`, `[S, N, H]` unchanged."""
    a = _as_matrix(x)
    return a[:, :, None] if a.ndim == 2 else a


def _draw_counts(rng: np.random.Generator, n_resamples: int, n: int) -> np.ndarray:
    """`[B, n]` how often each of n units is drawn when drawing n with replacement (multinomial)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)


def crossed_bootstrap(
    values: Sequence | np.ndarray,
    weights: Sequence | np.ndarray | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, float]:
    """Point estimate and percentile interval of the weighted mean of `values` (`[N]`, or `[S, N]` for S
    seeds measured on the same N examples, or `[S, N, H]`: the mean over H heads of each head's weighted
    mean), resampling seeds and examples independently.

    Returns `{"estimate", "low", "high", "se"}` (estimate: the weighted mean over every cell; se: the
    replicates' standard deviation). NaN cells (and their weights) are left out.
    """
    v = _as_cube(values)
    w = np.ones_like(v) if weights is None else _as_cube(weights)
    if v.shape != w.shape:
        raise ValueError(f"values {v.shape} and weights {w.shape}: expected the same shape")
    if v.size == 0:
        raise ValueError("bootstrap: expected at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level}")
    missing = ~np.isfinite(v)
    w = np.where(missing, 0.0, w)
    v = np.where(missing, 0.0, v)
    if (w.sum(axis=(0, 1)) <= 0).any():
        nan = math.nan
        return {"estimate": nan, "low": nan, "high": nan, "se": nan}
    estimate = float(((w * v).sum(axis=(0, 1)) / w.sum(axis=(0, 1))).mean())
    rng = np.random.default_rng(seed)
    n_seeds, n_examples, _ = v.shape
    seed_counts = _draw_counts(rng, n_resamples, n_seeds)
    example_counts = _draw_counts(rng, n_resamples, n_examples)
    reps = weighted_cell_mean(v, w, seed_counts, example_counts)
    reps = reps[np.isfinite(reps)]  # a replicate that drew only zero-weight cells has no mean
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return {"estimate": estimate, "low": float(low), "high": float(high), "se": float(reps.std())}


def verdict(low: float, high: float, lower_is_better: bool) -> str:
    """`better` / `worse` when the interval of (weighted − baseline) excludes 0, else `inconclusive`."""
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 <= high:
        return "inconclusive"
    below = high < 0
    return "better" if below == lower_is_better else "worse"


def binary_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: P(random positive scores above random negative), ties counting 1/2.

    Mann-Whitney U from average ranks (O(N log N), float64). NaN when either class is empty.
    """
    scores = scores.detach().reshape(-1).to(torch.float64)
    positive = labels.reshape(-1).bool()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(dim=0).to(torch.float64)
    average_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0
    rank_sum = average_rank[inverse][positive].sum()
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def explained_variance(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """`1 - Var(target - pred) / Var(target)` over masked entries (population, float64).

    1 is a perfect critic, 0 one no better than the mean; NaN when there are no entries or the targets
    are constant.
    """
    mask = mask.bool()
    y = target.detach()[mask].to(torch.float64)
    if y.numel() == 0:
        return float("nan")
    residual = y - pred.detach()[mask].to(torch.float64)
    var_y = float(y.var(unbiased=False))
    if var_y == 0.0:
        return float("nan")
    return 1.0 - float(residual.var(unbiased=False)) / var_y


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """`binary_auroc` on arrays: P(a positive scores above a negative), ties 1/2; NaN with one class."""
    return binary_auroc(
        torch.as_tensor(np.asarray(scores, dtype=np.float64)), torch.as_tensor(np.asarray(labels))
    )


def auroc_bootstrap(
    scores: Sequence[Sequence[float]],
    labels: Sequence[bool],
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, float]:
    """Mean AUROC over seeds (`scores [S, N]`, one critic per seed, the same N rows and labels) and its
    percentile interval: seeds and rows resampled independently, rows within each class (so every
    replicate has both classes)."""
    s = _as_matrix(scores)
    y = np.asarray(labels, dtype=bool)
    if s.shape[1] != len(y):
        raise ValueError(f"scores have {s.shape[1]} rows, labels {len(y)}")
    estimate = float(np.mean([auroc(row, y) for row in s]))
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if len(pos) == 0 or len(neg) == 0:
        nan = math.nan
        return {"estimate": nan, "low": nan, "high": nan, "se": nan}
    rng = np.random.default_rng(seed)
    reps = np.empty(n_resamples)
    for b in range(n_resamples):
        seeds = rng.integers(0, len(s), len(s))
        rows = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        reps[b] = np.mean([auroc(s[i, rows], y[rows]) for i in seeds])
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return {"estimate": estimate, "low": float(low), "high": float(high), "se": float(reps.std())}
