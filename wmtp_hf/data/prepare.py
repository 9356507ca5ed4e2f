"""`prepare`: load a source, optionally tokenize it, and save Arrow splits plus `stats.json`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from ..fileio import atomic_directory
from .formatting import DEFAULT_MAX_LENGTH, tokenize_dataset
from .io import atomic_write_json
from .prompt_formats import format_prompt, resolve_prompt_format
from .registry import SOURCES, load_source, prepare_splits
from .schema import DataError

PERCENTILES = (50, 90, 95, 99)


def length_stats(lengths: np.ndarray) -> dict[str, float] | None:
    """min / mean / percentiles / max of a length column (None when there are no rows)."""
    if not len(lengths):
        return None
    stats = {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 1), "max": int(lengths.max())}
    stats.update({f"p{q}": round(float(np.percentile(lengths, q)), 1) for q in PERCENTILES})
    return stats


def split_stats(ds: datasets.Dataset, loaded: int, dropped: Counter, tokenized: bool) -> dict[str, Any]:
    """Row counts, label and difficulty distributions, lengths and drop reasons of one split."""
    meta = ds.select_columns(["is_correct", "difficulty"]).with_format("numpy")[:]
    correct = np.asarray(meta["is_correct"], dtype=bool)
    values, counts = np.unique(np.asarray(meta["difficulty"]), return_counts=True)
    out: dict[str, Any] = {
        "rows_loaded": loaded,
        "rows": len(ds),
        "is_correct": {"true": int(correct.sum()), "false": int((~correct).sum())},
        "difficulty": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
        "dropped": dict(sorted(dropped.items())),
    }
    if tokenized:
        out["token_length"] = length_stats(
            np.asarray(ds.select_columns(["length"]).with_format("numpy")[:]["length"])
        )
    else:
        out["token_length"] = None
        chars = [len(format_prompt(r)) + len(r["output"]) for r in ds]
        out["char_length"] = length_stats(np.asarray(chars))
    return out


def check_output_folder(output: str | Path, overwrite: bool) -> Path:
    """`output` as a Path, if it may be written: absent or empty, or (with `overwrite`) a folder that
    `prepare` or `self-distill` wrote (it has a stats.json); else a one-line DataError."""
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise DataError(f"{output}: already exists and is not empty; pass --overwrite to replace it")
        if not (output / "stats.json").exists():
            raise DataError(
                f"{output}: --overwrite only replaces a folder written by prepare or self-distill (no stats.json)"
            )
    return output


def load_tokenizer(path: str) -> Any:
    """A local HF tokenizer folder (no network), or a registered model's / `.gguf` file's (wmtp_hf.models)."""
    from transformers import AutoTokenizer

    from ..loading import resolve_model

    source = resolve_model(path, kind="llama", label=f"--tokenizer {path}")
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"--tokenizer {path}: could not load a tokenizer ({first})") from None


def prepare(
    source: str,
    output: str | Path,
    path: str | None = None,
    splits: list[str] | None = None,
    tokenizer: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    overwrite: bool = False,
    prompt_format: str = "auto",
) -> dict[str, Any]:
    """Write `output/<split>/` (Arrow, `save_to_disk`) and `output/stats.json`; returns the stats.

    With a tokenizer the splits hold `input_ids`, `prompt_length`, `length` + metadata, over-long and
    empty examples dropped and counted; without one they hold the unified rows and the stats report
    character lengths instead of token lengths. The folder appears only once complete. `prompt_format`
    (auto, raw, alpaca, chat; see `wmtp_hf.data.prompt_formats`) is resolved with the tokenizer and
    recorded in `stats.json` (training on the folder uses the same one).
    """
    if source not in SOURCES:
        raise DataError(f"unknown source '{source}'; valid: {', '.join(SOURCES)}")
    output = check_output_folder(output, overwrite)
    tok = load_tokenizer(tokenizer) if tokenizer else None
    fmt = resolve_prompt_format(prompt_format, tok, source) if tok else None
    splits = splits or prepare_splits(source, path)
    stats: dict[str, Any] = {
        "source": source,
        "path": path,
        "tokenizer": tokenizer,
        "max_length": max_length if tok else None,
        "prompt_format": fmt,
        "splits": {},
        "notes": [] if tok else ["no --tokenizer: rows are saved untokenized; lengths are in characters"],
    }
    with atomic_directory(output) as tmp:
        for split in tqdm(splits, desc=f"prepare {source}", unit="split"):
            dropped: Counter = Counter()
            ds = load_source(source, path=path, split=split, dropped=dropped)
            loaded = len(ds)
            if tok is not None:
                ds, token_drops = tokenize_dataset(
                    ds, tok, max_length=max_length, desc=f"tokenize {split}", prompt_format=fmt
                )
                dropped.update(token_drops)
            stats["splits"][split] = split_stats(ds, loaded, dropped, tokenized=tok is not None)
            ds.save_to_disk(str(tmp / split))
        atomic_write_json(tmp / "stats.json", stats)
    return stats
