"""Meta's multi-token-prediction LLaMA as a HuggingFace model, plus an optional value head.

Layout (docs/design.md §2.1): `model.layers` holds the trunk followed by head 0; `model.extra_heads` holds heads
1..n-1. Every head block reads the trunk output, and all heads share `model.norm` and `lm_head`.
Trunk + head 0 is exactly a LLaMA model, which is what generation runs.

This file imports only `torch`, `transformers` and its siblings (`configuration_wmtp.py`, `losses.py`,
`generation_wmtp.py`, `convert_llama.py`, which import nothing else either), so `save_pretrained` ships
them and checkpoints load with `trust_remote_code=True` where `wmtp_hf` is not installed. What LLaMA's
file gives every version from 5.13 on is used from there: norm, RoPE, MLP, eager attention, output
capture (`capture_outputs`), tuple returns (`can_return_tuple`), output classes.

The KV cache is an argument of every forward under the name transformers uses from 5.25, `cache`; the
older name `past_key_values` is still accepted (with transformers' deprecation warning from 5.25, as
LLaMA's). Outputs carry it under the field the installed version's `generate` reads (`CACHE_NAME`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_wmtp import WmtpConfig
from .convert_llama import wmtp_from_llama, wmtp_to_llama
from .generation_wmtp import CACHE_NAME, WmtpSpeculativeOutput, mtp_speculative_greedy
from .losses import mtp_target_mask, mtp_token_losses, packed_segment_ids, weighted_mtp_loss

# Attention backends that run a packed row example by example here; flash attention takes the packed row
# itself (varlen, from `cu_seq_lens_*` or `position_ids`), others transformers' block-diagonal mask.
PER_EXAMPLE_ATTENTION = ("sdpa", "eager")

_COUNTED_BY = {"num_hidden_layers_key": "num_next_token_layers"}  # from transformers 5.25
_COUNTED_BY = _COUNTED_BY if "num_hidden_layers_key" in OutputRecorder.__dataclass_fields__ else {}


def _packed_segments(
    position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, cache: Cache | None
) -> torch.Tensor | None:
    """`[B, T]` example ids of a packed batch (examples flattened into a row, `position_ids` restarting at
    each, no attention mask, no cache: transformers then keeps attention inside each example), else None."""
    if position_ids is None or attention_mask is not None or cache is not None:
        return None
    segments = packed_segment_ids(position_ids)
    return segments if bool(segments[:, -1].any()) else None


def _old_cache_name(forward: Callable) -> Callable:
    """Accept the cache as `past_key_values` too; both names at once is an error. From 5.25 with transformers'
    own deprecation warning (as LLaMA's forwards); before 5.25 silently, as `generate` still passes it so."""
    if CACHE_NAME == "cache":
        rename = deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
        return rename(forward)

    @functools.wraps(forward)
    def renamed(self, *args, past_key_values: Cache | None = None, **kwargs):
        if past_key_values is not None:
            if kwargs.get("cache") is not None:
                raise ValueError("Both `past_key_values` and `cache` are set: pass the KV cache once")
            kwargs["cache"] = past_key_values
        return forward(self, *args, **kwargs)

    return renamed


# Building blocks: LLaMA's (same math as Meta's); the attention adds a per-example path for packed rows.


class WmtpRMSNorm(LlamaRMSNorm):
    """LLaMA's RMSNorm (float32 statistics)."""


class WmtpRotaryEmbedding(LlamaRotaryEmbedding):
    """LLaMA's rotate-half RoPE tables; scaled variants from transformers' registry."""


class WmtpMLP(LlamaMLP):
    """SwiGLU feed-forward: `down(act(gate(x)) * up(x))` (Meta's `w2(silu(w1 x) * w3 x)`)."""


class WmtpAttention(LlamaAttention):
    """LLaMA's attention (GQA, transformers' attention interface), plus attention inside each example of a
    packed row."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        kwargs.update(dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling)
        lengths = kwargs.pop("packed_lengths", None)
        if lengths is not None:  # a packed row: attention inside each example, one example at a time
            attn_output, attn_weights = self._per_example(
                attention_interface, query, key, value, lengths, **kwargs
            )
        else:
            attn_output, attn_weights = attention_interface(self, query, key, value, attention_mask, **kwargs)
        return self.o_proj(attn_output.reshape(*input_shape, -1).contiguous()), attn_weights

    def _per_example(
        self,
        attention_interface: Callable,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        lengths: tuple[int, ...],
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """Causal attention of each packed example on its own (`[1, N, heads, d]`): sum of L_i^2 work instead
        of the N^2 a block-diagonal mask over the whole row costs with sdpa or eager."""
        outputs = []
        for q, k, v in zip(*(t.split(list(lengths), dim=2) for t in (query, key, value)), strict=True):
            mask = None  # sdpa: is_causal
            if self.config._attn_implementation != "sdpa":
                n = q.shape[2]
                mask = torch.full((n, n), torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device).triu(1)
                mask = mask[None, None]
            outputs.append(attention_interface(self, q, k, v, mask, **kwargs)[0])
        return torch.cat(outputs, dim=1), None


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
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_out, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            **kwargs,
        )
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


@dataclass
class WmtpModelOutput(BaseModelOutputWithPast):
    """Base-model output: transformers' fields (the cache named as the installed `generate` reads it), then ours.

    Args:
        last_hidden_state: `[B, T, D]` head 0's final-normed hidden state (with `trunk_only`, the trunk's).
        hidden_states: with `output_hidden_states`: the embeddings, each trunk block's output, and head 0's
            final-normed output, exactly LLaMA's tuple for the next-token path. Heads 1..n-1 add nothing
            here (their states are `head_hidden_states`).
        attentions: with `output_attentions` (and an attention implementation that returns weights, e.g.
            `eager`): one `[B, heads, T, S]` map per block, `num_hidden_layers` in all, in layer order
            (trunk, head 0 = LLaMA's, then heads 1..n-1, which then run).
        trunk_hidden_state: `[B, T, D]` the trunk output through the shared final norm, `norm(h_trunk)`:
            the state every head block reads, and the value head's input. Only when requested.
        head_hidden_states: n tensors `[B, T, D]`, every head's final-normed hidden state (head 0 first),
            only when all heads were requested.
    """

    trunk_hidden_state: torch.FloatTensor | None = None
    head_hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class WmtpCausalLMOutput(CausalLMOutputWithPast):
    """Output of [`WmtpForMultiTokenPrediction`] (docs/design.md §2.3): transformers' fields, then ours.

    Args:
        loss: uniform MTP loss (docs/design.md §4.1) when `labels` (or `shift_labels`) are given.
        logits: `[B, T, V]` logits of head 0 (skipped while training with labels, see `skip_logits`).
        hidden_states, attentions: as in [`WmtpModelOutput`].
        mtp_logits: `[B, T, n, V]` logits of all heads, only with `return_all_heads=True`.
        value: `[B, T]` value-head estimates `V_t` of P(response correct | tokens <= t), with a value head.
            (Not `values`: that name would shadow `dict.values()`, which `ModelOutput` inherits and
            DDP/FSDP/accelerate call on model outputs.)
        token_losses: `[B, T, n]` float32 `CE_k(t)` (0 without a target), when labels are given; the
            graph to the parameters is kept so a trainer can weight and sum them.
        head_hidden_states: n tensors `[B, T, D]` of final-normed head hidden states, with all heads.
    """

    mtp_logits: torch.FloatTensor | None = None
    value: torch.FloatTensor | None = None
    token_losses: torch.FloatTensor | None = None
    head_hidden_states: tuple[torch.FloatTensor, ...] | None = None


class WmtpPreTrainedModel(PreTrainedModel):
    config_class = WmtpConfig
    config: WmtpConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["WmtpDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    # Hidden states: the blocks of `model.layers` (trunk + head 0, LLaMA's path; 5.25 resolves negative
    # indices with their count); attentions: every block.
    _can_record_outputs = {
        "hidden_states": OutputRecorder(WmtpDecoderLayer, layer_name="layers", **_COUNTED_BY),
        "attentions": OutputRecorder(WmtpAttention, index=1),
    }

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
        n_layers_main = config.num_next_token_layers  # trunk blocks + head 0
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(WmtpDecoderLayer(config, i) for i in range(n_layers_main))
        self.extra_heads = nn.ModuleList(
            WmtpDecoderLayer(config, n_layers_main + i) for i in range(config.n_future_tokens - 1)
        )
        self.norm = WmtpRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = WmtpRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    @property
    def prediction_heads(self) -> list[WmtpDecoderLayer]:
        """Head blocks in head order: head 0 is the last of `layers`, then `extra_heads`."""
        return [self.layers[-1], *self.extra_heads]

    @_old_cache_name
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        return_all_heads: bool = False,
        heads_to_run: int | None = None,
        output_trunk_state: bool = False,
        trunk_only: bool = False,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> WmtpModelOutput:
        """`output_trunk_state` adds `trunk_hidden_state = norm(h_trunk)`; `trunk_only` runs no head block
        (the critic's forward) and returns only that state (also as `last_hidden_state`). With
        `return_all_heads`, `heads_to_run` runs only the first heads (self-speculative decoding with fewer
        drafts; the others' cache stays empty). `past_key_values` is the cache's older name."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("WmtpModel.forward: pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        packed = _packed_segments(position_ids, attention_mask, cache)
        if use_cache is None:  # a packed batch runs without a cache, or attention would cross examples
            use_cache = self.config.use_cache and packed is None
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None] + past_seen
        per_example = (
            self.config._attn_implementation in PER_EXAMPLE_ATTENTION and inputs_embeds.shape[0] == 1
        )
        if packed is not None and not use_cache and per_example:
            # One packed row, attention example by example (no [N, N] mask is built).
            kwargs["packed_lengths"] = tuple(torch.bincount(packed.reshape(-1)).tolist())
            causal_mask = None
        else:
            causal_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **{CACHE_NAME: cache},
            )
        block_kwargs = dict(
            attention_mask=causal_mask,
            position_embeddings=self.rotary_emb(inputs_embeds, position_ids),
            cache=cache if use_cache else None,
            position_ids=position_ids,
            **kwargs,
        )
        hidden = inputs_embeds
        for block in self.layers[:-1]:
            hidden = block(hidden, **block_kwargs)
        trunk_state = self.norm(hidden) if (output_trunk_state or trunk_only) else None
        head_hidden = None
        if not trunk_only:  # attention maps cover every block, so all heads run when they are asked for
            if output_attentions is None:
                output_attentions = self.config.output_attentions
            all_heads = return_all_heads or output_attentions
            heads = self.prediction_heads if all_heads else self.prediction_heads[:1]
            if return_all_heads and heads_to_run is not None:
                heads = heads[:heads_to_run]
            head_hidden = tuple(self.norm(head(hidden, **block_kwargs)) for head in heads)
        return WmtpModelOutput(
            last_hidden_state=head_hidden[0] if head_hidden is not None else trunk_state,
            trunk_hidden_state=trunk_state,
            head_hidden_states=head_hidden if return_all_heads else None,
            **{CACHE_NAME: cache if use_cache else None},
        )


class WmtpForMultiTokenPrediction(WmtpPreTrainedModel, GenerationMixin):
    """Multi-token-prediction causal LM: `logits` are head 0's, so `generate` and pipelines work unchanged."""

    # As LlamaForCausalLM declares it (transformers 5.13 and 5.25): transformers ties `lm_head` to the input
    # embeddings only when `config.tie_word_embeddings` is true, so untied checkpoints stay untied.
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: WmtpConfig) -> None:
        super().__init__(config)
        self.model = WmtpModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.value_head = nn.Linear(config.hidden_size, 1) if config.use_value_head else None
        self.post_init()

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

    @_old_cache_name
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_all_heads: bool = False,
        skip_logits: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        value_only: bool = False,
        shift_labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> WmtpCausalLMOutput:
        r"""
        cache: the KV cache (`past_key_values`, its name before transformers 5.25, is accepted too).
        labels: `[B, T]` token ids with -100 where there is no target (not pre-shifted); gives `loss` and
            `token_losses` computed chunk by chunk, never materialising `[B, T, n, V]`.
        shift_labels: `[B, T]` labels already shifted by one (`shift_labels[:, t] = labels[:, t + 1]`), as
            `Trainer` passes them under context parallelism; used instead of `labels` when given (head 0
            takes them as they are, head k shifted k further), so the loss equals the loss from `labels`.
        return_all_heads: also return `mtp_logits` `[B, T, n, V]` and `head_hidden_states`.
        skip_logits: do not compute head-0 `logits`; defaults to True while training with labels.
        num_items_in_batch: target count(s) of the whole accumulation window (scalar or one per head),
            passed by `Trainer` so the loss normalises correctly under gradient accumulation.
        value_only: run the trunk and the value head only (no head block, no unembedding, no loss): the
            critic's forward. Needs a value head.
        """
        if value_only and self.value_head is None:
            raise ValueError("value_only=True needs a value head (use_value_head=True or add_value_head())")
        has_targets = labels is not None or shift_labels is not None
        # Packed examples: no head's target comes from the next example (docs/design.md §6).
        segments = _packed_segments(position_ids, attention_mask, cache) if has_targets else None
        if output_attentions is None:  # passed on explicitly, so None would turn off the recording
            output_attentions = self.config.output_attentions
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_all_heads=return_all_heads or has_targets,
            output_trunk_state=self.value_head is not None,
            trunk_only=value_only,
            output_attentions=output_attentions,
            return_dict=True,
            **kwargs,
        )
        shared = dict(
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )
        value = None  # V_t reads norm(h_trunk), the state every head reads (docs/design.md §2.3)
        if self.value_head is not None:
            value = self.value_head(outputs.trunk_hidden_state).squeeze(-1)
        if value_only:
            return WmtpCausalLMOutput(value=value, **shared)
        head0 = outputs.last_hidden_state
        if skip_logits is None:
            skip_logits = self.training and has_targets
        logits = None
        if not skip_logits:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(head0[:, keep, :])
        loss = token_losses = None
        if has_targets:
            heads, chunk = outputs.head_hidden_states, self.config.loss_chunk_size
            token_losses = mtp_token_losses(heads, self.lm_head.weight, labels, chunk, shift_labels, segments)
            target_mask = mtp_target_mask(labels, self.config.n_future_tokens, shift_labels, segments)
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
            **shared,
        )

    def generate(self, *args, mtp_speculative: bool = False, mtp_num_drafts: int | None = None, **kwargs):
        r"""`GenerationMixin.generate`, plus self-speculative greedy decoding with the MTP heads.

        mtp_speculative: with `do_sample=False`, decode greedily with heads 1..n-1 drafting the tokens after
            head 0's next token, verified by head 0 in the following forward (docs/design.md §7). The tokens equal plain
            greedy `generate`; fewer forwards run. Left-padded batches, `max_new_tokens`/`max_length`, EOS,
            stopping criteria, logits processors and streamers work as in plain greedy decoding. With
            `return_dict_in_generate=True` the output is a `WmtpSpeculativeOutput`, which adds `forwards`,
            `new_tokens`, `draft_tokens`, `accepted_draft_tokens` and `tokens_per_forward`.
        mtp_num_drafts: heads drafting per step, 1..n-1 (default n-1): fewer drafts verify fewer positions.
        """
        if not mtp_speculative:
            return super().generate(*args, **kwargs)
        for name in ("custom_generate", "assistant_model", "synced_gpus"):
            if kwargs.get(name):
                raise ValueError(f"generate: mtp_speculative=True cannot be combined with {name}")
        decode = functools.partial(
            mtp_speculative_greedy, streamer=kwargs.get("streamer"), num_drafts=mtp_num_drafts
        )
        return super().generate(*args, custom_generate=decode, **kwargs)

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
        return wmtp_from_llama(
            cls, model_or_path, n_future_tokens, head_init, use_value_head, **from_pretrained_kwargs
        )

    def to_llama(self):
        """The next-token path (trunk + head 0, shared norm and unembedding) as a `LlamaForCausalLM`."""
        return wmtp_to_llama(self)


__all__ = [
    "WmtpPreTrainedModel",
    "WmtpModel",
    "WmtpForMultiTokenPrediction",
    "WmtpCausalLMOutput",
    "WmtpModelOutput",
    "WmtpSpeculativeOutput",
    "CACHE_NAME",
]
