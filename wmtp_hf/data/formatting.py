"""docs/design.md §3.3 tokenization: prompt tokens are masked, response = output (in the prompt format) + EOS."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

import datasets

from .prompt_formats import LEGACY_PROMPT_FORMAT, render_example
from .schema import DataError

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048
METADATA_COLUMNS = ("task_id", "problem_id", "source", "is_correct", "difficulty")


def adds_special_tokens(tokenizer: Any, text: str) -> bool:
    """`add_special_tokens` for `text`: as usual, except when the text already starts with the BOS token
    (a chat template that writes it), which would otherwise be doubled."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def encode_example(
    example: Mapping[str, Any], tokenizer: Any, prompt_format: str = LEGACY_PROMPT_FORMAT
) -> tuple[list[int], int]:
    """`(input_ids, prompt_length)` of a row in `prompt_format` (docs/data.md "Tokenization").

    Prompt and response are tokenized together, in one call on the full text (special tokens added as the
    tokenizer does, e.g. BOS), so `input_ids` are exactly the tokens of prompt + response: a BPE merge
    across the boundary (e.g. the prompt's last newline with the response's indentation) stays one token.
    The label boundary is placed from the character boundary with the fast tokenizer's offset mapping:
    the first token whose span ends after the prompt's last character is the first response token, so a
    token straddling the boundary counts as response. EOS is appended once, unless the text already ends
    with it (a chat template that closes the turn with the EOS token). Labels are then `input_ids` with
    the first `prompt_length` positions set to -100.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tokenizer: expected an eos_token (the response ends with EOS)")
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("tokenizer: expected a fast tokenizer (the label boundary uses its offset mapping)")
    prompt, response, _ = render_example(example, prompt_format, tokenizer)
    text = prompt + response
    enc = tokenizer(
        text, add_special_tokens=adds_special_tokens(tokenizer, text), return_offsets_mapping=True
    )
    ids = list(enc["input_ids"])
    boundary = len(prompt)
    prompt_length = next((i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > boundary), len(ids))
    if not ids or ids[-1] != eos:
        ids.append(eos)
    return ids, prompt_length


def labels_for(input_ids: list[int], prompt_length: int) -> list[int]:
    """Training labels: -100 on the prompt, the token ids on the response (EOS included)."""
    return [-100] * prompt_length + list(input_ids[prompt_length:])


def drop_reason(example: Mapping[str, Any], n_tokens: int | None, max_length: int) -> str:
    """Why an example is not trained on ("" when it is kept)."""
    if not example["output"].strip():
        return "empty_solution"
    if n_tokens is not None and n_tokens > max_length:
        return f"over_max_length_{max_length}"
    return ""


def tokenize_dataset(
    dataset: datasets.Dataset,
    tokenizer: Any,
    max_length: int = DEFAULT_MAX_LENGTH,
    num_proc: int | None = None,
    desc: str = "Tokenizing",
    prompt_format: str = LEGACY_PROMPT_FORMAT,
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Tokenize unified rows in `prompt_format` into `input_ids`, `prompt_length`, `length` + metadata.

    `datasets`' map cache keys on this function's arguments, the prompt format included.

    Examples over `max_length` tokens (prompt + response + EOS) and empty solutions are dropped, never
    truncated; returns `(dataset, {reason: count})` and logs the counts.
    """

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "prompt_length": [], "length": [], "_drop": []}
        for i in range(len(batch["output"])):
            example = {key: values[i] for key, values in batch.items()}
            if not example["output"].strip():
                ids, plen = [], 0
            else:
                ids, plen = encode_example(example, tokenizer, prompt_format)
            reason = drop_reason(example, len(ids), max_length)
            out["input_ids"].append([] if reason else ids)
            out["prompt_length"].append(plen)
            out["length"].append(len(ids))
            out["_drop"].append(reason)
        return out

    drop_columns = [c for c in dataset.column_names if c not in METADATA_COLUMNS]
    encoded = dataset.map(encode, batched=True, remove_columns=drop_columns, num_proc=num_proc, desc=desc)
    reasons = encoded.select_columns(["_drop"]).with_format("numpy")[:]["_drop"]
    dropped = {str(k): int(v) for k, v in Counter(reasons.tolist()).items() if k}
    kept = encoded.filter(
        lambda r: [x == "" for x in r], input_columns="_drop", batched=True, num_proc=num_proc
    )
    kept = kept.remove_columns("_drop")
    if dropped:
        logger.warning("tokenize: kept %d of %d examples; dropped %s", len(kept), len(dataset), dropped)
    return kept, dropped
