"""The local folders built from a GGUF file, once: `llama/` (the plain causal LM) and `wmtp/` (converted).

A GGUF-loaded model refuses `save_pretrained` (its config carries a `quantization_config`), so the
dequantised weights are copied into a fresh model of the same class and saved in float32 (the dtype
`transformers` dequantises to; bfloat16 would halve the disk but change the logits). Tied embeddings stay
tied; the tokenizer and its chat template are read from the same file and saved with both folders.
Every folder is written under a temporary name and renamed, under a file lock, so concurrent processes
(torchrun ranks, parallel runs) build it once and never see half of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError  # noqa: F401  (also importable from here)
from ..fileio import atomic_directory, atomic_write_text
from ..messages import first_line

DONE_FILE = "source.json"  # written last: the folders are complete when it exists


def cache_root() -> Path:
    """`$WMTP_HF_CACHE`, else `~/.cache/wmtp_hf` (the root `wmtp_hf.data.io.cache_root` uses too)."""
    return Path(os.environ.get("WMTP_HF_CACHE") or Path.home() / ".cache" / "wmtp_hf")


def models_root() -> Path:
    """Where fetched and converted models live: `<cache root>/models`."""
    return cache_root() / "models"


def progress(message: str) -> None:
    """One progress line on stderr (stdout stays for the command's own output)."""
    print(f"wmtp_hf: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ModelFolders:
    """The folders built for one model: `llama` always, `wmtp` when the model is a plain LLaMA."""

    root: Path
    llama: Path
    wmtp: Path | None
    n_future_tokens: int

    def pick(self, kind: str, n_future_tokens: int | None = None) -> Path:
        """`llama/` for a plain causal LM (`kind="llama"`); `wmtp/` for a WMTP model unless there is none
        or it has another number of heads than `n_future_tokens` (then `llama/`, converted on loading)."""
        if kind not in ("llama", "wmtp"):
            raise ValueError(f"kind: expected 'llama' or 'wmtp', got {kind!r}")
        if kind == "llama" or self.wmtp is None:
            return self.llama
        if n_future_tokens is not None and n_future_tokens != self.n_future_tokens:
            return self.llama
        return self.wmtp


def read_folders(root: Path) -> ModelFolders | None:
    """The folders under `root` when they are complete, else None."""
    try:
        info = json.loads((root / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    wmtp = root / "wmtp" if info.get("wmtp") else None
    return ModelFolders(root, root / "llama", wmtp, int(info.get("n_future_tokens", 0)))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing); other processes wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_gguf(gguf_file: Path) -> tuple[Any, Any]:
    """`(model, tokenizer)` of a GGUF file through transformers' GGUF support, dequantised to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (
        Exception
    ) as err:  # ImportError without `gguf`, an architecture transformers cannot read, a bad file
        raise ModelError(f"cannot load it as a GGUF causal LM ({first_line(err)})") from None
    return model, tokenizer


def align_special_tokens(tokenizer: Any, config: Any) -> Any:
    """Set the tokenizer's bos/eos/pad/unk tokens to the ids the GGUF metadata gives (the model config's).

    transformers 5.13's GGUF tokenizer conversion takes the BOS token for EOS too (fixed by 5.25, where
    this changes nothing); generation would then never stop at the model's real end token."""
    for name in ("bos", "eos", "pad", "unk"):
        token_id = getattr(config, f"{name}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            token = tokenizer.convert_ids_to_tokens(token_id)
            if getattr(tokenizer, f"{name}_token", None) != token:
                setattr(tokenizer, f"{name}_token", token)
    return tokenizer


def plain_copy(model: Any, name_or_path: str) -> Any:
    """A saveable copy of a GGUF-loaded model: the same class and config without `quantization_config`,
    sharing the dequantised tensors (built on the meta device, so nothing is initialised or duplicated;
    tied embeddings tied again)."""
    import torch

    config = model.config.__class__.from_dict(
        {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    )
    config._name_or_path = name_or_path
    with torch.device("meta"):
        copy = type(model)(config)
    copy.load_state_dict(model.state_dict(), strict=True, assign=True)
    for name, buffer in model.named_buffers():  # also the non-persistent ones (RoPE frequencies)
        owner, _, leaf = name.rpartition(".")
        copy.get_submodule(owner)._buffers[leaf] = buffer
    if getattr(config, "tie_word_embeddings", False):
        copy.tie_weights()
    copy.generation_config = model.generation_config
    return copy.eval()


DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                   "MASTER_PORT", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_FSDP")  # fmt: skip


def _distributed() -> bool:
    import torch.distributed

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _write_in_subprocess(gguf_file: Path, root: Path, n_future_tokens: int, source: dict[str, Any]) -> None:
    """`write_folders` in a fresh Python: with torch.distributed initialised (torchrun), transformers'
    `save_pretrained` writes only on global rank 0, and the process holding the lock may be another."""
    import subprocess

    args = json.dumps([str(gguf_file), str(root), n_future_tokens, source])
    code = (
        "import json, sys; from pathlib import Path; from wmtp_hf.models.store import ModelError, write_folders\n"
        "g, r, n, s = json.loads(sys.argv[1])\n"
        "try:\n    write_folders(Path(g), Path(r), n, s)\nexcept ModelError as err:\n    sys.exit(str(err))"
    )
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    done = subprocess.run(
        [sys.executable, "-c", code, args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = [x for x in done.stderr.strip().splitlines() if x.strip()] or ["no output"]
        raise ModelError(lines[-1].strip())  # the child's one-line error (or its exception's last line)


def write_folders(gguf_file: Path, root: Path, n_future_tokens: int, source: dict[str, Any]) -> ModelFolders:
    """Build `root/llama` and (for a LLaMA) `root/wmtp` from `gguf_file`, then `root/source.json` (in a
    fresh subprocess when this one is part of a torch.distributed group)."""
    from ..modeling_wmtp import WmtpForMultiTokenPrediction

    if _distributed():
        _write_in_subprocess(gguf_file, root, n_future_tokens, source)
        return read_folders(root)
    gguf_model, tokenizer = load_gguf(gguf_file)
    align_special_tokens(tokenizer, gguf_model.config)
    llama = plain_copy(gguf_model, source.get("hub_id") or gguf_file.name)
    del gguf_model
    is_llama = llama.config.model_type == "llama"
    with atomic_directory(root / "llama") as tmp:
        llama.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    if is_llama:
        wmtp = WmtpForMultiTokenPrediction.from_llama(llama, n_future_tokens=n_future_tokens)
        with atomic_directory(root / "wmtp") as tmp:
            wmtp.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    info = {**source, "gguf": gguf_file.name, "wmtp": is_llama, "n_future_tokens": n_future_tokens,
            "dtype": "float32", "model_type": llama.config.model_type}  # fmt: skip
    atomic_write_text(root / DONE_FILE, json.dumps(info, indent=2) + "\n")
    return read_folders(root)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
