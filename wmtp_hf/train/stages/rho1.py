"""`rho1`: per head, train only the top `k_percent` tokens by excess loss over a reference LM (docs/design.md §4.4).

Excess of head k at t: `CE_k(t) - CE_ref(t+1+k)`. Selection is per micro-batch and per process; the loss
is normalised by the kept counts of the whole accumulation window (all processes), which depend only on
the labels. `CE_ref` comes from a `ref_token_losses` column when the dataset has one (`python -m
wmtp_hf.data reference-losses`, or `precompute_reference: true`), else from the live reference model:
frozen, eval mode, no grad, a copy per process under DDP and sharded (FSDP2) under FSDP.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch

from ...data.io import cache_root
from ...data.packing import EXAMPLE_LENGTHS, PACKED_INPUTS, is_packed
from ...fileio import atomic_directory
from ...loading import resolve_model
from ...losses import mtp_target_mask, reference_token_losses_by_row
from ...micro import is_model_dir
from ...reference import (
    check_cached_fingerprint,
    check_same_tokenizer,
    load_reference_model,
    precompute_reference_losses,
)
from ...weighting import Rho1Weighting, excess_losses, rho1_keep_counts, rho1_weights
from ..components import check_model_location
from ..config import ConfigError, WmtpTrainingConfig, _help
from ..fsdp import gathered_root, shard_model, wrap_classes
from ..inspect_artifact import InspectionArtifactCallback
from ..trainer import WeightedMTPTrainer

logger = logging.getLogger(__name__)

# Largest head-0 excess loss (nats, any target of the first batch) at which the reference counts as the
# start model: the same weights give float noise (about 1e-5), any trained difference far more.
SAME_MODEL_NATS = 1e-3


@dataclass
class Rho1Config(WmtpTrainingConfig):
    """`rho1`: all heads, each trained on its top-k% tokens by excess loss over a reference LM."""

    stage: typing.ClassVar[str] = "rho1"

    reference_model: str | None = field(
        default=None,
        metadata=_help(
            "Reference causal LM (Hub id, folder, registered name or .gguf file; AutoModelForCausalLM) with "
            "the policy's tokenizer. None "
            "on the micro defaults: the micro reference (the reference stage on the offline data), built "
            "once and cached."
        ),
    )
    k_percent: float = field(
        default=Rho1Weighting.k_percent,
        metadata=_help("Fraction of each head's valid targets kept per batch."),
    )
    precompute_reference: bool = field(
        default=False,
        metadata=_help(
            "Compute the reference losses of the training rows once at the start and cache them (keyed by "
            "dataset and reference fingerprints); training then holds no reference model."
        ),
    )
    reference_batch_size: int = field(
        default=8, metadata=_help("Batch size of the reference-loss precompute.")
    )
    output_dir: str | None = field(default="runs/rho1", metadata=_help("Checkpoints and the final model."))

    def __post_init__(self) -> None:
        try:
            Rho1Weighting.of(self)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.reference_batch_size < 1:
            raise ConfigError(
                f"reference_batch_size: expected a positive integer, got {self.reference_batch_size}"
            )
        super().__post_init__()


# ---------------------------------------------------------------------------------------- micro reference

MICRO_REFERENCE_ENV_DROP = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                            "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")  # fmt: skip


def micro_reference_key(seed: int) -> str:
    """Cache key of the micro reference: the reference stage's defaults and the code that builds its data."""
    from ...data.offline import fingerprint as offline_fingerprint
    from ...data.sources.humaneval import package_file
    from .reference import ReferenceConfig

    # The reference stage's declared defaults, read without building a `TrainingArguments`: building one
    # re-initialises accelerate's shared process state with its own (non-CPU) settings, which turns the
    # running rho1 job's distributed state (e.g. 2 CPU processes under FSDP2) into a single process.
    options = {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(ReferenceConfig)
        if f.init and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
    } | {"seed": seed}
    for volatile in ("output_dir", "logging_dir", "report_to"):
        options.pop(volatile, None)
    root = Path(__file__).resolve().parents[2]
    code = b"".join(
        (root / name).read_bytes() for name in ("micro.py", "tokenizer.py", "train/stages/reference.py")
    )
    text = json.dumps(
        [options, offline_fingerprint(package_file(), seed)], sort_keys=True, default=str
    ).encode()
    return hashlib.sha256(text + code).hexdigest()[:16]


def micro_reference_path(config: WmtpTrainingConfig) -> str:
    """The micro reference (`--stage reference` on the micro defaults), built once in a clean subprocess."""
    path = cache_root() / "reference" / micro_reference_key(config.seed)
    with config.main_process_first(local=True, desc="building the micro reference"):
        if not is_model_dir(path):
            logger.info(
                "building the micro reference once (the reference stage on the offline data) -> %s", path
            )
            env = {k: v for k, v in os.environ.items() if k not in MICRO_REFERENCE_ENV_DROP}
            with atomic_directory(path) as tmp:
                cmd = [sys.executable, "-m", "wmtp_hf.train", "--stage", "reference", "--output-dir", str(tmp / "run"),
                       "--report_to", "none", "--save_strategy", "no", "--seed", str(config.seed)]  # fmt: skip
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    raise ConfigError(f"reference_model: building the micro reference failed ({tail})")
                for item in (tmp / "run" / "final").iterdir():
                    item.rename(tmp / item.name)
                shutil.rmtree(tmp / "run")
    return str(path)


def resolve_reference(config: Rho1Config) -> str:
    """`reference_model`, or the micro reference on the micro defaults; one line when neither applies."""
    if config.reference_model is not None:
        check_model_location("reference_model", config.reference_model)
        label = f"reference_model '{config.reference_model}'"
        return resolve_model(config.reference_model, kind="llama", label=label)
    if config.model_name_or_path is None:
        return micro_reference_path(config)
    raise ConfigError(
        "reference_model: not set; rho1 on a user's model needs a reference causal LM with the same tokenizer "
        "(a Hub id or folder, e.g. --reference_model princeton-nlp/Sheared-LLaMA-2.7B)"
    )


def shard_for_evaluation(model: torch.nn.Module, accelerator: Any, fsdp2: bool = False) -> torch.nn.Module:
    """Place a frozen reference as TRL does: sharded with FSDP2 under FSDP2 (accelerate's, or the CPU
    mode: `fsdp2`), else a copy on this device."""
    if fsdp2 or getattr(accelerator, "is_fsdp2", False):
        return shard_model(model, wrap_classes(model, None), reshard_after_forward=True)
    return accelerator.prepare_model(model, evaluation_mode=True)


class Rho1Trainer(WeightedMTPTrainer):
    """Top-k% excess-loss token selection per head; see the module docstring."""

    def __init__(self, *args: Any, reference: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference = reference
        self.ref_model = None
        self.reference_checked = False
        self.callback_handler.callbacks.insert(0, InspectionArtifactCallback(self, uses_reference=True))
        if "ref_token_losses" not in self.train_dataset.column_names:
            if reference is None:
                raise ConfigError("reference_model: the live rho1 stage needs a reference model")
            dtype = next(self.accelerator.unwrap_model(self.model).parameters()).dtype
            if self.args.bf16:
                dtype = torch.bfloat16
            ref, _ = load_reference_model(
                reference, dtype=dtype, attn_implementation=self.args.attn_implementation
            )
            self.ref_model = shard_for_evaluation(
                ref.eval().requires_grad_(False), self.accelerator, fsdp2=self.cpu_fsdp is not None
            )

    def warn_if_reference_is_start(self, head0_excess: torch.Tensor) -> None:
        """One warning when the reference predicts like the start model: head 0's excess loss on the first
        batch, before any step, is 0 on every target (within `SAME_MODEL_NATS`: the same weights, whatever
        their names, paths or formats). Its kept tokens are then decided by the tie rule, not by the data."""
        if head0_excess.numel() == 0 or float(head0_excess.abs().max()) > SAME_MODEL_NATS:
            return
        if self.is_world_process_zero():
            logger.warning(
                "rho1: the reference '%s' is the start model '%s' (head-0 excess loss 0 on all %d targets of "
                "the first batch), so head 0 keeps tokens by position; use the reference stage's output or a "
                "model trained on cleaner data (docs/training.md, Rho-1)",
                self.args.reference_model or "micro reference",
                self.args.model_name_or_path or "micro preset",
                head0_excess.numel(),
            )

    @classmethod
    def prepare_data(
        cls, config: Rho1Config, tokenizer: Any, train_dataset: datasets.Dataset, dry_run: bool = False
    ):
        """Resolve the reference, check its tokenizer or the cache's fingerprint, precompute if asked."""
        reference = resolve_reference(config)
        from transformers import AutoTokenizer

        try:
            ref_tokenizer = AutoTokenizer.from_pretrained(reference)
        except (OSError, ValueError) as err:
            raise ConfigError(f"reference_model '{reference}': cannot load its tokenizer ({err})") from None
        policy_name = config.model_name_or_path or "the micro model"
        check_same_tokenizer(tokenizer, ref_tokenizer, policy_name, reference)
        if "ref_token_losses" in train_dataset.column_names:
            check_cached_fingerprint(Path(config.dataset), reference, ref_tokenizer)
            logger.info("rho1: using the dataset's cached ref_token_losses (no reference model in memory)")
            return train_dataset, {"reference": None}
        if config.precompute_reference and not dry_run:
            with config.main_process_first(local=True, desc="precomputing reference losses"):
                train_dataset = precompute_reference_losses(
                    train_dataset, reference, batch_size=config.reference_batch_size
                )
            return train_dataset, {"reference": None}
        return train_dataset, {"reference": reference}

    # ------------------------------------------------------------------ loss

    def window_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "targets": rho1_keep_counts(mtp_target_mask(batch["labels"], self.n_heads), self.args.k_percent)
        }

    def reference_losses(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[B, T]` `CE_ref(j)`: the cached column, or the live reference's chunked cross-entropy, each
        example scored alone (`reference_token_losses_by_row`: bit-identical to the cached column)."""
        if "ref_token_losses" in inputs:
            return inputs["ref_token_losses"].float()
        batch = inputs.get(PACKED_INPUTS, inputs)  # a packed batch: its examples, cut from the packed row
        if is_packed(batch):
            lengths = batch[EXAMPLE_LENGTHS]
        elif batch.get("attention_mask") is not None:
            lengths = batch["attention_mask"].sum(dim=1)  # the collator pads on the right
        else:
            lengths = [batch["input_ids"].shape[1]] * batch["input_ids"].shape[0]
        with gathered_root(self.ref_model):  # it calls the model's trunk and head weights directly
            return reference_token_losses_by_row(self.ref_model, batch["input_ids"], batch["labels"], lengths)

    def token_weights(self, model, inputs, outputs, target_mask):
        ref = self.reference_losses(inputs)
        token_losses = outputs.token_losses.detach()
        weights = rho1_weights(token_losses, ref, target_mask, self.args.k_percent)
        excess = excess_losses(token_losses, ref)
        if self.state.global_step == 0 and not self.reference_checked:
            self.reference_checked = True
            self.warn_if_reference_is_start(excess[..., 0][target_mask[..., 0].bool()])
        kept, dropped = weights > 0, target_mask & (weights == 0)
        valid = float(target_mask.sum())
        self.record("kept_fraction", float(kept.sum()) / max(valid, 1.0), valid)
        response = inputs["labels"] != -100
        for name, values, where in (("excess_kept", excess, kept), ("excess_dropped", excess, dropped),
                                    ("ref_loss", ref, response)):  # fmt: skip
            count = float(where.sum())
            self.record(name, values[where].sum() / max(count, 1.0), count)
        return weights
