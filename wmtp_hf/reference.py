"""Reference models for the Rho-1 stage (docs/design.md §4.4): loading, fingerprints, and cached per-token losses.

Rho-1 weights tokens by the excess loss `CE_policy − CE_ref`, where `CE_ref(j) = -log p_ref(x_j | x_<j)`
comes from a frozen reference causal LM. The reference losses depend only on the tokens and the
reference, so, like TRL's `precompute_ref_log_probs`, they can be computed once and stored as a
`ref_token_losses` column: `add_reference_losses` rewrites a prepared dataset folder with the column
(`python -m wmtp_hf.data reference-losses`), `precompute_reference_losses` caches it at the start of
training. A fingerprint of the reference model and its tokenizer is stored with the column, and training
refuses a column whose fingerprint differs from the configured reference (`check_cached_fingerprint`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from .data.collator import WmtpDataCollator
from .data.io import atomic_write_json, cache_root, file_sha256
from .data.schema import DataError
from .fileio import atomic_directory
from .loading import (
    default_device,
    load_causal_lm,
    load_tokenizer,
    move_to_device,
    parse_device,
    resolve_model,
)
from .loading import pad_token_id as padding_id
from .losses import reference_token_losses_by_row
from .messages import first_line

__all__ = [
    "REFERENCE_COLUMN",
    "add_reference_losses",
    "check_cached_fingerprint",
    "check_same_tokenizer",
    "compute_reference_column",
    "dataset_fingerprint",
    "default_device",
    "load_reference_model",
    "load_reference_tokenizer",
    "model_fingerprint",
    "precompute_reference_losses",
    "read_reference_cache",
    "reference_fingerprint",
    "tokenizer_fingerprint",
]

logger = logging.getLogger(__name__)

REFERENCE_COLUMN = "ref_token_losses"
REFERENCE_FEATURE = datasets.Sequence(datasets.Value("float32"))
REFERENCE_FILE = "reference.json"
TOKEN_COLUMNS = ("input_ids", "prompt_length")
FINGERPRINT_ROWS = 10_000
# How the losses were computed; columns and caches written otherwise (before: scored in padded batches,
# which changes the last bits with the batch) are warned about or recomputed.
SCORING = "each row alone"

# Files of a model folder that determine its outputs (weights, config, tokenizer). Trainer state, model
# cards, optimizer/scheduler states and remote-code sources are left out.
MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "*.safetensors",
    "*.bin",
    "*.safetensors.index.json",
    "*.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
)
NON_MODEL_FILES = ("training_args.bin", "optimizer.bin", "scheduler.bin")


def _canonical_sha256(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _short(fingerprint_id: str) -> str:
    return f"{fingerprint_id[:12]}…"


# --------------------------------------------------------------------------------------------- fingerprints


def _is_model_file(name: str) -> bool:
    return name not in NON_MODEL_FILES and any(fnmatch.fnmatch(name, p) for p in MODEL_FILE_PATTERNS)


def _resolve_hub_revision(repo_id: str) -> str:
    """Commit sha of `repo_id`'s default revision: from the Hub, or from the local cache when offline."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, allow_patterns=["config.json"])
    except Exception as err:  # invalid id, not found, offline without a cached snapshot, network errors
        raise DataError(
            f"reference '{repo_id}': no such folder, and not a Hub id found locally or on the Hub "
            f"({first_line(err)})"
        ) from err
    return Path(folder).name


def model_fingerprint(name_or_path: str) -> dict[str, Any]:
    """What identifies a model's outputs: file hashes for a local folder, the commit sha for a Hub id.

    A folder gives `{"kind": "folder", "files": {name: sha256}}` over its weights, config and tokenizer
    files (not README.md or trainer files), so a copy elsewhere has the same fingerprint and any changed
    weight a different one. A Hub id gives `{"kind": "hub", "repo_id", "revision"}`, the revision resolved
    through `huggingface_hub` (the local cache is enough with `HF_HUB_OFFLINE=1`). A registered name or a
    `.gguf` file is its plain-LLaMA folder's fingerprint.
    """
    path = Path(
        resolve_model(name_or_path, kind="llama", label=f"reference '{name_or_path}'", error=DataError)
    )
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir() if p.is_file() and _is_model_file(p.name))
        if "config.json" not in names:
            raise DataError(f"reference '{name_or_path}': folder has no config.json (not a model folder)")
        return {"kind": "folder", "files": {name: file_sha256(path / name) for name in names}}
    return {"kind": "hub", "repo_id": str(name_or_path), "revision": _resolve_hub_revision(str(name_or_path))}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the vocabulary mapping (token -> id, sorted) and the bos/eos/pad/unk token ids."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {
            name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")
        },
    }
    return _canonical_sha256(payload)


def _combine_fingerprint(name_or_path: str, model: dict[str, Any], tokenizer: str) -> dict[str, Any]:
    return {
        "reference": str(name_or_path),
        "model": model,
        "tokenizer": tokenizer,
        "id": _canonical_sha256({"model": model, "tokenizer": tokenizer}),
    }


def reference_fingerprint(name_or_path: str, tokenizer: Any) -> dict[str, Any]:
    """`{"reference", "model", "tokenizer", "id"}`: equal `id`s mean the same reference model and tokenizer.

    `tokenizer` is the reference's own tokenizer (the one `load_reference_model` returns). The `id` covers
    the model and tokenizer parts only, not the name, so the same model in another folder matches.
    """
    return _combine_fingerprint(
        name_or_path, model_fingerprint(name_or_path), tokenizer_fingerprint(tokenizer)
    )


def check_same_tokenizer(
    policy_tokenizer: Any,
    reference_tokenizer: Any,
    policy_name: str,
    reference_name: str,
    *,
    policy_label: str = "policy",
    reference_label: str = "reference_model",
) -> None:
    """Raise DataError (one line, naming both) unless both tokenizers map the same tokens to the same ids.

    Only the tokenizers are compared: a reference whose embedding matrix is padded beyond the vocabulary
    is fine. The message gives the first differing token (in policy id order).
    """
    policy_vocab, ref_vocab = policy_tokenizer.get_vocab(), reference_tokenizer.get_vocab()
    if policy_vocab == ref_vocab:
        return
    detail = ""
    for token, pid in sorted(policy_vocab.items(), key=lambda item: (item[1], item[0])):
        rid = ref_vocab.get(token)
        if rid is None:
            detail = f"token {token!r} is id {pid} in the {policy_label} and missing in the reference"
            break
        if rid != pid:
            detail = f"token {token!r} is id {pid} in the {policy_label} and {rid} in the reference"
            break
    else:
        token, rid = min(
            ((t, i) for t, i in ref_vocab.items() if t not in policy_vocab),
            key=lambda item: (item[1], item[0]),
        )
        detail = f"token {token!r} is id {rid} in the reference and missing in the {policy_label}"
    raise DataError(
        f"{reference_label} '{reference_name}' has a different tokenizer from the {policy_label} "
        f"'{policy_name}': {detail} ({len(policy_vocab)} vs {len(ref_vocab)} entries)"
    )


# ------------------------------------------------------------------------------------------------- loading


def _hub_revision(name_or_path: str, fingerprint: Mapping[str, Any] | None) -> str | None:
    """Pin a Hub reference to the fingerprinted commit, so the model loaded is the one fingerprinted."""
    if fingerprint is not None and fingerprint.get("kind") == "hub":
        return fingerprint["revision"]
    return None


def load_reference_tokenizer(name_or_path: str, revision: str | None = None) -> Any:
    """The reference's tokenizer (`AutoTokenizer`, as saved: no pad token added); a load failure is a
    one-line DataError."""
    return load_tokenizer(
        name_or_path, label=f"reference '{name_or_path}'", revision=revision, pad=False, error=DataError
    )


def load_reference_model(
    name_or_path: str,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    revision: str | None = None,
) -> tuple[Any, Any]:
    """`(model, tokenizer)`: any causal LM via `AutoModelForCausalLM`, frozen (eval mode, no grad).

    `dtype` None loads the checkpoint's own dtype (`"auto"`). `revision` pins a Hub commit. Load failures
    are one-line DataErrors naming the reference.
    """
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if revision:
        kwargs["revision"] = revision
    label = f"reference '{name_or_path}'"
    model = load_causal_lm(name_or_path, kind="llama", label=label, error=DataError, **kwargs)
    model.eval()
    model.requires_grad_(False)
    return model, load_reference_tokenizer(name_or_path, revision=revision)


def _parse_device(device: str | torch.device | None) -> torch.device:
    return default_device() if device is None else parse_device(device, error=DataError)


def _place(model: Any, device: torch.device) -> None:
    move_to_device(model, device, what="the reference", error=DataError)


# ---------------------------------------------------------------------------------------- the loss column


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


def _require_tokens(dataset: datasets.Dataset, where: str) -> None:
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
    _require_tokens(dataset, "dataset")
    if batch_size < 1:
        raise DataError(f"batch_size: expected a positive integer, got {batch_size}")
    collator, device = WmtpDataCollator(pad_token_id=pad_token_id), _model_device(model)
    out: list[list[float]] = []
    total = -(-len(dataset) // batch_size)
    for batch in tqdm(_iter_batches(dataset, batch_size), total=total, desc=desc, unit="batch"):
        for row in _batch_losses(model, collator, device, batch["input_ids"], batch["prompt_length"]):
            out.append(row.tolist())
    return out


def _with_reference_column(
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
    _require_tokens(dataset, "dataset")
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


# ------------------------------------------------------------------------------------ prepared dataset folders


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
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model(name, kind="llama")), str(name)
    except Exception as err:
        logger.warning(
            "%s: could not load the dataset's tokenizer '%s' (%s); the reference tokenizer is not checked",
            dataset_dir,
            name,
            first_line(err),
        )
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
            f"'{recorded.get('reference')}' (fingerprint {_short(str(recorded.get('id')))}) but reference_model "
            f"is '{reference}' (fingerprint {_short(current['id'])}); {hint}"
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
    target_device = _parse_device(device)
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
    model, ref_tokenizer = load_reference_model(reference, revision=_hub_revision(reference, model_fp))
    _place(model, target_device)
    fingerprint = _combine_fingerprint(reference, model_fp, tokenizer_fingerprint(ref_tokenizer))
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
                with_column = _with_reference_column(
                    ds,
                    model,
                    pad_token_id,
                    batch_size,
                    Path(scratch) / f"{split}.arrow",
                    _canonical_sha256([tokens_fp, fingerprint["id"], batch_size]),
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


# ---------------------------------------------------------------------------------- precompute at training


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
    fingerprint and the model only on a miss (placed on `default_device()`). Returns the memory-mapped dataset in its plain format.
    """
    if batch_size < 1:
        raise DataError(f"batch_size: expected a positive integer, got {batch_size}")
    _require_tokens(dataset, "dataset")
    model_fp = model_fingerprint(reference)
    revision = _hub_revision(reference, model_fp)
    if tokenizer is None:
        tokenizer = load_reference_tokenizer(reference, revision=revision)
    fingerprint = _combine_fingerprint(reference, model_fp, tokenizer_fingerprint(tokenizer))
    tokens_fp = dataset_fingerprint(dataset)
    key = hashlib.sha256(f"{tokens_fp}{fingerprint['id']}{SCORING}".encode()).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "reference_losses"
    folder = root / key
    if folder.is_dir():
        logger.info("reference losses: loaded from the cache %s (reference %s)", folder, reference)
        return datasets.load_from_disk(str(folder))
    if model is None:
        model, _ = load_reference_model(reference, revision=revision)
        _place(model, default_device())
    logger.info(
        "reference losses: computing %d rows with reference %s into %s", len(dataset), reference, folder
    )
    root.mkdir(parents=True, exist_ok=True)
    try:
        with (
            tempfile.TemporaryDirectory(prefix=f".{key}.scratch.", dir=root) as scratch,
            atomic_directory(folder, replace=False) as tmp,
        ):
            _with_reference_column(
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
