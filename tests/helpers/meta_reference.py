"""An independent re-statement of Meta's multi-token-prediction LLaMA forward (complex RoPE), for tests.

Written from the architecture description (docs/design.md §2.1), operating directly on a Meta-format state dict,
so the HF model is checked against something that shares none of its code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_meta_state(params: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random Meta state dict for `params` (norm weights away from 1 so misplaced norms show up)."""
    from wmtp_hf.convert_meta import ffn_hidden_size

    g = torch.Generator().manual_seed(seed)
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    hidden = ffn_hidden_size(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))
    n_future = params.get("n_future_tokens") or 1

    def rnd(*shape: int, scale: float = 0.08) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def norm() -> torch.Tensor:
        return 1.0 + rnd(dim, scale=0.2)

    def block(prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.attention.wq.weight": rnd(n_heads * head_dim, dim),
            f"{prefix}.attention.wk.weight": rnd(n_kv * head_dim, dim),
            f"{prefix}.attention.wv.weight": rnd(n_kv * head_dim, dim),
            f"{prefix}.attention.wo.weight": rnd(dim, n_heads * head_dim),
            f"{prefix}.feed_forward.w1.weight": rnd(hidden, dim),
            f"{prefix}.feed_forward.w2.weight": rnd(dim, hidden),
            f"{prefix}.feed_forward.w3.weight": rnd(hidden, dim),
            f"{prefix}.attention_norm.weight": norm(),
            f"{prefix}.ffn_norm.weight": norm(),
        }

    state = {"tok_embeddings.weight": rnd(params["vocab_size"], dim, scale=1.0)}
    for i in range(params["n_layers"] - n_future + 1):
        state.update(block(f"layers.{i}"))
    for m in range(n_future - 1):
        state.update(block(f"extra_heads.{m}"))
    state["norm.weight"] = norm()
    state["output.weight"] = rnd(params["vocab_size"], dim)
    return state


def meta_forward(state: dict[str, torch.Tensor], params: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Logits `[B, T, n_future, V]` of every head, exactly as Meta's `Transformer.forward(return_all_heads=True)`."""
    batch, seq = tokens.shape
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    eps = params["norm_eps"]
    theta = params.get("rope_theta") or 10000.0
    n_future = params.get("n_future_tokens") or 1

    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(seq).float(), freqs)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)  # [T, head_dim/2] complex

    def rope(x: torch.Tensor) -> torch.Tensor:  # x: [B, T, H, head_dim], pairs (2i, 2i+1) rotate together
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)

    def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    mask = torch.full((seq, seq), float("-inf")).triu(1)

    def block(prefix: str, x: torch.Tensor) -> torch.Tensor:
        h = rms_norm(x, state[f"{prefix}.attention_norm.weight"])
        q = (h @ state[f"{prefix}.attention.wq.weight"].T).view(batch, seq, n_heads, head_dim)
        k = (h @ state[f"{prefix}.attention.wk.weight"].T).view(batch, seq, n_kv, head_dim)
        v = (h @ state[f"{prefix}.attention.wv.weight"].T).view(batch, seq, n_kv, head_dim)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(n_heads // n_kv, dim=2)
        v = v.repeat_interleave(n_heads // n_kv, dim=2)
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(head_dim) + mask
        attn = torch.einsum("bhts,bshd->bthd", F.softmax(scores, dim=-1), v).reshape(batch, seq, dim)
        x = x + attn @ state[f"{prefix}.attention.wo.weight"].T
        h = rms_norm(x, state[f"{prefix}.ffn_norm.weight"])
        gate = F.silu(h @ state[f"{prefix}.feed_forward.w1.weight"].T)
        up = h @ state[f"{prefix}.feed_forward.w3.weight"].T
        return x + (gate * up) @ state[f"{prefix}.feed_forward.w2.weight"].T

    n_main = params["n_layers"] - n_future + 1
    h = state["tok_embeddings.weight"][tokens]
    for i in range(n_main - 1):
        h = block(f"layers.{i}", h)
    heads = [f"layers.{n_main - 1}"] + [f"extra_heads.{m}" for m in range(n_future - 1)]
    latents = torch.stack([block(prefix, h) for prefix in heads], dim=-2)
    return rms_norm(latents, state["norm.weight"]) @ state["output.weight"].T
