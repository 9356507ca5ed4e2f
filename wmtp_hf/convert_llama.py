"""Conversion between a LLaMA causal LM and a WMTP model (docs/design.md §2.1): trunk + head 0 is exactly a LLaMA.

`WmtpForMultiTokenPrediction.from_llama` / `.to_llama` call these. Imports only `torch`, `transformers`
and the sibling configuration file (shipped with `modeling_wmtp.py` by `save_pretrained`).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from .configuration_wmtp import WmtpConfig

_LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "pad_token_id",
    "bos_token_id", "eos_token_id",
)  # fmt: skip


def shared_llama_fields(config) -> dict:
    """The configuration fields WMTP and LLaMA share (same names, same meaning)."""
    return {name: getattr(config, name) for name in _LLAMA_FIELDS} | {
        "rope_parameters": dict(config.rope_parameters)
    }


def wmtp_from_llama(
    cls,
    model_or_path,
    n_future_tokens: int = 4,
    head_init: str = "copy_last",
    use_value_head: bool = False,
    **from_pretrained_kwargs,
):
    """A `cls` (WMTP model class) built from a LLaMA-family causal LM (instance, local path or Hub id).

    Trunk = the LLaMA's layers[:-1], head 0 = its last layer, extra heads = copies of the last layer
    (`head_init="copy_last"`) or freshly initialised blocks (`"random"`). Head 0 reproduces the LLaMA's
    logits exactly. Tied embeddings stay tied (`tie_word_embeddings`), untied ones untied.
    """
    if head_init not in ("copy_last", "random"):
        raise ValueError(f"head_init: expected 'copy_last' or 'random', got {head_init!r}")
    llama = model_or_path
    if not isinstance(llama, PreTrainedModel):
        llama = AutoModelForCausalLM.from_pretrained(model_or_path, **from_pretrained_kwargs)
    lconf = llama.config
    if not isinstance(lconf, LlamaConfig):
        raise ValueError(f"from_llama: expected a LLaMA model (LlamaConfig), got {type(lconf).__name__}")
    if lconf.attention_bias or lconf.mlp_bias:
        raise ValueError("from_llama: attention_bias/mlp_bias LLaMA variants are not supported")
    config = WmtpConfig(
        **shared_llama_fields(lconf),
        num_hidden_layers=lconf.num_hidden_layers + n_future_tokens - 1,
        n_future_tokens=n_future_tokens,
        use_value_head=use_value_head,
        tie_word_embeddings=bool(getattr(lconf, "tie_word_embeddings", False)),
    )
    dtype = llama.lm_head.weight.dtype
    with torch.device("meta"):
        model = cls(config)
    state = {k: v.detach().clone() for k, v in llama.state_dict().items()}
    if config.tie_word_embeddings:  # one matrix, as in the LLaMA: tie_weights() below shares it again
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    last = lconf.num_hidden_layers - 1
    generator = torch.Generator().manual_seed(0)
    std = config.initializer_range
    for m in range(n_future_tokens - 1):
        for name, param in model.model.extra_heads[m].named_parameters():
            key = f"model.extra_heads.{m}.{name}"
            if head_init == "copy_last":
                state[key] = state[f"model.layers.{last}.{name}"].clone()
            elif name.endswith("layernorm.weight"):
                state[key] = torch.ones(param.shape, dtype=dtype)
            else:
                state[key] = (torch.randn(param.shape, generator=generator) * std).to(dtype)
    if model.value_head is not None:
        state["value_head.weight"] = (torch.randn((1, config.hidden_size), generator=generator) * std).to(
            dtype
        )
        state["value_head.bias"] = torch.zeros(1, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()  # `assign=True` replaced the shared parameter by two
    model.model.rotary_emb = type(model.model.rotary_emb)(config)  # buffers were on the meta device
    model.to(llama.lm_head.weight.device)
    model.config.dtype = dtype
    model.generation_config = llama.generation_config
    return model.eval() if not llama.training else model


def wmtp_to_llama(model) -> LlamaForCausalLM:
    """The next-token path of a WMTP model (trunk + head 0, shared norm and unembedding) as a LLaMA."""
    lconf = LlamaConfig(
        **shared_llama_fields(model.config),
        num_hidden_layers=len(model.model.layers),
        tie_word_embeddings=bool(model.config.tie_word_embeddings),
    )
    with torch.device("meta"):
        llama = LlamaForCausalLM(lconf)
    state = {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not k.startswith(("model.extra_heads.", "value_head."))
    }
    llama.load_state_dict(state, strict=True, assign=True)
    if lconf.tie_word_embeddings:
        llama.tie_weights()
    llama.model.rotary_emb = type(llama.model.rotary_emb)(lconf)
    llama.to(model.lm_head.weight.device)
    llama.config.dtype = model.lm_head.weight.dtype
    llama.generation_config = model.generation_config
    return llama.train(model.training)
