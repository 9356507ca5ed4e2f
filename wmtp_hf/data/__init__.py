"""Data pipeline (docs/design.md §3): sources in one row schema, the offline default, formatting, collation, sampling."""

from .collator import IGNORE_INDEX, WmtpDataCollator
from .formatting import DEFAULT_MAX_LENGTH, encode_example, format_prompt, labels_for, tokenize_dataset
from .schema import COLUMNS, FEATURES, SOURCES, DataError
from .sources import load_source

__all__ = [
    "COLUMNS",
    "DEFAULT_MAX_LENGTH",
    "FEATURES",
    "IGNORE_INDEX",
    "SOURCES",
    "DataError",
    "WmtpDataCollator",
    "encode_example",
    "format_prompt",
    "labels_for",
    "load_source",
    "tokenize_dataset",
]
