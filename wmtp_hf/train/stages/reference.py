"""`reference`: next-token fine-tuning of any causal LM on correct solutions (docs/design.md §4.5).

Rho-1's reference model. Plain `Trainer` semantics and the model's own causal-LM loss (transformers
normalises it over the accumulation window through `num_items_in_batch`); the output folder loads with
`AutoModelForCausalLM.from_pretrained`. With no model it starts from the micro LLaMA: the micro preset's
next-token path (`to_llama()`), with the micro tokenizer.
"""

from __future__ import annotations

import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, PreTrainedModel, Trainer

from ...fileio import atomic_directory
from ...messages import first_line
from ...micro import build_micro
from ..components import build_preset, resolve_model_path
from ..config import ConfigError, WmtpTrainingConfig, _help
from ..fsdp import Fsdp2TrainerMixin
from ..outputs import FinalFolderPush
from ..tokens import TokenCountMixin
from ..trainer import StageHooks, forward_inputs


@dataclass
class ReferenceConfig(WmtpTrainingConfig):
    """`reference`: a plain causal LM trained next-token on correct rows (Rho-1's reference)."""

    stage: typing.ClassVar[str] = "reference"

    model_name_or_path: str | None = field(
        default=None,
        metadata=_help(
            "Any causal LM (folder, Hub id, registered name or .gguf file: its plain LLaMA), loaded with "
            "AutoModelForCausalLM. None builds the micro "
            "LLaMA (the micro preset's next-token path) under `<output_dir>/micro-llama-init`."
        ),
    )
    output_dir: str | None = field(
        default="runs/reference", metadata=_help("Checkpoints and the final model.")
    )


def build_micro_llama(output_dir: Path, seed: int = 0, tokenizer: Any = None) -> Path:
    """The micro preset's next-token path as a `LlamaForCausalLM`, with the micro tokenizer."""
    from transformers import AutoTokenizer

    wmtp_dir = output_dir.with_name(output_dir.name + ".wmtp")
    build_micro(wmtp_dir, seed=seed, tokenizer=tokenizer)
    llama = AutoModelForCausalLM.from_pretrained(wmtp_dir).to_llama()
    tokenizer = AutoTokenizer.from_pretrained(wmtp_dir)
    with atomic_directory(output_dir) as tmp:
        llama.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(wmtp_dir, ignore_errors=True)
    return output_dir


class ReferenceTrainer(StageHooks, FinalFolderPush, Fsdp2TrainerMixin, TokenCountMixin, Trainer):
    """Stock causal-LM training; drops the batch entries a plain causal LM does not take.

    A packed batch needs nothing more: its labels are -100 on each example's first token, so the stock
    shifted loss never predicts across examples, and it runs without a cache (`forward_inputs`)."""

    @classmethod
    def resolve_model_path(cls, config: ReferenceConfig) -> str:
        return resolve_model_path(config, preset_folder="micro-llama-init", kind="llama")

    @classmethod
    def build_preset(cls, config: ReferenceConfig, path: str, tokenizer: Any) -> None:
        build_preset(config, path, tokenizer, builder=build_micro_llama)

    @classmethod
    def load_model(cls, config: ReferenceConfig, path: str, tokenizer: Any) -> PreTrainedModel:
        kwargs = {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"model_name_or_path '{path}': cannot load a causal LM ({first_line(err)})"
            ) from None
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise ConfigError(
                f"model_name_or_path '{path}': tokenizer has {len(tokenizer)} tokens, the model's embedding "
                f"{model.get_input_embeddings().num_embeddings}"
            )
        return model

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = forward_inputs(inputs)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
