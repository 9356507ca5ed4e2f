"""Which rows to inspect: tokenized one at a time, so a large split is never tokenized whole."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..data import encode_example
from ..data.formatting import drop_reason
from ..errors import UsageError

ROW_FIELDS = ("is_correct", "task_id", "problem_id", "ref_token_losses")


def tokenized_stream(
    rows: Iterable[Mapping[str, Any]], tokenizer: Any, max_length: int, prompt_format: str = "alpaca"
) -> Iterator[dict[str, Any]]:
    """`input_ids` + `prompt_length` (+ metadata) of each row; unified rows are tokenized as training does
    (`encode_example` in `prompt_format`), prepared rows pass as they are; empty and over-long ones are
    skipped."""
    for row in rows:
        if "input_ids" in row:
            out = {"input_ids": list(row["input_ids"]), "prompt_length": int(row["prompt_length"])}
            if len(out["input_ids"]) > max_length:
                continue
        else:
            if drop_reason(row, None, max_length):
                continue
            ids, prompt_length = encode_example(row, tokenizer, prompt_format)
            if drop_reason(row, len(ids), max_length):
                continue
            out = {"input_ids": ids, "prompt_length": prompt_length}
        out.update({k: row[k] for k in ROW_FIELDS if k in row})
        yield out


def pick_rows(rows: Sequence[Mapping[str, Any]], n: int) -> list[dict[str, Any]]:
    """`n` rows in the given order, alternating correct and incorrect while both remain."""
    correct = [dict(r) for r in rows if r.get("is_correct")]
    incorrect = [dict(r) for r in rows if not r.get("is_correct")]
    picked: list[dict[str, Any]] = []
    while len(picked) < n and (correct or incorrect):
        first, second = (correct, incorrect) if len(picked) % 2 == 0 else (incorrect, correct)
        picked.append((first or second).pop(0))
    return picked


def select_rows(
    rows: Iterable[Mapping[str, Any]], n: int, task_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The rows named by `task_ids` (in that order), or `n` rows alternating correct and incorrect.

    Reading stops as soon as both kinds could fill all `n` places. Unknown task ids are a ValueError.
    """
    if task_ids:
        wanted = set(task_ids)
        found = {r["task_id"]: dict(r) for r in rows if r.get("task_id") in wanted}
        missing = [t for t in task_ids if t not in found]
        if missing:
            raise UsageError(f"not in the split (or over the length limit): {', '.join(missing)}")
        return [found[t] for t in task_ids]
    correct: list[Mapping[str, Any]] = []
    incorrect: list[Mapping[str, Any]] = []
    for row in rows:
        (correct if row.get("is_correct") else incorrect).append(row)
        if len(correct) >= n and len(incorrect) >= n:
            break
    return pick_rows(correct + incorrect, n)
