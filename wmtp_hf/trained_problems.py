"""Which problems a trained model has seen: `trained_problems.json` beside its weights.

Every training run writes it into `final/` (and each checkpoint, and a LoRA run's merged model): the
`problem_id` of every training row the stage selected, unioned with the record of the model it started
from, so a critic started from `runs/baseline/final` carries the baseline's problems too. `evaluate` and
the experiment read it to leave those problems out of pass@k (docs/evaluation.md). Ids are matched
exactly: the offline default's rows carry HumanEval's task ids (`HumanEval/12`) as their problem_id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TrainedProblemsError  # noqa: F401  (also importable from here)
from .fileio import atomic_write_text
from .messages import first_line, looks_like_hub_id

TRAINED_PROBLEMS_FILE = "trained_problems.json"


@dataclass(frozen=True)
class TrainedProblems:
    """A model's record: `problem_ids` (all of them), `sources` (row source -> its ids), `runs` (the
    trainings that produced it, oldest first) and `location` (where it was read from, "" when new)."""

    problem_ids: frozenset[str]
    sources: dict[str, list[str]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    location: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "problem_ids": sorted(self.problem_ids),
            "sources": {name: sorted(ids) for name, ids in sorted(self.sources.items())},
            "runs": self.runs,
        }


def build_record(
    problem_ids: Iterable[str],
    row_sources: Iterable[str] | None,
    run: dict[str, Any],
    parent: TrainedProblems | None = None,
) -> TrainedProblems:
    """This run's record: the rows' problem ids (each under its row's `source`, "unknown" without one)
    unioned with the `parent` model's record; `run` (stage, dataset, split, start model) is appended to
    the parent's runs."""
    ids = [str(pid) for pid in problem_ids]
    names = [str(s) for s in row_sources] if row_sources is not None else ["unknown"] * len(ids)
    sources: dict[str, set[str]] = {}
    for name, ids_of in (parent.sources if parent else {}).items():
        sources.setdefault(name, set()).update(ids_of)
    for pid, name in zip(ids, names, strict=True):
        sources.setdefault(name, set()).add(pid)
    own = set(ids)
    runs = [*(parent.runs if parent else []), {**run, "n_problems": len(own)}]
    return TrainedProblems(
        problem_ids=frozenset(own | (parent.problem_ids if parent else frozenset())),
        sources={name: sorted(values) for name, values in sources.items()},
        runs=runs,
    )


def write_record(folder: str | Path, record: TrainedProblems) -> Path:
    """Write `folder/trained_problems.json` (atomically); returns its path."""
    path = Path(folder) / TRAINED_PROBLEMS_FILE
    atomic_write_text(path, json.dumps(record.to_json(), indent=1) + "\n")
    return path


def parse_record(path: Path) -> TrainedProblems:
    """Read one trained_problems.json; a malformed file is a one-line `TrainedProblemsError`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TrainedProblemsError(f"{path}: cannot read it as JSON ({first_line(err)})") from None
    ids = data.get("problem_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise TrainedProblemsError(f"{path}: key 'problem_ids': expected a list of strings")
    sources = data.get("sources") or {}
    runs = data.get("runs") or []
    if not isinstance(sources, dict) or not all(isinstance(v, list) for v in sources.values()):
        raise TrainedProblemsError(f"{path}: key 'sources': expected a mapping of source -> list of ids")
    if not isinstance(runs, list):
        raise TrainedProblemsError(f"{path}: key 'runs': expected a list")
    return TrainedProblems(frozenset(ids), dict(sources), list(runs), str(path))


def read_record(model: str | Path | None) -> TrainedProblems | None:
    """The record of a model folder (or a trained_problems.json file itself), or of a Hub model that
    carries the file; None when none is recorded (a folder or Hub model without it, a model name)."""
    if model is None:
        return None
    path = Path(model)
    if path.is_file():
        return parse_record(path)
    if path.is_dir():
        recorded = path / TRAINED_PROBLEMS_FILE
        return parse_record(recorded) if recorded.is_file() else None
    if not looks_like_hub_id(str(model)):
        return None
    try:  # a pushed model carries the file; any Hub failure (offline, missing file) means "none recorded"
        from huggingface_hub import hf_hub_download

        downloaded = hf_hub_download(str(model), TRAINED_PROBLEMS_FILE)
    except Exception:
        return None
    return parse_record(Path(downloaded))
