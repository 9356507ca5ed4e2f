"""The experiment's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOSS_LABELS = {"critic": "critic (value loss)", "reference": "reference (next-token CE)"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(plan: Any) -> dict[str, list[tuple[int, float]]]:
    """`(step, loss)` of every run, from its `trainer_state.json` log history."""
    curves = {}
    for run in plan.stages:
        state = run.output_dir / "trainer_state.json"
        if not state.is_file():
            continue
        history = json.loads(state.read_text(encoding="utf-8")).get("log_history", [])
        curves[run.name] = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    return curves


def plot_training_loss(plan: Any, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4))
    for name, points in training_curves(plan).items():
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, label=LOSS_LABELS.get(name, name))
    ax.set_xlabel("optimizer step (within the run)")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss of every run")
    if ax.lines:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(
            0.5, 0.5, "no logged loss (fewer steps than logging_steps)", ha="center", transform=ax.transAxes
        )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heldout_ce(metrics: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bars: held-out CE of each head, one group per head, one bar per run."""
    plt = pyplot()
    runs = {name: m["ce_per_head"] for name, m in metrics.items() if m.get("ce_per_head")}
    n_heads = max((len(v) for v in runs.values()), default=0)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(runs), 1)
    for i, (name, ce) in enumerate(runs.items()):
        xs = [k + i * width for k in range(len(ce))]
        ax.bar(xs, ce, width=width, label=name)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(n_heads)], [f"head {k}" for k in range(n_heads)])
    ax.set_ylabel("held-out CE (nats)")
    ax.set_title("Per-head held-out cross-entropy (correct solutions)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    values = [v for ce in runs.values() for v in ce]
    if values:
        ax.set_ylim(min(values) * 0.95, max(values) * 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
