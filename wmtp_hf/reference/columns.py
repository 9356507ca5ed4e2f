"""The `ref_token_losses` column: each tokenized row's `CE_ref(j)`, scored row by row as the live rho1 stage
scores it, and the fingerprint of the tokens it belongs to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from ..data.collator import WmtpDataCollator
from ..data.schema import DataError
from ..losses import reference_token_losses_by_row

REFERENCE_COLUMN = "ref_token_losses"
REFERENCE_FEATURE = datasets.Sequence(datasets.Value("float32"))
REFERENCE_FILE = "reference.json"  # next to a column: which reference computed it, and how
TOKEN_COLUMNS = ("input_ids", "prompt_length")
FINGERPRINT_ROWS = 10_000
# How the losses were computed; columns and caches written otherwise (before: scored in padded batches,
# which changes the last bits with the batch) are warned about or recomputed.
SCORING = "each row alone"


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _batch_losses(
    model: Any, collator: WmtpDataCollator, device: torch.device, input_ids: list, prompt_length: list
) -> list[np.ndarray]:
    """`CE_ref` of each row's tokens (float32, length len(input_ids); 0 on the prompt)."""
    rows = [list(ids) for ids in input_ids]
    if not any(rows):
        return [np.zeros(0, dtype=np.float32) for _ in rows]
    batch = collator(
        [{"input_ids": ids, "prompt_length": n} for ids, n in zip(rows, prompt_length, strict=True)]
    )
    # Each row alone, as the live rho1 stage scores them, so cached and live losses are bit-identical.
    lengths = [len(ids) for ids in rows]
    losses = reference_token_losses_by_row(
        model, batch["input_ids"].to(device), batch["labels"].to(device), lengths
    )
    losses = losses.cpu().numpy()
    return [losses[i, : len(ids)].copy() for i, ids in enumerate(rows)]


def _iter_batches(dataset: datasets.Dataset, batch_size: int) -> Iterator[dict[str, list]]:
    tokens = dataset.select_columns(list(TOKEN_COLUMNS)).with_format(None)
    for start in range(0, len(tokens), batch_size):
        yield tokens[start : start + batch_size]


def require_tokens(dataset: datasets.Dataset, where: str) -> None:
    missing = [c for c in TOKEN_COLUMNS if c not in dataset.column_names]
    if missing:
        raise DataError(f"{where}: expected tokenized rows, missing column(s) {', '.join(missing)}")


def compute_reference_column(
    dataset: datasets.Dataset,
    model: Any,
    pad_token_id: int,
    batch_size: int = 8,
    desc: str = "reference losses",
) -> list[list[float]]:
    """Per row, `CE_ref(j)` for each of its tokens (0 on prompt tokens), in dataset order.

    Rows are collated `batch_size` at a time and each scored alone on the model's device by
    `losses.reference_token_losses_by_row`, as the live rho1 stage does, so the result is deterministic
    and does not depend on `batch_size`.
    """
    require_tokens(dataset, "dataset")
    if batch_size < 1:
        raise DataError(f"batch_size: expected a positive integer, got {batch_size}")
    collator, device = WmtpDataCollator(pad_token_id=pad_token_id), _model_device(model)
    out: list[list[float]] = []
    total = -(-len(dataset) // batch_size)
    for batch in tqdm(_iter_batches(dataset, batch_size), total=total, desc=desc, unit="batch"):
        for row in _batch_losses(model, collator, device, batch["input_ids"], batch["prompt_length"]):
            out.append(row.tolist())
    return out


def with_reference_column(
    dataset: datasets.Dataset,
    model: Any,
    pad_token_id: int,
    batch_size: int,
    cache_file: Path,
    fingerprint: str,
    desc: str,
) -> datasets.Dataset:
    """`dataset` with `ref_token_losses` added (replacing an old one), streamed to `cache_file` by `map`.

    Memory stays bounded for big datasets: the column is written to Arrow batch by batch.
    """
    collator, device = WmtpDataCollator(pad_token_id=pad_token_id), _model_device(model)
    dataset = dataset.with_format(None)
    if REFERENCE_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(REFERENCE_COLUMN)
    features = dataset.features.copy()
    features[REFERENCE_COLUMN] = REFERENCE_FEATURE

    def add_losses(input_ids: list, prompt_length: list) -> dict[str, list]:
        return {REFERENCE_COLUMN: _batch_losses(model, collator, device, input_ids, prompt_length)}

    return dataset.map(
        add_losses,
        batched=True,
        batch_size=batch_size,
        input_columns=list(TOKEN_COLUMNS),
        features=features,
        cache_file_name=str(cache_file),
        load_from_cache_file=False,
        new_fingerprint=fingerprint,
        desc=desc,
    )


def dataset_fingerprint(dataset: datasets.Dataset) -> str:
    """sha256 of the `input_ids` and `prompt_length` columns' contents (not of the folder or file names).

    Read through Arrow in chunks of rows, so big datasets never become Python lists; selections and
    shuffles are honoured (the hash follows row order).
    """
    require_tokens(dataset, "dataset")
    digest = hashlib.sha256(b"wmtp_hf tokens v1\0")
    digest.update(np.asarray([len(dataset)], dtype="<i8").tobytes())
    tokens = dataset.select_columns(list(TOKEN_COLUMNS)).with_format("arrow")
    for start in range(0, len(tokens), FINGERPRINT_ROWS):
        table = tokens[start : start + FINGERPRINT_ROWS]
        ids = table.column("input_ids").combine_chunks()
        lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
        digest.update(np.asarray(lengths, dtype="<i8").tobytes())
        prompt = table.column("prompt_length").to_numpy()
        digest.update(np.asarray(prompt, dtype="<i8").tobytes())
        digest.update(np.asarray(ids.flatten().to_numpy(zero_copy_only=False), dtype="<i8").tobytes())
    return digest.hexdigest()
