"""The offline default (docs/design.md §3.2): HumanEval canonical solutions + test-verified failing mutants.

Built once per (HumanEval file, builder code, seed) and cached under
`$WMTP_HF_CACHE/offline/<fingerprint>/` (default `~/.cache/wmtp_hf`); later calls memory-map the cache.
Problems are split train/eval by a seeded hash of the problem id, so no problem appears in both.
`difficulty` is a size proxy: the rank of the canonical solution's AST node count among all problems,
scaled to 1–11 (so the verifiable curriculum has low/medium/high buckets to draw from).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import datasets

from .io import atomic_write_json, cache_root, file_sha256, iter_jsonl
from .mutations import mutate
from .schema import FEATURES, DataError
from .sources import humaneval
from .sources.base import Source

logger = logging.getLogger(__name__)

BUILDER_VERSION = 1
SPLITS = ("train", "eval")
EVAL_PERCENT = 20
MUTANTS_PER_PROBLEM = 2  # kept failing mutants, at most (train ends up ~1 correct : 2 incorrect)
CANDIDATES_PER_PROBLEM = 4  # mutants executed per problem
TIMEOUT_S = 3.0
FAILING_STATUSES = ("failed", "error", "timeout")  # "no_tests" or a pass never makes a mutant incorrect


def problem_split(problem_id: str, seed: int) -> str:
    """ "train" or "eval" for a problem: a seeded hash, ~80/20, independent of row order."""
    bucket = int(hashlib.sha256(f"{seed}:{problem_id}".encode()).hexdigest(), 16) % 100
    return "eval" if bucket < EVAL_PERCENT else "train"


def size_difficulty(bodies: dict[str, str]) -> dict[str, int]:
    """Difficulty 1–11 by the rank of each solution's AST size (ties broken by id)."""
    sizes = {pid: sum(1 for _ in ast.walk(ast.parse("def f():\n" + body))) for pid, body in bodies.items()}
    ranked = sorted(sizes, key=lambda pid: (sizes[pid], pid))
    return {pid: 1 + (11 * rank) // len(ranked) for rank, pid in enumerate(ranked)}


def fingerprint(source_file: Path, seed: int) -> str:
    """Covers the HumanEval file's content, the builder version and code, and the seed."""
    digest = hashlib.sha256(f"v{BUILDER_VERSION}:seed={seed}:{file_sha256(source_file)}".encode())
    for name in ("offline.py", "mutations.py", "schema.py"):
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


def build_rows(source_file: Path, seed: int, workers: int | None = None) -> tuple[list[dict[str, Any]], dict]:
    """All offline rows (both splits, with a `split` key) and build statistics. Runs every candidate."""
    from ..execution import check_solutions

    records = [(f"{source_file}:{line}", rec) for line, rec in iter_jsonl(source_file)]
    canon = [humaneval.record_to_row(rec, loc, source="offline") for loc, rec in records]
    canon = [row for row in canon if row is not None]
    difficulty = size_difficulty({row["problem_id"]: row["output"] for row in canon})
    candidates = []  # (problem index, kind, code)
    for p, row in enumerate(canon):
        rng = random.Random(f"{seed}:{row['problem_id']}")
        candidates += [(p, m.kind, m.code) for m in mutate(row["output"], rng, CANDIDATES_PER_PROBLEM)]
    programs = [(p, row["output"]) for p, row in enumerate(canon)] + [(p, code) for p, _, code in candidates]
    started = time.monotonic()
    results = check_solutions(
        [canon[p]["tests"] for p, _ in programs],
        [canon[p]["instruction"] + code for p, code in programs],
        prompts=[canon[p]["instruction"] for p, _ in programs],  # the trusted prompt's helpers for the tests
        timeout_s=TIMEOUT_S,
        workers=workers,
        progress=True,
    )
    canonical_ok = [r.passed for r in results[: len(canon)]]
    rows: list[dict[str, Any]] = []
    kinds: Counter = Counter()
    kept_per_problem: Counter = Counter()
    for p, row in enumerate(canon):
        if canonical_ok[p]:
            rows.append({**row, "task_id": f"{row['problem_id']}_correct_0"})
    for (p, kind, code), result in zip(candidates, results[len(canon) :], strict=True):
        if not canonical_ok[p] or result.status not in FAILING_STATUSES:
            continue
        if kept_per_problem[p] >= MUTANTS_PER_PROBLEM:
            continue
        row = canon[p]
        rows.append(
            {
                **row,
                "output": code,
                "is_correct": False,
                "task_id": f"{row['problem_id']}_incorrect_{kept_per_problem[p]}",
            }
        )
        kept_per_problem[p] += 1
        kinds[kind] += 1
    for row in rows:
        row["difficulty"] = difficulty[row["problem_id"]]
        row["split"] = problem_split(row["problem_id"], seed)
    stats = {
        "seed": seed,
        "problems": len(canon),
        "canonical_failing": [canon[p]["problem_id"] for p, ok in enumerate(canonical_ok) if not ok],
        "candidates_run": len(candidates),
        "mutant_kinds_kept": dict(sorted(kinds.items())),
        "execution_seconds": round(time.monotonic() - started, 1),
    }
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        stats[split] = {
            "problems": len({r["problem_id"] for r in part}),
            "correct": sum(r["is_correct"] for r in part),
            "incorrect": sum(not r["is_correct"] for r in part),
        }
    return rows, stats


def build_offline(source_file: Path | None = None, seed: int = 0, workers: int | None = None) -> Path:
    """Build (or reuse) the cached offline dataset; returns its folder (`train/`, `eval/`, `stats.json`)."""
    source_file = Path(source_file) if source_file is not None else humaneval.package_file()
    target = cache_root() / "offline" / fingerprint(source_file, seed)
    if (target / "stats.json").exists():
        return target
    logger.warning(
        "building the offline dataset once (runs every canonical solution and mutant) in %s", target
    )
    rows, stats = build_rows(source_file, seed, workers)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        for split in SPLITS:
            part = [{k: v for k, v in r.items() if k != "split"} for r in rows if r["split"] == split]
            datasets.Dataset.from_list(part, features=FEATURES).save_to_disk(str(tmp / split))
        atomic_write_json(tmp / "stats.json", stats)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same build first: keep theirs
            if not (target / "stats.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.warning("offline dataset: %s", json.dumps({s: stats[s] for s in SPLITS}))
    return target


def load_offline(split: str = "train", path: str | Path | None = None, seed: int = 0) -> datasets.Dataset:
    """`load_source("offline", split)`: "train" or "eval" of the cached build (built on first use)."""
    if split not in SPLITS:
        raise DataError(f"offline: unknown split '{split}'; valid: {', '.join(SPLITS)}")
    if path is not None and not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    folder = build_offline(Path(path) if path is not None else None, seed=seed)
    return datasets.load_from_disk(str(folder / split))


def _load(path: str | Path | None, split: str, counts: Counter) -> datasets.Dataset:
    return load_offline(split=split, path=path)


SOURCE = Source(name="offline", load=_load, splits=SPLITS, eval_split="eval", held_out_split="eval")
