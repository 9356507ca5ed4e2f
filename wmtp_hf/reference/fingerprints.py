"""What identifies a reference (docs/design.md §4.4): fingerprints of its model files or Hub commit and of its
tokenizer, and the check that a reference maps the same tokens to the same ids as the policy.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..data.io import file_sha256
from ..data.schema import DataError
from ..loading import resolve_model
from ..messages import first_line

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


def canonical_sha256(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short(fingerprint_id: str) -> str:
    return f"{fingerprint_id[:12]}…"


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
    path = Path(resolve_model(name_or_path, kind="llama", label=f"reference '{name_or_path}'"))
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
    return canonical_sha256(payload)


def combine_fingerprint(name_or_path: str, model: dict[str, Any], tokenizer: str) -> dict[str, Any]:
    return {
        "reference": str(name_or_path),
        "model": model,
        "tokenizer": tokenizer,
        "id": canonical_sha256({"model": model, "tokenizer": tokenizer}),
    }


def reference_fingerprint(name_or_path: str, tokenizer: Any) -> dict[str, Any]:
    """`{"reference", "model", "tokenizer", "id"}`: equal `id`s mean the same reference model and tokenizer.

    `tokenizer` is the reference's own tokenizer (the one `load_reference_model` returns). The `id` covers
    the model and tokenizer parts only, not the name, so the same model in another folder matches.
    """
    return combine_fingerprint(
        name_or_path, model_fingerprint(name_or_path), tokenizer_fingerprint(tokenizer)
    )


def hub_revision(name_or_path: str, fingerprint: Mapping[str, Any] | None) -> str | None:
    """Pin a Hub reference to the fingerprinted commit, so the model loaded is the one fingerprinted."""
    if fingerprint is not None and fingerprint.get("kind") == "hub":
        return fingerprint["revision"]
    return None


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
