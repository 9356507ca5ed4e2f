"""Held-out measurements of one final model, the same for every stage (docs/design.md §9).

- per-head cross-entropy, teacher-forced on the held-out *correct* solutions (a plain causal LM, such as
  the reference, has head 0 only);
- the critic's AUROC: the last value of each held-out response against is_correct (models with a value head);
- pass@k of sampled completions on the held-out problems, through the `wmtp_hf.evaluate` machinery,
  leaving out any problem in the model's trained_problems.json.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import datasets
import torch

from ..data import WmtpDataCollator
from ..loading import load_for_inference
from ..losses import mtp_target_mask, reference_token_losses
from ..stats import binary_auroc
from ..trained_problems import TrainedProblems, read_record
from ..weighting import value_positions
from .plan import EvaluationOptions


def _batches(dataset: datasets.Dataset, collator: WmtpDataCollator, batch_size: int):
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        yield collator(rows)


def is_wmtp(model: Any) -> bool:
    return getattr(model.config, "model_type", None) == "wmtp"


@torch.no_grad()
def heldout_ce_rows(
    model: Any, dataset: datasets.Dataset, collator: WmtpDataCollator, batch_size: int
) -> tuple[list[list[float]], list[list[int]]]:
    """Per held-out row and head k: `(sum of CE_k over the row's targets [N][n], target count [N][n])`."""
    n_heads = model.config.n_future_tokens if is_wmtp(model) else 1
    sums, counts = [], []
    for batch in _batches(dataset, collator, batch_size):
        labels = batch["labels"]
        if is_wmtp(model):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
            losses = out.token_losses.double()  # [B, T, n], 0 without a target
        else:
            per_token = reference_token_losses(model, batch["input_ids"], batch["attention_mask"], labels)
            losses = torch.zeros(*labels.shape, 1, dtype=torch.float64)
            losses[:, :-1, 0] = per_token[:, 1:].double()  # CE of token t+1, predicted at position t
        sums += losses.sum(dim=1).tolist()
        counts += mtp_target_mask(labels, n_heads).sum(dim=1).tolist()
    return sums, counts


def ce_per_head(sums: list[list[float]], counts: list[list[int]]) -> list[float]:
    """Mean `CE_k` over every held-out response target of head k (`sum CE / count`, per head)."""
    total = torch.tensor(sums, dtype=torch.float64).reshape(len(sums), -1).sum(0)
    n = torch.tensor(counts, dtype=torch.float64).reshape(len(counts), -1).sum(0)
    return [float(s / c) if c > 0 else float("nan") for s, c in zip(total, n, strict=True)]


def heldout_ce_per_head(
    model: Any, dataset: datasets.Dataset, collator: WmtpDataCollator, batch_size: int
) -> list[float]:
    """Mean `CE_k` over every held-out response target of head k."""
    return ce_per_head(*heldout_ce_rows(model, dataset, collator, batch_size))


@torch.no_grad()
def last_values(model: Any, dataset: datasets.Dataset, collator: WmtpDataCollator, batch_size: int):
    """`[N]` the value at the last value position of each row's response (the critic's verdict)."""
    out = []
    for batch in _batches(dataset, collator, batch_size):
        values = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], value_only=True
        ).value.float()
        mask = value_positions(batch["labels"])
        last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & mask
        out.append((values * last).sum(1))
    return torch.cat(out) if out else torch.zeros(0)


def value_auroc(model: Any, dataset: datasets.Dataset, collator: WmtpDataCollator, batch_size: int):
    """AUROC of the last value against is_correct; None without a value head or one class only."""
    scores = critic_scores(model, dataset, collator, batch_size)
    return None if scores is None else binary_auroc(torch.tensor(scores), torch.tensor(dataset["is_correct"]))


def auroc_unavailable(model: Any, labels: list[bool]) -> str | None:
    """Why the critic's AUROC cannot be computed for `model` on rows labelled `labels` (None: it can)."""
    if not is_wmtp(model) or getattr(model, "value_head", None) is None:
        return "no value head"
    if not labels:
        return "no held-out rows"
    if all(labels) or not any(labels):
        kind = "correct" if labels[0] else "incorrect"
        return f"one class only: all {len(labels)} held-out rows are {kind}"
    return None


def critic_scores(model: Any, dataset: datasets.Dataset, collator: WmtpDataCollator, batch_size: int):
    """Each row's last value (the critic's verdict), or None without a value head or with one class only."""
    if auroc_unavailable(model, [bool(c) for c in dataset["is_correct"]]) is not None:
        return None
    return last_values(model, dataset, collator, batch_size).tolist()


def draw_rows(is_correct: list[bool], max_rows: int | None, seed: int) -> list[int]:
    """Indices (ascending) of at most `max_rows` rows drawn at random, stratified by `is_correct`.

    Each class gets `round(max_rows * share)` rows, so the drawn mix equals the full set's within one
    row; when both classes exist and `max_rows >= 2`, each keeps at least one row (an AUROC needs both).
    The draw depends only on the labels, `max_rows` and `seed`, so every run is measured on the same rows.
    """
    n = len(is_correct)
    if max_rows is None or max_rows >= n:
        return list(range(n))
    correct = [i for i, c in enumerate(is_correct) if c]
    incorrect = [i for i, c in enumerate(is_correct) if not c]
    take = round(max_rows * len(correct) / n)
    if correct and incorrect and max_rows >= 2:
        take = min(max(take, 1), max_rows - 1)
    take = min(take, len(correct), max_rows)
    take = max(take, max_rows - len(incorrect))
    rng = random.Random(seed)
    return sorted(rng.sample(correct, take) + rng.sample(incorrect, max_rows - take))


def pass_at_k(
    model: Any,
    tokenizer: Any,
    dataset: str,
    dataset_path: str | None,
    split: str,
    options: EvaluationOptions,
    out_dir: Path,
    seed: int = 0,
    trained: TrainedProblems | None = None,
    prompt_format: str = "auto",
) -> dict[str, Any]:
    """Sample completions for the held-out problems and score them in the sandbox; writes OUT/summary.json.

    Problems in `trained` (the model's trained_problems.json) are left out, and counted in the summary
    (`n_trained_problems_evaluated`); the held-out splits of the named sources share no problem with
    their training splits, so this only drops problems when a model was trained on other data too.

    With `options.speculative` (greedy, WMTP model) the completions are decoded self-speculatively, one
    prompt at a time so every row's drafts count; the output is token-for-token plain greedy's, and the
    summary gains `speculative` (forwards, accepted drafts, `tokens_per_forward`).
    """
    from ..evaluation.contamination import leave_out_trained
    from ..evaluation.generation import SpeculativeStats, sample_problems
    from ..evaluation.problems import DEFAULT_SPLITS, load_problems
    from ..evaluation.runner import score_samples, write_outputs

    if dataset not in DEFAULT_SPLITS:
        return {"skipped": f"pass@k needs a named source, not the prepared folder '{dataset}'"}
    problems = load_problems(dataset, dataset_path, split, prompt_format, tokenizer)[: options.n_problems]
    problems, trained_report = leave_out_trained(problems, trained)
    if not problems:
        return {"skipped": f"the model was trained on every one of the {split} problems", **trained_report}
    speculative = options.speculative and options.temperature == 0 and is_wmtp(model)
    stats = SpeculativeStats() if speculative else None
    samples = sample_problems(
        model, tokenizer, problems, n_samples=options.n_samples, temperature=options.temperature,
        max_new_tokens=options.max_new_tokens, batch_size=1 if speculative else options.batch_size, seed=seed,
        speculative=speculative, speculative_stats=stats,
    )  # fmt: skip
    rows, summary = score_samples(
        problems, samples, ks=options.k, timeout_s=options.timeout, isolation=options.isolation
    )
    summary = {"dataset": dataset, "split": split, "prompt_format": problems[0].prompt_format, **summary,
               **trained_report}  # fmt: skip
    summary["per_problem"] = per_problem_pass_at_k(rows, [k for k in options.k if f"pass@{k}" in summary])
    if stats is not None:
        summary["speculative"] = stats.summary()
    write_outputs(out_dir, rows, summary)
    return summary


def per_problem_pass_at_k(rows: list[dict[str, Any]], ks: list[int]) -> dict[str, list]:
    """`{"task_id": [...], "pass@k": [...]}`: each problem's unbiased pass@k (for paired intervals)."""
    from ..evaluation.pass_at_k import pass_at_k as estimate

    tally: dict[str, list[int]] = {}
    for row in rows:
        n_c = tally.setdefault(row["task_id"], [0, 0])
        n_c[0] += 1
        n_c[1] += int(row["passed"])
    out: dict[str, list] = {"task_id": list(tally)}
    for k in ks:
        out[f"pass@{k}"] = [estimate(n, c, k) for n, c in tally.values()]
    return out


COMPARED_STAGES = ("baseline", "critic", "verifiable", "rho1")  # the reference only serves rho1


def load_final(final_dir: Path) -> tuple[Any, Any]:
    """`(model in eval mode, tokenizer)` of a run's final folder; a LoRA adapter is merged into its base."""
    return load_for_inference(final_dir, device="cpu", dtype=None, label=f"model_name_or_path '{final_dir}'")


def measure_final_model(plan: Any, stage: Any, out_dir: Path) -> dict[str, Any]:
    """Every held-out measurement of `stage`'s final model; `out_dir` receives pass@k's results."""
    from ..data.prompt_formats import recorded_prompt_format

    model, tokenizer = load_final(stage.final_dir)
    return measure_model(
        plan.evaluation, stage.config, model, tokenizer, out_dir,
        recorded=recorded_prompt_format(stage.final_dir), trained=read_record(stage.final_dir),
        with_pass_at_k=stage.stage in COMPARED_STAGES, heldout_config=clean_heldout_config(plan, stage.config),
    )  # fmt: skip


def clean_heldout_config(plan: Any, config: Any) -> Any:
    """The config whose held-out rows CE and pass@k are measured on: `config` itself, or in a positive
    control its copy reading the clean held-out rows (the noisy folder's held-out split is the clean
    one). Runs on the planted rows would otherwise draw their `max_rows` from another correct/incorrect
    mix, i.e. other correct rows, than the start model and the runs on clean or noisy rows."""
    if plan.control is None:
        return config
    clean = copy.copy(config)
    clean.dataset, clean.dataset_path = str(plan.control.folder(plan.output_dir, "noisy")), None
    return clean


def measure_start_model(plan: Any, stage: Any, out_dir: Path) -> dict[str, Any]:
    """The model `stage` started from (before any step: a LLaMA converted and heads initialised exactly
    as the stage does it), measured like every final model."""
    from ..data.prompt_formats import recorded_prompt_format
    from ..train.stages import STAGE_TRAINERS

    trainer_cls, config = STAGE_TRAINERS[stage.stage], stage.config
    path = trainer_cls.resolve_model_path(config)
    tokenizer = trainer_cls.start_tokenizer(config, path)
    trainer_cls.build_preset(config, path, tokenizer)
    model = trainer_cls.load_model(config, path, tokenizer).eval()
    recorded = recorded_prompt_format(path) if Path(path).is_dir() else None
    metrics = measure_model(
        plan.evaluation, config, model, tokenizer, out_dir, recorded=recorded, trained=read_record(path),
        with_pass_at_k=True, heldout_config=clean_heldout_config(plan, config),
    )  # fmt: skip
    return {"start_model_path": path, **metrics}


def measure_model(
    options: EvaluationOptions,
    config: Any,
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    recorded: str | None,
    trained: TrainedProblems | None,
    with_pass_at_k: bool,
    heldout_config: Any,
) -> dict[str, Any]:
    """Every held-out measurement of `model` on `config`'s data; `out_dir` receives pass@k's results.
    CE and pass@k read `heldout_config`'s held-out rows (`config` itself, or a control's clean rows:
    `clean_heldout_config`); the critic's AUROC reads `config`'s (a control's critic: the planted rows)."""
    from ..train.components import held_out_split, resolve_training_format, tokenized_rows

    def drawn_rows(cfg: Any) -> tuple[datasets.Dataset | None, str | None]:
        split = options.split or held_out_split(cfg)
        if split is None:
            return None, None
        rows, _, _ = tokenized_rows(cfg, tokenizer, split, recorded)
        return rows.select(
            draw_rows([bool(c) for c in rows["is_correct"]], options.max_rows, options.seed)
        ), split

    rows, split = drawn_rows(config)
    clean = heldout_config
    ce_source, ce_split = (rows, split) if clean is config else drawn_rows(clean)
    if rows is None or ce_source is None:
        return {"skipped": f"dataset '{config.dataset}' has no held-out split; set evaluation.split"}
    correct = ce_source.filter(lambda r: bool(r["is_correct"]))
    collator = WmtpDataCollator(tokenizer)
    sums, counts = heldout_ce_rows(model, correct, collator, options.batch_size)
    labels = [bool(c) for c in rows["is_correct"]]
    unavailable = auroc_unavailable(model, labels)
    scores = None if unavailable else last_values(model, rows, collator, options.batch_size).tolist()
    metrics: dict[str, Any] = {
        "split": split,
        "heldout_rows": len(rows),
        "heldout_correct": len(correct),
        "ce_per_head": ce_per_head(sums, counts),
        "auroc": None if scores is None else binary_auroc(torch.tensor(scores), torch.tensor(labels)),
        "auroc_unavailable": unavailable,
        # per-example numbers behind the intervals (wmtp_hf.stats), keyed by task_id for pairing
        "ce_rows": {"task_id": list(correct["task_id"]), "sum": sums, "count": counts},
    }
    if scores is not None:
        metrics["critic_rows"] = {"task_id": list(rows["task_id"]), "is_correct": labels, "value": scores}
    if with_pass_at_k:
        summary = pass_at_k(
            model, tokenizer, clean.dataset, clean.dataset_path, ce_split, options, out_dir / "pass_at_k",
            seed=config.seed, trained=trained,
            prompt_format=resolve_training_format(config, tokenizer, recorded),
        )  # fmt: skip
        metrics["pass_at_k"] = {k: v for k, v in summary.items() if k.startswith("pass@")}
        metrics["pass_at_k_problems"] = summary.get("per_problem")
        metrics["n_problems"] = summary.get("n_problems")
        metrics["n_trained_problems_evaluated"] = summary.get("n_trained_problems_evaluated")
        metrics["isolation"] = summary.get("isolation")
        if "speculative" in summary:
            metrics["tokens_per_forward"] = summary["speculative"]["tokens_per_forward"]
    return metrics
