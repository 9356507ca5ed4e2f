"""Token healing: generate from a prompt as training tokenized it, across the prompt/response boundary.

Training tokenizes prompt + response in one call (`data.formatting`), so the tokens at the boundary depend
on the response: with a byte-level BPE, a prompt ending in "\\n" followed by "    return" gives one token
"\\n    " (labelled as response), and a prompt ending in "\\n\\n" followed by "print" gives "\\n", "\\n".
Generation only has the prompt, whose tokenization ends in a token ("\\n", "\\n\\n") that training never
showed there. Healing removes the prompt's last token and makes the generated text start with that token's
text: while part of it is still to come, a token is allowed only when its text starts with the rest or is
a start of the rest. The model then continues from exactly the context training gave it and picks the
boundary tokens itself (the removed token is always one of the choices).

Token texts are each token decoded on its own, exact for byte-level BPE (GPT-2, LLaMA-3, SmolLM2 and the
micro tokenizer). A special or added token, a token whose text does not decode on its own (part of a UTF-8
character) or decodes differently inside the prompt, or one with no other compatible token, is kept.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor

_VOCAB_TEXTS: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()
_ALLOWED: weakref.WeakKeyDictionary[Any, dict[str, tuple[int, ...]]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class HealedPrompt:
    """A prompt's token ids after healing; `prefix` is the removed token's text, with which the generated
    text must start ("" when nothing was removed)."""

    input_ids: list[int]
    prefix: str = ""


def vocab_texts(tokenizer: Any) -> list[str]:
    """Every token id's text, decoded on its own (cached per tokenizer)."""
    if tokenizer not in _VOCAB_TEXTS:
        _VOCAB_TEXTS[tokenizer] = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return _VOCAB_TEXTS[tokenizer]


def special_ids(tokenizer: Any) -> set[int]:
    """Ids healing never removes or allows: special and added tokens (a chat template's markers)."""
    return set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)


def compatible_tokens(tokenizer: Any, rest: str) -> tuple[int, ...]:
    """Ids of the ordinary (not special or added) tokens that may come next when the generated text must
    still produce `rest`: their text starts with `rest`, or is a non-empty start of it (cached)."""
    cache = _ALLOWED.setdefault(tokenizer, {})
    if rest not in cache:
        added = special_ids(tokenizer)
        cache[rest] = tuple(
            i
            for i, t in enumerate(vocab_texts(tokenizer))
            if t and (t.startswith(rest) or rest.startswith(t)) and i not in added
        )
    return cache[rest]


def heal_prompt(tokenizer: Any, input_ids: Sequence[int]) -> HealedPrompt:
    """Remove the last prompt token when other tokens could produce its text (see the module docstring)."""
    ids = list(input_ids)
    if len(ids) < 2:
        return HealedPrompt(ids)
    last = ids[-1]
    if last in special_ids(tokenizer):
        return HealedPrompt(ids)
    prefix = vocab_texts(tokenizer)[last]
    if not prefix or "\ufffd" in prefix or compatible_tokens(tokenizer, prefix) == (last,):
        return HealedPrompt(ids)
    if tokenizer.decode(ids) != tokenizer.decode(ids[:-1]) + prefix:
        return HealedPrompt(ids)
    return HealedPrompt(ids[:-1], prefix)


def remaining_prefix(prefix: str, generated: str) -> str:
    """What of `prefix` the generated text must still produce ("" once it is covered)."""
    return prefix[len(generated) :] if len(generated) < len(prefix) else ""


class PrefixConstraint(LogitsProcessor):
    """While a row's generated text has not yet produced its `prefixes` entry, give every token that is not
    `compatible_tokens` with the rest a score of -inf; rows with an empty prefix are left alone. Works at
    any step (plain and self-speculative decoding call it with the sequence so far)."""

    def __init__(self, tokenizer: Any, prompt_length: int, prefixes: Sequence[str]) -> None:
        self.tokenizer, self.prompt_length, self.prefixes = tokenizer, prompt_length, tuple(prefixes)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n_new = input_ids.shape[1] - self.prompt_length
        texts = vocab_texts(self.tokenizer)
        copies = scores.shape[0] // len(self.prefixes)  # generate may expand rows (num_return_sequences)
        for row in range(scores.shape[0]):
            prefix = self.prefixes[row // copies]
            if n_new >= len(prefix):  # every token has text: a prefix is covered within len(prefix) tokens
                continue
            generated = "".join(texts[i] for i in input_ids[row, self.prompt_length :].tolist())
            rest = remaining_prefix(prefix, generated)
            if rest:
                keep = torch.full_like(scores[row], float("-inf"))
                keep[list(compatible_tokens(self.tokenizer, rest))] = 0.0
                scores[row] = scores[row] + keep
        return scores


def strip_prefix(text: str, prefix: str) -> str:
    """The completion after healing: the generated text without the removed prompt token's text."""
    if not prefix:
        return text
    return text[len(prefix) :] if text.startswith(prefix) else ""
