"""The weighted runs' token weights on held-out examples: histograms, one example's heatmap, and the
`wmtp_hf.inspect` page of each (through the `wmtp_hf.inspection` library, so they show what trained)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..inspection import Inspection, inspect_examples, select_rows, tokenized_stream, write_outputs, write_png
from .plots import pyplot

WEIGHTED_RUNS = ("verifiable", "rho1")


def inspect_run(plan: Any, name: str) -> Inspection | None:
    """Inspect `plan.evaluation.inspect_examples` held-out rows (alternating correct / incorrect) of a run."""
    from ..data.prompt_formats import recorded_prompt_format
    from ..loading import load_causal_lm
    from ..train.components import held_out_split, load_rows, resolve_training_format
    from .measure import load_final

    run = plan.run(name)
    n = plan.evaluation.inspect_examples
    if run is None or n == 0:
        return None
    config = run.config
    split = plan.evaluation.split or held_out_split(config)
    if split is None:
        return None
    model, tokenizer = load_final(run.final_dir)
    fmt = resolve_training_format(config, tokenizer, recorded_prompt_format(run.final_dir))
    rows = select_rows(tokenized_stream(load_rows(config, split), tokenizer, config.max_length, fmt), n=n)
    if not rows:
        return None
    reference = None
    if run.stage == "rho1":
        label = f"reference_model '{config.reference_model}'"
        reference = load_causal_lm(config.reference_model, kind="llama", label=label).eval()
    labels = {"model": name, "dataset": str(config.dataset), "split": split}
    if reference is not None:
        labels["reference"] = str(config.reference_model)
    return inspect_examples(
        model, tokenizer, rows, reference=reference, stage_config=config,
        batch_size=plan.evaluation.batch_size, labels=labels,
    )  # fmt: skip


def plot_histograms(inspections: dict[str, Inspection], path: Path) -> Path:
    """Verifiable: the token weights. Rho-1: head 0's excess loss of kept and of dropped tokens."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(inspections), figsize=(5.5 * len(inspections), 3.8), squeeze=False)
    for ax, (name, inspection) in zip(axes[0], inspections.items(), strict=True):
        tokens = [t for e in inspection.examples for t in e.tokens]
        if name == "verifiable":
            weights = [t.weight for t in tokens if t.weight is not None]
            ax.hist(weights, bins=40, color="tab:blue")
            ax.axvline(1.0, color="black", lw=0.8, ls="--")
            ax.set_xlabel("token weight w = clip(exp(A/β))  (dashed: 1 = baseline)")
        else:
            kept = [t.excess[0] for t in tokens if t.excess and t.kept and t.kept[0] is True]
            dropped = [t.excess[0] for t in tokens if t.excess and t.kept and t.kept[0] is False]
            ax.hist(
                [kept, dropped], bins=40, stacked=True, label=["kept", "dropped"], color=["tab:green", "0.7"]
            )
            ax.set_xlabel("head 0 excess loss CE − CE_ref (nats)")
            ax.legend()
        ax.set_ylabel("response tokens")
        ax.set_title(f"{name}: {len(inspection.examples)} held-out examples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weights(plan: Any, out: Path) -> dict[str, Path]:
    """Histograms and one held-out example's heatmap of the weighted runs; their inspect pages under
    `<output_dir>/inspect/<run>/` (tokens.html, tokens.png, tokens.json)."""
    inspections = {name: i for name in WEIGHTED_RUNS if (i := inspect_run(plan, name)) is not None}
    if not inspections:
        return {}
    for name, inspection in inspections.items():
        write_outputs(inspection, out / "inspect" / name)
    plots = {"token weight histograms": plot_histograms(inspections, out / "weight_histograms.png")}
    name, inspection = next(iter(inspections.items()))
    heatmap = out / "token_weights_example.png"
    write_png(inspection, str(heatmap), examples=[0], head=0)
    plots[f"token weights of one held-out example ({name}, head 0)"] = heatmap
    return plots
