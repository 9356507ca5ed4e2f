"""The one place a model name becomes a local folder: registered names and `.gguf` files.

`resolve_model(name, kind)` returns a folder that `from_pretrained` loads: for a registered name
(`smollm2-135m`) its fetched folders, for a path to a `.gguf` file the folders converted from it (cached
under `<cache>/models/gguf/<stem>-<sha256 prefix>/`); anything else (a folder, a Hub id) unchanged.
`kind="llama"` asks for the plain causal LM (e.g. a Rho-1 reference), `kind="wmtp"` for the WMTP model
(training, evaluation).
"""

from __future__ import annotations

import functools
from pathlib import Path

from .fetch import fetch
from .registry import MODELS
from .store import (
    ModelError,
    ModelFolders,
    file_lock,
    file_sha256,
    models_root,
    progress,
    read_folders,
    write_folders,
)

GGUF_N_FUTURE_TOKENS = 4  # heads of the WMTP model converted from a GGUF file (the training default)


def is_gguf(name: str | Path) -> bool:
    return str(name).lower().endswith(".gguf")


def is_registered(name: str | Path) -> bool:
    """Whether `name` is a registered model name (a folder of that name in the working directory wins)."""
    return isinstance(name, str) and name in MODELS and not Path(name).exists()


def is_named_model(name: str | Path) -> bool:
    """Whether `resolve_model` turns `name` into built folders (a registered name or a `.gguf` path)."""
    return is_registered(name) or is_gguf(name)


@functools.lru_cache(maxsize=16)
def _gguf_key(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))[:16]


def gguf_root(path: Path) -> Path:
    """`<cache>/models/gguf/<stem>-<sha256[:16]>`: the folders converted from the GGUF file at `path`."""
    stat = path.stat()
    return (
        models_root()
        / "gguf"
        / f"{path.stem}-{_gguf_key(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}"
    )


def convert_gguf(path: str | Path) -> ModelFolders:
    """The folders converted from a GGUF file, built on first use (the conversion is cached)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError("no such GGUF file")
    root = gguf_root(path)
    folders = read_folders(root)
    if folders is not None:
        return folders
    with file_lock(root.with_name(f".{root.name}.lock")):
        folders = read_folders(root)
        if folders is not None:
            return folders
        progress(f"converting {path.name} to local folders in {root}; once")
        return write_folders(path.resolve(), root, GGUF_N_FUTURE_TOKENS, {"gguf_path": str(path.resolve())})


def named_folders(name: str | Path) -> ModelFolders:
    """The folders of a registered name or a GGUF file (fetched or converted on first use)."""
    return fetch(str(name)) if str(name) in MODELS and not is_gguf(name) else convert_gguf(name)


def resolve_model(name: str | Path, kind: str = "wmtp", n_future_tokens: int | None = None) -> str:
    """A folder or Hub id `from_pretrained` can load for `name`; see the module docstring."""
    if not is_named_model(name):
        return str(name)
    return str(named_folders(name).pick(kind, n_future_tokens))
