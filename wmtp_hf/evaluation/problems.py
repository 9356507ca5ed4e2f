"""Evaluation problems from `wmtp_hf.data.load_source` rows: one per `problem_id`, with its prompt and tests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..data.registry import DEFAULT_SPLITS
from ..errors import UsageError
from .extraction import extract_code, has_fence, keep_definitions
from .generation import CLOSED_CODE_BLOCK, COMPLETION_STOPS, INSTRUCTION_STOPS

__all__ = ["DEFAULT_SPLITS", "Problem", "load_problems", "problems_from_rows", "stops_for"]


@dataclass(frozen=True)
class Problem:
    """One problem: `prompt` is what the model sees; `program(completion)` is what runs against the tests."""

    task_id: str  # the row's problem_id (what samples files refer to)
    prompt: str
    tests: str  # tests JSON (contract kinds: humaneval / asserts / stdio)
    code_prefix: str  # the HumanEval prompt for kind "humaneval", else ""
    stop_sequences: tuple[str, ...]
    aliases: tuple[str, ...] = ()  # row task_ids that also name this problem
    prompt_format: str = "raw"  # raw / alpaca / chat (wmtp_hf.data.prompt_formats)

    def program(self, completion: str) -> str:
        """The program run for `completion`.

        raw (and alpaca without a fenced block): `code_prefix + completion`, the completion continuing the
        prompt's code (a HumanEval body). chat (and alpaca with a fenced block): the code of the first
        fenced block, else the whole text; for a function-completion problem that code is a whole function,
        so the program is the prompt's code (its imports and helpers), a newline, then the extracted code's
        imports, assignments and definitions (`keep_definitions`): the redefined function replaces the
        prompt's docstring-only one, and a body alone still continues the prompt's function.
        """
        if self.prompt_format == "raw" or (self.prompt_format == "alpaca" and not has_fence(completion)):
            return self.code_prefix + completion
        code = extract_code(completion)
        if self.code_prefix:
            return self.code_prefix + "\n" + keep_definitions(code)
        return code


def stops_for(prompt_format: str, function_completion: bool) -> tuple[str, ...]:
    """Stop strings: raw function bodies stop at the next top-level statement, alpaca at the next "### "
    header; chat at the end of turn (EOS) or once its first fenced code block is closed (the code is read
    from that block only, so the explanation a chat model writes after it is never generated)."""
    if prompt_format == "raw" and function_completion:
        return COMPLETION_STOPS
    return INSTRUCTION_STOPS if prompt_format in ("alpaca", "raw") else (CLOSED_CODE_BLOCK,)


def problems_from_rows(
    rows: Iterable[Mapping[str, Any]], prompt_format: str = "auto", tokenizer: Any = None
) -> list[Problem]:
    """Group rows by problem_id (first-seen order) and build one Problem from a correct row when there is one.

    Prompts follow `prompt_format` (`wmtp_hf.data.prompt_formats`); "auto" resolves per row: chat when
    `tokenizer` has a chat template, else the row source's default (humaneval -> the raw HumanEval prompt
    the completion continues; offline, mbpp, codecontests -> Alpaca). A chat problem without a tokenizer
    (scoring a samples file) keeps the user message as its prompt: only `program` is used then.
    """
    from wmtp_hf.data.prompt_formats import (
        is_function_completion,
        render_prompt,
        resolve_prompt_format,
        user_message,
    )

    chosen: dict[str, Mapping[str, Any]] = {}
    aliases: dict[str, list[str]] = {}
    for row in rows:
        pid = row["problem_id"]
        aliases.setdefault(pid, []).append(row["task_id"])
        if pid not in chosen or (row["is_correct"] and not chosen[pid]["is_correct"]):
            chosen[pid] = row
    problems = []
    for pid, row in chosen.items():
        fmt = resolve_prompt_format(prompt_format, tokenizer, row["source"])
        kind = json.loads(row["tests"]).get("kind")
        function = is_function_completion(row)
        no_template = fmt == "chat" and tokenizer is None
        problems.append(
            Problem(
                task_id=pid,
                prompt=user_message(row) if no_template else render_prompt(row, fmt, tokenizer),
                tests=row["tests"],
                code_prefix=row["instruction"] if kind == "humaneval" else "",
                stop_sequences=stops_for(fmt, function),
                aliases=tuple(a for a in aliases[pid] if a != pid),
                prompt_format=fmt,
            )
        )
    return problems


def load_problems(
    dataset: str,
    path: str | None = None,
    split: str | None = None,
    prompt_format: str = "auto",
    tokenizer: Any = None,
) -> list[Problem]:
    """Problems of `dataset` ("humaneval", "mbpp", "codecontests", "offline") via `load_problem_rows`."""
    from wmtp_hf.data.registry import load_problem_rows

    if dataset not in DEFAULT_SPLITS:
        raise UsageError(f"--dataset: expected one of {', '.join(DEFAULT_SPLITS)}, got {dataset!r}")
    rows = load_problem_rows(dataset, path=path, split=split or DEFAULT_SPLITS[dataset])
    return problems_from_rows(rows, prompt_format, tokenizer)
