"""wmtp_hf.losses against naive loops: the weighted MTP loss math, and the model's loss (chunked cross-entropy
exact to a naive computation, per head and per token; those tests are marked `floor`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction
from wmtp_hf.losses import (
    chunked_cross_entropy,
    head_target_counts,
    mtp_target_mask,
    resolve_head_weights,
    shift_labels_for_head,
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


V = 97


def tiny_model(n_future: int = 3, **overrides) -> WmtpForMultiTokenPrediction:
    torch.manual_seed(0)
    config = WmtpConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, n_future_tokens=n_future, loss_chunk_size=5, **overrides,
    )  # fmt: skip
    return WmtpForMultiTokenPrediction(config)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows: prompt + response, the second right-padded; labels -100 on prompt and padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    ids[1, 10:] = 0
    labels = ids.clone()
    labels[0, :4] = -100
    labels[1, :6] = -100
    labels[mask == 0] = -100
    return ids, mask, labels


def naive_head_ce(logits_k: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token CE and mean CE of head k from its full logits `[B, T, V]`, written the obvious way."""
    B, T, _ = logits_k.shape
    per_token = torch.zeros(B, T)
    for b in range(B):
        for t in range(T - 1 - k):
            target = labels[b, t + 1 + k]
            if target != -100:
                per_token[b, t] = -torch.log_softmax(logits_k[b, t].double(), -1)[target].float()
    count = sum(int(labels[b, t + 1 + k] != -100) for b in range(B) for t in range(T - 1 - k))
    return per_token, per_token.sum() / count


@pytest.mark.floor
def test_chunked_cross_entropy_matches_torch_values_and_grads():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 11, 16, generator=g, requires_grad=True)
    weight = torch.randn(V, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (3, 11), generator=g)
    labels[0, :5] = -100
    labels[2, -1] = -100
    upstream = torch.rand(3, 11, generator=g)

    got = chunked_cross_entropy(hidden, weight, labels, chunk_size=4)
    (got * upstream).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    expected = F.cross_entropy((hidden @ weight.T).reshape(-1, V), labels.reshape(-1), reduction="none")
    expected = expected.view(3, 11)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.all(got[labels == -100] == 0)
    torch.testing.assert_close(grads[0], hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], weight.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.floor
def test_chunked_cross_entropy_bfloat16_matches_float32_reference():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 16, generator=g).to(torch.bfloat16).requires_grad_(True)
    weight = torch.randn(V, 16, generator=g).to(torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, V, (40,), generator=g)
    got = chunked_cross_entropy(hidden, weight, labels, chunk_size=16)
    got.sum().backward()
    assert got.dtype == torch.float32 and hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    ref_h, ref_w = hidden.detach().float().requires_grad_(True), weight.detach().float().requires_grad_(True)
    expected = F.cross_entropy(ref_h @ ref_w.T, labels, reduction="none")
    expected.sum().backward()
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.02)
    torch.testing.assert_close(hidden.grad.float(), ref_h.grad, atol=0.05, rtol=0.05)
    torch.testing.assert_close(weight.grad.float(), ref_w.grad, atol=0.05, rtol=0.05)


@pytest.mark.floor
def test_chunked_cross_entropy_all_ignored():
    hidden = torch.randn(2, 3, 8, requires_grad=True)
    losses = chunked_cross_entropy(hidden, torch.randn(V, 8), torch.full((2, 3), -100))
    assert losses.shape == (2, 3) and losses.abs().sum() == 0


@pytest.mark.floor
def test_shift_labels_for_head():
    labels = torch.tensor([[10, 11, 12, 13]])
    assert shift_labels_for_head(labels, 0).tolist() == [[11, 12, 13, -100]]
    assert shift_labels_for_head(labels, 2).tolist() == [[13, -100, -100, -100]]
    assert shift_labels_for_head(labels, 5).tolist() == [[-100, -100, -100, -100]]


@pytest.mark.floor
@pytest.mark.parametrize("n_future", [1, 3])
def test_model_loss_equals_naive_per_head_computation(n_future):
    model = tiny_model(n_future).eval()
    ids, mask, labels = batch()
    out = model(ids, attention_mask=mask, labels=labels, return_all_heads=True)
    assert out.token_losses.shape == (2, 14, n_future) and out.token_losses.dtype == torch.float32
    head_means = []
    for k in range(n_future):
        per_token, mean = naive_head_ce(out.mtp_logits[:, :, k].detach(), labels, k)
        torch.testing.assert_close(out.token_losses[:, :, k].detach(), per_token, atol=1e-5, rtol=1e-5)
        head_means.append(mean)
    torch.testing.assert_close(out.loss.detach(), torch.stack(head_means).mean(), atol=1e-5, rtol=1e-5)


@pytest.mark.floor
def test_gradients_reach_every_parameter():
    model = tiny_model(3, use_value_head=True).train()
    ids, mask, labels = batch()
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits is None, "training with labels skips the [B, T, V] logits by default"
    (out.loss + out.value.sum()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.floor
def test_loss_gradients_match_naive_loss_gradients():
    model = tiny_model(3).eval()
    ids, mask, labels = batch()
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    chunked = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model(ids, attention_mask=mask, return_all_heads=True)
    naive = (
        sum(
            F.cross_entropy(out.mtp_logits[:, : 14 - 1 - k, k].reshape(-1, V), labels[:, 1 + k :].reshape(-1))
            for k in range(3)
        )
        / 3
    )
    naive.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(chunked[name], param.grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.floor
def test_num_items_in_batch_makes_micro_batches_sum_to_full_batch():
    model = tiny_model(3).eval()
    ids, mask, labels = batch()
    full = model(ids, attention_mask=mask, labels=labels)
    full.loss.backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    counts = torch.stack([(shift_labels_for_head(labels, k) != -100).sum() for k in range(3)])
    total = 0.0
    for row in range(2):
        part = model(ids[row : row + 1], attention_mask=mask[row : row + 1], labels=labels[row : row + 1],
                     num_items_in_batch=counts)  # fmt: skip
        part.loss.backward()
        total = total + part.loss.detach()
    torch.testing.assert_close(total, full.loss.detach(), atol=1e-6, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, full_grads[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.floor
def test_gradient_checkpointing_gives_same_loss_and_grads(monkeypatch):
    from wmtp_hf import modeling_wmtp

    calls = []
    mlp_forward = modeling_wmtp.WmtpMLP.forward
    monkeypatch.setattr(
        modeling_wmtp.WmtpMLP, "forward", lambda self, x: calls.append(1) or mlp_forward(self, x)
    )
    ids, mask, labels = batch()
    results = []
    for checkpointing in (False, True):
        model = tiny_model(3).train()
        if checkpointing:  # renamed from gradient_checkpointing_enable in transformers 5.23
            enable = (
                getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            )
            enable()
        calls.clear()
        out = model(ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        assert len(calls) == (8 if checkpointing else 4), "checkpointed blocks re-run in the backward"
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], msg=name)


@pytest.mark.floor
def test_eager_and_sdpa_attention_agree():
    ids, mask, _ = batch()
    outputs = []
    for impl in ("eager", "sdpa"):
        model = tiny_model(3, attn_implementation=impl).eval()
        assert model.config._attn_implementation == impl
        with torch.no_grad():
            outputs.append(model(ids, attention_mask=mask, return_all_heads=True).mtp_logits)
    valid = mask.bool()
    torch.testing.assert_close(outputs[0][valid], outputs[1][valid], atol=1e-5, rtol=1e-5)
