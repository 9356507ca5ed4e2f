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
        curves[run.key] = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
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


def plot_heldout_ce(summary: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bars: held-out CE of each head (mean over seeds), one group per head, one bar per run, with
    the 95% interval as error bars."""
    plt = pyplot()
    runs = {name: r["ce_per_head"] for name, r in summary.items() if r.get("ce_per_head")}
    n_heads = max((len(v) for v in runs.values()), default=0)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(runs), 1)
    lows, highs = [], []
    for i, (name, ce) in enumerate(runs.items()):
        xs = [k + i * width for k in range(len(ce))]
        heights = [c["estimate"] for c in ce]
        cis = [c.get("ci95") or [c["estimate"], c["estimate"]] for c in ce]
        err = [[h - lo for h, (lo, _) in zip(heights, cis, strict=True)],
               [hi - h for h, (_, hi) in zip(heights, cis, strict=True)]]  # fmt: skip
        ax.bar(xs, heights, width=width, label=name, yerr=err, capsize=2, error_kw={"lw": 0.8})
        lows += [lo for lo, _ in cis]
        highs += [hi for _, hi in cis]
    ax.set_xticks([k + 0.4 - width / 2 for k in range(n_heads)], [f"head {k}" for k in range(n_heads)])
    ax.set_ylabel("held-out CE (nats)")
    ax.set_title("Per-head held-out cross-entropy (correct solutions), 95% intervals")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if lows:
        ax.set_ylim(min(lows) * 0.95, max(highs) * 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
