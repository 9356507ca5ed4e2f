"""MBPP (full JSONL or sanitized JSON) → unified rows, split by the published task-id ranges."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from ..io import cached_rows, file_sha256, first_non_space_byte, iter_jsonl, read_json_array
from ..schema import DataError, check_str_list, make_row, optional, require
from .base import Source, code_version, local_file

HUB_ID = "google-research-datasets/mbpp"
HUB_ALIASES = (HUB_ID, "mbpp")
# Published ranges (MBPP README and the Hub): inclusive task-id bounds per split.
SPLIT_RANGES = {"train": (601, 974), "validation": (511, 600), "test": (11, 510), "prompt": (1, 10)}


def check_split(split: str) -> tuple[int, int]:
    """Task-id range of `split`; an unknown split is an error listing the valid ones."""
    if split not in SPLIT_RANGES:
        raise DataError(f"mbpp: unknown split '{split}'; valid: {', '.join(SPLIT_RANGES)}")
    return SPLIT_RANGES[split]


def iter_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Full MBPP is JSONL; the sanitized set is one JSON array. Both yield `(location, record)`."""
    if first_non_space_byte(path) == b"[":
        yield from read_json_array(path)
    else:
        for line, record in iter_jsonl(path):
            yield f"{path}:{line}", record


def record_to_row(record: dict[str, Any], loc: str) -> dict[str, Any] | None:
    """One correct row per problem; returns None for an empty reference solution."""
    task_id = require(record, "task_id", int, loc)
    text_field = "text" if "text" in record else "prompt"  # sanitized MBPP calls it `prompt`
    text = require(record, text_field, str, loc)
    code = require(record, "code", str, loc).replace("\r\n", "\n")
    asserts = check_str_list(require(record, "test_list", list, loc), "test_list", loc)
    if not asserts:
        raise DataError(f"{loc}: field 'test_list': expected at least one assert")
    setup = optional(record, "test_setup_code", str, loc, "")
    imports = check_str_list(optional(record, "test_imports", list, loc, []), "test_imports", loc)
    if not code.strip():
        return None
    instruction = f"{text.strip()}\nYour code should pass this test:\n{asserts[0]}"
    return make_row(
        instruction=instruction,
        output=code,
        task_id=f"mbpp/{task_id}",
        problem_id=f"mbpp/{task_id}",
        source="mbpp",
        is_correct=True,
        tests={"kind": "asserts", "setup": "\n".join([*imports, setup]).strip(), "asserts": asserts},
    )


def rows_from(
    records: Iterator[tuple[str, dict[str, Any]]], split: str, dropped: Counter
) -> Iterator[dict[str, Any]]:
    """Rows of `split` (by task-id range) from any record stream."""
    low, high = check_split(split)
    for loc, record in records:
        row = record_to_row(record, loc)
        if not low <= record["task_id"] <= high:
            continue
        if row is None:
            dropped["empty_solution"] += 1
            continue
        yield row


def hub_records(hub_id: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Hub's `full` config (its splits use the same ranges); only used when no local path is given."""
    check_split(split)
    ds = datasets.load_dataset(hub_id, "full", split=split)
    for i, record in enumerate(ds):
        yield f"{hub_id}[{split} row {i}]", record


def load(path: str | Path | None, split: str, counts: Counter) -> datasets.Dataset:
    """Rows of `split` (by task-id range) from the Hub (path None or a Hub alias) or a local file, built
    once into the cache."""
    check_split(split)
    version = code_version()
    if path is None or str(path) in HUB_ALIASES:
        hub_id = HUB_ID if path is None else str(path)
        key = f"mbpp-hub-{split}-{version}"
        return cached_rows(key, lambda c: rows_from(hub_records(hub_id, split), split, c), counts)
    file = local_file(path)
    key = f"mbpp-{file_sha256(file)[:16]}-{split}-{version}"
    return cached_rows(key, lambda c: rows_from(iter_records(file), split, c), counts)


SOURCE = Source(
    name="mbpp",
    load=load,
    splits=tuple(SPLIT_RANGES),
    eval_split="test",
    held_out_split="validation",
    hub_aliases=HUB_ALIASES,
)
