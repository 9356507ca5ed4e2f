"""`python -m wmtp_hf.experiment [--config FILE] [--output-dir DIR] [--max-steps N]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from ..errors import WmtpError, report_error
from ..train.config import ConfigError
from .plan import build_plan, read_experiment_file, read_seeds
from .report import verdict_line
from .study import run_experiment


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m wmtp_hf.experiment",
        description="Train reference (if rho1 needs it), baseline, critic -> verifiable and rho1 on one model "
        "and data set; measure every final model on held-out problems; write report.md, report.json, plots.",
        allow_abbrev=False,
    )
    p.add_argument("--config", help="experiment YAML (default: the built-in one, = configs/experiment.yaml)")
    p.add_argument("--output-dir", default="runs/experiment", help="one folder per run, and the report")
    p.add_argument("--max-steps", type=int, help="optimizer steps of every stage (overrides the config)")
    p.add_argument(
        "--seeds", help="comma-separated seeds, e.g. 0,1,2: every run once per seed (overrides the config)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("wmtp_hf").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    try:
        if args.max_steps is not None and args.max_steps <= 0:
            raise ConfigError(
                f"--max-steps: expected a positive number of optimizer steps, got {args.max_steps}"
            )
        seeds = None
        if args.seeds is not None:
            try:
                seeds = [int(x) for x in args.seeds.split(",")]
            except ValueError:
                raise ConfigError(
                    f"--seeds: expected comma-separated integers, e.g. 0,1,2, got {args.seeds!r}"
                ) from None
            seeds = read_seeds(seeds, "--seeds")
        data, source = read_experiment_file(args.config)
        plan = build_plan(data, source, args.output_dir, max_steps=args.max_steps, seeds=seeds)
        report = run_experiment(plan, say=lambda line: print(f"[experiment] {line}", flush=True))
    except WmtpError as err:  # every one-line user error (wmtp_hf.errors)
        return report_error(err)
    minutes = (time.perf_counter() - start) / 60
    print(f"\nexperiment finished in {minutes:.1f} min: {plan.output_dir / 'report.md'}")
    for name, c in report["comparisons"].items():
        print("  " + verdict_line(name, c).replace("**", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
