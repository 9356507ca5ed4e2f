"""Typed stage configurations (TRL style: `TrainingArguments` subclasses) and their YAML loading.

Precedence, lowest first: the dataclass defaults (the micro model on the offline data, equal to
`configs/defaults.yaml` + `configs/<stage>.yaml`), then `--config FILE` (which may `inherit:` other
files), then command-line overrides. Unknown keys and wrong types are one-line `ConfigError`s.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import TrainingArguments
from transformers.trainer_utils import HubStrategy, SchedulerType

from ..errors import ConfigError
from .recipe import RECIPES, apply_recipe

HEAD_INITS = ("copy_last", "random")
# The attention and MLP projections of every decoder block (trunk and heads; also LLaMA's names).
LORA_DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class WmtpTrainingConfig(TrainingArguments):
    """Options shared by every stage, on top of `transformers.TrainingArguments`."""

    stage: typing.ClassVar[str] = ""

    model_name_or_path: str | None = field(
        default=None,
        metadata=_help(
            "WMTP model folder, Hub id, registered name (smollm2-135m) or .gguf file; a plain LLaMA "
            "checkpoint is converted with `from_llama`. "
            "None builds the micro preset (offline) under `<output_dir>/micro-init`."
        ),
    )
    n_future_tokens: int = field(
        default=4, metadata=_help("Heads to create when `model_name_or_path` is a plain LLaMA model.")
    )
    dataset: str = field(
        default="offline",
        metadata=_help(
            "Source name (offline, humaneval, mbpp, codecontests) or a `wmtp_hf.data prepare` folder."
        ),
    )
    dataset_path: str | None = field(
        default=None, metadata=_help("Local file for the source (else its default).")
    )
    dataset_split: str = field(default="train", metadata=_help("Split of the source to train on."))
    prompt_format: str = field(
        default="auto",
        metadata=_help(
            "How rows become prompt + response: raw, alpaca or chat (the tokenizer's chat template); auto: "
            "chat when the tokenizer has a chat template, else raw for humaneval and alpaca otherwise. "
            "A prepared tokenized folder's own format is used (a different explicit one is an error); the "
            "resolved format is recorded in run_summary.json and the final model's card."
        ),
    )
    max_length: int = field(
        default=1024, metadata=_help("Examples longer than this (prompt + response) are dropped and counted.")
    )
    n_samples: int | None = field(
        default=None, metadata=_help("Rows the stage's sampler draws (default: all eligible rows).")
    )
    head_weights: list[float] | None = field(
        default=None,
        metadata=_help(
            "Loss weight `alpha_k` of each head (default: the recipe's; micro 1/n each, finetune 0.7 for "
            "head 0 and the rest shared by the extra heads)."
        ),
    )
    recipe: str = field(
        default="auto",
        metadata=_help(
            "Defaults for options left unset (docs/training.md): micro (the random micro model: lr 2e-3, "
            "warmup 10) or finetune (a pretrained start: lr 2e-5, the extra heads at 1e-3, head 0 weighted "
            "0.7); auto: micro for the micro preset or a folder no larger than it, finetune for anything else."
        ),
    )
    head_warmup_steps: int | None = field(
        default=None,
        metadata=_help(
            "First N optimizer steps train only the extra heads (heads 1..n-1); the trunk, head 0, the shared "
            "norm and unembedding keep their weights (their gradients are dropped), then everything trains "
            "(default: the recipe's; micro 0)."
        ),
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata=_help(
            "Peak learning rate of the extra heads (heads 1..n-1), scheduled like learning_rate (default: "
            "the recipe's; micro: learning_rate)."
        ),
    )
    head_init: str | None = field(
        default=None,
        metadata=_help(
            "How extra heads are made when the start is a plain LLaMA converted at load (or a registered name, "
            "then converted from its LLaMA folder): copy_last (copies of the last block) or random (default: "
            "the recipe's)."
        ),
    )
    loss_chunk_size: int | None = field(
        default=None, metadata=_help("Positions per cross-entropy chunk (default: the model config's).")
    )
    attn_implementation: str | None = field(
        default=None, metadata=_help("Attention backend: sdpa (default), eager, flash_attention_2.")
    )
    packing: bool = field(
        default=False,
        metadata=_help(
            "Padding-free batches: the batch's examples back to back in one row, position ids restarting at "
            "each, attention and every target kept inside its example (per_device_train_batch_size stays "
            "examples per batch; the stage's sampler still picks them)."
        ),
    )
    use_peft: bool = field(
        default=False,
        metadata=_help(
            "Train LoRA adapters (peft) instead of the full model; the value head, where the stage trains it, "
            "is trained fully (`modules_to_save`). The final folder holds the adapter."
        ),
    )
    lora_r: int = field(default=16, metadata=_help("LoRA rank (use_peft)."))
    lora_alpha: float = field(
        default=32, metadata=_help("LoRA scaling numerator: updates scale by alpha / r.")
    )
    lora_dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA branch's input."))
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_DEFAULT_TARGETS),
        metadata=_help(
            "Linear layers that get adapters, by name: the attention and MLP projections of the trunk and "
            "every head block (the value head and the unembedding are not listed: the value head trains fully)."
        ),
    )
    merge_lora: bool = field(
        default=False,
        metadata=_help("use_peft: also write the merged full model to `<output_dir>/final/merged`."),
    )

    # TrainingArguments defaults that differ for this project (the micro preset finishes in minutes on CPU).
    output_dir: str | None = field(
        default="runs/baseline", metadata=_help("Checkpoints and the final model.")
    )
    max_steps: int = field(default=300, metadata=_help("Optimizer steps."))
    per_device_train_batch_size: int = field(default=8, metadata=_help("Batch size per device."))
    learning_rate: float | None = field(
        default=None, metadata=_help("Peak AdamW learning rate (default: the recipe's; micro 2e-3).")
    )
    lr_scheduler_type: SchedulerType | str = field(
        default="cosine", metadata=_help("Learning-rate schedule.")
    )
    warmup_steps: float | None = field(
        default=None,
        metadata=_help("Linear warm-up steps, a float < 1 is a ratio (default: the recipe's; micro 10)."),
    )
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    logging_steps: float = field(default=10, metadata=_help("Log every N steps."))
    save_steps: float = field(default=100, metadata=_help("Checkpoint every N steps."))
    save_total_limit: int | None = field(default=2, metadata=_help("Checkpoints kept."))
    report_to: None | str | list[str] = field(
        default="mlflow", metadata=_help("Trackers: mlflow (default), none, or any transformers integration.")
    )
    remove_unused_columns: bool = field(
        default=False, metadata=_help("Keep reward/difficulty columns for the stage's loss.")
    )
    train_sampling_strategy: str = field(
        default="sequential", metadata=_help("The stage sampler fixes the order; keep it sequential.")
    )
    seed: int = field(default=0, metadata=_help("Seed for initialisation and data order."))
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata=_help("Stages freeze what their loss does not use, so DDP needs no scan.")
    )
    include_num_input_tokens_seen: str | bool = field(
        default="non_padding", metadata=_help("Count trained tokens (for tokens/s).")
    )
    hub_strategy: HubStrategy | str = field(
        default="end",
        metadata=_help(
            "push_to_hub: end (default) pushes the finished final folder once; the other transformers "
            "strategies also push checkpoints during training."
        ),
    )

    def __post_init__(self) -> None:
        self._check_recipe_options()
        apply_recipe(self)
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps <= 0:
            raise ConfigError(
                f"max_steps: expected a positive number of optimizer steps, got {self.max_steps!r}"
            )
        if self.max_length <= 0:
            raise ConfigError(f"max_length: expected a positive integer, got {self.max_length}")
        if self.prompt_format not in ("auto", "raw", "alpaca", "chat"):
            raise ConfigError(
                f"prompt_format: expected one of auto, raw, alpaca, chat, got {self.prompt_format!r}"
            )
        if self.n_samples is not None and self.n_samples <= 0:
            raise ConfigError(f"n_samples: expected a positive integer or null, got {self.n_samples}")
        if self.n_future_tokens <= 0:
            raise ConfigError(f"n_future_tokens: expected a positive integer, got {self.n_future_tokens}")
        if self.head_weights is not None and any(w < 0 for w in self.head_weights):
            raise ConfigError(f"head_weights: expected non-negative numbers, got {self.head_weights}")
        if self.loss_chunk_size is not None and self.loss_chunk_size <= 0:
            raise ConfigError(f"loss_chunk_size: expected a positive integer, got {self.loss_chunk_size}")
        self._check_lora_options()
        self._bf16_without_accelerator()
        self._take_cpu_fsdp()
        if self.push_to_hub:
            _check_repo_id("hub_model_id", self.hub_model_id)
        super().__post_init__()

    def _check_recipe_options(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe: expected one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.head_warmup_steps is not None and (
            isinstance(self.head_warmup_steps, bool) or self.head_warmup_steps < 0
        ):
            raise ConfigError(
                f"head_warmup_steps: expected a non-negative number of optimizer steps, got {self.head_warmup_steps!r}"
            )
        if self.head_init not in (None, *HEAD_INITS):
            raise ConfigError(f"head_init: expected one of {', '.join(HEAD_INITS)}, got {self.head_init!r}")

    def _bf16_without_accelerator(self) -> None:
        """bf16 asked for on a machine with no accelerator: train on the CPU (`use_cpu`), where torch runs
        bf16 autocast, instead of transformers' "You need to assign use_cpu" error."""
        from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

        if not (self.bf16 or self.bf16_full_eval) or self.use_cpu:
            return
        accelerator = getattr(torch, "accelerator", None)
        has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
        if not has_accelerator and not is_torch_bf16_gpu_available() and not is_torch_xla_available():
            self.use_cpu = True

    def _take_cpu_fsdp(self) -> None:
        """FSDP asked for on CPU: validated into `cpu_fsdp` (the trainer shards the model itself, see
        `wmtp_hf.train.fsdp`) and hidden from transformers, whose accelerate would silently run DDP."""
        from .fsdp import cpu_fsdp_settings, fsdp_requested, runs_on_cpu

        self.cpu_fsdp = None
        if fsdp_requested(self.fsdp) and runs_on_cpu(self.use_cpu):
            self.cpu_fsdp = cpu_fsdp_settings(self.fsdp, self.fsdp_config, self.bf16, self.fp16)
            self.cpu_fsdp["fsdp_config"] = self.fsdp_config
            self.fsdp, self.fsdp_config = None, None

    def _check_lora_options(self) -> None:
        if self.lora_r <= 0:
            raise ConfigError(f"lora_r: expected a positive integer, got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha: expected a positive number, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout: expected a number in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules or not all(
            isinstance(name, str) and name for name in self.lora_target_modules
        ):
            raise ConfigError(
                f"lora_target_modules: expected a non-empty list of module names, got {self.lora_target_modules!r}"
            )
        reserved = sorted(set(self.lora_target_modules) & {"all-linear", "value_head"})
        if reserved:
            raise ConfigError(
                f"lora_target_modules: '{reserved[0]}' is not allowed (the value head trains fully, not through "
                f"LoRA); list projections by name, e.g. {', '.join(LORA_DEFAULT_TARGETS)}"
            )
        if self.merge_lora and not self.use_peft:
            raise ConfigError("merge_lora: needs use_peft: true (there is no adapter to merge)")


def _check_repo_id(option: str, repo_id: str | None) -> None:
    """One-line error unless `repo_id` is a Hub repository id (`ORG/NAME`)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id:
        raise ConfigError(f"{option}: push_to_hub needs the repository to push to (ORG/NAME)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(f"{option}: expected a Hub repository id ORG/NAME, got {repo_id!r}") from None


def stage_options(cls: type[WmtpTrainingConfig]) -> list[str]:
    """Fields this project adds to `TrainingArguments` for the stage."""
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    return [f.name for f in dataclasses.fields(cls) if f.name not in base]


def _matches(value: Any, tp: Any) -> bool:
    """Whether a YAML value fits the annotation (ints are accepted for floats)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # `SchedulerType | str` style: the string must name a member
            return any(_matches(value, e) for e in enums)
        return any(_matches(value, arg) for arg in args)
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {m.value for m in tp} or isinstance(value, tp)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _accepts(tp: Any, kind: type) -> bool:
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return kind in args


def check_values(values: dict[str, Any], cls: type[WmtpTrainingConfig], source: str) -> None:
    """Raise `ConfigError` for the first unknown key or wrongly typed value.

    Strings such as `1e-4` (which YAML 1.1 reads as text) are converted in place for float options.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(
                f"{source}: unknown key '{key}' for stage '{cls.stage}'; {hint}allowed: "
                f"{', '.join(stage_options(cls))}, or any transformers.TrainingArguments field"
            )
        if isinstance(value, str) and _accepts(hints[key], float) and not _accepts(hints[key], str):
            try:
                value = values[key] = float(value)
            except ValueError:
                pass
        if not _matches(value, hints[key]):
            raise ConfigError(
                f"{source}: key '{key}' expects {_type_name(hints[key])}, got {type(value).__name__} {value!r}"
            )


def _type_name(tp: Any) -> str:
    """Readable annotation; enum-typed options list their allowed values."""
    args = typing.get_args(tp) or (tp,)
    enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
    if enums:
        return "one of " + ", ".join(str(m.value) for e in enums for m in e)
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a YAML mapping, resolving `inherit: other.yaml` (relative to the file) recursively."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'inherit' cycle through {', '.join(str(p) for p in seen)}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: key 'inherit' expects a file name, got {parent!r}")
    return {**read_yaml(path.parent / parent, (*seen, path)), **data}


def build_stage_config(
    cls: type[WmtpTrainingConfig],
    config_file: str | Path | list[str | Path] | None = None,
    overrides: dict[str, Any] | None = None,
) -> WmtpTrainingConfig:
    """A stage config of class `cls` from its defaults, optional YAML files (later ones win) and overrides,
    validated. By stage name: `wmtp_hf.train.stages.build_config`."""
    stage = cls.stage
    values: dict[str, Any] = {}
    files = [config_file] if isinstance(config_file, (str, Path)) else list(config_file or [])
    for file in files:
        file_values = read_yaml(Path(file))
        file_values.pop("stage", None) if file_values.get("stage") in (None, stage) else _stage_mismatch(
            file, file_values, stage
        )
        check_values(file_values, cls, str(file))
        values.update(file_values)
    config_file = ", ".join(str(f) for f in files) or None
    overrides = overrides or {}
    check_values(overrides, cls, "command line")
    values.update(overrides)
    values.setdefault("output_dir", f"runs/{stage}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        message = " ".join(str(err).split())
        raise ConfigError(f"{config_file or 'configuration'}: {message}") from None


def _stage_mismatch(config_file: str | Path, values: dict[str, Any], stage: str) -> None:
    raise ConfigError(f"{config_file}: key 'stage' is '{values['stage']}' but --stage is '{stage}'")


def config_to_dict(config: WmtpTrainingConfig) -> dict[str, Any]:
    """The resolved configuration as plain YAML-able values (stage options first)."""
    out: dict[str, Any] = {"stage": config.stage}
    for f in dataclasses.fields(config):
        if not f.init or f.name.startswith("_"):
            continue
        value = getattr(config, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        if f.name.endswith("_token") and value is not None:  # hub_token: never written to files or MLflow
            value = "<redacted>"
        if isinstance(value, (str, int, float, bool, type(None), list, dict)):
            out[f.name] = value
        else:
            out[f.name] = str(value)
    cpu_fsdp = getattr(config, "cpu_fsdp", None)
    if (
        cpu_fsdp is not None
    ):  # what the user asked for (transformers only sees it cleared, see `_take_cpu_fsdp`)
        out["fsdp"], out["fsdp_config"] = cpu_fsdp["fsdp"], cpu_fsdp["fsdp_config"]
    return out
