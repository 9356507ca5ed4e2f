"""pass@k: the stable product form equals the exact binomial definition, and aggregation skips k > n."""

from __future__ import annotations

import random
from fractions import Fraction
from math import comb

import pytest

from wmtp_hf.evaluation import pass_at_k, summarize_pass_at_k


def reference_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Exact 1 - C(n-c, k) / C(n, k) with rationals (math.comb(n-c, k) is 0 when n-c < k)."""
    return 1 - Fraction(comb(n - c, k), comb(n, k))


def test_matches_exact_binomials_on_all_small_cases():
    for n in range(1, 25):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(reference_pass_at_k(n, c, k)), abs=1e-12)


def test_hand_computed_values():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # C(2,2)/C(4,2) = 1/6
    assert pass_at_k(200, 3, 100) == pytest.approx(float(reference_pass_at_k(200, 3, 100)), abs=1e-12)


def test_rejects_k_above_n_and_bad_counts():
    with pytest.raises(ValueError, match="k: expected"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="c: expected"):
        pass_at_k(3, 4, 1)


def test_summary_on_mixed_samples_matches_reference_and_skips_k_above_n():
    rng = random.Random(0)
    outcomes = {f"p{i}": [rng.random() < 0.4 for _ in range(rng.choice([10, 12]))] for i in range(30)}
    counts = [(len(v), sum(v)) for v in outcomes.values()]
    scores, skipped = summarize_pass_at_k(counts, [1, 5, 10, 11])
    for k in (1, 5, 10):
        expected = sum(reference_pass_at_k(n, c, k) for n, c in counts) / len(counts)
        assert scores[f"pass@{k}"] == pytest.approx(float(expected), abs=1e-12)
    # pass@1 is the plain mean of per-problem success rates
    assert scores["pass@1"] == pytest.approx(sum(c / n for n, c in counts) / len(counts))
    assert "pass@11" not in scores
    assert skipped["pass@11"]["problems_with_n_below_k"] == sum(1 for n, _ in counts if n < 11)
