"""PEFT LoRA for every stage (docs/design.md §5): which layers get adapters, the wrapped model, the merged copy.

Adapters go on the linear layers named in `lora_target_modules` inside the blocks the stage trains (its
`lora_scope`: every block, or the critic's unfrozen trunk blocks), listed by full module name so the value
head and the unembedding are never wrapped. The value head, where the stage trains it, is trained fully
through `modules_to_save`. The adapter's `base_model_name_or_path` is the folder or Hub id the model was
loaded from; when the trained model is not exactly what that path loads (a LLaMA converted by `from_llama`,
a value head the critic added) the model is saved once under `<output_dir>/lora-base` and that is the base.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, PreTrainedModel

from ..fileio import atomic_directory
from ..model_card import is_hub_id
from .config import ConfigError, WmtpTrainingConfig

logger = logging.getLogger(__name__)
LORA_BASE_DIR = "lora-base"
MERGED_DIR = "merged"


def target_module_names(model: torch.nn.Module, names: list[str], scope: tuple[str, ...]) -> list[str]:
    """Full names of the `nn.Linear` layers whose own name is in `names` and that lie under a `scope` prefix.

    One-line `ConfigError` when a listed name matches no layer there (the message lists those that exist).
    """
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    in_scope = [n for n in linear if any(n.startswith(prefix) for prefix in scope)]
    available = sorted({n.rsplit(".", 1)[-1] for n in in_scope})
    for name in names:
        if name not in available:
            raise ConfigError(
                f"lora_target_modules: no linear layer named '{name}' in the blocks this stage trains; "
                f"available: {', '.join(available) or 'none'}"
            )
    return [n for n in in_scope if n.rsplit(".", 1)[-1] in names]


def new_extra_heads(model: PreTrainedModel, config: WmtpTrainingConfig, path: str) -> list[str]:
    """Module names of the extra head blocks (heads 1..n-1) when they are new: the start is a plain LLaMA
    converted at load (`head_init`), or a registered name or .gguf file, whose WMTP folder was converted with
    `copy_last` heads no one trained. New heads are trained fully under LoRA (`modules_to_save`): low-rank
    updates of blocks that start far from their targets are not enough. A WMTP folder keeps adapters on
    its heads (they are taken as trained)."""
    from ..models import is_named_model

    heads = getattr(getattr(model, "model", None), "extra_heads", None)
    if not heads:
        return []
    named = config.model_name_or_path is not None and is_named_model(config.model_name_or_path)
    if not named and loading_model_type(path) != "llama":
        return []
    return [f"model.extra_heads.{i}" for i in range(len(heads))]


def loading_model_type(path: str) -> str | None:
    """The `model_type` the folder or Hub id at `path` declares (None when it cannot be read)."""
    try:
        return AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError):
        return None


def loads_unchanged(model: PreTrainedModel, path: str) -> bool:
    """Whether `path` loads exactly this model's architecture (no conversion, no added value head)."""
    if model.name_or_path != path:
        return False
    try:
        saved = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return False
    return saved.model_type == model.config.model_type and getattr(saved, "use_value_head", None) == getattr(
        model.config, "use_value_head", None
    )


def adapter_base(
    config: WmtpTrainingConfig, model: PreTrainedModel, path: str, tokenizer: Any, dry_run: bool = False
) -> str:
    """The adapter's base model: `path` (absolute when a folder), or `<output_dir>/lora-base` written now."""
    if loads_unchanged(model, path):
        return str(Path(path).resolve()) if Path(path).is_dir() else path
    base = Path(config.output_dir, LORA_BASE_DIR).resolve()
    if not dry_run:
        with config.main_process_first(local=True, desc="saving the LoRA base model"):
            if config.process_index == 0 or not (base / "config.json").is_file():
                logger.info(
                    "use_peft: the trained model differs from %s; its base is saved to %s", path, base
                )
                with atomic_directory(base) as tmp:
                    model.save_pretrained(tmp)
                    tokenizer.save_pretrained(tmp)
    return str(base)


def wrap_with_lora(
    model: PreTrainedModel,
    config: WmtpTrainingConfig,
    trainer_cls: Any,
    path: str,
    tokenizer: Any,
    dry_run: bool = False,
) -> PeftModel:
    """`model` with LoRA adapters in the stage's scope; the value head trains fully when the stage trains it."""
    scope = trainer_cls.lora_scope(config, model)
    targets = target_module_names(model, list(config.lora_target_modules), scope)
    trains_value = getattr(trainer_cls, "trains_value_head", False) and getattr(model, "value_head", None)
    new_heads = new_extra_heads(model, config, path) if getattr(trainer_cls, "trains_heads", True) else []
    if new_heads:  # trained fully, so no adapters inside them
        targets = [t for t in targets if not any(t.startswith(f"{h}.") for h in new_heads)]
    to_save = (["value_head"] if trains_value else []) + new_heads
    base = adapter_base(config, model, path, tokenizer, dry_run=dry_run)
    if config.push_to_hub and not config.merge_lora and not is_hub_id(base):
        raise ConfigError(
            f"push_to_hub: the adapter's base model '{base}' is a local folder, so the pushed adapter would not "
            "load; set merge_lora: true to push the merged model, or publish later with python -m "
            "wmtp_hf.publish --base-model ORG/NAME"
        )
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        modules_to_save=to_save or None,
    )
    with torch.random.fork_rng(devices=[]):  # the adapters' init depends on the seed alone (resume, DDP)
        torch.manual_seed(config.seed)
        peft_model = get_peft_model(model, lora)
    peft_model.peft_config["default"].base_model_name_or_path = base  # peft takes the model's name_or_path
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    fully = (["the value head"] if trains_value else []) + (
        [f"{len(new_heads)} new extra heads"] if new_heads else []
    )
    logger.info(
        "use_peft: LoRA r=%d on %d layers%s; %d of %d parameters train (%.2f%%)",
        config.lora_r, len(targets), "".join(f" + {f}" for f in fully), trainable, total, 100 * trainable / total,
    )  # fmt: skip
    return peft_model


def save_merged(adapter_dir: str | Path, output: str | Path, trained_config: Any, tokenizer: Any) -> Path:
    """Load the adapter on its base, merge it, and save the full model (and tokenizer) to `output`.

    The merged model keeps the trained model's config (e.g. `value_head_stage` set by the stage).
    """
    merged = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir), dtype="auto").merge_and_unload()
    merged.config = type(merged.config).from_dict(trained_config.to_dict())
    with atomic_directory(output) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(output)
