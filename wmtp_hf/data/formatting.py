"""docs/design.md §3.3 prompt template and tokenization: prompt tokens are masked, response = output + EOS."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

import datasets

from .schema import DataError

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048
EVALUATION_NOTES = (
    "### Evaluation Notes:\n"
    "- Return Python source code that prints the required answer.\n"
    "- Hidden tests are present; rely on the stated constraints rather than memorising samples.\n\n"
)
METADATA_COLUMNS = ("task_id", "problem_id", "source", "is_correct", "difficulty")


def format_prompt(example: Mapping[str, Any]) -> str:
    """The Alpaca prompt up to and including "### Response:\\n".

    `### Input:` is omitted when `input` is empty; the Evaluation Notes appear only for CodeContests
    (stdin/stdout problems).
    """
    parts = [f"### Instruction:\n{example['instruction']}\n\n"]
    if example.get("input"):
        parts.append(f"### Input:\n{example['input']}\n\n")
    if example.get("source") == "codecontests":
        parts.append(EVALUATION_NOTES)
    parts.append("### Response:\n")
    return "".join(parts)


def encode_example(example: Mapping[str, Any], tokenizer: Any) -> tuple[list[int], int]:
    """`(input_ids, prompt_length)`: prompt and response are tokenized separately, so the boundary is exact.

    The prompt gets the tokenizer's special tokens (e.g. BOS); the response is `output` + the EOS id.
    Labels are then `input_ids` with the first `prompt_length` positions set to -100.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tokenizer: expected an eos_token (the response ends with EOS)")
    prompt_ids = tokenizer(format_prompt(example), add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(example["output"], add_special_tokens=False)["input_ids"]
    return list(prompt_ids) + list(response_ids) + [eos], len(prompt_ids)


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
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Tokenize unified rows into `input_ids`, `prompt_length`, `length` + metadata columns.

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
                ids, plen = encode_example(example, tokenizer)
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
