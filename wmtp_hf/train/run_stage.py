"""Train one stage from its resolved config: the library call behind `python -m wmtp_hf.train`
(`wmtp_hf.train.run`; the experiment calls it for each of its stages)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..data import DataError, WmtpDataCollator
from ..fileio import atomic_write_text
from ..messages import first_line
from ..trained_problems import TRAINED_PROBLEMS_FILE
from .checkpoint_size import CheckpointSizeCallback, log_folder_size
from .components import build_train_dataset, resolve_training_format
from .config import (
    ConfigError,
    WmtpTrainingConfig,
    config_to_dict,
)
from .launch import check_launch
from .lora import wrap_with_lora
from .main_process_work import run_on_main_process, upload_timeout_s
from .mlflow_setup import ResolvedConfigCallback, configure_mlflow
from .outputs import FINAL_DIR, write_final_folder
from .problem_record import TrainedProblemsCallback, run_record
from .stages import STAGE_TRAINERS

logger = logging.getLogger("wmtp_hf.train")


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
    check_launch(config)  # before any work: a launch that would train otherwise than asked stops here
    checkpoint = resume_checkpoint(config, resume)
    trainer_cls = STAGE_TRAINERS[stage]
    model_path = trainer_cls.resolve_model_path(config)
    tokenizer = trainer_cls.start_tokenizer(config, model_path)
    # One concrete format for the whole run, recorded in run_summary.json and the final model's card.
    config.prompt_format = resolve_training_format(config, tokenizer)
    # Data errors surface before a (possibly large) model is loaded.
    train_dataset, data_report = build_train_dataset(config, tokenizer, trainer_cls.sample_order)
    trained = run_record(config, stage, model_path, train_dataset)  # trained_problems.json of every save
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
                "prompt_format": config.prompt_format,
                "data": data_report, "output_dir": config.output_dir}  # fmt: skip
    if any(r == "mlflow" for r in config.report_to):
        configure_mlflow(main_process=config.process_index == 0)
    try:  # with push_to_hub, the Trainer creates the Hub repo here, before any step
        trainer = trainer_cls(
            model=model,
            args=config,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=WmtpDataCollator(
                tokenizer, packing=config.packing, flash_attn_kwargs=passes_flash_kwargs(config)
            ),
            processing_class=tokenizer,
            callbacks=[
                ResolvedConfigCallback(config_to_dict(config), data_report),
                TrainedProblemsCallback(trained),
                *(callbacks or []),
            ],
            **trainer_kwargs,
        )
    except Exception as err:
        if config.push_to_hub and is_hub_failure(err):
            raise ConfigError(
                f"push_to_hub: cannot create the Hub repo '{config.hub_model_id}' ({first_line(err)})"
            ) from None
        raise
    trainer.add_callback(CheckpointSizeCallback())  # last: after every callback that writes into a checkpoint
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    elapsed = time.perf_counter() - start
    trainer.save_state()  # <output_dir>/trainer_state.json: the full log history
    final_loss = next(
        (h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), result.training_loss
    )
    final_dir = Path(config.output_dir) / FINAL_DIR
    trainer.final_folder = write_final_folder(trainer, config, stage, tokenizer, n_heads, final_loss, trained)
    trainer.accelerator.wait_for_everyone()  # final/ is complete for every process (e.g. the next stage)
    if trainer.is_world_process_zero():
        log_folder_size(final_dir, "saved final model")
    if config.push_to_hub:
        message = f"wmtp_hf: stage {stage}, {trainer.state.global_step} steps"
        try:  # process 0 uploads; the others wait for it under a timeout sized to the upload, not ddp_timeout
            run_on_main_process(
                lambda: trainer.push_to_hub(commit_message=message),
                lambda: upload_timeout_s(trainer.final_folder),
            )
        except Exception as err:
            if not is_hub_failure(err):
                raise
            raise ConfigError(
                f"push_to_hub: the upload to '{config.hub_model_id}' failed ({first_line(err)}); the final "
                f"model is saved in {final_dir}, publish it with python -m wmtp_hf.publish"
            ) from None
    tokens = trainer.state.num_input_tokens_seen or 0
    tokens_seen = trainer.token_totals()  # {"non_padding": N, "padding": M} over the run, all processes
    summary = {
        "stage": stage,
        "steps": trainer.state.global_step,
        "train_runtime_s": round(elapsed, 1),
        "tokens_per_second": round(tokens / elapsed, 1) if tokens else math.nan,
        "final_loss": final_loss,
        "prompt_format": config.prompt_format,
        "parameters": n_params,
        "output_dir": config.output_dir,
        "final_model": str(final_dir),
        "final_loader": "peft.AutoPeftModelForCausalLM" if config.use_peft else "AutoModelForCausalLM",
        "merged_model": str(trainer.final_folder) if config.use_peft and config.merge_lora else None,
        "pushed_to": config.hub_model_id if config.push_to_hub else None,
        "dropped_examples": data_report["dropped"],
        "trained_problems": str(final_dir / TRAINED_PROBLEMS_FILE),
        "n_trained_problems": len(trained.problem_ids),
        "packing": config.packing,
        "tokens": tokens_seen,
        "distributed": trainer.distributed_info(),
        "device": trainer.args.device.type,
    }
    if trainer.is_world_process_zero():
        atomic_write_text(Path(config.output_dir) / RUN_SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def passes_flash_kwargs(config: WmtpTrainingConfig) -> bool:
    """Whether packed batches carry flash attention's varlen arguments (`cu_seq_lens_q/k`, `max_length_q/k`,
    which every transformers of the supported range takes), so it need not derive them from `position_ids`."""
    return config.packing and (config.attn_implementation or "").startswith("flash_attention")


def is_hub_failure(err: BaseException) -> bool:
    """A network or Hub error (no connection, offline mode, HTTP error), not a bug of ours."""
    hub_modules = ("huggingface_hub", "httpx", "httpx2", "requests", "urllib3")
    return isinstance(err, OSError) or any(
        c.__module__.split(".")[0] in hub_modules for c in type(err).__mro__
    )
