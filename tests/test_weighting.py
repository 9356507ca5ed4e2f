"""Token-weighting math (wmtp_hf.weighting) against naive per-example Python loops."""

from __future__ import annotations

import json
import math
import multiprocessing
import random
import socket

import numpy as np
import pytest
import torch

from wmtp_hf.losses import bradley_terry_loss, masked_row_mean
from wmtp_hf.stats import binary_auroc, explained_variance
from wmtp_hf.weighting import (
    EmaNormalizer,
    excess_losses,
    gae,
    lambda_returns,
    mc_returns,
    normalize_advantages,
    ref_losses_per_head,
    response_token_mask,
    rho1_keep_counts,
    rho1_weights,
    td_errors,
    td_weights,
    tensor_stats,
    token_mask_from_value_mask,
    value_positions,
    weight_stats,
)

SEEDS = range(12)
DTYPES = [torch.float32, torch.float64]


# --------------------------------------------------------------------------------------------------------
# Random batches
# --------------------------------------------------------------------------------------------------------


def make_row(rng: random.Random, seq: int, prompt: int, response: int, left_pad: bool) -> list[int]:
    """Labels of one row: -100 for padding and prompt, token ids for the response."""
    pad = seq - prompt - response
    body = [-100] * prompt + [rng.randrange(1, 50) for _ in range(response)]
    return [-100] * pad + body if left_pad else body + [-100] * pad


def make_labels(seed: int) -> torch.Tensor:
    """`[B, T]` labels with random prompt/response lengths, left or right padding, one-token and empty
    responses (B in 1..5, T in 1..12)."""
    rng = random.Random(seed)
    batch, seq = rng.randint(1, 5), rng.randint(1, 12)
    rows = []
    for b in range(batch):
        kind = rng.choice(["any", "any", "empty", "single"]) if b else "any"
        max_response = seq - 1
        if kind == "empty" or max_response == 0:
            response = 0
        elif kind == "single":
            response = 1
        else:
            response = rng.randint(0, max_response)
        prompt = rng.randint(1, seq - response)
        rows.append(make_row(rng, seq, prompt, response, left_pad=rng.random() < 0.5))
    return torch.tensor(rows, dtype=torch.long)


def gappy_mask(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A random bool mask with gaps (not contiguous responses)."""
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.rand(shape, generator=g) < 0.5


def batch(seed: int, dtype: torch.dtype = torch.float64):
    """labels, value mask, values and rewards of a random batch."""
    labels = make_labels(seed)
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(labels.shape, generator=g, dtype=torch.float64).to(dtype)
    rewards = (torch.rand(labels.shape[0], generator=g) < 0.5).to(dtype)
    return labels, value_positions(labels), values, rewards


def masks_for(seed: int):
    """Value masks of a contiguous-response batch and of a gappy random mask of the same shape."""
    labels = make_labels(seed)
    return [value_positions(labels), gappy_mask(seed, tuple(labels.shape))]


# --------------------------------------------------------------------------------------------------------
# Naive references (rows and positions with Python floats, following the definitions literally)
# --------------------------------------------------------------------------------------------------------


def naive_value_positions(labels):
    return [[t + 1 < len(row) and row[t + 1] != -100 for t in range(len(row))] for row in labels]


def naive_mc(rewards, vmask, gamma):
    out = []
    for r, row in zip(rewards, vmask, strict=True):
        line = []
        for t in range(len(row)):
            later = sum(row[t + 1 :])
            line.append(gamma**later * r if row[t] else 0.0)
        out.append(line)
    return out


def naive_lambda(values, rewards, vmask, gamma, lam):
    out = []
    for v, r, row in zip(values, rewards, vmask, strict=True):
        line = [0.0] * len(row)
        positions = [t for t, m in enumerate(row) if m]
        for i in reversed(range(len(positions))):
            t = positions[i]
            if i == len(positions) - 1:
                line[t] = r
            else:
                nxt = positions[i + 1]
                line[t] = gamma * ((1 - lam) * v[nxt] + lam * line[nxt])
        out.append(line)
    return out


def naive_td(values, rewards, vmask, gamma):
    out = []
    for v, r, row in zip(values, rewards, vmask, strict=True):
        tokens = [j for j in range(1, len(row)) if row[j - 1]]
        line = [0.0] * len(row)
        for j in tokens:
            line[j] = (r if j == tokens[-1] else gamma * v[j]) - v[j - 1]
        out.append(line)
    return out


def naive_gae(deltas, tmask, gamma, lam):
    out = []
    for d, row in zip(deltas, tmask, strict=True):
        positions = [j for j, m in enumerate(row) if m]
        line = [0.0] * len(row)
        for i, j in enumerate(positions):
            line[j] = sum((gamma * lam) ** n * d[p] for n, p in enumerate(positions[i:]))
        out.append(line)
    return out


def naive_moments(adv, mask):
    vals = [a for arow, mrow in zip(adv, mask, strict=True) for a, m in zip(arow, mrow, strict=True) if m]
    if not vals:
        return vals, 0.0, 0.0
    mean = sum(vals) / len(vals)
    var = sum((a - mean) ** 2 for a in vals) / len(vals)
    return vals, mean, var


def close(got: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected = torch.tensor(expected, dtype=torch.float64).reshape(got.shape)
    torch.testing.assert_close(got.to(torch.float64), expected, atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_value_positions_and_token_masks(seed):
    labels = make_labels(seed)
    vmask = value_positions(labels)
    assert vmask.dtype == torch.bool and vmask.shape == labels.shape
    assert vmask.tolist() == naive_value_positions(labels.tolist())
    # No response token sits at position 0 (prompts are non-empty), so both token masks coincide.
    assert torch.equal(token_mask_from_value_mask(vmask), response_token_mask(labels))
    gappy = gappy_mask(seed, tuple(labels.shape))
    expected = [[j > 0 and row[j - 1] for j in range(len(row))] for row in gappy.tolist()]
    assert token_mask_from_value_mask(gappy).tolist() == expected


def test_value_positions_edge_rows():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100], [-100, -100, -100, -100]])
    assert value_positions(labels).tolist() == [
        [False, True, True, False],
        [True, False, False, False],
        [False, False, False, False],
    ]
    assert value_positions(torch.tensor([[3]])).tolist() == [[False]]


# --------------------------------------------------------------------------------------------------------
# Returns, TD errors, GAE
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mc_returns_matches_naive(seed, dtype):
    _, _, _, rewards = batch(seed, dtype)
    for vmask in masks_for(seed):
        for gamma in (1.0, 0.9, 0.5):
            got = mc_returns(rewards, vmask, gamma)
            assert got.dtype == dtype
            close(got, naive_mc(rewards.tolist(), vmask.tolist(), gamma))
    # gamma = 1: G_t = R at every value position.
    vmask = masks_for(seed)[0]
    ones = mc_returns(rewards, vmask, 1.0)
    assert torch.equal(ones, torch.where(vmask, rewards[:, None].expand_as(ones), 0.0))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lambda_returns_matches_naive(seed, dtype):
    _, _, values, rewards = batch(seed, dtype)
    for vmask in masks_for(seed):
        for gamma, lam in [(1.0, 0.95), (0.9, 0.5), (0.99, 0.0), (0.8, 1.0)]:
            got = lambda_returns(values, rewards, vmask, gamma, lam)
            assert got.dtype == dtype
            expected = naive_lambda(values.tolist(), rewards.tolist(), vmask.tolist(), gamma, lam)
            close(got, expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_lambda_returns_limits(seed):
    _, _, values, rewards = batch(seed)
    for vmask in masks_for(seed):
        for gamma in (1.0, 0.9):
            close(
                lambda_returns(values, rewards, vmask, gamma, 1.0), mc_returns(rewards, vmask, gamma).tolist()
            )
            # lam = 0: the TD(0) target gamma * V_{t'} (next value position), R at the last one.
            expected = []
            for v, r, row in zip(values.tolist(), rewards.tolist(), vmask.tolist(), strict=True):
                positions = [t for t, m in enumerate(row) if m]
                line = [0.0] * len(row)
                for i, t in enumerate(positions):
                    line[t] = gamma * v[positions[i + 1]] if i + 1 < len(positions) else r
                expected.append(line)
            close(lambda_returns(values, rewards, vmask, gamma, 0.0), expected)


def test_lambda_returns_detaches_values():
    labels = torch.tensor([[-100, -100, 4, 5, 6]])
    values = torch.rand(1, 5, requires_grad=True)
    out = lambda_returns(values, torch.ones(1), value_positions(labels), 0.9, 0.5)
    assert not out.requires_grad


def test_scan_crosses_chunks():
    """Rows longer than the scan's chunk (64) with gaps still match the naive recursion."""
    g = torch.Generator().manual_seed(3)
    vmask = torch.rand(3, 150, generator=g) < 0.7
    vmask[1] = False
    vmask[2, 60:140] = False
    values = torch.rand(3, 150, generator=g, dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    got = lambda_returns(values, rewards, vmask, 0.99, 0.9)
    close(got, naive_lambda(values.tolist(), rewards.tolist(), vmask.tolist(), 0.99, 0.9))
    deltas = torch.randn(3, 150, generator=g, dtype=torch.float64)
    close(gae(deltas, vmask, 0.99, 0.95), naive_gae(deltas.tolist(), vmask.tolist(), 0.99, 0.95))
    # Garbage (NaN, inf) at masked-out positions never leaks into the masked ones.
    dirty = torch.where(vmask, deltas, torch.tensor([math.nan, math.inf, -math.inf]).repeat(50)[None, :])
    torch.testing.assert_close(gae(dirty, vmask, 0.99, 0.95), gae(deltas, vmask, 0.99, 0.95))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_td_errors_matches_naive(seed, dtype):
    _, _, values, rewards = batch(seed, dtype)
    for vmask in masks_for(seed):
        for gamma in (1.0, 0.9):
            got = td_errors(values, rewards, vmask, gamma)
            assert got.dtype == dtype
            close(got, naive_td(values.tolist(), rewards.tolist(), vmask.tolist(), gamma))


@pytest.mark.parametrize("seed", SEEDS)
def test_td_errors_of_perfect_critic_are_zero(seed):
    labels, vmask, _, rewards = batch(seed)
    values = torch.where(vmask, rewards[:, None].expand(vmask.shape), 0.0)
    deltas = td_errors(values, rewards, vmask, 1.0)
    assert torch.equal(deltas, torch.zeros_like(deltas))
    assert not (token_mask_from_value_mask(vmask) & ~response_token_mask(labels)).any()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gae_matches_naive(seed, dtype):
    labels, _, _, _ = batch(seed, dtype)
    g = torch.Generator().manual_seed(seed)
    deltas = torch.randn(labels.shape, generator=g, dtype=torch.float64).to(dtype)
    for vmask in masks_for(seed):
        tmask = token_mask_from_value_mask(vmask)
        for mask in (tmask, vmask):
            for gamma, lam in [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0)]:
                got = gae(deltas, mask, gamma, lam)
                assert got.dtype == dtype
                close(got, naive_gae(deltas.tolist(), mask.tolist(), gamma, lam))
            assert torch.equal(gae(deltas, mask, 0.9, 0.0), torch.where(mask, deltas, 0.0))


# --------------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------------


def adv_batch(seed: int, dtype: torch.dtype = torch.float64):
    labels = make_labels(seed)
    g = torch.Generator().manual_seed(seed)
    adv = (torch.randn(labels.shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    return adv, response_token_mask(labels)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize_none_and_zscore(seed, dtype):
    adv, mask = adv_batch(seed, dtype)
    none = normalize_advantages(adv, mask, "none")
    assert none.dtype == dtype and torch.equal(none, torch.where(mask, adv, 0.0))

    got = normalize_advantages(adv, mask, "zscore")
    assert got.dtype == dtype
    _, mean, var = naive_moments(adv.tolist(), mask.tolist())
    expected = [
        [(a - mean) / (math.sqrt(var) + 1e-6) if m else 0.0 for a, m in zip(arow, mrow, strict=True)]
        for arow, mrow in zip(adv.tolist(), mask.tolist(), strict=True)
    ]
    close(got, expected, atol=1e-5)
    vals = got[mask].double()
    if vals.numel() > 1 and var > 1e-6:
        assert vals.mean().item() == pytest.approx(0.0, abs=1e-6)
        assert vals.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_normalize_zscore_empty_and_bad_mode():
    adv = torch.randn(2, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    assert torch.equal(normalize_advantages(adv, mask, "zscore"), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="normalize: expected one of none, zscore, ema, got 'l2'"):
        normalize_advantages(adv, mask, "l2")
    with pytest.raises(ValueError, match="state"):
        normalize_advantages(adv, mask, "ema")


def naive_ema(batches, momentum, warmup):
    """(mean, var, updates) after one step per batch of Python floats."""
    mean, var, updates = 0.0, 1.0, 0
    for vals in batches:
        if not vals:
            continue
        bm = sum(vals) / len(vals)
        bv = sum((v - bm) ** 2 for v in vals) / len(vals)
        m = max(momentum, 1 / (updates + 1)) if updates < warmup else momentum
        mean, var, updates = (1 - m) * mean + m * bm, (1 - m) * var + m * bv, updates + 1
    return mean, var, updates


@pytest.mark.parametrize("momentum, warmup", [(0.1, 3), (0.5, 5), (0.1, 0), (1.0, 2)])
def test_ema_first_step_warmup_and_momentum(momentum, warmup):
    g = torch.Generator().manual_seed(0)
    state = EmaNormalizer(momentum=momentum, warmup_steps=warmup)
    mask = torch.ones(2, 4, dtype=torch.bool)
    batches, means = [], []
    for step in range(7):
        adv = torch.randn(2, 4, generator=g, dtype=torch.float64) + step
        batches.append(adv.flatten().tolist())
        means.append(adv.mean().item())
        state.accumulate(adv, mask)
        state.step()
        if step == 0 and warmup > 0:
            # The first update takes the batch statistics entirely.
            assert state.mean == pytest.approx(means[0], abs=1e-12)
            assert state.var == pytest.approx(adv.var(unbiased=False).item(), abs=1e-12)
            assert state.std == pytest.approx(adv.std(unbiased=False).item(), abs=1e-12)
        if step < warmup and all(1 / (u + 1) >= momentum for u in range(step + 1)):
            # Equal counts: during warm-up the mean is the running average of the batch means.
            assert state.mean == pytest.approx(sum(means) / len(means), abs=1e-12)
        exp_mean, exp_var, exp_updates = naive_ema(batches, momentum, warmup)
        assert state.mean == pytest.approx(exp_mean, abs=1e-12)
        assert state.var == pytest.approx(exp_var, abs=1e-12)
        assert state.updates == exp_updates == step + 1
    # After warm-up: plain momentum.
    before = state.mean
    adv = torch.full((2, 4), 10.0, dtype=torch.float64)
    state.accumulate(adv, mask)
    state.step()
    assert state.mean == pytest.approx((1 - momentum) * before + momentum * 10.0, abs=1e-12)


def test_ema_rejects_bad_settings():
    with pytest.raises(ValueError, match="momentum"):
        EmaNormalizer(momentum=0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        EmaNormalizer(warmup_steps=-1)


def test_ema_step_without_data_keeps_state():
    state = EmaNormalizer()
    state.step()
    assert (state.mean, state.var, state.updates) == (0.0, 1.0, 0)
    state.accumulate(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    state.step()
    assert state.updates == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_ema_normalize_and_micro_batches(seed):
    adv, mask = adv_batch(seed)
    fresh = EmaNormalizer(momentum=0.2, warmup_steps=2)
    got = normalize_advantages(adv, mask, "ema", fresh)
    assert torch.equal(got, torch.where(mask, adv, 0.0))
    fresh.step()
    vals, mean, var = naive_moments(adv.tolist(), mask.tolist())
    if vals:
        assert fresh.updates == 1
        assert fresh.mean == pytest.approx(mean, abs=1e-12) and fresh.var == pytest.approx(var, abs=1e-12)

    # One call vs the same batch split into two micro-batches: same state, same normalisation.
    whole, split = EmaNormalizer(0.2, 2), EmaNormalizer(0.2, 2)
    for s in (whole, split):
        s.load_state_dict({"momentum": 0.2, "warmup_steps": 2, "mean": 0.3, "var": 2.0, "updates": 1})
    out_whole = normalize_advantages(adv, mask, "ema", whole)
    cut = adv.shape[0] // 2
    parts = [
        normalize_advantages(adv[:cut], mask[:cut], "ema", split),
        normalize_advantages(adv[cut:], mask[cut:], "ema", split),
    ]
    assert torch.equal(out_whole, torch.cat(parts))
    expected = [
        [(a - 0.3) / (math.sqrt(2.0) + 1e-6) if m else 0.0 for a, m in zip(arow, mrow, strict=True)]
        for arow, mrow in zip(adv.tolist(), mask.tolist(), strict=True)
    ]
    close(out_whole, expected)
    whole.step()
    split.step()
    assert whole.state_dict() == pytest.approx(split.state_dict(), abs=1e-12)


def test_ema_state_dict_json_round_trip():
    state = EmaNormalizer(momentum=0.05, warmup_steps=4)
    state.accumulate(torch.randn(3, 5), torch.ones(3, 5, dtype=torch.bool))
    state.step()
    restored = EmaNormalizer()
    restored.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert restored.state_dict() == state.state_dict()
    assert set(state.state_dict()) == {"momentum", "warmup_steps", "mean", "var", "updates"}
    adv, mask = torch.randn(2, 3), torch.ones(2, 3, dtype=torch.bool)
    assert torch.equal(
        normalize_advantages(adv, mask, "ema", state), normalize_advantages(adv, mask, "ema", restored)
    )


def _distributed_worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        g = torch.Generator().manual_seed(0)
        adv = torch.randn(4, 6, generator=g, dtype=torch.float64)
        mask = torch.rand(4, 6, generator=g) < 0.6
        rows = slice(0, 2) if rank == 0 else slice(2, 4)
        z = normalize_advantages(adv[rows], mask[rows], "zscore")
        state = EmaNormalizer()
        if rank == 0:  # rank 1 accumulates nothing but still joins the all-reduce
            state.accumulate(adv, mask)
        state.step()
        queue.put((rank, z.tolist(), state.state_dict()))  # plain lists: no shared memory
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not torch.distributed.is_available() or "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs torch.distributed (gloo) and fork",
)
def test_zscore_and_ema_all_reduce_across_processes():
    """Two gloo processes, each with half of the rows, normalise as one process with the whole batch."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_distributed_worker, args=(rank, port, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict((rank, (z, sd)) for rank, z, sd in (queue.get(timeout=60) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=g) < 0.6
    expected = normalize_advantages(adv, mask, "zscore")
    torch.testing.assert_close(torch.tensor(results[0][0] + results[1][0], dtype=torch.float64), expected)
    single = EmaNormalizer()
    single.accumulate(adv, mask)
    single.step()
    assert results[0][1] == pytest.approx(single.state_dict()) == results[1][1]


# --------------------------------------------------------------------------------------------------------
# Weights and statistics
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_td_weights_clamps_and_masks(dtype):
    adv = torch.tensor([[-10.0, -0.5, 0.0, 0.5, 10.0, 1e4]], dtype=dtype)
    mask = torch.tensor([[True, True, True, True, True, False]])
    got = td_weights(adv, beta=0.9, w_min=0.1, w_max=5.0, mask=mask)
    assert got.dtype == dtype
    expected = [[min(max(math.exp(a / 0.9), 0.1), 5.0) for a in adv[0, :5].tolist()] + [0.0]]
    close(got, expected)
    unmasked = td_weights(adv, 0.9, 0.1, 5.0)
    assert unmasked[0, -1].item() == 5.0 and unmasked[0, 0].item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="beta"):
        td_weights(adv, 0.0, 0.1, 5.0)
    with pytest.raises(ValueError, match="w_min"):
        td_weights(adv, 1.0, -0.1, 5.0)
    with pytest.raises(ValueError, match="w_max"):
        td_weights(adv, 1.0, 2.0, 1.0)


def naive_weight_stats(weights, mask, w_min, w_max):
    w = [x for x, m in zip(weights, mask, strict=True) if m]
    if not w:
        return {}
    mean = sum(w) / len(w)
    total = sum(w)
    entropy = -sum((x / total) * math.log(x / total) for x in w if x > 0) if total > 0 else 0.0
    return {
        "weight_mean": mean,
        "weight_std": math.sqrt(sum((x - mean) ** 2 for x in w) / len(w)),
        "weight_min": min(w),
        "weight_max": max(w),
        "weight_entropy": entropy,
        "weight_clipped_frac": sum(x <= w_min or x >= w_max for x in w) / len(w),
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_weight_and_tensor_stats_match_naive(seed):
    g = torch.Generator().manual_seed(seed)
    shape = (3, 7) if seed % 2 else (3, 7, 2)
    adv = torch.randn(shape, generator=g) * 3
    mask = gappy_mask(seed, shape)
    weights = td_weights(adv, 0.9, 0.1, 5.0, mask)
    got = weight_stats(weights, mask, 0.1, 5.0)
    expected = naive_weight_stats(weights.flatten().tolist(), mask.flatten().tolist(), 0.1, 5.0)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    stats = tensor_stats(adv, mask, "td")
    vals = [x for x, m in zip(adv.flatten().tolist(), mask.flatten().tolist(), strict=True) if m]
    mean = sum(vals) / len(vals)
    assert stats == pytest.approx(
        {
            "td_mean": mean,
            "td_std": math.sqrt(sum((x - mean) ** 2 for x in vals) / len(vals)),
            "td_min": min(vals),
            "td_max": max(vals),
        },
        abs=1e-6,
    )


def test_stats_empty_mask_and_zero_weights():
    none = torch.zeros(2, 3, dtype=torch.bool)
    assert weight_stats(torch.ones(2, 3), none, 0.1, 5.0) == {}
    assert tensor_stats(torch.ones(2, 3), none, "td") == {}
    zeros = weight_stats(torch.zeros(2, 3), ~none, 0.0, 5.0)
    assert zeros["weight_entropy"] == 0.0 and zeros["weight_clipped_frac"] == 1.0
    uniform = weight_stats(torch.ones(2, 3), ~none, 0.1, 5.0)
    assert uniform["weight_entropy"] == pytest.approx(math.log(6))


# --------------------------------------------------------------------------------------------------------
# Critic evaluation
# --------------------------------------------------------------------------------------------------------


def brute_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_auroc_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 40, (1,), generator=g))
    for scores in (torch.randint(0, 3, (n,), generator=g).float(), torch.randn(n, generator=g)):
        labels = torch.randint(0, 2, (n,), generator=g)
        expected = brute_auroc(scores.tolist(), labels.tolist())
        got = binary_auroc(scores, labels)
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)
        assert binary_auroc(scores, labels.bool()) == pytest.approx(got, nan_ok=True)


def test_binary_auroc_edge_cases():
    assert math.isnan(binary_auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))
    assert math.isnan(binary_auroc(torch.tensor([0.1, 0.2]), torch.tensor([0, 0])))
    assert math.isnan(binary_auroc(torch.tensor([]), torch.tensor([])))
    assert binary_auroc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0
    assert binary_auroc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_explained_variance_matches_numpy(seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(3, 8, generator=g)
    pred = target + 0.5 * torch.randn(3, 8, generator=g)
    mask = gappy_mask(seed, (3, 8))
    t, p = target[mask].double().numpy(), pred[mask].double().numpy()
    expected = 1 - np.var(t - p) / np.var(t) if t.size and np.var(t) > 0 else float("nan")
    got = explained_variance(pred, target, mask)
    assert got == pytest.approx(expected, abs=1e-9, nan_ok=True)


def test_explained_variance_nan_cases():
    mask = torch.ones(2, 2, dtype=torch.bool)
    assert math.isnan(explained_variance(torch.rand(2, 2), torch.ones(2, 2), mask))
    assert math.isnan(explained_variance(torch.rand(2, 2), torch.rand(2, 2), ~mask))
    x = torch.rand(2, 2)
    assert explained_variance(x, x, mask) == 1.0


# --------------------------------------------------------------------------------------------------------
# Rho-1
# --------------------------------------------------------------------------------------------------------


def rho1_case(seed: int, n_heads: int):
    labels = make_labels(seed)
    batch_size, seq = labels.shape
    g = torch.Generator().manual_seed(seed)
    # Rounded to one decimal so ties are common.
    token_losses = (torch.rand(batch_size, seq, n_heads, generator=g) * 2).mul(10).round().div(10)
    ref = (torch.rand(batch_size, seq, generator=g) * 2).mul(10).round().div(10)
    ref = torch.where(response_token_mask(labels), ref, 0.0)
    mask = torch.zeros(batch_size, seq, n_heads, dtype=torch.bool)
    for k in range(n_heads):
        mask[:, : max(seq - 1 - k, 0), k] = response_token_mask(labels)[:, 1 + k :]
    return token_losses, ref, mask


def naive_rho1(token_losses, ref, mask, k_percent, sub):
    """Per head: sort the valid (excess on the 2^-10 grid, flat index) entries, keep the first n_keep; `sub`
    does the subtraction in the tensor's precision (Python floats for float64, numpy float32 for float32)."""
    batch_size, seq, n_heads = len(token_losses), len(token_losses[0]), len(token_losses[0][0])
    out = [[[0.0] * n_heads for _ in range(seq)] for _ in range(batch_size)]
    counts = []
    for k in range(n_heads):
        valid = []
        for b in range(batch_size):
            for t in range(seq):
                if mask[b][t][k]:
                    r = ref[b][t + 1 + k] if t + 1 + k < seq else 0.0
                    excess = round(sub(token_losses[b][t][k], r) * 1024) / 1024  # Python round: half to even
                    valid.append((excess, b * seq + t, b, t))
        n_keep = max(round(k_percent * len(valid)), 1) if valid else 0
        counts.append(n_keep)
        for _, _, b, t in sorted(valid, key=lambda e: (-e[0], e[1]))[:n_keep]:
            out[b][t][k] = 1.0
    return out, counts


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k_percent", [0.6, 0.25, 0.5, 1.0])
def test_rho1_weights_match_naive_sort(seed, dtype, k_percent):
    n_heads = 1 + seed % 3
    token_losses, ref, mask = rho1_case(seed, n_heads)
    token_losses, ref = token_losses.to(dtype), ref.to(dtype)
    got = rho1_weights(token_losses, ref, mask, k_percent)
    assert got.dtype == dtype and got.shape == token_losses.shape
    if dtype == torch.float64:
        sub = float.__sub__
    else:
        sub = lambda a, b: float(np.float32(a) - np.float32(b))  # noqa: E731
    expected, counts = naive_rho1(token_losses.tolist(), ref.tolist(), mask.tolist(), k_percent, sub)
    assert got.tolist() == expected
    kept = got.sum(dim=(0, 1)).long()
    assert kept.tolist() == rho1_keep_counts(mask, k_percent).tolist() == counts
    assert not (got.bool() & ~mask).any()
    if k_percent == 1.0:
        assert torch.equal(got, mask.to(got.dtype))


def test_rho1_weights_large_batch_ties():
    """Many exact ties in a large batch: the selection still follows (largest excess, smallest index)."""
    g = torch.Generator().manual_seed(7)
    batch_size, seq, n_heads = 4, 3000, 2
    token_losses = torch.randint(0, 3, (batch_size, seq, n_heads), generator=g).to(torch.float64)
    ref = torch.zeros(batch_size, seq, dtype=torch.float64)
    mask = torch.rand(batch_size, seq, n_heads, generator=g) < 0.8
    mask[:, -2:, :] = False
    got = rho1_weights(token_losses, ref, mask, 0.3)
    for k in range(n_heads):
        flat = token_losses[..., k].flatten().tolist()
        valid = [i for i, m in enumerate(mask[..., k].flatten().tolist()) if m]
        n_keep = round(0.3 * len(valid))
        kept = sorted(sorted(valid, key=lambda i: (-flat[i], i))[:n_keep])
        assert torch.nonzero(got[..., k].flatten()).flatten().tolist() == kept


@pytest.mark.parametrize("seed", SEEDS)
def test_rho1_noise_below_the_grid_is_a_tie(seed):
    """Reference losses that differ only by float noise (cached vs live) keep the same tokens; all tied
    (the start model as reference), the first valid targets by position are kept, as the naive loop says."""
    token_losses, _, mask = rho1_case(seed, 2)
    g = torch.Generator().manual_seed(seed)
    ref = torch.zeros(token_losses.shape[:2])
    ref[:, 1:] = token_losses[:, :-1, 0]  # head 0's excess is 0 everywhere: all tied
    noisy = [ref + (torch.rand(ref.shape, generator=g) - 0.5) * 1e-4 for _ in range(2)]
    got = [rho1_weights(token_losses, r, mask, 0.4) for r in noisy]
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], rho1_weights(token_losses, ref, mask, 0.4))
    expected, _ = naive_rho1(token_losses.tolist(), ref.tolist(), mask.tolist(), 0.4,
                             lambda a, b: float(np.float32(a) - np.float32(b)))  # fmt: skip
    assert got[0].tolist() == expected
    flat = mask[..., 0].flatten().tolist()
    first = [i for i, m in enumerate(flat) if m][: int(got[0][..., 0].sum())]
    assert torch.nonzero(got[0][..., 0].flatten()).flatten().tolist() == first


@pytest.mark.parametrize("seed", SEEDS)
def test_ref_losses_per_head_shift(seed):
    _, ref, _ = rho1_case(seed, 3)
    got = ref_losses_per_head(ref, 3)
    seq = ref.shape[1]
    for b in range(ref.shape[0]):
        for t in range(seq):
            for k in range(3):
                assert got[b, t, k].item() == (ref[b, t + 1 + k].item() if t + 1 + k < seq else 0.0)


def test_rho1_exact_ties_and_validation():
    token_losses = torch.ones(2, 4, 1)
    ref = torch.zeros(2, 4)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])[..., None]
    got = rho1_weights(token_losses, ref, mask, 0.6)  # 5 valid -> round(3.0) = 3, first three by index
    assert got[..., 0].tolist() == [[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    half = rho1_weights(token_losses, ref, mask[:, :, :], 0.5)  # round(2.5) = 2 (round half to even)
    assert half.sum().item() == 2.0 and rho1_keep_counts(mask, 0.5).tolist() == [2]
    assert rho1_keep_counts(mask, 0.01).tolist() == [1]
    assert rho1_keep_counts(torch.zeros(2, 4, 2, dtype=torch.bool), 0.5).tolist() == [0, 0]
    grad = torch.ones(2, 4, 1, requires_grad=True)
    assert not rho1_weights(grad, ref, mask, 0.5).requires_grad
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="k_percent"):
            rho1_weights(token_losses, ref, mask, bad)
        with pytest.raises(ValueError, match="k_percent"):
            rho1_keep_counts(mask, bad)


def test_excess_losses_shift():
    token_losses = torch.arange(12.0).reshape(1, 4, 3)
    ref = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    got = excess_losses(token_losses, ref)
    for t in range(4):
        for k in range(3):
            r = ref[0, t + 1 + k].item() if t + 1 + k < 4 else 0.0
            assert got[0, t, k].item() == token_losses[0, t, k].item() - r


# --------------------------------------------------------------------------------------------------------
# Pairwise critic loss
# --------------------------------------------------------------------------------------------------------


def test_bradley_terry_and_masked_row_mean():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[False, True, True], [True, False, False], [False, False, False]])
    means = masked_row_mean(values, mask)
    assert means.tolist() == [2.5, 4.0, 0.0]
    loss = bradley_terry_loss(means[:1], means[1:2])
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-(2.5 - 4.0)))))
    loss.sum().backward()
    assert values.grad is not None and values.grad[2].abs().sum().item() == 0.0
    assert values.grad[0, 0].item() == 0.0 and values.grad[0, 1].item() != 0.0
    vc, vi = torch.randn(5), torch.randn(5)
    expected = [math.log1p(math.exp(-(c - i))) for c, i in zip(vc.tolist(), vi.tolist(), strict=True)]
    close(bradley_terry_loss(vc, vi), expected)
