"""A WMTP model built from weights, not trained, whose every head is right: it continues a token cycle.

Self-speculative decoding is only as fast as the heads are accurate. This model is the ideal case the
tests and `scripts/bench_generate.py` use: head k at position t predicts `succ^(k+1)(x_t)` exactly, where
`succ` maps each token of `cycle` to the one after it (and every other token to `cycle[0]`), so head 0's
greedy continuation walks the cycle and every draft of heads 1..n-1 agrees with it.

Construction (one hidden dimension per token, so hidden size >= vocabulary size): one-hot embeddings, attention
output projections zero (no block mixes positions), trunk MLPs zero (the trunk passes the embedding
through), head k's SwiGLU MLP maps one-hot(v) to a large one-hot(succ^(k+1)(v)), and `lm_head` is the
identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .configuration_wmtp import WmtpConfig
from .modeling_wmtp import WmtpForMultiTokenPrediction


def successor_table(cycle: Sequence[int], vocab_size: int) -> torch.Tensor:
    """`[vocab_size]` next token of each token: the cycle's following element, `cycle[0]` off the cycle."""
    if len(cycle) < 2 or len(set(cycle)) != len(cycle) or not all(0 <= t < vocab_size for t in cycle):
        raise ValueError(f"cycle: expected >= 2 distinct token ids in [0, {vocab_size}), got {list(cycle)}")
    table = torch.full((vocab_size,), cycle[0], dtype=torch.long)
    for i, token in enumerate(cycle):
        table[token] = cycle[(i + 1) % len(cycle)]
    return table


def build_cycle_model(
    cycle: Sequence[int],
    vocab_size: int = 32,
    n_future_tokens: int = 4,
    trunk_layers: int = 1,
    hidden_size: int | None = None,
    **config_overrides,
) -> WmtpForMultiTokenPrediction:
    """A float32 WMTP model in eval mode whose greedy continuation follows `cycle` and whose heads all agree.

    `hidden_size` defaults to `vocab_size` (it may not be smaller) and must be divisible by the attention
    heads (4 by default); `config_overrides` go to `WmtpConfig` (e.g. `eos_token_id`, `pad_token_id`).
    """
    hidden_size = vocab_size if hidden_size is None else hidden_size
    if hidden_size < vocab_size:
        raise ValueError(f"hidden_size: expected >= vocab_size ({vocab_size}), got {hidden_size}")
    config = WmtpConfig(
        **{
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": vocab_size,
            "num_hidden_layers": trunk_layers + n_future_tokens,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "n_future_tokens": n_future_tokens,
            "max_position_embeddings": 4096,
            **config_overrides,
        }
    )
    model = WmtpForMultiTokenPrediction(config).float().eval()
    succ = successor_table(cycle, vocab_size)
    eye = torch.eye(vocab_size, hidden_size)  # token v <-> hidden dimension v
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(eye)
        model.lm_head.weight.copy_(eye)
        model.model.norm.weight.fill_(1.0)
        blocks = [*model.model.layers[:-1], *model.model.prediction_heads]
        for block in blocks:
            block.self_attn.o_proj.weight.zero_()
            block.input_layernorm.weight.fill_(1.0)
            block.post_attention_layernorm.weight.fill_(1.0)
            block.mlp.down_proj.weight.zero_()
        target = torch.arange(vocab_size)
        for head in model.model.prediction_heads:  # head k: one-hot(v) -> one-hot(succ^(k+1)(v))
            target = succ[target]
            head.mlp.gate_proj.weight.copy_(eye)
            head.mlp.up_proj.weight.copy_(eye)
            head.mlp.down_proj.weight[target, torch.arange(vocab_size)] = 1.0  # [hidden, intermediate]
    return model
