"""File reading with line-precise errors, and atomic, content-keyed Arrow caching of loaded rows."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from ..fileio import atomic_write_text
from .schema import FEATURES, DataError

CHUNK_ROWS = 10_000


def cache_root() -> Path:
    """`$WMTP_HF_CACHE`, else `~/.cache/wmtp_hf`: where built sources and the offline default live."""
    return Path(os.environ.get("WMTP_HF_CACHE") or Path.home() / ".cache" / "wmtp_hf")


def file_sha256(path: str | Path) -> str:
    """Content hash of a file, streamed (cache keys follow the data, not its name or mtime)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _decode(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
        ) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line of a JSONL(.gz) file.

    Errors name the file and line: invalid JSON, non-UTF-8 bytes, or a line that is not an object.
    """
    path = Path(path)
    with _open_binary(path) as fh:
        for number, raw in enumerate(fh, start=1):
            text = _decode(raw, path, number).strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def read_json_array(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Read a file holding one JSON array of objects; yields `(location, object)` with `file[item N]`."""
    path = Path(path)
    with _open_binary(path) as fh:
        text = _decode(fh.read(), path, 1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    out = []
    for i, obj in enumerate(data):
        loc = f"{path}[item {i}]"
        if not isinstance(obj, dict):
            raise DataError(f"{loc}: expected a JSON object, got {type(obj).__name__}")
        out.append((loc, obj))
    return out


def first_non_space_byte(path: str | Path) -> bytes:
    """The first non-whitespace byte (b"[" means a JSON array file rather than JSONL)."""
    with _open_binary(Path(path)) as fh:
        while chunk := fh.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""


def cached_rows(
    key: str, make_rows: Callable[[Counter], Iterable[dict[str, Any]]], dropped: Counter | None = None
) -> datasets.Dataset:
    """Memory-mapped Dataset of the rows `make_rows(drop_counter)` yields, cached under `key`.

    Rows are written to an Arrow stream in chunks (memory stays bounded for millions of rows), to a
    temporary file renamed into place, so an interrupted build never leaves a half-written cache.
    Drop counts are stored beside it and added to `dropped` on every call, cache hit or not.
    """
    folder = cache_root() / "sources"
    arrow_path, meta_path = folder / f"{key}.arrow", folder / f"{key}.json"
    if not (arrow_path.exists() and meta_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        counts: Counter = Counter()
        schema = FEATURES.arrow_schema
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".arrow.tmp")
        try:
            with os.fdopen(fd, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                chunk: list[dict[str, Any]] = []
                for row in make_rows(counts):
                    chunk.append(row)
                    if len(chunk) >= CHUNK_ROWS:
                        writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                        chunk = []
                if chunk:
                    writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            atomic_write_text(meta_path, json.dumps({"dropped": dict(counts)}))
            os.replace(tmp, arrow_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if dropped is not None:
        dropped.update(json.loads(meta_path.read_text())["dropped"])
    return datasets.Dataset.from_file(str(arrow_path), info=datasets.DatasetInfo(features=FEATURES))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON via a temp file + rename (no half-written files)."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=True) + "\n")
