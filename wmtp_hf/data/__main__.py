"""`python -m wmtp_hf.data prepare --source NAME [--path P] [--split S] [--tokenizer DIR]
[--prompt-format F] --output DIR`
and `python -m wmtp_hf.data reference-losses --dataset DIR --reference MODEL [--batch-size N] [--split S]
[--device D]`
and `python -m wmtp_hf.data self-distill --model M --source NAME [--path P] [--split S ...] [--limit N] --output DIR`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import WmtpError, report_error
from .formatting import DEFAULT_MAX_LENGTH
from .prompt_formats import PROMPT_FORMAT_CHOICES
from .registry import SOURCES
from .schema import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wmtp_hf.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="load a source and save Arrow splits + stats.json")
    prep.add_argument("--source", required=True, help=f"one of: {', '.join(SOURCES)}")
    prep.add_argument("--path", help="local file (JSONL/parquet/JSON); default: the source's default")
    prep.add_argument("--split", action="append", help="split to prepare (repeatable); default: all")
    prep.add_argument(
        "--tokenizer",
        help="local tokenizer folder, registered model name or .gguf file; without it rows are saved untokenized",
    )
    prep.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMAT_CHOICES,
        default="auto",
        help="raw, alpaca or chat (the tokenizer's template); auto: chat when the tokenizer has a chat "
        "template, else raw for humaneval and alpaca otherwise (docs/data.md)",
    )
    prep.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="drop longer examples")
    prep.add_argument("--output", required=True, help="folder to write (<split>/ and stats.json)")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing prepared folder")
    ref = commands.add_parser(
        "reference-losses",
        help="add per-token reference losses (ref_token_losses) to a tokenized prepared folder",
    )
    ref.add_argument("--dataset", required=True, help="folder written by `prepare --tokenizer ...`")
    ref.add_argument(
        "--reference",
        required=True,
        help="reference causal LM: local folder, Hub id, registered name or .gguf file",
    )
    ref.add_argument("--batch-size", type=int, default=8, help="rows per reference forward pass")
    ref.add_argument("--split", action="append", help="split to process (repeatable); default: all")
    ref.add_argument("--device", help="where the reference runs (cuda, cuda:1, mps, cpu); default: auto")
    distill = commands.add_parser(
        "self-distill",
        help="a model's greedy answers to a source's prompts, as a folder to train drafting heads on",
    )
    distill.add_argument(
        "--model", required=True, help="model folder, Hub id, registered name or .gguf file that answers"
    )
    distill.add_argument("--source", required=True, help=f"whose prompts: one of {', '.join(SOURCES)}")
    distill.add_argument("--path", help="local file for the source (else its default)")
    distill.add_argument(
        "--split", action="append", help="the source's split to answer (repeatable; default: train)"
    )
    distill.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMAT_CHOICES,
        default="auto",
        help="auto: the format the model was trained with, else chat when it has a chat template",
    )
    distill.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens")
    distill.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    distill.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16 (faster on many CPUs)")
    distill.add_argument("--device", help="cuda, mps or cpu; default: auto")
    distill.add_argument("--limit", type=int, help="answer only the first N problems")
    distill.add_argument(
        "--isolation", choices=["namespaces", "guard"], default="namespaces", help="how answers are tested"
    )
    distill.add_argument("--output", required=True, help="folder to write (train/ and stats.json)")
    distill.add_argument("--overwrite", action="store_true", help="replace an existing folder it wrote")
    return parser


def _self_distill(args: argparse.Namespace) -> dict:
    from ..evaluation.self_distill import self_distill

    stats = self_distill(
        args.model, args.source, args.output, path=args.path, splits=args.split or ["train"],
        prompt_format=args.prompt_format, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        dtype=args.dtype, device=args.device, limit=args.limit, isolation=args.isolation,
        overwrite=args.overwrite,
    )  # fmt: skip
    return {"rows": stats["self_distill"]["problems"], "passed": stats["self_distill"]["passed"],
            "prompt_format": stats["prompt_format"]}  # fmt: skip


def _prepare(args: argparse.Namespace) -> dict:
    from .prepare import prepare

    if args.max_length < 1:
        raise DataError(f"--max-length: expected a positive integer, got {args.max_length}")
    stats = prepare(
        args.source,
        args.output,
        path=args.path,
        splits=args.split,
        tokenizer=args.tokenizer,
        max_length=args.max_length,
        overwrite=args.overwrite,
        prompt_format=args.prompt_format,
    )
    return {
        split: {k: s[k] for k in ("rows", "is_correct", "dropped")} for split, s in stats["splits"].items()
    }


def _reference_losses(args: argparse.Namespace) -> dict:
    if args.batch_size < 1:
        raise DataError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    import datasets

    from ..reference import add_reference_losses

    info = add_reference_losses(
        args.dataset, args.reference, batch_size=args.batch_size, splits=args.split, device=args.device
    )
    rows = {
        s: len(datasets.load_from_disk(str(Path(args.dataset) / s))) for s in info["dataset_fingerprints"]
    }
    return {"splits": rows, "rows": sum(rows.values()), "fingerprint": info["fingerprint"]["id"]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"prepare": _prepare, "reference-losses": _reference_losses, "self-distill": _self_distill}
        summary = commands[args.command](args)
    except (WmtpError, OSError) as err:  # every one-line user error (wmtp_hf.errors)
        return report_error(err)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
