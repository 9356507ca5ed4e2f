"""Build what a training run needs from its config: model, tokenizer and the stage's training data."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers import AutoModelForCausalLM, PreTrainedModel

from .. import loading
from ..data import SOURCES, DataError, load_source, resolve_prompt_format, tokenize_dataset
from ..data.prompt_formats import LEGACY_PROMPT_FORMAT
from ..data.registry import HELD_OUT_SPLITS
from ..messages import looks_like_hub_id
from ..micro import build_micro, build_micro_tokenizer, is_model_dir
from ..modeling_wmtp import WmtpForMultiTokenPrediction
from .config import ConfigError, WmtpTrainingConfig

logger = logging.getLogger(__name__)


def check_model_location(option: str, name: str, made_by: str | None = None) -> None:
    """One-line error for a model that is neither a folder, a registered model name (`smollm2-135m`), a
    `.gguf` file nor a Hub id (`made_by`: the command making it). Fetches and converts nothing."""
    from ..models import is_gguf, is_registered

    if Path(name).is_dir() or is_registered(name):
        return
    if is_gguf(name):
        if Path(name).expanduser().is_file():
            return
        raise ConfigError(f"{option} '{name}': no such GGUF file")
    if looks_like_hub_id(name):
        return
    hint = f"; it is made by: {made_by}" if made_by else ""
    raise ConfigError(f"{option} '{name}': no such folder, and not a Hub id{hint}")


def resolve_model_path(
    config: WmtpTrainingConfig, preset_folder: str = "micro-init", kind: str = "wmtp"
) -> str:
    """The model to start from: `model_name_or_path` (checked), or where the micro preset is (to be) built.

    A registered name (`smollm2-135m`) or a `.gguf` file becomes its local folder (`loading.resolve_model`:
    fetched or converted once, under a file lock so that only one of several processes does it): the
    WMTP one when it has `config.n_future_tokens` heads, else the plain LLaMA (converted on loading);
    `kind="llama"` (the reference stage) always the plain LLaMA. The micro preset is not written here:
    `build_preset` builds it once the data has been checked.
    """
    if config.model_name_or_path is not None:
        made_by = getattr(config, "model_made_by", {}).get(config.model_name_or_path)
        check_model_location("model_name_or_path", config.model_name_or_path, made_by)
        if kind == "wmtp" and getattr(config, "head_init", None) not in (None, "copy_last"):
            kind = "llama"  # a registered name's WMTP folder has copy_last heads: convert its LLaMA instead
        return loading.resolve_model(
            config.model_name_or_path,
            kind=kind,
            n_future_tokens=config.n_future_tokens,
            label=f"model_name_or_path '{config.model_name_or_path}'",
        )
    return str(Path(config.output_dir) / preset_folder)


def needs_preset(config: WmtpTrainingConfig, path: str) -> bool:
    """Whether `path` is the micro preset's folder and the preset is not built there yet."""
    return config.model_name_or_path is None and not is_model_dir(Path(path))


def start_tokenizer(config: WmtpTrainingConfig, path: str) -> Any:
    """The starting model's tokenizer; the micro tokenizer (in memory) when the preset is not built yet."""
    if needs_preset(config, path):
        return build_micro_tokenizer()
    return load_tokenizer(path)


def build_preset(
    config: WmtpTrainingConfig, path: str, tokenizer: Any, builder: Callable[..., Any] = build_micro
) -> None:
    """Write the micro preset to `path` (once, on the main process) with `tokenizer`, if it is needed."""
    with config.main_process_first(local=True, desc="building the micro model"):
        if needs_preset(config, path):
            builder(Path(path), seed=config.seed, tokenizer=tokenizer)


def load_tokenizer(path: str) -> Any:
    """The tokenizer of the model at `path` (a pad token is added as EOS when missing)."""
    return loading.load_tokenizer(path, label=f"model_name_or_path '{path}'")


def load_merged_adapter(path: str, **kwargs: Any) -> PreTrainedModel:
    """A LoRA adapter folder (e.g. a `use_peft` run's final folder) loaded on its base and merged."""
    return loading.load_merged_adapter(path, label=f"model_name_or_path '{path}'", **kwargs)


def load_model(config: WmtpTrainingConfig, path: str, tokenizer: Any, **model_kwargs: Any) -> PreTrainedModel:
    """A `WmtpForMultiTokenPrediction` from `path`, converted with `from_llama` if it is a plain LLaMA.

    A LoRA adapter folder is loaded on its base model and merged first."""
    kwargs = dict(model_kwargs)
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    adapter = loading.is_adapter(path)
    source = load_merged_adapter(path, **kwargs) if adapter else path
    if adapter:
        model_type = source.config.model_type
    else:
        model_type = loading.read_model_type(path, label=f"model_name_or_path '{path}'")
    if model_type == "wmtp":
        model = source if adapter else AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if getattr(config, "head_init", None) not in (None, "copy_last") and "head_init" not in getattr(
            config, "recipe_filled", []
        ):
            logger.warning("head_init: '%s' has its heads already; head_init applies to a LLaMA start", path)
    elif model_type == "llama":
        model = WmtpForMultiTokenPrediction.from_llama(
            source,
            n_future_tokens=config.n_future_tokens,
            head_init=getattr(config, "head_init", None) or "copy_last",
            **({} if adapter else kwargs),
        )
    else:
        raise ConfigError(
            f"model_name_or_path '{path}': expected a wmtp or llama model, got model_type '{model_type}'"
        )
    if config.loss_chunk_size is not None:
        model.config.loss_chunk_size = config.loss_chunk_size
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(
            f"model_name_or_path '{path}': tokenizer has {len(tokenizer)} tokens, model vocab_size is "
            f"{model.config.vocab_size}"
        )
    return model


def load_rows(config: WmtpTrainingConfig, split: str | None = None) -> datasets.Dataset:
    """Unified (or already tokenized) rows of `config.dataset`: a source name or a `prepare` folder."""
    split = split or config.dataset_split
    folder = Path(config.dataset)
    if config.dataset not in SOURCES and folder.is_dir():
        split_dir = folder / split
        if not split_dir.is_dir():
            available = sorted(p.name for p in folder.iterdir() if p.is_dir())
            raise ConfigError(f"dataset '{folder}': no split '{split}' (available: {', '.join(available)})")
        return datasets.load_from_disk(str(split_dir))
    if config.dataset not in SOURCES:
        raise ConfigError(
            f"dataset: '{config.dataset}' is neither a source ({', '.join(SOURCES)}) nor a prepared folder"
        )
    return load_source(config.dataset, path=config.dataset_path, split=split)


# What a prepared folder records about itself: `prepare`'s stats.json, the experiment control's control.json.
PREPARED_RECORDS = ("stats.json", "control.json")


def _prepared_record(config: WmtpTrainingConfig) -> dict[str, Any] | None:
    folder = Path(config.dataset)
    if config.dataset in SOURCES or not folder.is_dir():
        return None
    for name in PREPARED_RECORDS:
        if (folder / name).is_file():
            try:
                return json.loads((folder / name).read_text(encoding="utf-8"))
            except ValueError:
                return None
    return None


def resolve_training_format(config: WmtpTrainingConfig, tokenizer: Any, recorded: str | None = None) -> str:
    """The concrete prompt format of `config` (docs/data.md "Prompt formats"): a prepared tokenized folder's
    own (a different explicit `prompt_format` is an error), else `resolve_prompt_format` of the option with
    the tokenizer, the trained model's `recorded` format and the dataset's source."""
    record = _prepared_record(config) or {}
    folder = Path(config.dataset)
    tokenized = bool(record.get("tokenizer")) or "options" in record  # prepare --tokenizer, control data
    if record and tokenized:
        prepared = record.get("prompt_format") or record.get("options", {}).get("prompt_format")
        prepared = prepared or LEGACY_PROMPT_FORMAT
        if config.prompt_format not in ("auto", prepared):
            raise ConfigError(
                f"prompt_format: '{config.prompt_format}' but dataset '{folder}' was tokenized in "
                f"'{prepared}'; re-run prepare with --prompt-format {config.prompt_format} or use auto"
            )
        return prepared
    source = config.dataset if config.dataset in SOURCES else record.get("source")
    try:
        return resolve_prompt_format(
            config.prompt_format, tokenizer, source, recorded=recorded, option="prompt_format"
        )
    except DataError as err:
        raise ConfigError(str(err)) from None


def held_out_split(config: WmtpTrainingConfig) -> str | None:
    """The source's held-out split (offline: eval, CodeContests: valid, MBPP: validation), if it has one."""
    folder = Path(config.dataset)
    if config.dataset not in SOURCES and folder.is_dir():
        return next((s for s in ("eval", "valid", "validation") if (folder / s).is_dir()), None)
    if config.dataset == "codecontests" and config.dataset_path:
        return None  # a local CodeContests file is one split
    return HELD_OUT_SPLITS.get(config.dataset)


def tokenized_rows(
    config: WmtpTrainingConfig, tokenizer: Any, split: str, recorded_format: str | None = None
) -> tuple[datasets.Dataset, Any, int]:
    """`(tokenized rows, dropped counts, rows loaded)` of one split of `config.dataset`, in the config's
    prompt format (`resolve_training_format`; `recorded_format`: the trained model's)."""
    rows = load_rows(config, split)
    if len(rows) == 0:
        raise ConfigError(f"dataset '{config.dataset}': split '{split}' has no rows")
    if "input_ids" in rows.column_names:
        too_long = (
            sum(int(n > config.max_length) for n in rows["length"]) if "length" in rows.column_names else 0
        )
        if too_long:
            raise ConfigError(
                f"dataset '{config.dataset}': {too_long} rows are longer than max_length={config.max_length}; "
                "re-run prepare with --max-length"
            )
        return rows, {}, len(rows)
    fmt = resolve_training_format(config, tokenizer, recorded_format)
    tokenized, dropped = tokenize_dataset(rows, tokenizer, max_length=config.max_length, prompt_format=fmt)
    return tokenized, dropped, len(rows)


def build_train_dataset(
    config: WmtpTrainingConfig,
    tokenizer: Any,
    order_fn: Callable[[WmtpTrainingConfig, datasets.Dataset], np.ndarray],
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Tokenized rows in the stage's sampling order (`order_fn`, the trainer's `sample_order`), plus a
    report of what was kept and dropped."""
    stage = config.stage
    try:
        tokenized, dropped, n_rows = tokenized_rows(config, tokenizer, config.dataset_split)
        if len(tokenized) == 0:
            raise DataError(f"no rows left of {n_rows} after tokenizing (dropped: {dict(dropped)})")
        order = order_fn(config, tokenized)
    except DataError as err:
        raise ConfigError(f"dataset '{config.dataset}': {err}") from None
    if len(order) == 0:
        raise ConfigError(f"dataset '{config.dataset}': no rows left for stage '{stage}' after filtering")
    report = {
        "rows": n_rows,
        "tokenized": len(tokenized),
        "dropped": dropped,
        "selected": len(order),
        "correct_selected": int(sum(tokenized.select(order)["is_correct"])),
    }
    logger.info("training data: %s", json.dumps(report))
    return tokenized.select(order), report
