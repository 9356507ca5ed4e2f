"""What every data source declares (`Source`), and the helpers its loader shares: cache keys that follow
the loader code, and local files that must exist."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..schema import DataError

# (path or Hub id or None, split, drop counter) -> rows in the unified schema
Loader = Callable[[str | Path | None, str, Counter], datasets.Dataset]


@dataclass(frozen=True)
class Source:
    """One named data source, as the stages are named: how its rows are loaded and which splits it has.

    `splits`: every split (`data prepare` writes them all); `eval_split`: where `evaluate` draws problems
    by default; `held_out_split`: the split training and the experiment measure on (None: no held-out
    split); `hub_aliases`: `--path` values that mean the Hub dataset; `problem_rows`: rows covering every
    problem for evaluation (default: `load`); `local_file_splits`: the splits a local file holds (None: all).
    """

    name: str
    load: Loader
    splits: tuple[str, ...]
    eval_split: str
    held_out_split: str | None
    hub_aliases: tuple[str, ...] = ()
    problem_rows: Callable[[str | Path | None, str], datasets.Dataset] | None = None
    local_file_splits: tuple[str, ...] | None = None


def code_version() -> str:
    """Hash of the loader code (the schema, file reading and every source module), so a changed loader
    never serves a stale cache."""
    here = Path(__file__).parent
    files = [here.parent / "schema.py", here.parent / "io.py", *sorted(here.glob("*.py"))]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def local_file(path: str | Path) -> Path:
    """`path` as an existing file, else a one-line error naming it."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: file not found")
    return file
