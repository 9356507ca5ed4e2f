"""`python -m wmtp_hf.inspect`: every response token of a few examples with its CE per head and weights.

With a value head: value, TD error and the verifiable stage's weight (docs/design.md §4.3, the stage's default options);
with `--reference`: Rho-1's excess loss and kept/dropped per head (docs/design.md §4.4, top k_percent over the N examples
as one batch). Writes OUT/tokens.html (self-contained), OUT/tokens.png and OUT/tokens.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InspectError, WmtpError, report_error

DEFAULT_N = 3


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wmtp_hf.inspect", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        required=True,
        help="WMTP model folder, Hub id, registered name (smollm2-135m) or .gguf file",
    )
    p.add_argument(
        "--reference",
        help="reference causal LM (folder, Hub id, registered name or .gguf) with the same tokenizer: rho1's view",
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="source name (offline, humaneval, mbpp, codecontests) or a prepared folder",
    )
    p.add_argument("--dataset-path", help="local file for the source (else its default)")
    p.add_argument(
        "--split", help="default: the held-out split (offline: eval, mbpp: validation, codecontests: valid)"
    )
    p.add_argument(
        "--n",
        type=int,
        default=DEFAULT_N,
        help=f"examples, alternating correct and incorrect (default {DEFAULT_N})",
    )
    p.add_argument("--task-id", action="append", default=None, help="inspect this row (repeatable) instead")
    p.add_argument(
        "--max-length", type=int, default=1024, help="skip rows longer than this (prompt + response)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="rows per forward pass")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument("--output", required=True, help="folder for tokens.html, tokens.png, tokens.json")
    p.add_argument("--overwrite", action="store_true", help="replace an OUTPUT folder this command wrote")
    return p.parse_args(argv)


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse a non-empty OUTPUT unless `--overwrite` and it is an inspect output (has tokens.json)."""
    if output.exists() and not output.is_dir():
        raise InspectError(f"--output '{output}': exists and is not a folder")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise InspectError(
                f"--output '{output}': already exists and is not empty; pass --overwrite to replace it"
            )
        if not (output / "tokens.json").is_file():
            raise InspectError(f"--output '{output}': --overwrite only replaces a folder written by inspect (no tokens.json)")  # fmt: skip


def load_policy(path: str, device: Any) -> Any:
    """The WMTP model at `path` (its own dtype) in eval mode on `device`."""
    from .loading import load_causal_lm, move_to_device, read_model_type

    model_type = read_model_type(path, label=f"--model '{path}'")
    if model_type != "wmtp":
        raise InspectError(f"--model '{path}': expected a WMTP model (model_type wmtp), got '{model_type}'")
    model = load_causal_lm(path, label=f"--model '{path}'", dtype="auto")
    return move_to_device(model, device).eval()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Check the input, compute the inspection, write OUTPUT; returns a summary."""
    from wmtp_hf.data.prompt_formats import recorded_prompt_format
    from wmtp_hf.evaluation.problems import DEFAULT_SPLITS
    from wmtp_hf.inspection import inspect_examples, select_rows, tokenized_stream, write_outputs
    from wmtp_hf.loading import load_tokenizer, move_to_device, parse_device
    from wmtp_hf.reference import check_same_tokenizer, load_reference_model, load_reference_tokenizer
    from wmtp_hf.train.components import (
        check_model_location,
        held_out_split,
        load_rows,
        resolve_training_format,
    )
    from wmtp_hf.train.stages import build_config

    for name in ("n", "max_length", "batch_size"):
        if getattr(args, name) < 1:
            raise InspectError(
                f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}"
            )
    output = Path(args.output)
    check_output(output, args.overwrite)
    check_model_location("--model", args.model)
    if args.reference:
        check_model_location("--reference", args.reference)
    tokenizer = load_tokenizer(args.model, label=f"--model '{args.model}'")

    options = {"dataset": args.dataset, "dataset_path": args.dataset_path, "report_to": "none"}
    data = build_config("baseline", None, {k: v for k, v in options.items() if v is not None})
    split = args.split or held_out_split(data) or DEFAULT_SPLITS.get(args.dataset, "train")
    fmt = resolve_training_format(data, tokenizer, recorded_prompt_format(args.model))  # the model's own
    stream = tokenized_stream(load_rows(data, split), tokenizer, args.max_length, fmt)
    try:
        rows = select_rows(stream, args.n, args.task_id)
    except ValueError as err:
        raise InspectError(f"--task-id: {err}") from None
    if not rows:
        raise InspectError(
            f"--dataset {args.dataset}: split '{split}' has no row within --max-length {args.max_length}"
        )

    device = parse_device(args.device)
    reference = None
    if args.reference:
        check_same_tokenizer(tokenizer, load_reference_tokenizer(args.reference), args.model, args.reference,
                             reference_label="--reference")  # fmt: skip
    model = load_policy(args.model, device)
    if args.reference:
        reference, _ = load_reference_model(args.reference)
        reference = move_to_device(reference, device, what="the reference")
    cached = "ref_token_losses" in rows[0] and reference is None
    labels = {"model": args.model, "reference": args.reference or ("cached ref_token_losses" if cached else ""),
              "dataset": args.dataset, "split": split}  # fmt: skip
    inspection = inspect_examples(
        model, tokenizer, rows, reference=reference, batch_size=args.batch_size, labels=labels
    )
    write_outputs(inspection, output)
    views = ["CE per head"]
    if inspection.has_value:
        views.append("value, TD error, verifiable weight")
    if inspection.has_reference:
        views.append("rho1 excess, kept")
    return {
        "examples": len(inspection.examples),
        "tokens": sum(len(e.tokens) for e in inspection.examples),
        "views": views,
        "output": str(output),
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    try:
        summary = run(args)
    except (WmtpError, OSError) as err:  # every one-line user error (wmtp_hf.errors)
        return report_error(err)
    print(
        f"{summary['examples']} examples, {summary['tokens']} response tokens ({'; '.join(summary['views'])}): "
        f"{summary['output']}/tokens.html, tokens.png, tokens.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
