"""The source files a WMTP model folder ships so `trust_remote_code=True` loads it without `wmtp_hf`."""

from __future__ import annotations

import functools
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_import_files

PACKAGE_DIR = Path(__file__).parent


@functools.cache
def remote_code_files() -> tuple[str, ...]:
    """`configuration_wmtp.py`, `modeling_wmtp.py` and every sibling they import relatively (recursively):
    the files `save_pretrained` copies next to the weights."""
    names = {"configuration_wmtp.py", "modeling_wmtp.py"}
    for entry in ("configuration_wmtp.py", "modeling_wmtp.py"):
        names |= {Path(f).name for f in get_relative_import_files(str(PACKAGE_DIR / entry))}
    return tuple(sorted(names))
