"""`ref_token_losses` in a prepared dataset folder (`python -m wmtp_hf.data reference-losses`): the folder
rewritten with the column and its `reference.json`, and the check that a folder's column was computed with
the configured reference.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import torch

from ..data.io import atomic_write_json
from ..errors import DataError, LoadError
from ..fileio import atomic_directory
from ..loading import load_tokenizer, move_to_device, parse_device
from ..loading import pad_token_id as padding_id
from ..messages import first_line
from .columns import (
    REFERENCE_COLUMN,
    REFERENCE_FILE,
    SCORING,
    TOKEN_COLUMNS,
    dataset_fingerprint,
    with_reference_column,
)
from .fingerprints import (
    canonical_sha256,
    check_same_tokenizer,
    combine_fingerprint,
    hub_revision,
    model_fingerprint,
    reference_fingerprint,
    short,
    tokenizer_fingerprint,
)
from .models import load_reference_model, load_reference_tokenizer

logger = logging.getLogger(__name__)


def _not_tokenized(dataset_dir: Path) -> DataError:
    return DataError(
        f"{dataset_dir}: not a tokenized prepared dataset "
        "(run `python -m wmtp_hf.data prepare ... --tokenizer ...` first)"
    )


def _read_stats(dataset_dir: Path) -> dict[str, Any]:
    if not dataset_dir.is_dir():
        raise DataError(f"{dataset_dir}: no such folder")
    stats_path = dataset_dir / "stats.json"
    if not stats_path.is_file():
        raise _not_tokenized(dataset_dir)
    try:
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{stats_path}: not valid JSON ({first_line(err)})") from None
    if not isinstance(stats, dict) or not isinstance(stats.get("splits"), dict):
        raise DataError(f"{stats_path}: expected an object with 'splits' (written by prepare)")
    return stats


def _dataset_tokenizer(stats: Mapping[str, Any], dataset_dir: Path) -> tuple[Any, str | None]:
    """The tokenizer `prepare` used (from stats.json), or None with a warning when it cannot be loaded."""
    name = stats.get("tokenizer")
    if not name:
        logger.warning(
            "%s: stats.json records no tokenizer; the reference tokenizer is not checked", dataset_dir
        )
        return None, None
    try:
        label = f"could not load the dataset's tokenizer '{name}'"
        return load_tokenizer(name, label=label, pad=False), str(name)
    except LoadError as err:
        logger.warning("%s: %s; the reference tokenizer is not checked", dataset_dir, first_line(err))
        return None, str(name)


def read_reference_cache(dataset_dir: str | Path) -> dict[str, Any] | None:
    """The `reference.json` of a dataset folder (see `add_reference_losses`), or None when it has none."""
    path = Path(dataset_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({first_line(err)})") from None
    if not isinstance(info, dict) or not isinstance(info.get("fingerprint"), dict):
        raise DataError(f"{path}: expected an object with 'fingerprint' (written by reference-losses)")
    return info


def check_cached_fingerprint(
    dataset_dir_or_info: str | Path | Mapping[str, Any], reference: str, tokenizer: Any = None
) -> None:
    """Raise DataError (one line) unless a dataset's `ref_token_losses` were computed with `reference`.

    `dataset_dir_or_info` is a folder written by `add_reference_losses` or its `reference.json` content;
    `tokenizer` is the reference's tokenizer (loaded from `reference` when None).
    """
    if isinstance(dataset_dir_or_info, Mapping):
        info, where, rerun = dict(dataset_dir_or_info), "dataset", "--dataset <dir>"
    else:
        info = read_reference_cache(dataset_dir_or_info)
        where, rerun = f"dataset '{dataset_dir_or_info}'", f"--dataset {dataset_dir_or_info}"
    hint = f"re-run python -m wmtp_hf.data reference-losses {rerun} --reference {reference}"
    if info is None:
        raise DataError(
            f"{where}: has no {REFERENCE_FILE}, so its {REFERENCE_COLUMN} cannot be checked; {hint}"
        )
    recorded = info.get("fingerprint") or {}
    if tokenizer is None:
        tokenizer = load_reference_tokenizer(reference)
    current = reference_fingerprint(reference, tokenizer)
    if recorded.get("id") != current["id"]:
        raise DataError(
            f"{where}: its {REFERENCE_COLUMN} were computed with reference "
            f"'{recorded.get('reference')}' (fingerprint {short(str(recorded.get('id')))}) but reference_model "
            f"is '{reference}' (fingerprint {short(current['id'])}); {hint}"
        )
    if info.get("scoring") != SCORING:
        logger.warning(
            "%s: its %s were scored in padded batches (an older wmtp_hf), so near-tied tokens may be kept "
            "otherwise than with the live reference; %s",
            where,
            REFERENCE_COLUMN,
            hint,
        )


def _copy_entry(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def add_reference_losses(
    dataset_dir: str | Path,
    reference: str,
    batch_size: int = 8,
    splits: list[str] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Add `ref_token_losses` to splits of a tokenized prepared folder, and write `reference.json`.

    The reference is loaded once and its tokenizer checked against the one `prepare` used. The folder is
    rewritten whole and atomically (new splits are written next to it, then renamed into place), so an
    error leaves it unchanged. `reference.json` holds `{"fingerprint", "dataset_fingerprints",
    "batch_size"}`; it is returned. Splits not selected keep a column computed with the same reference;
    one computed with another reference is removed (with a warning), so the folder stays consistent.
    The reference runs on `device` (default: the accelerator if any, else the CPU).
    """
    dataset_dir = Path(dataset_dir)
    if batch_size < 1:
        raise DataError(f"--batch-size: expected a positive integer, got {batch_size}")
    target_device = parse_device(device)
    stats = _read_stats(dataset_dir)
    available = [s for s in stats["splits"] if (dataset_dir / s).is_dir()]
    selected = list(dict.fromkeys(splits)) if splits else available
    unknown = [s for s in selected if s not in available]
    if unknown:
        raise DataError(
            f"{dataset_dir}: no split '{unknown[0]}'; available: {', '.join(available) or '(none)'}"
        )
    loaded = {s: datasets.load_from_disk(str(dataset_dir / s)) for s in available}
    if not selected or any(not set(TOKEN_COLUMNS) <= set(loaded[s].column_names) for s in selected):
        raise _not_tokenized(dataset_dir)

    model_fp = model_fingerprint(reference)
    model, ref_tokenizer = load_reference_model(reference, revision=hub_revision(reference, model_fp))
    move_to_device(model, target_device, what="the reference")
    fingerprint = combine_fingerprint(reference, model_fp, tokenizer_fingerprint(ref_tokenizer))
    data_tokenizer, data_tokenizer_name = _dataset_tokenizer(stats, dataset_dir)
    if data_tokenizer is not None:
        check_same_tokenizer(
            data_tokenizer,
            ref_tokenizer,
            str(data_tokenizer_name),
            reference,
            policy_label="dataset tokenizer",
            reference_label="reference",
        )
    pad_token_id = padding_id(data_tokenizer if data_tokenizer is not None else ref_tokenizer)

    try:
        previous = read_reference_cache(dataset_dir)
    except DataError as err:  # a damaged reference.json must not block recomputing it
        logger.warning("%s; it will be rewritten", err)
        previous = None
    same_reference = previous is not None and previous["fingerprint"].get("id") == fingerprint["id"]
    dataset_fps: dict[str, str] = {}
    target = dataset_dir.resolve()  # "." or a trailing slash still names the folder to replace
    with (
        tempfile.TemporaryDirectory(prefix=f".{target.name}.scratch.", dir=target.parent) as scratch,
        atomic_directory(target, replace=True) as tmp,
    ):
        for split in available:
            ds = loaded[split]
            if split in selected:
                tokens_fp = dataset_fingerprint(ds)
                with_column = with_reference_column(
                    ds,
                    model,
                    pad_token_id,
                    batch_size,
                    Path(scratch) / f"{split}.arrow",
                    canonical_sha256([tokens_fp, fingerprint["id"], batch_size]),
                    desc=f"reference losses {split}",
                )
                with_column.save_to_disk(str(tmp / split))
                dataset_fps[split] = tokens_fp
            elif REFERENCE_COLUMN not in ds.column_names:
                _copy_entry(dataset_dir / split, tmp / split)
            elif same_reference and split in previous.get("dataset_fingerprints", {}):
                _copy_entry(dataset_dir / split, tmp / split)
                dataset_fps[split] = previous["dataset_fingerprints"][split]
            else:
                logger.warning(
                    "%s/%s: removing its %s, computed with another reference than '%s'",
                    dataset_dir,
                    split,
                    REFERENCE_COLUMN,
                    reference,
                )
                ds.remove_columns(REFERENCE_COLUMN).save_to_disk(str(tmp / split))
        for entry in dataset_dir.iterdir():
            if entry.name not in available and entry.name != REFERENCE_FILE:
                _copy_entry(entry, tmp / entry.name)
        info = {"fingerprint": fingerprint, "dataset_fingerprints": dataset_fps, "batch_size": batch_size,
                "scoring": SCORING}  # fmt: skip
        atomic_write_json(tmp / REFERENCE_FILE, info)
    logger.info(
        "%s: %s added to %s (reference %s)", dataset_dir, REFERENCE_COLUMN, ", ".join(selected), reference
    )
    return info
