"""Reporting shared by every `scripts/bench_*.py`: the printed tables, the JSON report and `--tiny`.

Imports no torch, so a bench's child processes that measure memory (bench_data) do not pay for it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

MB = 2**20


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A header, a rule and one line per row. `columns` are `"title:<12"` / `"title:>9"` (alignment and
    width); each row holds one already formatted cell per column."""
    specs = [c.rsplit(":", 1) for c in columns]

    def line(cells: Sequence[Any]) -> str:
        return "".join(f"{str(cell):{spec}}" for cell, (_, spec) in zip(cells, specs, strict=True))

    header = line([title for title, _ in specs])
    print(header)
    print("-" * len(header))
    for row in rows:
        print(line(row))


def print_memory_detail(results: dict[str, dict[str, Any]], width: int, *, loss: bool = True) -> None:
    """Each variant's working-memory phase peaks (MB), the CPU live-tensor vs allocator peaks and its
    first-step loss (from `StepMemoryProbe`'s result)."""
    title = "working memory detail (MB): phase peaks; CPU: live-tensor vs allocator peak"
    print(f"\n{title}{'; first-step loss' if loss else ''}")
    for name, r in results.items():
        phases = ", ".join(f"{k} {v / MB:.1f}" for k, v in r["phase_peak_working_bytes"].items())
        detail = ""
        if r.get("live_tensor_peak_bytes") is not None:
            alloc = r.get("allocator_peak_bytes")
            alloc_mb = "n/a" if alloc is None else f"{alloc / MB:.1f}"
            detail = f"; live tensors {r['live_tensor_peak_bytes'] / MB:.1f}, allocator {alloc_mb}"
        print(f"  {name:<{width}} {phases}{detail}" + (f"; loss {r['first_loss']:.4f}" if loss else ""))


def print_round_times(results: dict[str, dict[str, Any]], width: int, title: str, scale: float = 1e3) -> None:
    """Each variant's per-round step wall times (`scale` 1e3: ms, 1: s)."""
    print(f"\n{title}")
    digits = 0 if scale >= 1e3 else 2
    for name, r in results.items():
        print(f"  {name:<{width}} " + " ".join(f"{s['wall_s'] * scale:.{digits}f}" for s in r["steps"]))


def run_config(args: argparse.Namespace, exclude: Sequence[str] = ("worker",)) -> dict[str, Any]:
    """The command-line options for the JSON report (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in exclude}


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Write the JSON report (its folder created) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def add_tiny_option(parser: argparse.ArgumentParser) -> None:
    """`--tiny`: toy sizes that run in seconds; tests/scripts/test_benches.py runs every bench this way so an
    API change cannot break a bench silently. Its numbers mean nothing."""
    parser.add_argument(
        "--tiny", action="store_true", help="toy sizes, seconds (a smoke test: the numbers mean nothing)"
    )


def apply_tiny(args: argparse.Namespace, **sizes: Any) -> argparse.Namespace:
    """With `--tiny`, set `sizes` on `args` (the bench's own toy sizes)."""
    if getattr(args, "tiny", False):
        for key, value in sizes.items():
            setattr(args, key, value)
    return args
