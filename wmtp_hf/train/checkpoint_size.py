"""Say how much disk each save takes: a checkpoint (with optimizer state unless `save_only_model`) of a
135M-parameter model is about 2 GB, so a run's log states every checkpoint's and the final folder's size."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger("wmtp_hf.train")


def folder_bytes(folder: str | Path) -> int:
    """Total size in bytes of the regular files under `folder` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink())


def human_bytes(n: int) -> str:
    """`n` bytes in decimal units, e.g. `1.93 GB` (`512 B` below a kilobyte)."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 1000 or unit == "PB":
            return f"{value:.2f} {unit}"
    raise AssertionError("unreachable")


def log_folder_size(folder: str | Path, what: str) -> int:
    """Log `<what> <folder>: <human> (<n> bytes)` once; returns the byte count."""
    n = folder_bytes(folder)
    logger.info("%s %s: %s (%d bytes)", what, folder, human_bytes(n), n)
    return n


class CheckpointSizeCallback(TrainerCallback):
    """Logs the size of every `checkpoint-N` folder as the Trainer saves it (main process only)."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            log_folder_size(folder, "saved checkpoint")
