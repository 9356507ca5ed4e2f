"""Render the model card (README.md) of a trained checkpoint from `model_cards/wmtp_model_card.md`.

The YAML metadata follows the Hub's model-card conventions (SPEC §8), including pass@k results as
`model-index` when evaluation results are given.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml

STAGE_DESCRIPTIONS = {
    "baseline": "all heads, uniform multi-token-prediction loss",
    "critic": "value head regressed on solution correctness",
    "verifiable": "token weights from the critic's TD errors",
    "rho1": "top-k tokens by excess loss over a reference model",
}
TEMPLATE = "wmtp_model_card.md"


def template_text() -> str:
    """The card template, from the installed package data (the repository's `model_cards/`)."""
    return (Path(__file__).parent / "model_cards" / TEMPLATE).read_text(encoding="utf-8")


def card_metadata(
    stage: str,
    base_model: str | None,
    datasets: list[str],
    results: dict[str, dict[str, float]] | None = None,
    model_name: str = "wmtp-model",
) -> dict[str, Any]:
    """Hub metadata; `results` maps a dataset name to `{"pass@1": 0.12, ...}` (fractions)."""
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "license": "other",
        "tags": ["wmtp", "multi-token-prediction", "custom_code", "code", f"wmtp-{stage}"],
        "datasets": datasets,
    }
    if base_model:
        meta["base_model"] = base_model
    if results:
        meta["model-index"] = [
            {
                "name": model_name,
                "results": [
                    {
                        "task": {"type": "text-generation", "name": "Code generation"},
                        "dataset": {"type": name, "name": name},
                        "metrics": [
                            {"type": metric, "value": round(float(value), 4), "name": metric}
                            for metric, value in sorted(scores.items())
                        ],
                    }
                    for name, scores in sorted(results.items())
                ],
            }
        ]
    return meta


def render_model_card(
    *,
    stage: str,
    config: dict[str, Any],
    n_heads: int,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    steps: int | None = None,
    final_loss: float | None = None,
    results: dict[str, dict[str, float]] | None = None,
    model_name: str = "wmtp-model",
    repo_id: str = "path/to/model",
) -> str:
    """The full README.md text: YAML front matter + the rendered template."""
    datasets = datasets or []
    meta = card_metadata(stage, base_model, datasets, results, model_name)
    if results:
        rows = ["| dataset | metric | value |", "|---|---|---|"]
        rows += [f"| {d} | {m} | {v:.4f} |" for d, s in sorted(results.items()) for m, v in sorted(s.items())]
        results_text = "\n".join(rows)
    else:
        results_text = "Not evaluated yet: run `python -m wmtp_hf.evaluate --model <this folder> ...`."
    micro = base_model is None or "micro" in str(base_model)
    limitations = (
        "Trained from the randomly initialised micro preset on the small offline dataset: a pipeline check, "
        "not a useful code model."
        if micro
        else "Generated code must be run in a sandbox; pass@k on public benchmarks may be contaminated."
    )
    body = string.Template(template_text()).safe_substitute(
        model_name=model_name,
        stage=stage,
        stage_description=STAGE_DESCRIPTIONS.get(stage, stage),
        n_heads=n_heads,
        last_head=n_heads - 1,
        repo_id=repo_id,
        base_model=base_model or "micro preset (random init)",
        datasets=", ".join(datasets) or "—",
        steps=steps if steps is not None else "—",
        final_loss=f"{final_loss:.4f}" if final_loss is not None else "—",
        config_yaml=yaml.safe_dump(config, sort_keys=False).strip(),
        results=results_text,
        limitations=limitations,
    )
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n{body}"


def write_model_card(folder: str | Path, **kwargs: Any) -> Path:
    """Render and write `folder/README.md`."""
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(**kwargs), encoding="utf-8")
    return path
