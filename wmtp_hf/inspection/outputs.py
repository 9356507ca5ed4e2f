"""The inspection's output folder: `tokens.html`, `tokens.png` and `tokens.json`, all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_directory, atomic_write_text
from .html_page import render_html
from .plot import render_png
from .records import Inspection

OUTPUT_FILES = ("tokens.html", "tokens.png", "tokens.json")


def write_json(inspection: Inspection, path: str | Path) -> None:
    """The raw numbers (`Inspection.to_dict`) as JSON (temporary file + rename)."""
    atomic_write_text(path, json.dumps(inspection.to_dict(), indent=1, ensure_ascii=False) + "\n")


def write_outputs(inspection: Inspection, output: str | Path) -> Path:
    """Write the three files into `output`, which appears only once all of them are complete."""
    html_text, png = render_html(inspection), render_png(inspection)
    with atomic_directory(output) as tmp:
        (tmp / "tokens.html").write_text(html_text, encoding="utf-8")
        (tmp / "tokens.png").write_bytes(png)
        write_json(inspection, tmp / "tokens.json")
    return Path(output)
