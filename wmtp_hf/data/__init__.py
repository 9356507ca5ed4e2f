"""Data pipeline (docs/design.md §3): sources in one row schema, the offline default, formatting, collation, sampling."""

from .collator import IGNORE_INDEX, WmtpDataCollator
from .formatting import DEFAULT_MAX_LENGTH, encode_example, labels_for, tokenize_dataset
from .prompt_formats import PROMPT_FORMAT_CHOICES, PROMPT_FORMATS, format_prompt, resolve_prompt_format
from .registry import SOURCES, load_source
from .schema import COLUMNS, FEATURES, DataError

__all__ = [
    "COLUMNS",
    "DEFAULT_MAX_LENGTH",
    "FEATURES",
    "IGNORE_INDEX",
    "PROMPT_FORMATS",
    "PROMPT_FORMAT_CHOICES",
    "SOURCES",
    "DataError",
    "WmtpDataCollator",
    "encode_example",
    "format_prompt",
    "labels_for",
    "load_source",
    "resolve_prompt_format",
    "tokenize_dataset",
]
