"""Stage samplers: proportions per curriculum phase, balance, correct-only, determinism, resume, fallbacks."""

from __future__ import annotations

import logging

import datasets
import numpy as np
import pytest
import torch

from wmtp_hf.data import DataError
from wmtp_hf.data.sampling import critic_indices, curriculum_indices, read_metadata
from wmtp_hf.train.sampling import StageSampler, select_for_stage, stage_indices

# progress phase bounds and expected (low, medium, high) shares, straight from docs/design.md §3.4
PHASES = [((0.0, 0.3), (0.7, 0.3, 0.0)), ((0.3, 0.7), (0.3, 0.6, 0.1)), ((0.7, 1.0), (0.1, 0.5, 0.4))]


def _meta(n=50_000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(n) < 0.25, rng.integers(-1, 14, n)  # 25% correct; some unknown / out-of-range


def _bucket(d):
    return np.select([(d >= 1) & (d <= 3), (d >= 4) & (d <= 7), (d >= 8) & (d <= 11)], [0, 1, 2], -1)


def _dataset(is_correct, difficulty):
    text = [f"row {i}" for i in range(len(is_correct))]
    return datasets.Dataset.from_dict(
        {"output": text, "is_correct": is_correct.tolist(), "difficulty": difficulty.tolist()}
    )


def test_curriculum_proportions_per_phase():
    is_correct, difficulty = _meta()
    n = 20_000
    idx = curriculum_indices(is_correct, difficulty, n, seed=3)
    assert len(idx) == n
    for (lo, hi), shares in PHASES:
        window = idx[int(lo * n) : int(hi * n)]
        buckets = _bucket(difficulty[window])
        assert (buckets >= 0).all()
        for b, share in enumerate(shares):
            assert abs((buckets == b).mean() - share) < 0.01
            in_bucket = window[buckets == b]
            if len(in_bucket):
                assert abs(is_correct[in_bucket].mean() - 0.5) < 0.01
        # a window anywhere inside the phase holds the phase's mixture (shuffled within the phase)
        middle = idx[int((lo + 0.1) * n) : int((lo + 0.2) * n)]
        assert abs((_bucket(difficulty[middle]) == 1).mean() - shares[1]) < 0.05


def test_critic_balanced_and_correct_only():
    is_correct, difficulty = _meta()
    idx = critic_indices(is_correct, 10_000, seed=1)
    assert is_correct[idx].mean() == 0.5
    assert len(np.unique(idx)) == 10_000  # no repeats while a label still has unused rows
    ds = _dataset(is_correct, difficulty)
    base = stage_indices("baseline", ds, seed=2)
    assert is_correct[base].all() and sorted(base.tolist()) == np.flatnonzero(is_correct).tolist()
    # more samples than correct rows: every correct row is used, as evenly as epochs allow, no other row
    rho1 = stage_indices("rho1", ds, n_samples=30_000, seed=2)
    uses = np.bincount(rho1, minlength=len(is_correct))
    assert len(rho1) == 30_000 and uses[~is_correct].max() == 0
    assert (
        uses[is_correct].min() == 30_000 // is_correct.sum()
        and uses[is_correct].max() - uses[is_correct].min() <= 1
    )


def test_baseline_train_rows_all_takes_every_row():
    """`train_rows: all` (a self-distill folder): every row, right or wrong, once per pass in a seeded
    order; the default keeps only the correct rows."""
    from wmtp_hf.train.stages import BaselineTrainer, build_config

    is_correct, difficulty = _meta(1_000)
    ds = _dataset(is_correct, difficulty)
    every = build_config("baseline", overrides={"train_rows": "all", "seed": 3})
    order = BaselineTrainer.sample_order(every, ds)
    assert sorted(order.tolist()) == list(range(1_000)) and not np.array_equal(order, np.arange(1_000))
    twice = BaselineTrainer.sample_order(
        build_config("baseline", overrides={"train_rows": "all", "n_samples": 2_000}), ds
    )
    assert np.bincount(twice, minlength=1_000).tolist() == [2] * 1_000
    correct = BaselineTrainer.sample_order(build_config("baseline", overrides={"seed": 3}), ds)
    assert sorted(correct.tolist()) == np.flatnonzero(is_correct).tolist()
    with pytest.raises(Exception, match="train_rows: expected one of correct, all, got 'some'"):
        build_config("baseline", overrides={"train_rows": "some"})


def test_deterministic_and_resumable():
    is_correct, difficulty = _meta(5_000)
    ds = _dataset(is_correct, difficulty)
    for stage in ("critic", "verifiable", "baseline"):
        a = stage_indices(stage, ds, n_samples=2_000, seed=7)
        assert np.array_equal(a, stage_indices(stage, ds, n_samples=2_000, seed=7))
        assert not np.array_equal(a, stage_indices(stage, ds, n_samples=2_000, seed=8))
        sampler = StageSampler.for_stage(stage, ds, n_samples=2_000, seed=7)
        consumed = [i for _, i in zip(range(700), iter(sampler), strict=False)]
        state = sampler.state_dict() | {"start": 700}
        resumed = StageSampler.for_stage(stage, ds, n_samples=2_000, seed=7)
        resumed.load_state_dict(state)
        assert consumed + list(resumed) == a.tolist() and len(resumed) == 1_300
    loader = torch.utils.data.DataLoader(range(5_000), batch_size=100, sampler=StageSampler(a))
    assert torch.cat(list(loader)).tolist() == a.tolist()


def test_select_for_stage_is_a_view_in_order():
    is_correct, difficulty = _meta(3_000)
    ds = _dataset(is_correct, difficulty)
    picked = select_for_stage(ds, "critic", n_samples=100, seed=0)
    idx = stage_indices("critic", ds, n_samples=100, seed=0)
    assert picked["output"] == [f"row {i}" for i in idx]
    got_correct, got_difficulty = read_metadata(picked)
    assert (
        got_correct.tolist() == is_correct[idx].tolist()
        and got_difficulty.tolist() == difficulty[idx].tolist()
    )


def test_fallbacks_warn_once(caplog):
    n = 4_000
    is_correct = np.arange(n) % 2 == 0
    difficulty = np.where(np.arange(n) < 2_000, 2, 5)  # no "high" bucket
    difficulty[(difficulty == 5) & ~is_correct] = 2  # "medium" has only correct rows
    with caplog.at_level(logging.WARNING, logger="wmtp_hf.data.sampling"):
        idx = curriculum_indices(is_correct, difficulty, 1_000, seed=0)
    assert len(caplog.records) == 1
    assert "bucket 'high' is empty" in caplog.text and "bucket 'medium' has no incorrect rows" in caplog.text
    last = idx[700:]  # phase 3 wants 10/50/40: high's share moves to low/medium (1:5)
    assert abs((difficulty[last] == 2).mean() - 1 / 6) < 0.01
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wmtp_hf.data.sampling"):
        idx = curriculum_indices(is_correct, np.full(n, -1), 1_000, seed=0)
    assert "no row has a bucketed difficulty" in caplog.text and is_correct[idx].mean() == 0.5
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wmtp_hf.data.sampling"):
        idx = critic_indices(np.ones(10, dtype=bool), 20, seed=0)
    assert "no incorrect rows" in caplog.text and len(idx) == 20


def test_errors():
    ds = _dataset(np.zeros(4, dtype=bool), np.ones(4, dtype=np.int64))
    with pytest.raises(DataError, match="unknown stage 'ppo'; valid: baseline, critic, verifiable, rho1"):
        stage_indices("ppo", ds)
    with pytest.raises(DataError, match="no row has is_correct=True"):
        stage_indices("baseline", ds)
    with pytest.raises(DataError, match="lacks column"):
        read_metadata(ds.remove_columns("difficulty"))
