"""Reference losses computed at the start of training: once per (tokens, reference), cached on disk."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import datasets

from ..data.io import atomic_write_json, cache_root
from ..data.schema import DataError
from ..fileio import atomic_directory
from ..loading import move_to_device, parse_device
from ..loading import pad_token_id as padding_id
from .columns import REFERENCE_FILE, SCORING, dataset_fingerprint, require_tokens, with_reference_column
from .fingerprints import combine_fingerprint, hub_revision, model_fingerprint, tokenizer_fingerprint
from .models import load_reference_model, load_reference_tokenizer

logger = logging.getLogger(__name__)


def precompute_reference_losses(
    dataset: datasets.Dataset,
    reference: str,
    batch_size: int = 8,
    cache_dir: Path | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> datasets.Dataset:
    """`dataset` with `ref_token_losses`, computed once per (tokens, reference) and cached on disk.

    The cache key is sha256 of `dataset_fingerprint(dataset)` and the reference fingerprint id; the
    folder is `<cache_dir or cache_root()/reference_losses>/<key>/` (`save_to_disk`, written atomically).
    A hit loads it without touching the model. `model`/`tokenizer` reuse an already loaded reference
    (which must be `reference`, placed where it should run); otherwise the tokenizer is loaded to
    fingerprint and the model only on a miss (placed on `loading.default_device()`). Returns the memory-mapped dataset in its plain format.
    """
    if batch_size < 1:
        raise DataError(f"batch_size: expected a positive integer, got {batch_size}")
    require_tokens(dataset, "dataset")
    model_fp = model_fingerprint(reference)
    revision = hub_revision(reference, model_fp)
    if tokenizer is None:
        tokenizer = load_reference_tokenizer(reference, revision=revision)
    fingerprint = combine_fingerprint(reference, model_fp, tokenizer_fingerprint(tokenizer))
    tokens_fp = dataset_fingerprint(dataset)
    key = hashlib.sha256(f"{tokens_fp}{fingerprint['id']}{SCORING}".encode()).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "reference_losses"
    folder = root / key
    if folder.is_dir():
        logger.info("reference losses: loaded from the cache %s (reference %s)", folder, reference)
        return datasets.load_from_disk(str(folder))
    if model is None:
        model, _ = load_reference_model(reference, revision=revision)
        move_to_device(model, parse_device(None), what="the reference")
    logger.info(
        "reference losses: computing %d rows with reference %s into %s", len(dataset), reference, folder
    )
    root.mkdir(parents=True, exist_ok=True)
    try:
        with (
            tempfile.TemporaryDirectory(prefix=f".{key}.scratch.", dir=root) as scratch,
            atomic_directory(folder, replace=False) as tmp,
        ):
            with_reference_column(
                dataset,
                model,
                padding_id(tokenizer),
                batch_size,
                Path(scratch) / "losses.arrow",
                key,
                desc="reference losses",
            ).save_to_disk(str(tmp))
            info = {
                "fingerprint": fingerprint,
                "dataset_fingerprints": {"dataset": tokens_fp},
                "batch_size": batch_size,
                "scoring": SCORING,
            }
            atomic_write_json(tmp / REFERENCE_FILE, info)
    except FileExistsError:
        logger.info("reference losses: %s was written concurrently; using it", folder)
    return datasets.load_from_disk(str(folder))
