"""CodeContests (DeepMind) → unified rows: Python solutions only, correct and incorrect, stdin/stdout tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets

from ..io import cached_rows, file_sha256, iter_jsonl
from ..schema import FEATURES, DataError, check_str_list, check_type, make_row, optional, require
from .base import Source, code_version, local_file

HUB_ID = "deepmind/code_contests"
HUB_SPLITS = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
PYTHON_LANGUAGES = (1, 3)  # 1 = PYTHON (2), 3 = PYTHON3; 2 = CPP, 4 = JAVA, 0 = UNKNOWN are skipped
MAX_EXAMPLES_IN_INPUT = 2


def iter_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(location, record)` for every row of a local JSONL(.gz) or parquet file in the HF schema."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        index = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            for record in batch.to_pylist():
                yield f"{path}[row {index}]", record
                index += 1
    else:
        for line, record in iter_jsonl(path):
            yield f"{path}:{line}", record


def _tests(record: dict[str, Any], field: str, loc: str) -> tuple[list[str], list[str]]:
    value = optional(record, field, dict, loc, {})
    inputs = check_str_list(value.get("input") or [], f"{field}.input", loc)
    outputs = check_str_list(value.get("output") or [], f"{field}.output", loc)
    if len(inputs) != len(outputs):
        raise DataError(f"{loc}: field '{field}': 'input' and 'output' must have the same length")
    return inputs, outputs


def _solutions(record: dict[str, Any], field: str, loc: str) -> list[tuple[int, int, str]] | None:
    """`(index, language, code)` triples, or None when the field is absent (some real exports drop it)."""
    value = optional(record, field, dict, loc, None)
    if value is None:
        return None
    languages = check_type(value.get("language") or [], f"{field}.language", list, loc)
    codes = check_str_list(value.get("solution") or [], f"{field}.solution", loc)
    for i, lang in enumerate(languages):
        check_type(lang, f"{field}.language[{i}]", int, loc)
    if len(languages) != len(codes):
        raise DataError(f"{loc}: field '{field}': 'language' and 'solution' must have the same length")
    return [(i, lang, code) for i, (lang, code) in enumerate(zip(languages, codes, strict=True))]


def format_examples(inputs: list[str], outputs: list[str]) -> str:
    """Up to two public examples, shown to the model as the prompt's `### Input:` section."""
    parts = [
        f"Example {k + 1}:\nInput:\n{inp.rstrip()}\nOutput:\n{out.rstrip()}"
        for k, (inp, out) in enumerate(zip(inputs[:MAX_EXAMPLES_IN_INPUT], outputs, strict=False))
    ]
    return "\n\n".join(parts)


def _problem_fields(record: dict[str, Any], loc: str) -> dict[str, Any]:
    """The row fields shared by every solution of one problem (statement, examples, all tests)."""
    name = require(record, "name", str, loc)
    description = require(record, "description", str, loc)
    difficulty = optional(record, "difficulty", int, loc, 0)
    public_in, public_out = _tests(record, "public_tests", loc)
    all_in, all_out = list(public_in), list(public_out)
    for field in ("private_tests", "generated_tests"):
        inputs, outputs = _tests(record, field, loc)
        all_in += inputs
        all_out += outputs
    return {
        "instruction": description,
        "input": format_examples(public_in, public_out),
        "problem_id": name,
        "source": "codecontests",
        "difficulty": difficulty if difficulty > 0 else -1,  # 0 is UNKNOWN_DIFFICULTY
        "tests": {"kind": "stdio", "inputs": all_in, "outputs": all_out},
    }


def record_to_rows(record: dict[str, Any], loc: str, dropped: Counter) -> Iterator[dict[str, Any]]:
    """One row per Python solution of one problem; empty solutions are dropped and counted."""
    problem = _problem_fields(record, loc)
    for field, label, correct in (
        ("solutions", "correct", True),
        ("incorrect_solutions", "incorrect", False),
    ):
        solutions = _solutions(record, field, loc)
        if solutions is None:
            dropped[f"records_without_{field}"] += 1
            continue
        for index, language, code in solutions:
            if language not in PYTHON_LANGUAGES:
                dropped["non_python_solution"] += 1
                continue
            if not code.strip():
                dropped["empty_solution"] += 1
                continue
            yield make_row(
                **problem,
                output=code,
                task_id=f"{problem['problem_id']}_{label}_{index}",
                is_correct=correct,
            )


def problem_rows_from(records: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """One solution-less row per problem (`output` ""), for evaluation: records without solutions count too."""
    for loc, record in records:
        problem = _problem_fields(record, loc)
        yield make_row(**problem, output="", task_id=problem["problem_id"], is_correct=False)


def rows_from(records: Iterable[tuple[str, dict[str, Any]]], dropped: Counter) -> Iterator[dict[str, Any]]:
    """Unified rows for a stream of `(location, record)` pairs."""
    for loc, record in records:
        yield from record_to_rows(record, loc, dropped)


def hub_records(split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Records of the Hub dataset (network or HF cache); only used when no local path is given."""
    if split not in HUB_SPLITS:
        raise DataError(f"codecontests: unknown split '{split}'; valid: {', '.join(sorted(set(HUB_SPLITS)))}")
    return _iter_hub(HUB_SPLITS[split])


def _iter_hub(split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    ds = datasets.load_dataset(HUB_ID, split=split)
    for i, record in enumerate(ds):
        yield f"{HUB_ID}[{split} row {i}]", record


def load(path: str | Path | None, split: str, counts: Counter) -> datasets.Dataset:
    """Rows of the Hub dataset's `split` (path None or the Hub id), or of a local file (the file is the
    split), built once into the cache."""
    version = code_version()
    if path is None or str(path) == HUB_ID:
        records = hub_records(split)  # validates the split before any download
        return cached_rows(f"codecontests-hub-{split}-{version}", lambda c: rows_from(records, c), counts)
    file = local_file(path)
    key = f"codecontests-{file_sha256(file)[:16]}-{version}"
    return cached_rows(key, lambda c: rows_from(iter_records(file), c), counts)


def problem_rows(path: str | Path | None, split: str) -> datasets.Dataset:
    """One solution-less row per problem (records without solutions count too), for evaluation."""
    records = hub_records(split) if path is None or str(path) == HUB_ID else iter_records(local_file(path))
    return datasets.Dataset.from_list(list(problem_rows_from(records)), features=FEATURES)


SOURCE = Source(
    name="codecontests",
    load=load,
    splits=tuple(sorted(set(HUB_SPLITS.values()))),
    eval_split="test",
    held_out_split="valid",
    hub_aliases=(HUB_ID,),
    problem_rows=problem_rows,
    local_file_splits=("train",),
)
