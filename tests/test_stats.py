"""The experiment's intervals (wmtp_hf.stats): a hand-computed bootstrap distribution, the replicate
statistic against a naive loop, coverage on simulated data with a known difference, verdicts, AUROC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmtp_hf.stats import auroc, auroc_bootstrap, binary_auroc, crossed_bootstrap, verdict, weighted_cell_mean


def test_two_examples_give_the_hand_computed_bootstrap_distribution():
    # Differences 0 (1 token) and 4 (3 tokens). Drawing 2 of 2 with replacement: {0,0} -> 0 (p 1/4),
    # {4,4} -> 4 (p 1/4), one of each -> (0*1 + 4*3) / 4 = 3 (p 1/2). Mean 2.5, sd sqrt(8.5 - 6.25) = 1.5.
    out = crossed_bootstrap([0.0, 4.0], [1.0, 3.0], n_resamples=40000, seed=1)
    assert out["estimate"] == 3.0  # the token-weighted mean of every cell
    assert out["low"] == 0.0 and out["high"] == 4.0
    assert out["se"] == pytest.approx(1.5, abs=0.02)


def test_replicate_statistic_equals_a_naive_loop_over_drawn_seeds_and_examples():
    rng = np.random.default_rng(0)
    values, weights = rng.normal(size=(3, 7)), rng.integers(1, 9, size=(3, 7)).astype(float)
    for _ in range(20):
        seeds, examples = rng.integers(0, 3, 3), rng.integers(0, 7, 7)
        num = sum(weights[s, i] * values[s, i] for s in seeds for i in examples)
        den = sum(weights[s, i] for s in seeds for i in examples)
        a = np.bincount(seeds, minlength=3)[None].astype(float)
        b = np.bincount(examples, minlength=7)[None].astype(float)
        assert weighted_cell_mean(values, weights, a, b)[0] == pytest.approx(num / den)


def test_heads_average_each_heads_token_weighted_mean():
    rng = np.random.default_rng(1)
    values, weights = rng.normal(size=(2, 5, 3)), rng.integers(1, 6, size=(2, 5, 3)).astype(float)
    per_head = (weights * values).sum(axis=(0, 1)) / weights.sum(axis=(0, 1))
    assert crossed_bootstrap(values, weights)["estimate"] == pytest.approx(per_head.mean())
    seeds, examples = np.array([1, 1]), np.array([0, 4, 4, 2, 2])
    naive = np.mean([
        sum(weights[s, i, h] * values[s, i, h] for s in seeds for i in examples)
        / sum(weights[s, i, h] for s in seeds for i in examples) for h in range(3)
    ])  # fmt: skip
    a = np.bincount(seeds, minlength=2)[None].astype(float)
    b = np.bincount(examples, minlength=5)[None].astype(float)
    assert weighted_cell_mean(values, weights, a, b)[0] == pytest.approx(naive)


def test_interval_covers_a_known_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    true_difference, n, trials = 0.5, 60, 400
    covered, excluded_zero = 0, 0
    for t in range(trials):
        difficulty = rng.normal(0, 2, n)  # shared by both runs: cancels in the paired difference
        base = 5 + difficulty + rng.normal(0, 1, n)
        weighted = 5 + difficulty - true_difference + rng.normal(0, 1, n)
        out = crossed_bootstrap(weighted - base, n_resamples=1000, seed=t)
        covered += out["low"] <= -true_difference <= out["high"]
        excluded_zero += out["high"] < 0
    assert 0.91 <= covered / trials <= 0.98, covered / trials
    assert excluded_zero / trials > 0.6  # a paired design sees the effect despite the large shared spread


def test_seed_to_seed_variation_widens_the_interval():
    rng = np.random.default_rng(5)
    per_example = rng.normal(-0.2, 0.5, 40)
    same = np.stack([per_example] * 3)
    shifted = same + np.array([[-1.0], [0.0], [1.0]])  # same mean, seeds disagree
    narrow, wide = crossed_bootstrap(same), crossed_bootstrap(shifted)
    assert narrow["estimate"] == pytest.approx(wide["estimate"])
    assert wide["high"] - wide["low"] > 3 * (narrow["high"] - narrow["low"])
    one_seed = crossed_bootstrap(per_example)  # one seed: the plain paired bootstrap over examples
    assert (one_seed["low"], one_seed["high"]) == pytest.approx((narrow["low"], narrow["high"]), abs=0.02)


def test_nan_cells_are_left_out_and_bad_shapes_are_refused():
    out = crossed_bootstrap([1.0, np.nan, 3.0], [1.0, 5.0, 1.0])
    assert out["estimate"] == 2.0 and 1.0 <= out["low"] <= out["high"] <= 3.0
    with pytest.raises(ValueError, match="expected the same shape"):
        crossed_bootstrap([1.0, 2.0], [1.0])


@pytest.mark.parametrize(
    ("low", "high", "lower_is_better", "expected"),
    [(-0.3, -0.1, True, "better"), (0.1, 0.3, True, "worse"), (-0.1, 0.2, True, "inconclusive"),
     (0.1, 0.3, False, "better"), (-0.3, -0.1, False, "worse"), (0.0, 0.0, False, "inconclusive"),
     (float("nan"), 1.0, True, "inconclusive")],
)  # fmt: skip
def test_verdict(low, high, lower_is_better, expected):
    assert verdict(low, high, lower_is_better) == expected


def test_auroc_matches_a_pairwise_count_and_its_interval_is_sane():
    rng = np.random.default_rng(2)
    labels = rng.random(50) < 0.4
    scores = rng.normal(size=50) + labels * 1.0
    scores[:5] = scores[5]  # ties
    pairs = [(p, n) for p in scores[labels] for n in scores[~labels]]  # every positive-negative pair
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert auroc(scores, labels) == pytest.approx(expected)
    assert auroc(scores, labels) == pytest.approx(binary_auroc(torch.tensor(scores), torch.tensor(labels)))
    out = auroc_bootstrap([scores], labels, n_resamples=500)
    assert out["estimate"] == pytest.approx(expected) and out["low"] < expected < out["high"]
    separated = auroc_bootstrap([labels.astype(float)], labels, n_resamples=200)
    assert (separated["low"], separated["high"]) == (1.0, 1.0)
