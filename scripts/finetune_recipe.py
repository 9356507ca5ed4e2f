"""Measure fine-tuning recipes on a pretrained model: held-out per-head CE before and after a baseline run.

    python scripts/finetune_recipe.py [--model smollm2-135m] [--steps 30] [--batch-size 4] [--max-length 256] [--eval-max-length 512]
        [--candidate NAME '{"learning_rate": 2e-5, ...}']... [--output bench_results/finetune_recipe.json]

For the start model and each candidate (a baseline stage of `--steps` steps on the offline data with the
candidate's options on top of the defaults; without a candidate: the default recipe alone): the held-out
CE of every head on the offline eval split's correct rows (`wmtp_hf.experiment.measure.heldout_ce_rows`,
the experiment's own measurement), and for each head the paired 95% bootstrap interval of the per-row
change against the start (`wmtp_hf.stats.crossed_bootstrap`, rows weighted by their target counts).
docs/training.md "Fine-tuning a pretrained model" has the runs that chose the finetune recipe.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def heldout(model_path: str, max_length: int, prompt_format: str) -> tuple[Any, Any]:
    """`(correct held-out rows, collator)` of the offline eval split in the model's tokenizer."""
    from wmtp_hf.data import WmtpDataCollator
    from wmtp_hf.train.components import load_tokenizer, resolve_model_path, tokenized_rows
    from wmtp_hf.train.stages import build_config

    config = build_config(
        "baseline",
        None,
        {"model_name_or_path": model_path, "max_length": max_length, "prompt_format": prompt_format},
    )
    tokenizer = load_tokenizer(resolve_model_path(config))
    rows, _, _ = tokenized_rows(config, tokenizer, "eval")
    return rows.filter(lambda r: bool(r["is_correct"])), WmtpDataCollator(tokenizer)


def measure(folder: str, rows: Any, collator: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(CE sums [N, n], target counts [N, n])` of the model at `folder` on `rows`."""
    from wmtp_hf.experiment.measure import heldout_ce_rows
    from wmtp_hf.loading import load_for_inference

    model, _ = load_for_inference(folder, device="cpu", dtype="float32")
    sums, counts = heldout_ce_rows(model, rows, collator, batch_size=8)
    return np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)


def change(
    start: tuple[np.ndarray, np.ndarray], final: tuple[np.ndarray, np.ndarray]
) -> list[dict[str, float]]:
    """Per head: the paired change of held-out mean CE (final - start) with its 95% interval."""
    from wmtp_hf.stats import crossed_bootstrap

    (s0, n), (s1, _) = start, final
    out = []
    for k in range(n.shape[1]):
        keep = n[:, k] > 0
        diff = (s1[keep, k] - s0[keep, k]) / n[keep, k]
        out.append({key: round(v, 4) for key, v in crossed_bootstrap(diff, n[keep, k]).items()})
    return out


def mean_ce(result: tuple[np.ndarray, np.ndarray]) -> list[float]:
    sums, counts = result
    return [round(float(s / c), 4) for s, c in zip(sums.sum(0), counts.sum(0), strict=True)]


def train(model: str, options: dict[str, Any], out: Path, args: argparse.Namespace) -> float:
    """One baseline run; returns its wall seconds."""
    from wmtp_hf.train.cli import main

    argv = ["--stage", "baseline", "--model", model, "--output-dir", str(out), "--max-steps", str(args.steps),
            "--per_device_train_batch_size", str(args.batch_size), "--max_length", str(args.max_length),
            "--report_to", "none", "--save_strategy", "no", "--logging_steps", "5", "--threads", str(args.threads),
            "--seed", "0", "--prompt_format", args.prompt_format]  # fmt: skip
    for key, value in options.items():
        argv += [f"--{key}", json.dumps(value)]
    start = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit(f"candidate options {options}: the run failed")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval-max-length", type=int, default=512, help="longest held-out row measured")
    parser.add_argument("--prompt-format", default="auto", help="auto (chat for SmolLM2) | alpaca | raw")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--candidate", nargs=2, action="append", metavar=("NAME", "JSON"), default=None)
    parser.add_argument("--output", default="bench_results/finetune_recipe.json")
    parser.add_argument("--keep", default=None, help="keep each candidate's final model in KEEP/NAME")
    args = parser.parse_args(argv)
    from wmtp_hf.loading import resolve_model
    from wmtp_hf.threads import set_threads

    set_threads(args.threads, default=1)
    candidates = [(name, json.loads(text)) for name, text in args.candidate or [("default", "{}")]]
    start_folder = resolve_model(args.model, kind="wmtp", n_future_tokens=4)
    rows, collator = heldout(args.model, args.eval_max_length, args.prompt_format)
    start = measure(start_folder, rows, collator)
    report: dict[str, Any] = {"model": args.model, "steps": args.steps, "batch_size": args.batch_size,
                              "max_length": args.max_length, "prompt_format": args.prompt_format, "eval_max_length": args.eval_max_length, "heldout_rows": len(rows),
                              "start": {"ce_per_head": mean_ce(start)}, "runs": {}}  # fmt: skip
    print(f"start: held-out CE per head {mean_ce(start)} on {len(rows)} rows", flush=True)
    for name, options in candidates:
        tmp = Path(tempfile.mkdtemp(prefix="recipe-"))
        try:
            seconds = train(args.model, options, tmp / "run", args)
            final = measure(str(tmp / "run" / "final"), rows, collator)
            if args.keep:
                shutil.copytree(tmp / "run" / "final", Path(args.keep) / name, dirs_exist_ok=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result = {"options": options, "seconds": round(seconds, 1), "ce_per_head": mean_ce(final),
                  "change": change(start, final)}  # fmt: skip
        report["runs"][name] = result
        print(f"{name}: {json.dumps(result)}", flush=True)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
