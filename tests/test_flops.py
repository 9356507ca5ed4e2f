"""The MFU FLOP count equals torch's own FLOP counter on a real forward and backward of the model."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction
from wmtp_hf.flops import mfu, training_flops_per_token


def counted_training_flops(config: WmtpConfig, seq_len: int) -> int:
    """torch's count of one training step over `[1, seq_len]`: the trunk and heads, then the unembedding of
    every head at every position (as the formula counts them; no recomputation), eager attention (plain
    matmuls over the whole window)."""
    torch.manual_seed(0)
    model = WmtpForMultiTokenPrediction(config)
    ids = torch.randint(0, config.vocab_size, (1, seq_len))
    with FlopCounterMode(display=False) as counter:
        heads = model.model(input_ids=ids, return_all_heads=True, use_cache=False).head_hidden_states
        logits = torch.stack([model.lm_head(h) for h in heads], dim=2)
        logits.float().logsumexp(-1).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(("n_heads", "kv_heads"), [(1, 4), (3, 2)])
def test_flops_per_token_equal_torch_flop_counter(n_heads, kv_heads):
    config = WmtpConfig(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=2 + n_heads,
                        num_attention_heads=4, num_key_value_heads=kv_heads, n_future_tokens=n_heads,
                        attn_implementation="eager")  # fmt: skip
    seq_len = 24
    assert training_flops_per_token(config, seq_len) * seq_len == counted_training_flops(config, seq_len)


def test_unembedding_counts_once_per_head_and_embedding_not_at_all():
    base = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=6, num_attention_heads=4)
    one, four = (
        WmtpConfig(vocab_size=96, n_future_tokens=1, **base),
        WmtpConfig(vocab_size=96, n_future_tokens=4, **base),
    )
    assert training_flops_per_token(four, 8) - training_flops_per_token(one, 8) == 6 * 3 * 32 * 96
    big_vocab = WmtpConfig(vocab_size=192, n_future_tokens=1, **base)  # +96 rows of embedding AND unembedding
    assert training_flops_per_token(big_vocab, 8) - training_flops_per_token(one, 8) == 6 * 32 * 96
    assert mfu(2e9, 100.0, 1e12) == pytest.approx(0.2)
