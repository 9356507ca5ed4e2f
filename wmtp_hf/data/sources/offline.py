"""The offline default (`wmtp_hf.data.offline`: HumanEval's canonical solutions and their mutants, built
without network) as a registered source."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets

from .base import Source

SPLITS = ("train", "eval")


def load(path: str | Path | None, split: str, counts: Counter) -> datasets.Dataset:
    """`split` of the cached offline build (built on first use; `path`: another HumanEval file)."""
    from ..offline import load_offline  # the builder reads HumanEval through this package

    return load_offline(split=split, path=path)


SOURCE = Source(name="offline", load=load, splits=SPLITS, eval_split="eval", held_out_split="eval")
