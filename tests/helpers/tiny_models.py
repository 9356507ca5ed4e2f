"""A tiny random LLaMA (random norms, so a misplaced norm cannot hide) and a token batch for it: the reference
that the conversion and model-contract tests compare WMTP's head 0 against."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=157, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rope_theta=1000.0, **overrides,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norms so a misplaced norm cannot hide
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


TOKENS = torch.randint(0, 157, (2, 17), generator=torch.Generator().manual_seed(3))
