"""`python -m wmtp_hf.train --stage STAGE ...` (same under `accelerate launch -m wmtp_hf.train`).

With no model or data arguments it trains the micro model on the offline default data.
Any config option can also be set as `--option value` (the value is read as YAML: `--learning_rate 1e-4`,
`--head_weights [0.4,0.2,0.2,0.2]`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from typing import Any

import yaml

from ..errors import WmtpError, report_error
from ..threads import set_threads, train_default_threads
from .config import (
    ConfigError,
    WmtpTrainingConfig,
    stage_options,
)
from .fsdp import destroy_process_group
from .run_stage import run
from .stages import STAGE_CONFIGS, build_config

logger = logging.getLogger("wmtp_hf.train")


def options_epilog() -> str:
    """Help for the project's config options (TrainingArguments fields are documented by transformers)."""
    lines = ["config options (YAML keys, or --option value on the command line):"]
    base = STAGE_CONFIGS["baseline"]
    fields = {f.name: f for f in dataclasses.fields(base)}
    shared = stage_options(base)
    for name in shared:
        lines.append(f"  {name}: {fields[name].metadata.get('help', '')}")
    for stage, cls in STAGE_CONFIGS.items():
        own = {f.name: f for f in dataclasses.fields(cls)}
        extra = [n for n in stage_options(cls) if n not in shared]
        if extra:
            lines.append(f"options of --stage {stage}:")
            lines += [f"  {n}: {own[n].metadata.get('help', '')}" for n in extra]
    lines.append("  ... and every transformers.TrainingArguments field (learning_rate, bf16, ...)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wmtp_hf.train",
        description=__doc__.splitlines()[0],
        epilog=options_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--stage", required=True, choices=sorted(STAGE_CONFIGS), help="training stage")
    parser.add_argument(
        "--config", action="append", default=None,
        help="YAML config file (see configs/); repeat to combine, later files win (e.g. a stage's file, then "
        "configs/fsdp_cpu.yaml)",
    )  # fmt: skip
    parser.add_argument(
        "--model",
        default=None,
        help="model folder, Hub id, registered name (smollm2-135m) or .gguf file (default: micro preset)",
    )
    parser.add_argument("--dataset", default=None, help="source name or prepared folder (default: offline)")
    parser.add_argument(
        "--output-dir", default=None, help="checkpoints and final model (default: runs/STAGE)"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps")
    parser.add_argument("--dry-run", action="store_true", help="check config, data and model, then exit")
    parser.add_argument(
        "--packing", nargs="?", const="true", default=None, metavar="BOOL",
        help="padding-free batches: the examples back to back in one row (the config key packing)",
    )  # fmt: skip
    parser.add_argument(
        "--resume", nargs="?", const="last", default=None,
        help="resume from CHECKPOINT, or from the last checkpoint in the output dir",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads per process (default: $OMP_NUM_THREADS, else half the cores divided among "
        "the machine's training processes, at least 1)",
    )  # fmt: skip
    return parser


YAML11_WORDS = ("no", "yes", "on", "off", "y", "n")


def parse_overrides(extra: list[str]) -> dict[str, Any]:
    """`--key value` pairs (values parsed as YAML) from the arguments argparse did not know."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or len(token) < 3:
            raise ConfigError(f"command line: unexpected argument '{token}' (expected --option value)")
        key, _, value = token[2:].partition("=")
        if not _:
            if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
                raise ConfigError(f"command line: option '--{key}' needs a value")
            value = extra[i + 1]
            i += 1
        if value.strip().lower() in YAML11_WORDS:  # `--save_strategy no` means the string, not False
            overrides[key.replace("-", "_")] = value
            i += 1
            continue
        try:
            overrides[key.replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            overrides[key.replace("-", "_")] = value
        i += 1
    return overrides


def resolve(argv: list[str] | None) -> tuple[argparse.Namespace, WmtpTrainingConfig]:
    args, extra = build_parser().parse_known_args(argv)
    overrides = parse_overrides(extra)
    named = {"model_name_or_path": args.model, "dataset": args.dataset, "output_dir": args.output_dir,
             "max_steps": args.max_steps, "packing": parse_overrides(["--packing", args.packing]).get("packing")
             if args.packing is not None else None}  # fmt: skip
    overrides.update({k: v for k, v in named.items() if v is not None})
    return args, build_config(args.stage, args.config, overrides)


def print_summary(summary: dict[str, Any]) -> None:
    if summary.get("dry_run"):
        data = summary["data"]
        print(
            f"dry run OK: model {summary['parameters'] / 1e6:.2f}M parameters, n_future_tokens="
            f"{summary['n_future_tokens']}; data {data['selected']} training rows selected of {data['rows']} "
            f"(dropped: {data['dropped'] or 'none'}); output_dir {summary['output_dir']}"
        )
        return
    print(
        f"\ntrained stage '{summary['stage']}': {summary['steps']} steps in {summary['train_runtime_s']} s, "
        f"{summary['tokens_per_second']} tokens/s, final loss {summary['final_loss']:.4f}\n"
        f"  checkpoints: {summary['output_dir']}\n  final model: {summary['final_model']} "
        f"({summary['final_loader']}.from_pretrained)\n  dropped examples: {summary['dropped_examples'] or 'none'}"
    )
    if summary.get("merged_model"):
        print(f"  merged model: {summary['merged_model']} (AutoModelForCausalLM.from_pretrained)")
    if summary.get("pushed_to"):
        print(f"  pushed to the Hub: {summary['pushed_to']}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("wmtp_hf").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args, config = resolve(argv)
        try:
            set_threads(args.threads, default=train_default_threads())
        except ValueError as err:
            raise ConfigError(str(err)) from None
        summary = run(args.stage, config, dry_run=args.dry_run, resume=args.resume)
    except WmtpError as err:  # every one-line user error (wmtp_hf.errors)
        return report_error(err)
    if config.process_index == 0:
        print_summary(summary)
    destroy_process_group()  # every process leaves together (no rank aborts at exit)
    return 0
