"""`python -m wmtp_hf.models {list,fetch,path}`: the registered models, fetching one, and its folders.

    python -m wmtp_hf.models list
    python -m wmtp_hf.models fetch smollm2-135m      # or a path to a .gguf file
    python -m wmtp_hf.models path smollm2-135m [--kind llama|wmtp]

`fetch` and `path` build the folders on first use (a progress line on stderr) and print paths on stdout.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import WmtpError, report_error
from . import MODELS, fetched, model_root, models_root, named_folders


def _list() -> None:
    print(f"cache: {models_root()}  (set WMTP_HF_CACHE to move it)")
    for spec in MODELS.values():
        folders = fetched(spec.name)
        state = f"fetched: {folders.root}" if folders else f"not fetched (would go to {model_root(spec)})"
        print(f"{spec.name}\t{spec.hub_id}\t{spec.requirement}\t{spec.license}\t{state}")
        print(f"\t{spec.description}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmtp_hf.models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the registered models and whether they are fetched")
    fetch = commands.add_parser("fetch", help="fetch a registered model (or convert a .gguf file) once")
    fetch.add_argument("name", help=f"one of {', '.join(MODELS)}, or a path to a .gguf file")
    path = commands.add_parser("path", help="print the folder of a model (fetched on first use)")
    path.add_argument("name", help=f"one of {', '.join(MODELS)}, or a path to a .gguf file")
    path.add_argument("--kind", choices=("wmtp", "llama"), default="wmtp",
                      help="wmtp: the converted WMTP model (training, evaluation); llama: the plain causal LM")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "list":
        _list()
        return 0
    if args.name not in MODELS and not args.name.lower().endswith(".gguf"):
        print(
            f"error: '{args.name}': not a registered model ({', '.join(MODELS)}) nor a .gguf file",
            file=sys.stderr,
        )
        return 2
    try:
        folders = named_folders(args.name)
    except WmtpError as err:  # every one-line user error (wmtp_hf.errors)
        return report_error(err, prefix=f"'{args.name}': ", status=1)  # fetch or conversion failed
    if args.command == "path":
        print(folders.pick(args.kind))
        return 0
    print(f"llama: {folders.llama}")
    print(f"wmtp:  {folders.wmtp or '(none: not a LLaMA model)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
