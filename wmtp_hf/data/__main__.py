"""`python -m wmtp_hf.data prepare --source NAME [--path P] [--split S] [--tokenizer DIR] --output DIR`."""

from __future__ import annotations

import argparse
import json
import sys

from .formatting import DEFAULT_MAX_LENGTH
from .schema import SOURCES, DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wmtp_hf.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="load a source and save Arrow splits + stats.json")
    prep.add_argument("--source", required=True, help=f"one of: {', '.join(SOURCES)}")
    prep.add_argument("--path", help="local file (JSONL/parquet/JSON); default: the source's default")
    prep.add_argument("--split", action="append", help="split to prepare (repeatable); default: all")
    prep.add_argument("--tokenizer", help="local tokenizer folder; without it rows are saved untokenized")
    prep.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="drop longer examples")
    prep.add_argument("--output", required=True, help="folder to write (<split>/ and stats.json)")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing prepared folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .prepare import prepare

    try:
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
        )
    except (DataError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    summary = {
        split: {k: s[k] for k in ("rows", "is_correct", "dropped")} for split, s in stats["splits"].items()
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
