"""`tokens.png`: the response code of each example, every token on its colour (as the page, one head).

Drawn on a monospace grid (one cell per character, long lines wrapped, tabs as 4 spaces) with matplotlib's
Agg canvas directly, so it never touches pyplot's global backend.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

from ..errors import UsageError
from ..fileio import atomic_write_bytes
from .colours import MODE_TITLES, PER_HEAD_MODES, available_modes, legend, page_scales, token_colour
from .records import ExampleRecord, Inspection

FONT_SIZE = 9.0  # points
CELL_W = 0.6021 * FONT_SIZE / 72  # inches: the advance width of DejaVu Sans Mono
CELL_H = 1.45 * FONT_SIZE / 72
TITLE_H = 0.45  # inches above each example
LEGEND_SIZE = 7.5


def _cells(example: ExampleRecord, max_cols: int) -> tuple[list[tuple[int, int, str, int]], int]:
    """`(row, column, characters, token index)` runs of the response on the grid, and the row count."""
    runs: list[tuple[int, int, str, int]] = []
    row = col = 0
    for index, token in enumerate(example.tokens):
        piece = ""
        start = col
        for char in token.text.replace("\t", "    "):
            if char != "\n" and not char.isprintable():
                char = "\u00b7"  # a control character: a dot holds its place
            if char == "\n" or col >= max_cols:
                runs.append((row, start, piece, index))
                row, col, start, piece = row + 1, 0, 0, ""
                if char == "\n":
                    continue
            piece += char
            col += 1
        if piece or not token.text:
            runs.append((row, start, piece, index))
    return runs, row + 1


def render_png(
    inspection: Inspection,
    examples: Sequence[int] | None = None,
    head: int = 0,
    color_by: str | None = None,
    max_cols: int = 100,
    max_rows: int = 60,
    dpi: int = 110,
) -> bytes:
    """PNG bytes: the chosen `examples` (default all), coloured by `color_by` (default: the page's first
    choice: weight, kept or CE) for `head`; an example longer than `max_rows` lines is cut, and says so."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    modes = available_modes(inspection)
    mode = color_by or modes[0]
    if mode not in modes:
        raise UsageError(f"color_by: expected one of {', '.join(modes)} for this inspection, got {mode!r}")
    if not 0 <= head < inspection.n_heads:
        raise UsageError(f"head: expected 0..{inspection.n_heads - 1}, got {head}")
    indices = list(range(len(inspection.examples))) if examples is None else list(examples)
    scales = page_scales(inspection)
    laid = []
    for i in indices:
        runs, rows = _cells(inspection.examples[i], max_cols)
        laid.append((i, [r for r in runs if r[0] < max_rows], min(rows, max_rows), rows))
    width = max_cols * CELL_W + 0.6
    legend_lines = textwrap.wrap(legend(mode, scales), width=int((width - 0.6) * 72 / (LEGEND_SIZE * 0.56)))
    header_h = 0.5 + len(legend_lines) * LEGEND_SIZE * 1.4 / 72
    heights = [TITLE_H + rows * CELL_H + 0.15 for _, _, rows, _ in laid]
    total = header_h + sum(heights)
    fig = Figure(figsize=(width, total), dpi=dpi)
    FigureCanvasAgg(fig)
    what = MODE_TITLES[mode] + (f", head {head}" if mode in PER_HEAD_MODES else "")
    fig.text(0.3 / width, 1 - 0.25 / total, f"Token colours: {what}", fontsize=11, weight="bold", va="center")
    fig.text(0.3 / width, 1 - 0.45 / total, "\n".join(legend_lines), fontsize=LEGEND_SIZE, va="top",
             linespacing=1.3, parse_math=False)  # fmt: skip
    top = total - header_h
    for (i, runs, rows, all_rows), height in zip(laid, heights, strict=True):
        example = inspection.examples[i]
        kind = "correct" if example.is_correct else "incorrect"
        cut = f" — first {rows} of {all_rows} lines" if all_rows > rows else ""
        fig.text(
            0.3 / width,
            (top - 0.22) / total,
            f"{example.task_id} ({kind}){cut}",
            fontsize=9,
            va="center",
            parse_math=False,
        )
        box_h = rows * CELL_H
        ax = fig.add_axes(
            (0.3 / width, (top - TITLE_H - box_h) / total, max_cols * CELL_W / width, box_h / total)
        )
        ax.set_xlim(0, max_cols)
        ax.set_ylim(rows, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#bbbbbb")
        for row, col, text, index in runs:
            colour = token_colour(example.tokens[index], mode, head, scales)
            if text:
                ax.add_patch(
                    Rectangle(  # a hairline gap between tokens shows where each one starts
                        (col + 0.05, row + 0.04),
                        len(text) - 0.1,
                        0.92,
                        facecolor=[c / 255 for c in colour],
                        linewidth=0,
                    )
                )
                ax.text(
                    col,
                    row + 0.5,
                    text,
                    fontsize=FONT_SIZE,
                    family="DejaVu Sans Mono",
                    va="center",
                    parse_math=False,
                )
        top -= height
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def write_png(
    inspection: Inspection,
    path: str,
    examples: Sequence[int] | None = None,
    head: int = 0,
    color_by: str | None = None,
) -> None:
    """Write `render_png(...)` to `path` (temporary file + rename)."""
    atomic_write_bytes(path, render_png(inspection, examples, head, color_by))
