"""Self-speculative greedy decoding with the MTP heads (docs/design.md §7; Gloeckle et al. 2024, §3.2).

`WmtpForMultiTokenPrediction.generate(..., mtp_speculative=True)` runs `mtp_speculative_greedy` as a
`custom_generate` loop. Imports only `torch` and `transformers` (a sibling of `modeling_wmtp.py`, shipped
with it by `save_pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerateDecoderOnlyOutput, GenerationConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

# The name under which the installed transformers passes the KV cache between `generate` and a model's
# forward, and reads it from model outputs: `cache` from 5.25, `past_key_values` before.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# --------------------------------------------------------------------------------------------------


@dataclass
class WmtpSpeculativeOutput(GenerateDecoderOnlyOutput):
    """`generate(..., mtp_speculative=True, return_dict_in_generate=True)`: the usual decoder-only output
    (`sequences`, `scores`, `logits` and the cache) plus what the speculation did.

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
    "attention_mask", "position_ids", "cache", "past_key_values", "use_cache", "logits_to_keep", "cache_position",
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
    cache = model_kwargs.get(CACHE_NAME)
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
    """Remove the last `count` positions from every cache layer that holds any: trunk, head 0 and the
    extra heads that ran (with fewer drafts, the others never run and stay empty).

    `crop` changed meaning within transformers 5.x: before 5.14 its argument was the length to keep (so
    `crop(0)` emptied the cache), from 5.14 it is minus the number of tokens to remove, and from 5.20 a
    positive argument is an error; before 5.14 an empty layer cannot be cropped at all. A negative argument
    removes that many tokens in every 5.x release, so only negative arguments are passed, only to layers
    holding tokens, and nothing is called for `count == 0`.
    """
    if count > 0:
        for layer in cache.layers:
            if layer.get_seq_length() > 0:
                layer.crop(-count)


def mtp_speculative_greedy(
    self,
    input_ids: torch.LongTensor,
    logits_processor,
    stopping_criteria,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    streamer=None,
    num_drafts: int | None = None,
    **model_kwargs,
) -> WmtpSpeculativeOutput | torch.LongTensor:
    """The decoding loop `generate(..., mtp_speculative=True)` runs (as a `custom_generate` callable).

    Each forward feeds the last accepted token followed by the drafts of heads 1..`num_drafts` (default
    n-1; made at the position that predicted it), runs every block with the KV cache, and reads head 0 at
    each fed position in turn:
    the token it picks (after the logits processors, exactly as plain greedy) is appended, and the next
    position is used only while the fed draft equals that token in every row that still generates. The
    cache of every layer is then cropped to the accepted tokens, so all rows of a batch keep one length and
    left padding needs no realignment. Rows that have stopped get `pad_token_id`, as in plain `generate`.
    """
    _check_speculative_request(generation_config, model_kwargs)
    n_heads = self.config.n_future_tokens
    if num_drafts is None:
        num_drafts = n_heads - 1
    elif isinstance(num_drafts, bool) or not isinstance(num_drafts, int) or not 1 <= num_drafts < n_heads:
        raise ValueError(
            f"generate: mtp_num_drafts must be an integer in 1..{n_heads - 1}, got {num_drafts!r}"
        )
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
    cache = model_kwargs.get(CACHE_NAME)
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
            cache=cache,
            use_cache=True,
            return_all_heads=True,
            heads_to_run=1 + num_drafts,
        ).head_hidden_states
        forwards += 1
        n_verify = drafts.shape[1] + 1  # head 0 reads the last token's position and every draft's
        # One unembedding pass for every running head at every verified position: which position drafts
        # next is known only after verification, and at so few rows reading the unembedding matrix
        # dominates, so one pass over them all costs far less than one pass per head.
        states = [h[:, -n_verify:] for h in heads]
        logits = self.lm_head(torch.stack(states, dim=1))  # [B, 1 + num_drafts, n_verify, V]
        head0_logits = logits[:, 0].float()
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
        at = appended - 1  # verified position that predicted the last token
        n_drafts = num_drafts
        if max_length is not None:  # drafts past max_length could never be kept
            n_drafts = max(0, min(n_drafts, max_length - input_ids.shape[1] - 1))
        drafts = input_ids.new_empty((batch, 0))
        if n_drafts:
            drafts = logits[:, 1 : n_drafts + 1, at].argmax(dim=-1)
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
        **{CACHE_NAME: cache},
        forwards=forwards,
        new_tokens=input_ids.shape[1] - prompt_length,
        draft_tokens=draft_tokens,
        accepted_draft_tokens=accepted_drafts,
    )
