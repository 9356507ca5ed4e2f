"""Batched sampling of completions: left padding, KV cache, stop sequences (checked during and after decoding)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..data.formatting import adds_special_tokens
from ..errors import UsageError
from ..loading import ensure_pad_token, load_for_inference
from .extraction import closed_block_end
from .token_healing import HealedPrompt, PrefixConstraint, heal_prompt, strip_prefix

# HumanEval-style completions continue a function body: stop where the next top-level statement starts.
COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
# Alpaca-style responses end at EOS (handled by generate) or at the next "### " section header.
INSTRUCTION_STOPS = ("\n### ",)
# Chat answers: stop once the first fenced code block is closed (the code is read from that block only).
# A marker, not a literal string: `first_stop` cuts just after the closing fence, which stays in the text.
CLOSED_CODE_BLOCK = "<first fenced code block closed>"


def code_start(text: str) -> int:
    """Where stop strings start to count: the end of the first line holding code (not blank, not a
    comment), i.e. the index of its newline; `len(text)` while there is none. So stops never cut a
    completion to nothing before its first line of code (a body that opens with a blank line or a comment,
    or an answer that starts with its own `def`)."""
    offset = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return offset + len(line.rstrip("\r\n"))
        offset += len(line)
    return len(text)


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where `text` is cut: the earliest stop string at or after `code_start(text)` (the stop string is
    cut off), or for `CLOSED_CODE_BLOCK` just after the first fenced block's closing fence; None when
    there is no stop."""
    start = code_start(text)
    found = [text.find(stop, start) for stop in stops if stop != CLOSED_CODE_BLOCK]
    if CLOSED_CODE_BLOCK in stops:
        found.append(closed_block_end(text) or -1)
    found = [i for i in found if i != -1]
    return min(found) if found else None


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """Cut `text` at the earliest stop string after its first line of code (the stop string is removed)."""
    cut = first_stop(text, stops)
    return text if cut is None else text[:cut]


class StopOnStrings(StoppingCriteria):
    """Stop a sequence once its *generated* text (prompt excluded) contains a stop string.

    transformers' `stop_strings` also matches across the prompt boundary (a prompt ending in "\n" plus a
    generated "def " would stop at once), which disagrees with post-hoc truncation of the completion.
    """

    def __init__(
        self, tokenizer: Any, prompt_length: int, stops: Sequence[str], prefixes: Sequence[str] = ()
    ) -> None:
        self.tokenizer, self.prompt_length, self.stops = tokenizer, prompt_length, tuple(stops)
        self.prefixes = tuple(prefixes)  # per row: text of a prompt token removed by healing

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        if self.prefixes:
            texts = [strip_prefix(t, p) for t, p in zip(texts, self.prefixes, strict=True)]
        done = [first_stop(text, self.stops) is not None for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@dataclass
class SpeculativeStats:
    """Counters summed over the batches of `generate_completions(..., speculative=True)`.

    `new_tokens` counts generated positions per batch (a batch advances together), so plain greedy
    decoding would need exactly `new_tokens` forwards: `tokens_per_forward` is the saving.
    """

    forwards: int = 0
    new_tokens: int = 0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / max(self.forwards, 1)

    def add(self, output: Any) -> None:
        """Add the counters of one `generate(..., mtp_speculative=True, return_dict_in_generate=True)`."""
        self.forwards += output.forwards
        self.new_tokens += output.new_tokens
        self.draft_tokens += output.draft_tokens
        self.accepted_draft_tokens += output.accepted_draft_tokens

    def summary(self) -> dict[str, Any]:
        return {
            "tokens_per_forward": round(self.tokens_per_forward, 4),
            "forwards": self.forwards,
            "new_tokens": self.new_tokens,
            "draft_tokens": self.draft_tokens,
            "accepted_draft_tokens": self.accepted_draft_tokens,
        }


def load_model(model_dir: str, device: str | None = None, dtype: str = "auto") -> tuple[Any, Any]:
    """Load a causal LM + tokenizer from `model_dir` (a WMTP or any transformers checkpoint, a Hub id or a
    LoRA adapter folder), in eval mode on `device` (default: the accelerator if any)."""
    return load_for_inference(model_dir, device=device, dtype=dtype, label=f"--model '{model_dir}'")


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (e.g. a chat model's end of turn)."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` of `rows` left-padded to the longest (each row ends at the edge)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.inference_mode()
def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    n_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    stop_sequences: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
    speculative: bool = False,
    speculative_stats: SpeculativeStats | None = None,
    token_ids: list[list[list[int]]] | None = None,
    token_healing: bool = True,
) -> list[list[str]]:
    """Return `n_samples` completions per prompt (list per prompt, in order).

    Greedy decoding when temperature == 0 (one generation, replicated n times, since it is deterministic);
    otherwise sampling with temperature/top_p from a seeded generator state. Prompts are left-padded so
    that every sequence in a batch continues right after its own last prompt token. `speculative` decodes
    greedily with the MTP heads drafting (same tokens, fewer forwards; WMTP models only) and adds its
    counters to `speculative_stats` when given. `token_ids`, when given, receives the generated token ids
    of each completion (same layout as the result; the batch's trailing padding removed), e.g. to compare
    with another generator token for token. `token_healing` (default) generates across the prompt's last
    token as training tokenized prompt + response (`token_healing.py`); the completion never repeats the
    removed token's text, but `token_ids` start with the token that replaced it.
    """
    if n_samples < 1:
        raise UsageError(f"n_samples: expected >= 1, got {n_samples}")
    greedy = temperature == 0
    if speculative and not greedy:
        raise UsageError(f"--speculative: decodes greedily; expected --temperature 0, got {temperature}")
    if speculative and getattr(model.config, "n_future_tokens", None) is None:
        raise UsageError(
            f"--speculative: needs a WMTP model with MTP heads; got model_type {model.config.model_type!r}"
        )
    copies = 1 if greedy else n_samples
    jobs = [i for i in range(len(prompts)) for _ in range(copies)]
    tokenizer.padding_side = "left"
    ensure_pad_token(tokenizer)
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "use_cache": True,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": stop_token_ids(model, tokenizer),
        "do_sample": not greedy,
    }
    if not greedy:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    if speculative:
        gen_kwargs.update(mtp_speculative=True, return_dict_in_generate=True)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    outputs: list[list[str]] = [[] for _ in prompts]
    ids_out: list[list[list[int]]] = [[] for _ in prompts]
    bar = tqdm(total=len(jobs), desc="generate", unit="sample", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        texts = [prompts[i] for i in batch]
        special = all(adds_special_tokens(tokenizer, t) for t in texts)  # a chat template may write BOS
        encoded = tokenizer(texts, add_special_tokens=special)["input_ids"]
        healed = [heal_prompt(tokenizer, ids) if token_healing else HealedPrompt(ids) for ids in encoded]
        enc = left_pad([h.input_ids for h in healed], tokenizer.pad_token_id, device)
        prompt_length = enc["input_ids"].shape[1]
        prefixes = [h.prefix for h in healed]
        stopping = StoppingCriteriaList()
        if stop_sequences:
            stopping.append(StopOnStrings(tokenizer, prompt_length, stop_sequences, prefixes))
        processors = LogitsProcessorList()
        if any(prefixes):
            processors.append(PrefixConstraint(tokenizer, prompt_length, prefixes))
        out = model.generate(**enc, **gen_kwargs, stopping_criteria=stopping, logits_processor=processors)
        if speculative:
            if speculative_stats is not None:
                speculative_stats.add(out)
            out = out.sequences
        new_tokens = out[:, prompt_length:]
        decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for i, text, prefix in zip(batch, decoded, prefixes, strict=True):
            outputs[i].append(truncate_at_stops(strip_prefix(text, prefix), stop_sequences))
        for i, row in zip(batch, new_tokens.tolist(), strict=True):
            while row and row[-1] == tokenizer.pad_token_id:
                row.pop()
            ids_out[i].append(row)
        bar.update(len(batch))
    bar.close()
    if greedy:
        outputs = [texts * n_samples for texts in outputs]
        ids_out = [rows * n_samples for rows in ids_out]
    if token_ids is not None:
        token_ids[:] = ids_out
    return outputs


def sample_problems(model: Any, tokenizer: Any, problems: Sequence[Any], **options: Any) -> list[Any]:
    """`Sample`s for every problem: `generate_completions` per group of problems sharing stop sequences
    (`options` are its keyword arguments, e.g. n_samples, temperature, speculative)."""
    from .samples import Sample

    samples = []
    for stops in sorted({p.stop_sequences for p in problems}):
        group = [p for p in problems if p.stop_sequences == stops]
        ids: list[list[list[int]]] = []
        completions = generate_completions(
            model, tokenizer, [p.prompt for p in group], stop_sequences=stops, token_ids=ids, **options
        )
        samples += [
            Sample(p.task_id, c, tuple(t))
            for p, texts, rows in zip(group, completions, ids, strict=True)
            for c, t in zip(texts, rows, strict=True)
        ]
    return samples
