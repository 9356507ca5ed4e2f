"""Shared loss math (wmtp_hf.losses) against naive loops."""

from __future__ import annotations

import pytest
import torch

from wmtp_hf.losses import (
    head_target_counts,
    mtp_target_mask,
    resolve_head_weights,
    target_weights_per_head,
    weighted_mtp_loss,
)


def example(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 50, (3, 9), generator=g)
    labels[0, :4] = -100
    labels[1, 6:] = -100
    labels[2, :2] = -100
    token_losses = torch.rand(3, 9, 3, generator=g)
    weights = torch.rand(3, 9, 3, generator=g) * 2
    return labels, token_losses, weights


def naive_loss(token_losses, labels, weights, alphas, counts=None):
    batch, seq, n = token_losses.shape
    total = 0.0
    for k in range(n):
        num, den = 0.0, 0
        for b in range(batch):
            for t in range(seq):
                if t + 1 + k < seq and labels[b, t + 1 + k] != -100:
                    num += float(weights[b, t, k] * token_losses[b, t, k])
                    den += 1
        den = den if counts is None else int(counts[k])
        total += float(alphas[k]) * num / max(den, 1)
    return total


def test_weighted_loss_matches_naive_loop():
    labels, token_losses, weights = example()
    mask = mtp_target_mask(labels, 3)
    alphas = torch.tensor([0.5, 0.3, 0.2])
    got = weighted_mtp_loss(token_losses, mask, weights, alphas)
    assert got.item() == pytest.approx(naive_loss(token_losses, labels, weights, alphas), rel=1e-6)


def test_uniform_defaults_and_external_counts():
    labels, token_losses, _ = example(1)
    mask = mtp_target_mask(labels, 3)
    ones = torch.ones_like(token_losses)
    uniform = torch.full((3,), 1 / 3)
    assert weighted_mtp_loss(token_losses, mask).item() == pytest.approx(
        naive_loss(token_losses, labels, ones, uniform), rel=1e-6
    )
    counts = torch.tensor([40, 37, 35])
    assert weighted_mtp_loss(token_losses, mask, num_items=counts).item() == pytest.approx(
        naive_loss(token_losses, labels, ones, uniform, counts), rel=1e-6
    )


def test_weights_are_detached():
    labels, token_losses, weights = example(2)
    weights.requires_grad_(True)
    token_losses.requires_grad_(True)
    weighted_mtp_loss(token_losses, mtp_target_mask(labels, 3), weights).backward()
    assert weights.grad is None and token_losses.grad is not None


def test_head_target_counts():
    labels = torch.tensor([[-100, -100, 5, 6, 7], [-100, 1, 2, -100, -100]])
    # head 0 targets labels[:, 1:], head 1 labels[:, 2:]
    assert head_target_counts(labels, 2).tolist() == [3 + 2, 3 + 1]


def test_target_weights_per_head_shifts_by_head():
    token_weights = torch.tensor([[10.0, 11.0, 12.0, 13.0]])
    out = target_weights_per_head(token_weights, 3)
    assert out[0, :, 0].tolist() == [11.0, 12.0, 13.0, 0.0]
    assert out[0, :, 1].tolist() == [12.0, 13.0, 0.0, 0.0]
    assert out[0, :, 2].tolist() == [13.0, 0.0, 0.0, 0.0]


def test_head_weights_validation():
    assert resolve_head_weights(None, 4).tolist() == [0.25] * 4
    with pytest.raises(ValueError, match="head_weights: expected 4 values"):
        resolve_head_weights([0.5, 0.5], 4)
