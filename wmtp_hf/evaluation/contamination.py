"""Problems a model was trained on (its `trained_problems.json`) among those it is evaluated on: found by
exact id, reported in summary.json and, unless asked to keep them, left out of pass@k."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..trained_problems import TrainedProblems
from .problems import Problem


def trained_task_ids(problems: Sequence[Problem], record: TrainedProblems | None) -> list[str]:
    """Task ids of the `problems` whose id, or one of whose aliases, is a problem id in `record`."""
    if record is None:
        return []
    ids = record.problem_ids
    return [p.task_id for p in problems if p.task_id in ids or any(a in ids for a in p.aliases)]


def leave_out_trained(
    problems: Sequence[Problem],
    record: TrainedProblems | None,
    *,
    include: bool = False,
    missing: str = "none recorded",
) -> tuple[list[Problem], dict[str, Any]]:
    """`(problems to score, summary entries)`: without `include` the problems in `record` are dropped.

    `missing` says why there is no record (goes into the summary as `trained_problems_record`)."""
    trained = trained_task_ids(problems, record)
    report: dict[str, Any] = {
        "trained_problems_record": record.location if record is not None else missing,
        "n_trained_problems_evaluated": len(trained),
        "trained_problems_evaluated": trained,
        "trained_problems_excluded": bool(trained) and not include,
    }
    if include or not trained:
        return list(problems), report
    left_out = set(trained)
    return [p for p in problems if p.task_id not in left_out], report
