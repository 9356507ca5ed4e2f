"""Look inside the token weights: per response token, CE per head and the weighted stages' view of it.

Library use (the CLI is `python -m wmtp_hf.inspect`)::

    inspection = inspect_examples(model, tokenizer, rows, reference=None, stage_config=None)
    write_html(inspection, "tokens.html")     # self-contained page: head selector, colour by, hover details
    write_png(inspection, "tokens.png", examples=[0])
    write_outputs(inspection, "out/")         # tokens.html + tokens.png + tokens.json, atomically
"""

from .html_page import render_html, write_html
from .outputs import OUTPUT_FILES, write_json, write_outputs
from .plot import render_png, write_png
from .records import ExampleRecord, Inspection, TokenRecord, inspect_examples, token_texts
from .rows import pick_rows, select_rows, tokenized_stream

__all__ = [
    "OUTPUT_FILES",
    "ExampleRecord",
    "Inspection",
    "TokenRecord",
    "inspect_examples",
    "pick_rows",
    "render_html",
    "render_png",
    "select_rows",
    "token_texts",
    "tokenized_stream",
    "write_html",
    "write_json",
    "write_outputs",
    "write_png",
]
