"""Read a samples JSONL file (one `{"task_id": ..., "completion": ...}` per line), validating every line."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import SamplesError  # noqa: F401  (also importable from here)


@dataclass(frozen=True)
class Sample:
    """One completion of a problem; `token_ids` are the generated tokens when this run generated it."""

    task_id: str
    completion: str
    token_ids: tuple[int, ...] | None = None


def read_samples(path: str | Path, known: Collection[str] | Mapping[str, str] | None = None) -> list[Sample]:
    """Parse `path`; `known` (ids, or a mapping alias -> canonical id) rejects unknown task_ids.

    Blank lines are ignored; any other malformed line raises SamplesError("FILE:LINE: ...").
    """
    path = Path(path)
    if not path.is_file():
        raise SamplesError(f"{path}: samples file not found")
    samples = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise SamplesError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise SamplesError(f"{where}: expected a JSON object with 'task_id' and 'completion'")
            for key in ("task_id", "completion"):
                if key not in row:
                    raise SamplesError(f"{where}: missing key '{key}'")
            task_id, completion = row["task_id"], row["completion"]
            if isinstance(task_id, int) and not isinstance(task_id, bool):
                task_id = str(task_id)
            if not isinstance(task_id, str):
                raise SamplesError(f"{where}: key 'task_id': expected a string, got {type(task_id).__name__}")
            if not isinstance(completion, str):
                raise SamplesError(
                    f"{where}: key 'completion': expected a string, got {type(completion).__name__}"
                )
            if known is not None:
                if task_id not in known:
                    raise SamplesError(
                        f"{where}: unknown task_id {task_id!r} (not a problem of the chosen dataset)"
                    )
                if isinstance(known, Mapping):
                    task_id = known[task_id]
            samples.append(Sample(task_id, completion))
    if not samples:
        raise SamplesError(f"{path}: no samples (expected JSON lines with 'task_id' and 'completion')")
    return samples
