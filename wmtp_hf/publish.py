"""`python -m wmtp_hf.publish`: push a saved model or LoRA adapter folder to the Hub with its model card.

Evaluation summaries written by `python -m wmtp_hf.evaluate` (`OUT/summary.json`) are merged into the
card's `model-index` (task text-generation, the benchmark's Hub dataset, pass@k metrics). The card is
re-rendered from the folder's own card metadata; the local folder is not modified.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import EvalResult
from huggingface_hub.errors import HfHubHTTPError

from .errors import WmtpError, report_error
from .hub import ModelFolder, PublishError, check_model_folder, push_folder, read_json_object
from .model_card import is_hub_id, pass_at_k_results, rerender_card

EVAL_DATASETS = ("humaneval", "mbpp", "codecontests", "offline")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wmtp_hf.publish", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", required=True, help="saved model folder (save_pretrained) or LoRA adapter folder"
    )
    p.add_argument("--repo-id", required=True, help="Hub repository ORG/NAME (created if missing)")
    p.add_argument("--eval", nargs="+", default=[], metavar="SUMMARY",
                   help="summary.json files of python -m wmtp_hf.evaluate, merged into model-index")  # fmt: skip
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    p.add_argument(
        "--base-model", default=None,
        help="Hub id of the base model: the card's base_model, and for an adapter its base_model_name_or_path",
    )  # fmt: skip
    p.add_argument("--commit-message", default="Upload model with wmtp_hf", help="commit message")
    return p.parse_args(argv)


def read_eval_summary(path: str | Path) -> list[EvalResult]:
    """pass@k results of one `summary.json`; `PublishError` naming the file and field when it is invalid."""
    path = Path(path)
    if not path.is_file():
        raise PublishError(f"--eval '{path}': no such file")
    summary = read_json_object(path, "--eval")
    dataset = summary.get("dataset")
    if dataset not in EVAL_DATASETS:
        raise PublishError(
            f"--eval '{path}': field 'dataset' expected one of {', '.join(EVAL_DATASETS)}, got {dataset!r}"
        )
    scores = {k: v for k, v in summary.items() if k.startswith("pass@")}
    if not scores:
        raise PublishError(f"--eval '{path}': no pass@k field (e.g. \"pass@1\": 0.25)")
    for key, value in scores.items():
        k = key[len("pass@") :]
        ok_value = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not k.isdigit() or int(k) < 1 or not ok_value or not 0 <= value <= 1:
            raise PublishError(
                f"--eval '{path}': field '{key}' expected pass@<k> with a fraction in [0, 1], got {value!r}"
            )
    split = summary.get("split")
    splits = {dataset: split} if isinstance(split, str) else None
    return pass_at_k_results({dataset: scores}, splits)


def prepare(args: argparse.Namespace) -> tuple[ModelFolder, str, str | None]:
    """Check everything and render the card: `(folder, card text, base model)`; nothing touches the Hub."""
    if not is_hub_id(args.repo_id) or "/" not in args.repo_id:
        raise PublishError(f"--repo-id: expected a Hub repository id ORG/NAME, got {args.repo_id!r}")
    if args.base_model is not None and not is_hub_id(args.base_model):
        raise PublishError(f"--base-model: expected a Hub model id ORG/NAME, got {args.base_model!r}")
    folder = check_model_folder(args.model)
    results = [r for path in args.eval for r in read_eval_summary(path)]
    base_model = args.base_model
    if folder.adapter:
        base_model = base_model or folder.base_model
        if not is_hub_id(base_model):
            raise PublishError(
                f"--model '{folder.path}': the adapter's base model {folder.base_model!r} is not a Hub id; pass "
                "--base-model ORG/NAME (the published base model), or publish the merged model"
            )
    card = rerender_card(
        folder.card(),
        eval_results=results,
        base_model=base_model,
        model_name=args.repo_id.split("/")[-1],
        repo_id=args.repo_id,
        adapter=folder.adapter,
        n_heads=folder.n_heads,
    )
    return folder, card, base_model


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        folder, card, base_model = prepare(args)
    except WmtpError as err:  # every one-line user error (wmtp_hf.errors)
        return report_error(err)
    try:
        commit = push_folder(
            folder,
            args.repo_id,
            card,
            private=args.private or None,
            revision=args.revision,
            commit_message=args.commit_message,
            base_model=base_model if folder.adapter else None,
        )
    except (HfHubHTTPError, OSError) as err:  # no token, no network, offline mode, refused by the Hub
        message = " ".join(str(err).split())
        print(f"error: pushing to {args.repo_id} failed: {message}", file=sys.stderr)
        return 1
    kind = "adapter" if folder.adapter else "model"
    print(
        f"pushed the {kind} in {folder.path} ({len(folder.files()) + 1} files) to {args.repo_id}"
        f"{f' (revision {args.revision})' if args.revision else ''}: {getattr(commit, 'commit_url', commit)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
