"""Evaluation problems from `wmtp_hf.data.load_source` rows: one per `problem_id`, with its prompt and tests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .generation import COMPLETION_STOPS, INSTRUCTION_STOPS

DEFAULT_SPLITS = {"humaneval": "test", "mbpp": "test", "codecontests": "test", "offline": "eval"}


@dataclass(frozen=True)
class Problem:
    """One problem: `prompt` is what the model sees; the program run is `code_prefix + completion`."""

    task_id: str  # the row's problem_id (what samples files refer to)
    prompt: str
    tests: str  # tests JSON (contract kinds: humaneval / asserts / stdio)
    code_prefix: str  # the HumanEval prompt for kind "humaneval" (completion = function body), else ""
    stop_sequences: tuple[str, ...]
    aliases: tuple[str, ...] = ()  # row task_ids that also name this problem

    def program(self, completion: str) -> str:
        return self.code_prefix + completion


def problems_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """Group rows by problem_id (first-seen order) and build one Problem from a correct row when there is one.

    Prompts follow the contract: source "humaneval" -> the raw HumanEval prompt (completion continues it);
    "offline", "mbpp", "codecontests" -> `wmtp_hf.data.format_prompt(row)` (Alpaca style).
    """
    from wmtp_hf.data import format_prompt

    chosen: dict[str, Mapping[str, Any]] = {}
    aliases: dict[str, list[str]] = {}
    for row in rows:
        pid = row["problem_id"]
        aliases.setdefault(pid, []).append(row["task_id"])
        if pid not in chosen or (row["is_correct"] and not chosen[pid]["is_correct"]):
            chosen[pid] = row
    problems = []
    for pid, row in chosen.items():
        kind = json.loads(row["tests"]).get("kind")
        raw = row["source"] == "humaneval"
        problems.append(
            Problem(
                task_id=pid,
                prompt=row["instruction"] if raw else format_prompt(row),
                tests=row["tests"],
                code_prefix=row["instruction"] if kind == "humaneval" else "",
                stop_sequences=COMPLETION_STOPS if raw else INSTRUCTION_STOPS,
                aliases=tuple(a for a in aliases[pid] if a != pid),
            )
        )
    return problems


def load_problems(dataset: str, path: str | None = None, split: str | None = None) -> list[Problem]:
    """Problems of `dataset` ("humaneval", "mbpp", "codecontests", "offline") via `load_problem_rows`."""
    from wmtp_hf.data.sources import load_problem_rows

    if dataset not in DEFAULT_SPLITS:
        raise ValueError(f"--dataset: expected one of {', '.join(DEFAULT_SPLITS)}, got {dataset!r}")
    rows = load_problem_rows(dataset, path=path, split=split or DEFAULT_SPLITS[dataset])
    return problems_from_rows(rows)
