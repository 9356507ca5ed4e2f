"""A tiny LLaMA written as a GGUF file with the `gguf` package's writer, as llama.cpp's converter lays it
out (q/k rows permuted for its RoPE, GPT-2-style byte-level BPE tokenizer, chat template), for tests of
GGUF loading that need no download."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "i n", "Ġ a", "r e"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HEADS, KV_HEADS = 4, 2


def vocabulary() -> list[str]:
    """Special tokens, the 256 byte-level symbols, then one token per merge."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_symbols = bytes_to_unicode()
    return SPECIAL + [byte_symbols[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES]


def reference_tokenizer():
    """The same vocabulary and merges as a `tokenizers` byte-level BPE (independent of GGUF reading)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(vocabulary())}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in MERGES])
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order (its RoPE pairs adjacent dimensions; transformers' pairs halves)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def tiny_llama(seed: int = 0, tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocabulary()), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2,
        pad_token_id=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norms so a misplaced norm cannot hide
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def write_tiny_gguf(path: Path, seed: int = 0, tie: bool = True) -> LlamaForCausalLM:
    """Write a tiny LLaMA to `path` as GGUF (float32 tensors); returns the model it holds."""
    import gguf

    llama = tiny_llama(seed, tie)
    cfg = llama.config
    tokens = vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(cfg.hidden_size // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    state = llama.state_dict()

    def put(name: str, tensor: torch.Tensor) -> None:
        writer.add_tensor(name, tensor.detach().float().contiguous().numpy())

    put("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", _permute(state[p + "self_attn.q_proj.weight"], HEADS))
        put(f"blk.{i}.attn_k.weight", _permute(state[p + "self_attn.k_proj.weight"], KV_HEADS))
        put(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"])
    put("output_norm.weight", state["model.norm.weight"])
    if not tie:
        put("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return llama
