"""Model FLOPs of WMTP training, for MFU: plain arithmetic on the config (tested against torch's FLOP counter).

Per token, training costs 3x the forward (the backward computes the gradients of the inputs and of the
weights); the forward of one token is 2 FLOPs per weight of every matrix multiply plus the attention
scores and the weighted sum of values:

    6 * (sum over decoder layers of their projection weights + n_future_tokens * hidden * vocab)
      + 12 * layers * attention_heads * head_dim * seq_len

- the unembedding runs once per head (n times), so it is counted n times;
- the embedding is a table lookup, not a multiply: excluded;
- attention over the whole `seq_len` window (PaLM's convention: the causal half is not subtracted);
- recomputation (activation checkpointing, the chunked loss's logits in its backward) is not model work:
  excluded, as MFU defines it. Norms, RoPE, softmax and the loss are elementwise: excluded.
"""

from __future__ import annotations

from typing import Any


def decoder_layer_weights(config: Any) -> int:
    """Weights of one decoder layer's matrix multiplies: q, k, v, o projections and the SwiGLU MLP."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o; k, v
    return attention + 3 * hidden * config.intermediate_size


def training_flops_per_token(config: Any, seq_len: int) -> float:
    """Model FLOPs of one training token (forward and backward) of a WMTP model with `config`, at
    sequence length `seq_len`. `config.num_hidden_layers` counts every decoder layer (trunk and heads)."""
    layers, n_heads = config.num_hidden_layers, getattr(config, "n_future_tokens", 1)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    weights = layers * decoder_layer_weights(config) + n_heads * config.hidden_size * config.vocab_size
    attention = 12 * layers * config.num_attention_heads * head_dim * seq_len
    return 6.0 * weights + attention


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak."""
    return flops_per_token * tokens_per_s / peak_flops_per_s
