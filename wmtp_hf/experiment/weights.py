"""Token-weight plots of the weighted runs (histograms, one held-out example's heatmap)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_weights(plan: Any, out: Path) -> dict[str, Path]:
    """Placeholder until the inspect module lands: no weight plots yet."""
    return {}
