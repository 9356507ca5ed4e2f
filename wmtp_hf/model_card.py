"""The model card (README.md) of a trained checkpoint: Hub metadata plus a body from `model_cards/`.

The metadata is built with `huggingface_hub`'s `ModelCardData` / `EvalResult` (docs/design.md §8): library_name,
pipeline_tag, tags, base_model, training datasets, pass@k results as `model-index`, and a `wmtp` entry with
the training stage and resolved config. The card can be re-rendered from that entry alone, which is how
`python -m wmtp_hf.publish` merges new evaluation results into a card written at training time.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .messages import looks_like_hub_id

STAGE_DESCRIPTIONS = {
    "baseline": "all heads, uniform multi-token-prediction loss",
    "critic": "value head regressed on solution correctness",
    "verifiable": "token weights from the critic's TD errors",
    "rho1": "top-k tokens by excess loss over a reference model",
    "reference": "plain causal LM, next-token loss (Rho-1's reference)",
}
# Evaluation / training source names -> Hub dataset ids (the `dataset.type` of a model-index result).
HUB_DATASETS = {"humaneval": "openai_humaneval", "mbpp": "mbpp", "codecontests": "deepmind/code_contests"}
DATASET_TITLES = {"humaneval": "HumanEval", "mbpp": "MBPP", "codecontests": "CodeContests"}
TEMPLATE = "wmtp_model_card.md"
TASK = ("text-generation", "Code generation")


def template_text(name: str = TEMPLATE) -> str:
    """A card template from the installed package data (the repository's `model_cards/`)."""
    return (Path(__file__).parent / "model_cards" / name).read_text(encoding="utf-8")


def is_hub_id(name: str | None) -> bool:
    """Whether `name` is a Hub repository id rather than a local folder (only Hub ids go in `base_model`)."""
    return bool(name) and looks_like_hub_id(name) and not Path(name).exists()


def hub_base_model(name: str | None) -> str | None:
    """The Hub id to credit as `base_model`: a Hub id as it is, a registered model's Hub id
    (`smollm2-135m` -> `HuggingFaceTB/SmolLM2-135M-Instruct`), else None (a local folder or GGUF file)."""
    from .models import get_spec, is_registered

    if name and is_registered(name):
        return get_spec(name).hub_id
    return name if is_hub_id(name) else None


def pass_at_k_results(
    scores: dict[str, dict[str, float]], splits: dict[str, str] | None = None
) -> list[EvalResult]:
    """`EvalResult`s from `{dataset: {"pass@1": 0.12, ...}}` (source names such as humaneval, or Hub ids)."""
    splits = splits or {}
    return [
        EvalResult(
            task_type=TASK[0],
            task_name=TASK[1],
            dataset_type=HUB_DATASETS.get(name, name),
            dataset_name=DATASET_TITLES.get(name, name),
            dataset_split=splits.get(name),
            metric_type=metric,
            metric_name=metric,
            metric_value=round(float(value), 4),
        )
        for name, metrics in sorted(scores.items())
        for metric, value in sorted(metrics.items())
    ]


def merge_eval_results(old: list[EvalResult], new: list[EvalResult]) -> list[EvalResult]:
    """`old` with `new` added; a new result replaces an old one of the same dataset, split and metric."""

    def key(r: EvalResult) -> tuple:
        return (r.task_type, r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type)

    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    return list(merged.values())


def card_data(
    *,
    stage: str | None,
    config: dict[str, Any],
    n_heads: int,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    steps: int | None = None,
    final_loss: float | None = None,
    eval_results: list[EvalResult] | None = None,
    model_name: str = "wmtp-model",
    adapter: bool = False,
) -> ModelCardData:
    """Hub metadata of the card (`base_model` only as a Hub id, see `hub_base_model`; adapters are peft's
    library)."""
    hub_datasets = [HUB_DATASETS[d] for d in datasets or [] if d in HUB_DATASETS]
    tags = ["wmtp", "multi-token-prediction", "custom_code", "code"]
    tags += [f"wmtp-{stage}"] if stage else []
    tags += ["lora", "peft"] if adapter else []
    wmtp = {"stage": stage, "n_future_tokens": n_heads, "adapter": adapter, "base_model": base_model,
            "steps": steps, "final_loss": final_loss, "datasets": datasets or [], "config": config}  # fmt: skip
    return ModelCardData(
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        license="other",
        tags=tags,
        datasets=hub_datasets or None,
        base_model=hub_base_model(base_model),
        model_name=model_name,
        eval_results=eval_results or None,
        wmtp=wmtp,
    )


def _results_table(results: list[EvalResult]) -> str:
    if not results:
        return "Not evaluated yet: run `python -m wmtp_hf.evaluate --model <this folder> ...`."
    rows = ["| dataset | split | metric | value |", "|---|---|---|---|"]
    rows += [
        f"| {r.dataset_name} (`{r.dataset_type}`) | {r.dataset_split or '—'} | {r.metric_type} | "
        f"{float(r.metric_value):.4f} |"
        for r in results
    ]
    return "\n".join(rows)


def render_model_card(
    *,
    stage: str | None,
    config: dict[str, Any],
    n_heads: int,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    steps: int | None = None,
    final_loss: float | None = None,
    eval_results: list[EvalResult] | None = None,
    model_name: str = "wmtp-model",
    repo_id: str = "path/to/model",
    adapter: bool = False,
) -> str:
    """The full README.md text: YAML metadata (`card_data`) + the rendered template."""
    data = card_data(stage=stage, config=config, n_heads=n_heads, base_model=base_model, datasets=datasets,
                     steps=steps, final_loss=final_loss, eval_results=eval_results, model_name=model_name,
                     adapter=adapter)  # fmt: skip
    micro = base_model is None or "micro" in str(base_model)
    limitations = (
        "Trained from the randomly initialised micro preset on the small offline dataset: a pipeline check, "
        "not a useful code model."
        if micro
        else "Generated code must be run in a sandbox; pass@k on public benchmarks may be contaminated."
    )
    usage = string.Template(template_text("usage_adapter.md" if adapter else "usage_model.md"))
    body = string.Template(template_text()).safe_substitute(
        model_name=model_name,
        stage=stage or "—",
        stage_description=STAGE_DESCRIPTIONS.get(stage or "", "not trained by wmtp_hf"),
        n_heads=n_heads,
        last_head=n_heads - 1,
        usage=usage.safe_substitute(repo_id=repo_id, base_model=base_model or "its base model").strip(),
        base_model=base_model or "micro preset (random init)",
        datasets=", ".join(datasets or []) or "—",
        steps=steps if steps is not None else "—",
        final_loss=f"{final_loss:.4f}" if final_loss is not None else "—",
        config_yaml=yaml.safe_dump(config, sort_keys=False).strip() if config else "# not recorded",
        results=_results_table(eval_results or []),
        limitations=limitations,
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def write_model_card(folder: str | Path, **kwargs: Any) -> Path:
    """Render and write `folder/README.md`."""
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(**kwargs), encoding="utf-8")
    return path


def rerender_card(
    card: ModelCard,
    *,
    eval_results: list[EvalResult] = (),
    base_model: str | None = None,
    model_name: str,
    repo_id: str,
    adapter: bool,
    n_heads: int,
) -> str:
    """The card re-rendered from its `wmtp` metadata, with `eval_results` merged into its model-index.

    A card without that entry (a folder not trained by wmtp_hf) gets a fresh card with no training details.
    """
    info = card.data.to_dict().get("wmtp") or {}
    old = card.data.eval_results or []
    return render_model_card(
        stage=info.get("stage"),
        config=info.get("config") or {},
        n_heads=int(info.get("n_future_tokens") or n_heads),
        base_model=base_model or card.data.base_model or info.get("base_model"),
        datasets=info.get("datasets") or [],
        steps=info.get("steps"),
        final_loss=info.get("final_loss"),
        eval_results=merge_eval_results(old, list(eval_results)),
        model_name=model_name,
        repo_id=repo_id,
        adapter=adapter,
    )
