"""`python -m wmtp_hf.data self-distill`: a model's own greedy answers to a source's prompts, saved as a prepared folder on which
the extra heads learn to draft (docs/training.md "Heads that draft").

Self-speculative decoding keeps a draft only where it equals the greedy token, so the text that teaches
the extra heads what gets accepted is the model's own greedy text: on it, the token k+1 ahead of every
position is exactly what verification compares a draft with. Human-written solutions are a different
distribution (other names, other idioms), which is why heads trained on them draft poorly. Each problem
of the source (one row per `problem_id`) is answered once, greedily, in the prompt format the model was
trained with (evaluate's generator: same prompts, stop strings and token healing); every answer is run
against the row's tests in the sandbox, so `is_correct` is the truth (the baseline stage trains on every
row; the critic could use the labels).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..data.io import atomic_write_json
from ..data.schema import DataError
from ..fileio import atomic_directory

SPLIT = "train"  # the folder's one split: `--dataset FOLDER` trains on it by default


def self_distill(
    model: str,
    source: str,
    output: str | Path,
    *,
    path: str | None = None,
    splits: tuple[str, ...] | list[str] = ("train",),
    prompt_format: str = "auto",
    max_new_tokens: int = 256,
    batch_size: int = 8,
    dtype: str = "auto",
    device: str | None = None,
    limit: int | None = None,
    isolation: str = "namespaces",
    timeout_s: float = 10.0,
    token_healing: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `output/train/` (unified rows whose `output` is `model`'s greedy answer) and `output/stats.json`.

    `splits`: the source's splits whose problems are answered, all into the folder's one `train` split.
    `token_healing` as in `wmtp_hf.evaluate` (generation across the prompt's last token, as training
    tokenizes prompt + response). Returns the stats. The folder appears only once complete; an existing
    one is replaced only with `overwrite` and only if `prepare` or this function wrote it (stats.json).
    """
    import datasets

    from ..data.prepare import check_output_folder, split_stats
    from ..data.prompt_formats import recorded_prompt_format, resolve_prompt_format
    from ..data.registry import load_problem_rows
    from ..data.schema import FEATURES
    from . import generation
    from .problems import problems_from_rows
    from .runner import score_samples

    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size), ("limit", limit)):
        if value is not None and value < 1:
            raise DataError(f"--{name.replace('_', '-')}: expected a positive integer, got {value}")
    output = check_output_folder(output, overwrite)
    # every split's rows (bad data fails before the model loads), each problem once
    rows = [row for split in splits for row in load_problem_rows(source, path=path, split=split)]
    first_rows: dict[str, dict] = {}
    for row in rows:
        first_rows.setdefault(row["problem_id"], row)
    llm, tokenizer = generation.load_model(model, device=device, dtype=dtype)
    fmt = resolve_prompt_format(prompt_format, tokenizer, source, recorded_prompt_format(model))
    problems = problems_from_rows(rows, fmt, tokenizer)[:limit]
    if not problems:
        raise DataError(f"--source {source}: no problems in split(s) {', '.join(splits)} (path={path})")
    samples = generation.sample_problems(
        llm, tokenizer, problems, max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=0.0,
        token_healing=token_healing,
    )  # fmt: skip
    results, summary = score_samples(problems, samples, ks=[1], timeout_s=timeout_s, isolation=isolation)
    # samples come grouped by stop strings, not in problem order: pair them by task id
    verdicts = {s.task_id: (s.completion, r["passed"]) for s, r in zip(samples, results, strict=True)}
    answers = []
    for problem in problems:
        completion, passed = verdicts[problem.task_id]
        answers.append(
            {
                **{k: first_rows[problem.task_id][k] for k in FEATURES},
                "task_id": f"{problem.task_id}/greedy",
                "output": completion,
                "is_correct": bool(passed),
            }
        )
    ds = datasets.Dataset.from_list(answers, features=FEATURES)
    stats: dict[str, Any] = {
        "source": source,
        "path": path,
        "tokenizer": None,
        "max_length": None,
        "prompt_format": fmt,
        "splits": {SPLIT: split_stats(ds, len(answers), Counter(), tokenized=False)},
        "self_distill": {
            "model": str(model),
            "source_splits": list(splits),
            "problems": len(answers),
            "passed": sum(a["is_correct"] for a in answers),
            "max_new_tokens": max_new_tokens,
            "dtype": dtype,
            "isolation": summary.get("isolation"),
        },
        "notes": [
            f"outputs are {model}'s greedy answers in the '{fmt}' format; is_correct: they pass the row's tests"
        ],
    }
    with atomic_directory(output) as tmp:
        ds.save_to_disk(str(tmp / SPLIT))
        atomic_write_json(tmp / "stats.json", stats)
    return stats
