"""Does token healing change a model's answers? For each prompt it heals, the model's first token under the
healing constraint (greedy) is compared with the prompt token healing removed: where they are equal, healed
greedy decoding continues exactly as unhealed decoding did.

    python scripts/check_token_healing.py --model smollm2-135m --dataset humaneval --prompt-format chat
    python scripts/check_token_healing.py --model smollm2-135m --dataset mbpp \
        --path ../shared/data/mbpp/mbpp.jsonl --limit 100 --prompt-format chat

Prints a table and writes JSON (`--output`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import print_table, write_report  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a model folder, Hub id or registered name")
    p.add_argument("--dataset", required=True, choices=["humaneval", "mbpp", "codecontests", "offline"])
    p.add_argument("--path", help="local data file (as for evaluate)")
    p.add_argument("--split", help="split (default: evaluate's)")
    p.add_argument("--limit", type=int, help="first N problems")
    p.add_argument("--prompt-format", default="auto", help="raw | alpaca | chat | auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default="bench_results/check_token_healing.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from wmtp_hf.data.formatting import adds_special_tokens
    from wmtp_hf.data.prompt_formats import resolve_prompt_format
    from wmtp_hf.evaluation.generation import load_model
    from wmtp_hf.evaluation.problems import load_problems
    from wmtp_hf.evaluation.token_healing import compatible_tokens, heal_prompt

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device="cpu", dtype="float32")
    fmt = resolve_prompt_format(args.prompt_format, tokenizer, args.dataset)
    problems = load_problems(args.dataset, args.path, args.split, fmt, tokenizer)[: args.limit]
    healed = same = 0
    differing = []
    for problem in problems:
        ids = tokenizer(problem.prompt, add_special_tokens=adds_special_tokens(tokenizer, problem.prompt))
        ids = ids["input_ids"]
        result = heal_prompt(tokenizer, ids)
        if not result.prefix:
            continue
        healed += 1
        with torch.inference_mode():
            logits = model(torch.tensor([result.input_ids])).logits[0, -1]
        allowed = list(compatible_tokens(tokenizer, result.prefix))
        pick = allowed[int(logits[allowed].argmax())]
        if pick == ids[-1]:
            same += 1
        else:
            differing.append(problem.task_id)
    report = {"model": args.model, "dataset": args.dataset, "prompt_format": fmt, "problems": len(problems),
              "healed": healed, "same_first_token": same, "differing": differing}  # fmt: skip
    print_table(["problems:>9", "healed:>7", "same first token:>17"], [[len(problems), healed, same]])
    write_report(Path(args.output), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
