"""Benchmark: greedy generation speed per process for torch thread counts, alone and with other processes.

    python scripts/bench_threads.py [--model smollm2-135m] [--threads 1,2] [--processes 1,2]
        [--max-new-tokens 32] [--rounds 3] [--output bench_results/bench_threads.json]

For each (processes P, threads T) it starts P processes at once, each loading `--model` (any causal LM
folder) with `torch.set_num_threads(T)` and greedily decoding `--max-new-tokens` tokens from one
HumanEval prompt `--rounds` times; it prints each setting's median seconds per process. P > 1 is what
evaluate meets on a shared machine (other jobs, data-parallel workers): T = cores per process
oversubscribes the cores. The choice of `--threads` defaults is in docs/evaluation.md. `--model` is
a folder or a registered name (`smollm2-135m`, fetched on first use); `--tiny` uses the micro model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import add_tiny_option, apply_tiny, print_table, run_config, write_report  # noqa: E402

WORKER = """
import sys, time, torch
import wmtp_hf  # registers the WMTP model type (the micro model of --tiny)
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(int(sys.argv[2])); torch.set_num_interop_threads(int(sys.argv[2]))
tok = AutoTokenizer.from_pretrained(sys.argv[1]); model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = tok("def fib(n):\\n    \\"\\"\\"Return the n-th Fibonacci number.\\"\\"\\"\\n", return_tensors="pt")
print("READY", flush=True); sys.stdin.readline()
for _ in range(int(sys.argv[4])):
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(**ids, max_new_tokens=int(sys.argv[3]), min_new_tokens=int(sys.argv[3]), do_sample=False)
    print("SECONDS", time.perf_counter() - start, flush=True)
"""


def run_setting(model: str, processes: int, threads: int, tokens: int, rounds: int) -> list[float]:
    """Seconds of every round of every process, all processes decoding at the same time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    argv = [sys.executable, "-c", WORKER, model, str(threads), str(tokens), str(rounds)]
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(processes)]  # fmt: skip
    for proc in procs:  # every process loaded: start decoding together
        assert proc.stdout.readline().startswith("READY")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    seconds = []
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        seconds += [float(line.split()[1]) for line in out.splitlines() if line.startswith("SECONDS")]
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="causal LM folder or registered name")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts per process")
    p.add_argument("--processes", default="1,2", help="comma-separated numbers of processes at once")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--output", default="bench_results/bench_threads.json")
    add_tiny_option(p)
    args = apply_tiny(p.parse_args(), threads="1", processes="1", max_new_tokens=4, rounds=1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            from wmtp_hf.micro import build_micro

            model = str(build_micro(Path(tmp) / "micro"))
        else:
            from wmtp_hf.loading import resolve_model

            model = resolve_model(args.model, kind="llama", label=f"--model '{args.model}'")
        load = os.getloadavg()
        print(f"cores: {len(os.sched_getaffinity(0))}, load average: {load}, {time.strftime('%H:%M:%S')}")
        results = []
        for processes in (int(x) for x in args.processes.split(",")):
            for threads in (int(x) for x in args.threads.split(",")):
                seconds = run_setting(model, processes, threads, args.max_new_tokens, args.rounds)
                median = statistics.median(seconds)
                results.append({"processes": processes, "threads": threads, "median_seconds": median,
                                "tokens_per_second": args.max_new_tokens / median, "rounds": seconds})  # fmt: skip
    print_table(
        ["processes:>10", "threads:>8", "median s/process:>17", "tokens/s/process:>17", "  all rounds (s):<40"],
        [[r["processes"], r["threads"], f"{r['median_seconds']:.2f}", f"{r['tokens_per_second']:.1f}",
          "  " + ", ".join(f"{s:.2f}" for s in r["rounds"])] for r in results],
    )  # fmt: skip
    write_report(args.output, {"config": run_config(args), "load_average": load, "results": results})


if __name__ == "__main__":
    main()
