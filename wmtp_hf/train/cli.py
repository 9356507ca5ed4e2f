"""`python -m wmtp_hf.train --stage STAGE ...` (same under `accelerate launch -m wmtp_hf.train`).

With no model or data arguments it trains the micro model on the offline default data.
Any config option can also be set as `--option value` (the value is read as YAML: `--learning_rate 1e-4`,
`--head_weights [0.4,0.2,0.2,0.2]`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..data import DataError, WmtpDataCollator
from ..fileio import atomic_write_text
from .components import build_train_dataset, first_line
from .config import (
    ConfigError,
    WmtpTrainingConfig,
    build_config,
    config_to_dict,
    stage_options,
)
from .fsdp import destroy_process_group
from .lora import wrap_with_lora
from .mlflow_setup import ResolvedConfigCallback, configure_mlflow
from .outputs import FINAL_DIR, write_final_folder
from .stages import STAGE_CONFIGS, STAGE_TRAINERS

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
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: micro preset)")
    parser.add_argument("--dataset", default=None, help="source name or prepared folder (default: offline)")
    parser.add_argument(
        "--output-dir", default=None, help="checkpoints and final model (default: runs/STAGE)"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps")
    parser.add_argument("--dry-run", action="store_true", help="check config, data and model, then exit")
    parser.add_argument(
        "--resume", nargs="?", const="last", default=None,
        help="resume from CHECKPOINT, or from the last checkpoint in the output dir",
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
             "max_steps": args.max_steps}  # fmt: skip
    overrides.update({k: v for k, v in named.items() if v is not None})
    return args, build_config(args.stage, args.config, overrides)


RUN_SUMMARY_FILE = "run_summary.json"


def resume_checkpoint(config: WmtpTrainingConfig, resume: str | None) -> str | None:
    if resume is None:
        return None
    if resume != "last":
        if not Path(resume, "trainer_state.json").is_file():
            raise ConfigError(f"--resume: '{resume}' is not a checkpoint folder (no trainer_state.json)")
        return resume
    last = get_last_checkpoint(config.output_dir) if Path(config.output_dir).is_dir() else None
    if last is None:
        raise ConfigError(f"--resume: no checkpoint-* folder in '{config.output_dir}'")
    return last


def run(
    stage: str,
    config: WmtpTrainingConfig,
    dry_run: bool = False,
    resume: str | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """Train one stage; returns a summary (steps, tokens/s, final loss, output folders)."""
    checkpoint = resume_checkpoint(config, resume)
    trainer_cls = STAGE_TRAINERS[stage]
    model_path = trainer_cls.resolve_model_path(config)
    tokenizer = trainer_cls.start_tokenizer(config, model_path)
    # Data errors surface before a (possibly large) model is loaded.
    train_dataset, data_report = build_train_dataset(config, tokenizer, trainer_cls.sample_order)
    try:
        eval_dataset = trainer_cls.build_eval_dataset(config, tokenizer)
    except DataError as err:
        raise ConfigError(f"dataset '{config.dataset}': {err}") from None
    train_dataset, trainer_kwargs = trainer_cls.prepare_data(
        config, tokenizer, train_dataset, dry_run=dry_run
    )
    trainer_cls.build_preset(config, model_path, tokenizer)  # only now that the data is known to be good
    model = trainer_cls.load_model(config, model_path, tokenizer)
    if config.use_peft:
        model = wrap_with_lora(model, config, trainer_cls, model_path, tokenizer, dry_run=dry_run)
    n_params = sum(p.numel() for p in model.parameters())
    n_heads = getattr(model.config, "n_future_tokens", 1)
    if dry_run:
        return {"dry_run": True, "parameters": n_params, "n_future_tokens": n_heads,
                "data": data_report, "output_dir": config.output_dir}  # fmt: skip
    if any(r == "mlflow" for r in config.report_to):
        configure_mlflow()
    try:  # with push_to_hub, the Trainer creates the Hub repo here, before any step
        trainer = trainer_cls(
            model=model,
            args=config,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=WmtpDataCollator(tokenizer),
            processing_class=tokenizer,
            callbacks=[ResolvedConfigCallback(config_to_dict(config), data_report), *(callbacks or [])],
            **trainer_kwargs,
        )
    except Exception as err:
        if config.push_to_hub and is_hub_failure(err):
            raise ConfigError(
                f"push_to_hub: cannot create the Hub repo '{config.hub_model_id}' ({first_line(err)})"
            ) from None
        raise
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    elapsed = time.perf_counter() - start
    trainer.save_state()  # <output_dir>/trainer_state.json: the full log history
    final_loss = next(
        (h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), result.training_loss
    )
    final_dir = Path(config.output_dir) / FINAL_DIR
    trainer.final_folder = write_final_folder(trainer, config, stage, tokenizer, n_heads, final_loss)
    trainer.accelerator.wait_for_everyone()  # final/ is complete for every process (e.g. the next stage)
    if config.push_to_hub:
        try:
            trainer.push_to_hub(commit_message=f"wmtp_hf: stage {stage}, {trainer.state.global_step} steps")
        except Exception as err:
            if not is_hub_failure(err):
                raise
            raise ConfigError(
                f"push_to_hub: the upload to '{config.hub_model_id}' failed ({first_line(err)}); the final "
                f"model is saved in {final_dir}, publish it with python -m wmtp_hf.publish"
            ) from None
    tokens = trainer.state.num_input_tokens_seen or 0
    summary = {
        "stage": stage,
        "steps": trainer.state.global_step,
        "train_runtime_s": round(elapsed, 1),
        "tokens_per_second": round(tokens / elapsed, 1) if tokens else math.nan,
        "final_loss": final_loss,
        "parameters": n_params,
        "output_dir": config.output_dir,
        "final_model": str(final_dir),
        "final_loader": "peft.AutoPeftModelForCausalLM" if config.use_peft else "AutoModelForCausalLM",
        "merged_model": str(trainer.final_folder) if config.use_peft and config.merge_lora else None,
        "pushed_to": config.hub_model_id if config.push_to_hub else None,
        "dropped_examples": data_report["dropped"],
        "distributed": trainer.distributed_info(),
    }
    if trainer.is_world_process_zero():
        atomic_write_text(Path(config.output_dir) / RUN_SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def is_hub_failure(err: BaseException) -> bool:
    """A network or Hub error (no connection, offline mode, HTTP error), not a bug of ours."""
    hub_modules = ("huggingface_hub", "httpx", "httpx2", "requests", "urllib3")
    return isinstance(err, OSError) or any(
        c.__module__.split(".")[0] in hub_modules for c in type(err).__mro__
    )


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
        summary = run(args.stage, config, dry_run=args.dry_run, resume=args.resume)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if config.process_index == 0:
        print_summary(summary)
    destroy_process_group()  # every process leaves together (no rank aborts at exit)
    return 0
