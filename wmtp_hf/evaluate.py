"""`python -m wmtp_hf.evaluate`: sample completions from a model (or read them) and report sandboxed pass@k."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from wmtp_hf.errors import UsageError, WmtpError, report_error


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wmtp_hf.evaluate", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model directory, Hub id, registered name (smollm2-135m) or .gguf file")
    src.add_argument("--samples", help="JSONL with task_id, completion: score these instead of generating")
    p.add_argument("--dataset", required=True, choices=["humaneval", "mbpp", "codecontests", "offline"])
    p.add_argument("--path", help="local data file for the dataset (see wmtp_hf.data.load_source)")
    p.add_argument("--split", help="default: test (offline: eval)")
    p.add_argument(
        "--prompt-format",
        choices=["auto", "raw", "alpaca", "chat"],
        default="auto",
        help="raw, alpaca or chat (the model's chat template; code from the first fenced block); auto: the "
        "format the model was trained with, else chat when its tokenizer has a chat template, else raw for "
        "humaneval and alpaca otherwise (docs/evaluation.md)",
    )
    p.add_argument("--n-samples", type=int, default=1, help="completions per problem")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument(
        "--speculative",
        action="store_true",
        help="greedy only: self-speculative decoding with the MTP heads (same tokens, fewer forwards)",
    )
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--k", default="1", help="comma-separated k values, e.g. 1,10")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument("--limit", type=int, help="evaluate only the first N problems")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per program (per test for stdio)")
    p.add_argument("--workers", type=int, help="parallel sandboxed programs (default: CPU count)")
    p.add_argument(
        "--isolation",
        choices=["namespaces", "guard"],
        default="namespaces",
        help="sandbox: Linux namespaces + seccomp (default; stops before anything runs where unavailable), or "
        "guard: the weaker mode, only when asked for (docs/sandbox.md)",
    )
    p.add_argument("--output", required=True, help="directory for results.jsonl and summary.json")
    # contamination guard and CPU practicalities (docs/evaluation.md)
    p.add_argument(
        "--include-trained-problems",
        action="store_true",
        help="keep the problems the model was trained on (its trained_problems.json) in pass@k",
    )
    p.add_argument(
        "--trained-problems",
        metavar="PATH",
        help="the model folder or trained_problems.json whose problems are left out (default: --model's; "
        "name the model that wrote a --samples file)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype for generation (auto: the checkpoint's)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: $OMP_NUM_THREADS, else half the cores, 1 to 4)",
    )
    p.add_argument(
        "--no-token-healing",
        dest="token_healing",
        action="store_false",
        help="generate from the prompt's own tokens, without healing its last token (docs/evaluation.md)",
    )
    return p.parse_args(argv)


def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise UsageError(f"--k: expected comma-separated positive integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise UsageError(f"--k: expected comma-separated positive integers, got {text!r}")
    return ks


def _isolation(requested: str) -> str:
    """The sandbox mode for `--isolation` (the sandbox module reports a mode it cannot have as a plain
    ValueError: it is loaded on its own, without this package)."""
    from wmtp_hf.execution.sandbox import resolve_isolation

    try:
        return resolve_isolation(requested, "--isolation")
    except ValueError as err:
        raise UsageError(str(err)) from None


def run(args: argparse.Namespace) -> dict:
    """Load problems, get completions (generate or read), score them, write outputs; return the summary."""
    from wmtp_hf.data.prompt_formats import recorded_prompt_format, resolve_prompt_format
    from wmtp_hf.data.registry import load_problem_rows
    from wmtp_hf.evaluation.problems import DEFAULT_SPLITS, problems_from_rows
    from wmtp_hf.evaluation.runner import log_to_mlflow, score_samples, write_outputs
    from wmtp_hf.evaluation.samples import read_samples
    from wmtp_hf.threads import evaluate_default_threads, set_threads

    ks = _parse_ks(args.k)
    for name in ("n_samples", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if args.temperature < 0 or args.timeout <= 0:
        raise UsageError("--temperature: expected >= 0; --timeout: expected > 0")
    if args.speculative and (args.samples or args.temperature > 0):
        raise UsageError(
            "--speculative: decodes greedily with a model; expected --model and --temperature 0, got "
            + (f"--temperature {args.temperature:g}" if args.temperature > 0 else "--samples")
        )
    set_threads(args.threads, default=evaluate_default_threads(), option="--threads")
    split = args.split or DEFAULT_SPLITS[args.dataset]
    rows = load_problem_rows(args.dataset, path=args.path, split=split)  # bad data fails before the model
    if not rows:
        raise UsageError(
            f"--dataset {args.dataset}: no problems found (path={args.path}, split={args.split})"
        )
    model = tokenizer = isolation = None
    if args.model:
        from wmtp_hf.evaluation.generation import load_model

        isolation = _isolation(args.isolation)  # fails closed, before anything slow
        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    recorded = recorded_prompt_format(args.model) if args.model else None
    prompt_format = resolve_prompt_format(args.prompt_format, tokenizer, args.dataset, recorded)
    problems = problems_from_rows(rows, prompt_format, tokenizer)
    if args.limit is not None:
        problems = problems[: args.limit]
    if not problems:
        raise UsageError(f"--limit: expected >= 1, got {args.limit}")
    selected = problems
    problems, trained_report = leave_out_trained_problems(args, problems)
    note = trained_report.pop("note")
    if args.samples:
        known = {p.task_id: p.task_id for p in selected}
        known.update({alias: p.task_id for p in selected for alias in p.aliases})
        kept = {p.task_id for p in problems}
        samples = [s for s in read_samples(args.samples, known) if s.task_id in kept]
        isolation = _isolation(args.isolation)  # fails closed, before any program runs
    else:
        from wmtp_hf.evaluation.generation import SpeculativeStats, sample_problems

        speculative_stats = SpeculativeStats() if args.speculative else None
        samples = sample_problems(
            model, tokenizer, problems, n_samples=args.n_samples, temperature=args.temperature,
            top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
            speculative=args.speculative, speculative_stats=speculative_stats,
            token_healing=args.token_healing,
        )  # fmt: skip
    rows, summary = score_samples(
        problems, samples, ks=ks, timeout_s=args.timeout, workers=args.workers, isolation=isolation
    )
    params = {k: v for k, v in vars(args).items() if v is not None}
    summary = {"dataset": args.dataset, "split": split, "source": args.model or args.samples,
               "prompt_format": prompt_format, **summary, **trained_report}  # fmt: skip
    if (
        args.model
    ):  # how the completions were generated (scripts/check_eval_reference.py batches the same way)
        summary["generation"] = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                                 "temperature": args.temperature, "dtype": args.dtype,
                                 "token_healing": args.token_healing}  # fmt: skip
    if args.speculative:
        summary["speculative"] = speculative_stats.summary()
        summary["tokens_per_forward"] = summary["speculative"]["tokens_per_forward"]
    write_outputs(args.output, rows, summary)
    log_to_mlflow(params, summary, args.output)
    if note:  # after the run, so that a bad-input error stays the only line on stderr
        print(f"note: {note}", file=sys.stderr)
    return summary


# ----------------------------------------------------------------- contamination guard (docs/evaluation.md)


def leave_out_trained_problems(args: argparse.Namespace, problems: list) -> tuple[list, dict]:
    """The problems to score and the summary's `trained_problems_*` entries: problems in the model's
    trained_problems.json are left out unless --include-trained-problems. The entry "note" (removed by
    the caller) is the line printed on stderr once the run succeeded."""
    from wmtp_hf.evaluation.contamination import leave_out_trained
    from wmtp_hf.trained_problems import TRAINED_PROBLEMS_FILE, read_record

    owner = args.trained_problems or args.model
    if args.trained_problems and not Path(args.trained_problems).exists():
        raise UsageError(f"--trained-problems '{args.trained_problems}': no such file or folder")
    from wmtp_hf.models import is_named_model

    # A registered name or a .gguf file is a pretrained start: nothing recorded, and no Hub id to ask.
    record = None if owner is None or is_named_model(owner) else read_record(owner)
    missing = (
        f"none recorded: {owner} has no {TRAINED_PROBLEMS_FILE}"
        if owner
        else "none recorded: scoring a samples file (name its model with --trained-problems)"
    )
    kept, report = leave_out_trained(problems, record, include=args.include_trained_problems, missing=missing)
    n = report["n_trained_problems_evaluated"]
    if report["trained_problems_excluded"] and not kept:
        raise UsageError(
            f"--dataset {args.dataset}: the model was trained on all {n} selected problems "
            f"({record.location}); evaluate other problems (e.g. a held-out split) or pass "
            "--include-trained-problems"
        )
    if report["trained_problems_excluded"]:
        note = (
            f"left out {n} of {len(problems)} problems the model was trained on ({record.location}); "
            "--include-trained-problems keeps them"
        )
    elif n:
        note = f"the model was trained on {n} of the {len(problems)} problems (kept)"
    else:
        note = f"trained problems {missing}" if record is None else ""
    report["note"] = note
    return kept, report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (WmtpError, OSError) as exc:  # bad input: one line, no traceback (wmtp_hf.errors)
        return report_error(exc)
    scores = ", ".join(f"{k} = {v:.4f}" for k, v in summary.items() if k.startswith("pass@"))
    skipped = ", ".join(summary["skipped_k"]) or "none"
    print(
        f"{summary['n_problems']} problems, {summary['n_samples']} samples: {scores or 'no pass@k'} "
        f"(skipped: {skipped}); results in {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
