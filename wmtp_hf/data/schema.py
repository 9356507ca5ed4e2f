"""The unified row schema shared by every source, and the one error type for bad input."""

from __future__ import annotations

import json
from typing import Any

import datasets

from ..errors import DataError  # noqa: F401  (also importable from here)

FEATURES = datasets.Features(
    {
        "instruction": datasets.Value("string"),
        "input": datasets.Value("string"),
        "output": datasets.Value("string"),
        "task_id": datasets.Value("string"),
        "problem_id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "is_correct": datasets.Value("bool"),
        "difficulty": datasets.Value("int64"),
        "tests": datasets.Value("string"),
        "entry_point": datasets.Value("string"),
    }
)
COLUMNS = tuple(FEATURES)

_TYPE_NAMES = {str: "str", int: "int", list: "list", dict: "dict", bool: "bool"}


def where(path: str, line: int | None = None) -> str:
    """`file:line` prefix for error messages (line omitted when unknown)."""
    return f"{path}:{line}" if line is not None else str(path)


def require(record: dict[str, Any], field: str, kind: type, loc: str) -> Any:
    """Return `record[field]`, raising DataError naming the field if it is missing or has the wrong type."""
    if field not in record or record[field] is None:
        raise DataError(f"{loc}: missing required field '{field}'")
    return check_type(record[field], field, kind, loc)


def optional(record: dict[str, Any], field: str, kind: type, loc: str, default: Any) -> Any:
    """Return `record[field]` or `default` when absent/null; a present value of the wrong type is an error."""
    value = record.get(field)
    if value is None:
        return default
    return check_type(value, field, kind, loc)


def check_type(value: Any, field: str, kind: type, loc: str) -> Any:
    """Raise DataError naming `field` and the expected type unless `value` is a `kind` (bool is not an int)."""
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise DataError(
            f"{loc}: field '{field}': expected {_TYPE_NAMES.get(kind, kind.__name__)}, got {type(value).__name__}"
        )
    return value


def check_str_list(value: Any, field: str, loc: str) -> list[str]:
    """A list whose items are all strings (test lists, solution lists)."""
    check_type(value, field, list, loc)
    for i, item in enumerate(value):
        check_type(item, f"{field}[{i}]", str, loc)
    return value


def make_row(
    *,
    instruction: str,
    output: str,
    task_id: str,
    problem_id: str,
    source: str,
    is_correct: bool,
    tests: dict[str, Any],
    input: str = "",
    difficulty: int = -1,
    entry_point: str = "",
) -> dict[str, Any]:
    """One row in the unified schema; `tests` is serialised to the contract's JSON string."""
    return {
        "instruction": instruction,
        "input": input,
        "output": output,
        "task_id": task_id,
        "problem_id": problem_id,
        "source": source,
        "is_correct": bool(is_correct),
        "difficulty": int(difficulty),
        "tests": json.dumps(tests, ensure_ascii=False),
        "entry_point": entry_point,
    }
