"""Meta's multi-token-prediction LLaMA as a HuggingFace model, plus an optional value head.

Layout (SPEC §2.1): `model.layers` holds the trunk followed by head 0; `model.extra_heads` holds heads
1..n-1. Every head block reads the trunk output, and all heads share `model.norm` and `lm_head`.
Trunk + head 0 is exactly a LLaMA model, which is what generation runs.

This file imports only `torch`, `transformers` and its sibling configuration file, so checkpoints
load with `trust_remote_code=True` where `wmtp_hf` is not installed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerateDecoderOnlyOutput, GenerationConfig
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_wmtp import WmtpConfig

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------
# Loss math: per-token cross-entropy of a linear projection, chunked so logits never exist whole.
# --------------------------------------------------------------------------------------------------


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Per-row `-log softmax(hidden @ weight.T)[target]` computed `chunk_size` rows at a time.

    Only one chunk of logits lives at a time, in the forward and in the backward (which recomputes
    it), so memory is `chunk_size x vocab` instead of `rows x vocab`. Softmax runs in float32.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        rows = hidden.shape[0]
        losses = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        for start in range(0, rows, chunk_size):
            end = min(start + chunk_size, rows)
            logits = (hidden[start:end] @ weight.T).float()
            losses[start:end] = -logits.gather(1, targets[start:end, None])[:, 0]
            row_max = logits.amax(dim=-1)
            chunk_lse = logits.sub_(row_max[:, None]).exp_().sum(dim=-1).log_().add_(row_max)  # in place
            del logits  # free this chunk before the next one is computed
            losses[start:end] += chunk_lse
            lse[start:end] = chunk_lse
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            acc_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
            grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end]
            grad_logits = (h @ weight.T).float()
            grad_logits.sub_(lse[start:end, None]).exp_()  # softmax from the saved log-sum-exp, in place
            grad_logits.scatter_add_(1, targets[start:end, None], torch.full_like(grad_logits[:, :1], -1.0))
            grad_logits.mul_(grad_losses[start:end, None].float())
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start:end])
            if grad_weight is not None:
                if grad_weight.dtype == grad_logits.dtype:
                    grad_weight.addmm_(grad_logits.T, h)
                else:
                    grad_weight += (grad_logits.T @ h).to(grad_weight.dtype)
            del grad_logits  # free this chunk before the next one is computed
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Per-token cross-entropy of `hidden @ weight.T` against `labels`, without materialising logits.

    Args:
        hidden: `[..., D]` hidden states (already final-normed).
        weight: `[V, D]` unembedding matrix.
        labels: `[...]` target ids; `-100` marks positions without a target.
    Returns:
        `[...]` float32 losses, exactly 0 (and gradient-free) where `labels == -100`.
    """
    flat_labels = labels.reshape(-1)
    valid = (flat_labels != IGNORE_INDEX).nonzero().squeeze(-1)
    losses = torch.zeros(flat_labels.shape[0], dtype=torch.float32, device=hidden.device)
    if valid.numel() > 0:
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, valid)
        valid_losses = _ChunkedLinearCrossEntropy.apply(rows, weight, flat_labels[valid], chunk_size)
        losses = losses.index_put((valid,), valid_losses)
    return losses.view(labels.shape)


def shift_labels_for_head(labels: torch.Tensor, head: int) -> torch.Tensor:
    """Targets of head `head` at each position: `labels[:, t + 1 + head]`, -100 past the end."""
    shift = head + 1
    pad = labels.new_full((labels.shape[0], min(shift, labels.shape[1])), IGNORE_INDEX)
    return torch.cat([labels[:, shift:], pad], dim=1)


def mtp_token_losses(
    head_hidden: tuple[torch.Tensor, ...] | list[torch.Tensor],
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """`[B, T, n]` per-token CE: entry `[b, t, k]` is `CE_k(t) = -log p_k(x_{t+1+k} | x_<=t)`, 0 without target.

    All heads go through one chunked call, so the unembedding gradient is accumulated in one buffer.
    """
    hidden = torch.stack(tuple(head_hidden), dim=2)  # [B, T, n, D]
    targets = torch.stack([shift_labels_for_head(labels, k) for k in range(len(head_hidden))], dim=-1)
    return chunked_cross_entropy(hidden, weight, targets, chunk_size)


def mtp_target_mask(labels: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`[B, T, n]` bool: `m_k(t)`, whether head k at position t has a (response) target."""
    return torch.stack([shift_labels_for_head(labels, k) != IGNORE_INDEX for k in range(n_heads)], dim=-1)


def weighted_mtp_loss(
    token_losses: torch.Tensor,
    target_mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    head_weights: torch.Tensor | None = None,
    num_items: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """SPEC §4.1: `L = sum_k alpha_k * sum_t w_k(t) m_k(t) CE_k(t) / N_k`.

    Args:
        token_losses: `[B, T, n]` per-token CE (0 where there is no target).
        target_mask: `[B, T, n]` bool `m_k(t)`.
        weights: `[B, T, n]` token weights `w_k(t)` (detached here), or None for `w = 1`.
        head_weights: `[n]` `alpha_k`, default `1/n`.
        num_items: token counts `N_k` of the whole accumulation window (across processes), one per head
            or one scalar for all heads; defaults to this batch's `sum_t m_k(t)`. Heads without targets
            contribute 0.
    """
    n_heads = token_losses.shape[-1]
    terms = token_losses * target_mask
    if weights is not None:
        terms = terms * weights.detach().to(terms.dtype)
    sums = terms.sum(dim=(0, 1))
    if num_items is None:
        counts = target_mask.sum(dim=(0, 1))
    else:
        counts = torch.as_tensor(num_items, device=sums.device).expand(n_heads)
    counts = counts.to(sums.dtype).clamp(min=1)
    if head_weights is None:
        head_weights = torch.full((n_heads,), 1.0 / n_heads)
    return (head_weights.to(sums.device, sums.dtype) * sums / counts).sum()


# --------------------------------------------------------------------------------------------------
# LLaMA building blocks (same math as transformers' LLaMA, written for this model).
# --------------------------------------------------------------------------------------------------


class WmtpRMSNorm(nn.Module):
    """RMSNorm computed in float32, as in Meta's and transformers' LLaMA."""

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class WmtpRotaryEmbedding(nn.Module):
    """Rotate-half RoPE cos/sin tables; scaled RoPE variants come from transformers' registry."""

    def __init__(self, config: WmtpConfig) -> None:
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        init_fn = (
            self.compute_default_rope_parameters
            if self.rope_type == "default"
            else ROPE_INIT_FUNCTIONS[self.rope_type]
        )
        inv_freq, self.attention_scaling = init_fn(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: WmtpConfig, *args, **kwargs) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float32)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(
            x.dtype
        )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """`[B, kv_heads, T, d]` -> `[B, kv_heads * n_rep, T, d]` for grouped-query attention."""
    if n_rep == 1:
        return hidden_states
    batch, kv_heads, seq, dim = hidden_states.shape
    expanded = hidden_states[:, :, None].expand(batch, kv_heads, n_rep, seq, dim)
    return expanded.reshape(batch, kv_heads * n_rep, seq, dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class WmtpAttention(nn.Module):
    """Multi-head attention with GQA, dispatched through transformers' attention interface."""

    def __init__(self, config: WmtpConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class WmtpMLP(nn.Module):
    """SwiGLU feed-forward: `down(act(gate(x)) * up(x))` (Meta's `w2(silu(w1 x) * w3 x)`)."""

    def __init__(self, config: WmtpConfig) -> None:
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class WmtpDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block; used for trunk blocks and prediction heads alike (FSDP wrap unit)."""

    def __init__(self, config: WmtpConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = WmtpAttention(config, layer_idx)
        self.mlp = WmtpMLP(config)
        self.input_layernorm = WmtpRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = WmtpRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_out, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


@dataclass
class WmtpModelOutput(ModelOutput):
    """Base-model output.

    Args:
        last_hidden_state: `[B, T, D]` head 0's final-normed hidden state (None with `trunk_only`).
        trunk_hidden_state: `[B, T, D]` the trunk output through the shared final norm, `norm(h_trunk)`:
            the state every head block reads, and the value head's input. Only when requested.
        head_hidden_states: n tensors `[B, T, D]`, every head's final-normed hidden state (head 0 first),
            only when all heads were requested.
        past_key_values: the KV cache.
        hidden_states: when `output_hidden_states`: embeddings, each trunk block's output, head 0's output.
    """

    last_hidden_state: torch.FloatTensor | None = None
    trunk_hidden_state: torch.FloatTensor | None = None
    head_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class WmtpCausalLMOutput(ModelOutput):
    """Output of [`WmtpForMultiTokenPrediction`] (SPEC §2.3).

    Args:
        loss: uniform MTP loss (SPEC §4.1) when `labels` are given.
        logits: `[B, T, V]` logits of head 0 (skipped while training with labels, see `skip_logits`).
        mtp_logits: `[B, T, n, V]` logits of all heads, only with `return_all_heads=True`.
        value: `[B, T]` value-head estimates `V_t` of P(response correct | tokens <= t), with a value head.
            (SPEC §2.3 calls it `values`; that name would shadow `dict.values()`, which `ModelOutput`
            inherits and DDP/FSDP/accelerate call on model outputs.)
        token_losses: `[B, T, n]` float32 `CE_k(t)` (0 without a target), when `labels` are given; the
            graph to the parameters is kept so a trainer can weight and sum them.
        head_hidden_states: n tensors `[B, T, D]` of final-normed head hidden states, with all heads.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mtp_logits: torch.FloatTensor | None = None
    value: torch.FloatTensor | None = None
    token_losses: torch.FloatTensor | None = None
    head_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class WmtpPreTrainedModel(PreTrainedModel):
    config_class = WmtpConfig
    config: WmtpConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["WmtpDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As `PreTrainedModel.save_pretrained`; `auto_map` also names the base model for `AutoModel`."""
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.setdefault("AutoModel", "modeling_wmtp.WmtpModel")
        self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)


class WmtpModel(WmtpPreTrainedModel):
    """Embeddings, trunk, n parallel head blocks and the shared final norm (no unembedding)."""

    def __init__(self, config: WmtpConfig) -> None:
        super().__init__(config)
        n_future = config.n_future_tokens
        n_layers_main = config.num_hidden_layers - n_future + 1  # trunk blocks + head 0
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(WmtpDecoderLayer(config, i) for i in range(n_layers_main))
        self.extra_heads = nn.ModuleList(
            WmtpDecoderLayer(config, n_layers_main + i) for i in range(n_future - 1)
        )
        self.norm = WmtpRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = WmtpRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @property
    def prediction_heads(self) -> list[WmtpDecoderLayer]:
        """Head blocks in head order: head 0 is the last of `layers`, then `extra_heads`."""
        return [self.layers[-1], *self.extra_heads]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        return_all_heads: bool = False,
        output_hidden_states: bool | None = None,
        output_trunk_state: bool = False,
        trunk_only: bool = False,
        **kwargs,
    ) -> WmtpModelOutput:
        """`output_trunk_state` adds `trunk_hidden_state = norm(h_trunk)`; `trunk_only` runs no head block
        (the critic's forward) and returns only that state."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("WmtpModel.forward: pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen)[
                None
            ]
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        block_kwargs = dict(
            attention_mask=causal_mask,
            position_embeddings=position_embeddings,
            past_key_values=past_key_values if use_cache else None,
            position_ids=position_ids,
            **kwargs,
        )
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        all_hidden = [inputs_embeds] if output_hidden_states else None
        hidden = inputs_embeds
        for block in self.layers[:-1]:
            hidden = block(hidden, **block_kwargs)
            if all_hidden is not None:
                all_hidden.append(hidden)
        trunk = hidden
        trunk_state = self.norm(trunk) if (output_trunk_state or trunk_only) else None
        if trunk_only:
            return WmtpModelOutput(
                trunk_hidden_state=trunk_state,
                past_key_values=past_key_values if use_cache else None,
                hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            )
        heads = self.prediction_heads if return_all_heads else self.prediction_heads[:1]
        head_hidden = tuple(self.norm(head(trunk, **block_kwargs)) for head in heads)
        if all_hidden is not None:
            all_hidden.append(head_hidden[0])
        return WmtpModelOutput(
            last_hidden_state=head_hidden[0],
            trunk_hidden_state=trunk_state,
            head_hidden_states=head_hidden if return_all_heads else None,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


class WmtpForMultiTokenPrediction(WmtpPreTrainedModel, GenerationMixin):
    """Multi-token-prediction causal LM: `logits` are head 0's, so `generate` and pipelines work unchanged."""

    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: WmtpConfig) -> None:
        super().__init__(config)
        self.model = WmtpModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.value_head = nn.Linear(config.hidden_size, 1) if config.use_value_head else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def add_value_head(self) -> nn.Linear:
        """Attach a freshly initialised value head (no-op if present) and record it in the config."""
        if self.value_head is None:
            head = nn.Linear(self.config.hidden_size, 1, device=self.lm_head.weight.device)
            head.to(self.lm_head.weight.dtype)
            nn.init.normal_(head.weight, std=self.config.initializer_range)
            nn.init.zeros_(head.bias)
            self.value_head = head
            self.config.value_head_stage = None
        self.config.use_value_head = True
        return self.value_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_all_heads: bool = False,
        skip_logits: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        value_only: bool = False,
        **kwargs,
    ) -> WmtpCausalLMOutput:
        r"""
        labels: `[B, T]` token ids with -100 where there is no target (not pre-shifted); gives `loss` and
            `token_losses` computed chunk by chunk, never materialising `[B, T, n, V]`.
        return_all_heads: also return `mtp_logits` `[B, T, n, V]` and `head_hidden_states`.
        skip_logits: do not compute head-0 `logits`; defaults to True while training with labels.
        num_items_in_batch: target count(s) of the whole accumulation window (scalar or one per head),
            passed by `Trainer` so the loss normalises correctly under gradient accumulation.
        value_only: run the trunk and the value head only (no head block, no unembedding, no loss): the
            critic's forward. Needs a value head.
        """
        if value_only and self.value_head is None:
            raise ValueError("value_only=True needs a value head (use_value_head=True or add_value_head())")
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_all_heads=return_all_heads or labels is not None,
            output_trunk_state=self.value_head is not None,
            trunk_only=value_only,
            **kwargs,
        )
        if value_only:
            value = self.value_head(outputs.trunk_hidden_state).squeeze(-1)
            return WmtpCausalLMOutput(
                value=value, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states
            )
        head0 = outputs.last_hidden_state
        if skip_logits is None:
            skip_logits = self.training and labels is not None
        logits = None
        if not skip_logits:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(head0[:, keep, :])
        value = None
        if self.value_head is not None:  # V_t reads norm(h_trunk), the state every head reads (SPEC §2.3)
            value = self.value_head(outputs.trunk_hidden_state).squeeze(-1)
        loss = token_losses = None
        if labels is not None:
            token_losses = mtp_token_losses(
                outputs.head_hidden_states, self.lm_head.weight, labels, self.config.loss_chunk_size
            )
            target_mask = mtp_target_mask(labels, self.config.n_future_tokens)
            loss = weighted_mtp_loss(token_losses, target_mask, num_items=num_items_in_batch)
        mtp_logits = None
        if return_all_heads:
            mtp_logits = torch.stack([self.lm_head(h) for h in outputs.head_hidden_states], dim=2)
        return WmtpCausalLMOutput(
            loss=loss,
            logits=logits,
            mtp_logits=mtp_logits,
            value=value,
            token_losses=token_losses,
            head_hidden_states=outputs.head_hidden_states if return_all_heads else None,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )

    def generate(self, *args, mtp_speculative: bool = False, **kwargs):
        r"""`GenerationMixin.generate`, plus self-speculative greedy decoding with the MTP heads.

        mtp_speculative: with `do_sample=False`, decode greedily with heads 1..n-1 drafting the tokens after
            head 0's next token, verified by head 0 in the following forward (SPEC §7). The tokens equal plain
            greedy `generate`; fewer forwards run. Left-padded batches, `max_new_tokens`/`max_length`, EOS,
            stopping criteria, logits processors and streamers work as in plain greedy decoding. With
            `return_dict_in_generate=True` the output is a `WmtpSpeculativeOutput`, which adds `forwards`,
            `new_tokens`, `draft_tokens`, `accepted_draft_tokens` and `tokens_per_forward`.
        """
        if not mtp_speculative:
            return super().generate(*args, **kwargs)
        for name in ("custom_generate", "assistant_model", "synced_gpus"):
            if kwargs.get(name):
                raise ValueError(f"generate: mtp_speculative=True cannot be combined with {name}")
        decode = functools.partial(_mtp_speculative_greedy, streamer=kwargs.get("streamer"))
        return super().generate(*args, custom_generate=decode, **kwargs)

    # ---------------------------------------------------------------- conversions to and from LLaMA

    @classmethod
    def from_llama(
        cls,
        model_or_path,
        n_future_tokens: int = 4,
        head_init: str = "copy_last",
        use_value_head: bool = False,
        **from_pretrained_kwargs,
    ) -> WmtpForMultiTokenPrediction:
        """Build a WMTP model from a LLaMA-family causal LM (instance, local path or Hub id).

        Trunk = the LLaMA's layers[:-1], head 0 = its last layer, extra heads = copies of the last layer
        (`head_init="copy_last"`) or freshly initialised blocks (`"random"`). Head 0 reproduces the
        LLaMA's logits exactly.
        """
        from transformers import AutoModelForCausalLM, LlamaConfig

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
            **_shared_llama_fields(lconf),
            num_hidden_layers=lconf.num_hidden_layers + n_future_tokens - 1,
            n_future_tokens=n_future_tokens,
            use_value_head=use_value_head,
        )
        dtype = llama.lm_head.weight.dtype
        with torch.device("meta"):
            model = cls(config)
        state = {k: v.detach().clone() for k, v in llama.state_dict().items()}
        if "lm_head.weight" not in state:  # tied embeddings: WMTP keeps a separate output projection
            state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
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
        model.model.rotary_emb = WmtpRotaryEmbedding(config)
        device = llama.lm_head.weight.device
        model.to(device)
        model.config.dtype = dtype
        model.generation_config = llama.generation_config
        return model.eval() if not llama.training else model

    def to_llama(self):
        """The next-token path (trunk + head 0, shared norm and unembedding) as a `LlamaForCausalLM`."""
        from transformers import LlamaConfig, LlamaForCausalLM

        lconf = LlamaConfig(
            **_shared_llama_fields(self.config),
            num_hidden_layers=len(self.model.layers),
            tie_word_embeddings=False,
        )
        with torch.device("meta"):
            llama = LlamaForCausalLM(lconf)
        state = {
            k: v.detach().clone()
            for k, v in self.state_dict().items()
            if not k.startswith(("model.extra_heads.", "value_head."))
        }
        llama.load_state_dict(state, strict=True, assign=True)
        llama.model.rotary_emb = type(llama.model.rotary_emb)(lconf)
        llama.to(self.lm_head.weight.device)
        llama.config.dtype = self.lm_head.weight.dtype
        llama.generation_config = self.generation_config
        return llama.train(self.training)


_LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "pad_token_id",
    "bos_token_id", "eos_token_id",
)  # fmt: skip


def _shared_llama_fields(config) -> dict:
    """The configuration fields WMTP and LLaMA share (same names, same meaning)."""
    return {name: getattr(config, name) for name in _LLAMA_FIELDS} | {
        "rope_parameters": dict(config.rope_parameters)
    }


# --------------------------------------------------------------------------------------------------
# Self-speculative greedy decoding (SPEC §7; Gloeckle et al. 2024, §3.2)
# --------------------------------------------------------------------------------------------------


@dataclass
class WmtpSpeculativeOutput(GenerateDecoderOnlyOutput):
    """`generate(..., mtp_speculative=True, return_dict_in_generate=True)`: the usual decoder-only output
    (`sequences`, `scores`, `logits`, `past_key_values`) plus what the speculation did.

    Args:
        forwards: model forward passes, the prompt's included (plain greedy needs one per new token).
        new_tokens: generated positions, `sequences.shape[1] - prompt length` (a batch advances together).
        draft_tokens: tokens drafted by heads 1..n-1 and fed to the model for verification.
        accepted_draft_tokens: drafts head 0 confirmed (in a batch, the prefix every row agreed on).
    """

    forwards: int | None = None
    new_tokens: int | None = None
    draft_tokens: int | None = None
    accepted_draft_tokens: int | None = None

    @property
    def tokens_per_forward(self) -> float:
        """New tokens per forward pass: 1.0 for plain greedy, at most `n_future_tokens`."""
        return self.new_tokens / max(self.forwards, 1)


# Model arguments the speculative loop manages itself; anything else is rejected rather than ignored.
_SPECULATIVE_MANAGED_KWARGS = {
    "attention_mask", "position_ids", "past_key_values", "use_cache", "logits_to_keep", "cache_position",
    "return_dict",
}  # fmt: skip


def _check_speculative_request(generation_config: GenerationConfig, model_kwargs: dict) -> None:
    """Reject what self-speculative greedy decoding cannot reproduce exactly, naming the option."""
    if generation_config.do_sample:
        raise ValueError(
            "generate: mtp_speculative=True decodes greedily; got do_sample=True (set do_sample=False, or "
            "drop mtp_speculative to sample)"
        )
    if (generation_config.num_beams or 1) > 1:
        raise ValueError(
            f"generate: mtp_speculative=True needs num_beams=1, got {generation_config.num_beams}"
        )
    if generation_config.return_dict_in_generate and (
        generation_config.output_attentions or generation_config.output_hidden_states
    ):
        raise ValueError(
            "generate: mtp_speculative=True does not return attentions or hidden states "
            "(output_attentions / output_hidden_states)"
        )
    if model_kwargs.get("inputs_embeds") is not None:
        raise ValueError("generate: mtp_speculative=True needs input_ids, not inputs_embeds")
    unknown = sorted(
        k for k, v in model_kwargs.items() if v is not None and k not in _SPECULATIVE_MANAGED_KWARGS
    )
    if unknown:
        raise ValueError(f"generate: mtp_speculative=True does not support the model argument(s) {unknown}")
    cache = model_kwargs.get("past_key_values")
    if cache is not None and (not isinstance(cache, DynamicCache) or cache.get_seq_length() > 0):
        raise ValueError(
            "generate: mtp_speculative=True starts from an empty DynamicCache; got "
            f"{type(cache).__name__} holding {cache.get_seq_length()} tokens"
        )


def _prompt_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Position ids of a left-padded prompt, as `generate` builds them (pads get position 1)."""
    if attention_mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def _drop_last_cached_tokens(cache: Cache, count: int) -> None:
    """Remove the last `count` positions from every cache layer: trunk, head 0 and the extra heads.

    `Cache.crop` changed meaning within transformers 5.x: before 5.14 its argument was the length to keep
    (so `crop(0)` emptied the cache), from 5.14 it is minus the number of tokens to remove, and from 5.20 a
    positive argument is an error. A negative argument removes that many tokens in every 5.x release, so
    only negative arguments are passed, and nothing is called for `count == 0`.
    """
    if count > 0:
        cache.crop(-count)


def _mtp_speculative_greedy(
    self: WmtpForMultiTokenPrediction,
    input_ids: torch.LongTensor,
    logits_processor,
    stopping_criteria,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    streamer=None,
    **model_kwargs,
) -> WmtpSpeculativeOutput | torch.LongTensor:
    """The decoding loop `generate(..., mtp_speculative=True)` runs (as a `custom_generate` callable).

    Each forward feeds the last accepted token followed by the drafts of heads 1..n-1 (made at the position
    that predicted it), runs every block with the KV cache, and reads head 0 at each fed position in turn:
    the token it picks (after the logits processors, exactly as plain greedy) is appended, and the next
    position is used only while the fed draft equals that token in every row that still generates. The
    cache of every layer is then cropped to the accepted tokens, so all rows of a batch keep one length and
    left padding needs no realignment. Rows that have stopped get `pad_token_id`, as in plain `generate`.
    """
    _check_speculative_request(generation_config, model_kwargs)
    n_heads = self.config.n_future_tokens
    batch = input_ids.shape[0]
    device = input_ids.device
    pad_token = generation_config._pad_token_tensor
    pads_finished_rows = any(hasattr(criterion, "eos_token_id") for criterion in stopping_criteria)
    max_length = getattr(stopping_criteria, "max_length", None)
    want_dict = generation_config.return_dict_in_generate
    scores = () if want_dict and generation_config.output_scores else None
    raw_logits = () if want_dict and generation_config.output_logits else None

    attention_mask = model_kwargs.get("attention_mask")
    positions = model_kwargs.get("position_ids")
    if positions is None:
        positions = _prompt_positions(input_ids, attention_mask)
    cache = model_kwargs.get("past_key_values")
    if cache is None:
        cache = DynamicCache(config=self.config)
    prompt_length = input_ids.shape[1]
    last_position = positions[:, -1]
    feed, feed_positions = input_ids, positions
    drafts = input_ids.new_empty((batch, 0))
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    forwards = draft_tokens = accepted_drafts = 0

    while True:
        mask = attention_mask
        if mask is not None and drafts.shape[1]:
            mask = torch.cat([mask, mask.new_ones((batch, drafts.shape[1]))], dim=1)
        heads = self.model(
            input_ids=feed,
            attention_mask=mask,
            position_ids=feed_positions,
            past_key_values=cache,
            use_cache=True,
            return_all_heads=True,
        ).head_hidden_states
        forwards += 1
        n_verify = drafts.shape[1] + 1  # head 0 reads the last token's position and every draft's
        head0_logits = self.lm_head(heads[0][:, -n_verify:]).float()
        appended, stopped = 0, False
        for j in range(n_verify):
            step_logits = head0_logits[:, j]
            step_scores = logits_processor(input_ids, step_logits.clone())  # processors may work in place
            token = step_scores.argmax(dim=-1)
            if pads_finished_rows:
                token = torch.where(unfinished, token, pad_token)
            input_ids = torch.cat([input_ids, token[:, None]], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=1)
            if scores is not None:
                scores += (step_scores,)
            if raw_logits is not None:
                raw_logits += (step_logits,)
            if streamer is not None:
                streamer.put(token.cpu())
            appended += 1
            unfinished = unfinished & ~stopping_criteria(input_ids, scores)
            if not unfinished.any():
                stopped = True
                break
            if j == n_verify - 1:
                break
            # The next position saw draft j as its input: usable only where it is the token just chosen.
            # Rows padded from now on may disagree; without EOS padding every row keeps generating.
            rows = unfinished if pads_finished_rows else torch.ones_like(unfinished)
            if not bool((token[rows] == drafts[rows, j]).all()):
                break
            accepted_drafts += 1
        # Keep the cache of every token but the last one (which the next forward feeds).
        _drop_last_cached_tokens(cache, cache.get_seq_length() - (input_ids.shape[1] - 1))
        if stopped:
            break
        last_position = last_position + appended
        at = feed.shape[1] - n_verify + appended - 1  # fed position that predicted the last token
        n_drafts = n_heads - 1
        if max_length is not None:  # drafts past max_length could never be kept
            n_drafts = max(0, min(n_drafts, max_length - input_ids.shape[1] - 1))
        drafts = input_ids.new_empty((batch, 0))
        if n_drafts:
            drafts = torch.stack(
                [self.lm_head(heads[k][:, at]).argmax(dim=-1) for k in range(1, n_drafts + 1)], dim=1
            )
        draft_tokens += n_drafts
        feed = torch.cat([input_ids[:, -1:], drafts], dim=1)
        feed_positions = last_position[:, None] + torch.arange(1 + n_drafts, device=device)

    if streamer is not None:
        streamer.end()
    if not want_dict:
        return input_ids
    return WmtpSpeculativeOutput(
        sequences=input_ids,
        scores=scores,
        logits=raw_logits,
        past_key_values=cache,
        forwards=forwards,
        new_tokens=input_ids.shape[1] - prompt_length,
        draft_tokens=draft_tokens,
        accepted_draft_tokens=accepted_drafts,
    )


__all__ = [
    "WmtpPreTrainedModel",
    "WmtpModel",
    "WmtpForMultiTokenPrediction",
    "WmtpCausalLMOutput",
    "WmtpModelOutput",
    "WmtpSpeculativeOutput",
    "chunked_cross_entropy",
    "mtp_token_losses",
    "mtp_target_mask",
    "shift_labels_for_head",
    "weighted_mtp_loss",
]
