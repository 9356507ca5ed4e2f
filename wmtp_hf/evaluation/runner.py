"""Score completions against problems, compute pass@k, write results atomically and log to MLflow."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import SamplesError
from ..execution.harness import check_solutions
from ..execution.sandbox import ISOLATION_GAPS, resolve_isolation
from .pass_at_k import summarize_pass_at_k
from .problems import Problem
from .samples import Sample


def score_samples(
    problems: Sequence[Problem],
    samples: Sequence[Sample],
    *,
    ks: Sequence[int],
    timeout_s: float = 10.0,
    workers: int | None = None,
    progress: bool = True,
    isolation: str = "namespaces",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every sample in the sandbox; return (one result row per sample, summary with pass@k and counts).

    pass@k is averaged over the problems that have samples; a k is reported only if every such problem has
    at least k samples (otherwise it is listed under "skipped_k"). The summary's "isolation" is the mode the
    programs ran under ("namespaces", the default, which fails closed where unavailable, or "guard" when asked
    for), and "isolation_gaps" what that mode does not protect.
    """
    isolation = resolve_isolation(isolation, "isolation")
    by_id = {p.task_id: p for p in problems}
    unknown = sorted({s.task_id for s in samples} - by_id.keys())
    if unknown:
        raise SamplesError(f"samples: unknown task_id {unknown[0]!r} ({len(unknown)} unknown in total)")
    results = check_solutions(
        [by_id[s.task_id].tests for s in samples],
        [by_id[s.task_id].program(s.completion) for s in samples],
        timeout_s=timeout_s,
        workers=workers,
        progress=progress,
        isolation=isolation,
        prompts=[by_id[s.task_id].code_prefix for s in samples],  # HumanEval: the trusted prompt's helpers
    )
    rows, per_problem = [], {}
    for sample, result in zip(samples, results, strict=True):
        problem = by_id[sample.task_id]
        row = {
            "task_id": sample.task_id,
            "completion": sample.completion,
            "passed": result.passed,
            "result": "passed" if result.passed else f"{result.status}: {result.detail}",
            "status": result.status,
            "prompt": problem.prompt,
            "program": problem.program(sample.completion),
        }
        if sample.token_ids is not None:
            row["generation_ids"] = list(sample.token_ids)
        rows.append(row)
        n, c = per_problem.get(sample.task_id, (0, 0))
        per_problem[sample.task_id] = (n + 1, c + int(result.passed))
    scores, skipped = summarize_pass_at_k(per_problem.values(), ks)
    sizes = [n for n, _ in per_problem.values()]
    summary: dict[str, Any] = {
        **scores,
        "k": list(ks),
        "skipped_k": skipped,
        "n_problems": len(per_problem),
        "n_samples": len(samples),
        "samples_per_problem": {"min": min(sizes, default=0), "max": max(sizes, default=0)},
        "n_problems_without_samples": len(by_id) - len(per_problem),
        "n_problems_solved": sum(1 for _, c in per_problem.values() if c),
        "status_counts": dict(sorted(Counter(r["status"] for r in rows).items())),
        "timeout_s": timeout_s,
        "isolation": isolation,
        "isolation_gaps": list(ISOLATION_GAPS[isolation]),
    }
    return rows, summary


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(out_dir: str | Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Write OUT/results.jsonl and OUT/summary.json, each via a temporary file + rename."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def log_to_mlflow(params: dict[str, Any], summary: dict[str, Any], out_dir: str | Path) -> bool:
    """Log params, pass@k (as `pass_at_k` metrics) and summary.json to MLflow if MLFLOW_TRACKING_URI is set."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return False
    import mlflow

    metrics = {
        key.replace("@", "_at_"): float(value) for key, value in summary.items() if key.startswith("pass@")
    }
    metrics["n_problems"] = float(summary["n_problems"])
    # The store named now, not one an earlier run in this process used (mlflow caches the experiment id).
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "wmtp_hf")
    with mlflow.start_run(run_name=f"eval-{params.get('dataset', '')}"):
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(Path(out_dir) / "summary.json"))
    return True
