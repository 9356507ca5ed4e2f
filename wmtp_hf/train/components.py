"""Build what a training run needs from its config: model, tokenizer and the stage's training data."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..data import SOURCES, DataError, load_source, tokenize_dataset
from ..data.sampling import stage_indices
from ..micro import build_micro, is_model_dir
from ..modeling_wmtp import WmtpForMultiTokenPrediction
from .config import ConfigError, WmtpTrainingConfig

logger = logging.getLogger(__name__)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def resolve_model_path(config: WmtpTrainingConfig) -> str:
    """The model to start from; builds the micro preset (once, on the main process) when none is given."""
    if config.model_name_or_path is not None:
        return config.model_name_or_path
    path = Path(config.output_dir) / "micro-init"
    with config.main_process_first(local=True, desc="building the micro model"):
        if not is_model_dir(path):
            build_micro(path, seed=config.seed)
    return str(path)


def load_tokenizer(path: str) -> Any:
    """The tokenizer of the model at `path` (a pad token is added as EOS when missing)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model_name_or_path '{path}': cannot load its tokenizer ({_first_line(err)})"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(config: WmtpTrainingConfig, path: str, tokenizer: Any, **model_kwargs: Any) -> PreTrainedModel:
    """A `WmtpForMultiTokenPrediction` from `path`, converted with `from_llama` if it is a plain LLaMA."""
    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model_name_or_path '{path}': cannot load its config ({_first_line(err)})"
        ) from None
    kwargs = dict(model_kwargs)
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    if model_type == "wmtp":
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    elif model_type == "llama":
        model = WmtpForMultiTokenPrediction.from_llama(path, n_future_tokens=config.n_future_tokens, **kwargs)
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


def load_rows(config: WmtpTrainingConfig) -> datasets.Dataset:
    """Unified (or already tokenized) rows of `config.dataset`: a source name or a `prepare` folder."""
    folder = Path(config.dataset)
    if config.dataset not in SOURCES and folder.is_dir():
        split_dir = folder / config.dataset_split
        if not split_dir.is_dir():
            available = sorted(p.name for p in folder.iterdir() if p.is_dir())
            raise ConfigError(
                f"dataset '{folder}': no split '{config.dataset_split}' (available: {', '.join(available)})"
            )
        return datasets.load_from_disk(str(split_dir))
    if config.dataset not in SOURCES:
        raise ConfigError(
            f"dataset: '{config.dataset}' is neither a source ({', '.join(SOURCES)}) nor a prepared folder"
        )
    return load_source(config.dataset, path=config.dataset_path, split=config.dataset_split)


def build_train_dataset(
    config: WmtpTrainingConfig, tokenizer: Any, stage: str
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Tokenized rows in the stage's sampling order, plus a report of what was kept and dropped."""
    try:
        rows = load_rows(config)
        if "input_ids" in rows.column_names:
            tokenized, dropped = rows, {}
            too_long = (
                sum(int(n > config.max_length) for n in rows["length"])
                if "length" in rows.column_names
                else 0
            )
            if too_long:
                raise ConfigError(
                    f"dataset '{config.dataset}': {too_long} rows are longer than max_length={config.max_length}; "
                    "re-run prepare with --max-length"
                )
        else:
            tokenized, dropped = tokenize_dataset(rows, tokenizer, max_length=config.max_length)
        order = stage_indices(stage, tokenized, n_samples=config.n_samples, seed=config.seed)
    except DataError as err:
        raise ConfigError(f"dataset '{config.dataset}': {err}") from None
    if len(order) == 0:
        raise ConfigError(f"dataset '{config.dataset}': no rows left for stage '{stage}' after filtering")
    report = {
        "rows": len(rows),
        "tokenized": len(tokenized),
        "dropped": dropped,
        "selected": len(order),
        "correct_selected": int(sum(tokenized.select(order)["is_correct"])),
    }
    logger.info("training data: %s", json.dumps(report))
    return tokenized.select(order), report
