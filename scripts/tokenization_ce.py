"""Held-out response CE under a pretrained model: the old split tokenization vs the clean one.

    python scripts/tokenization_ce.py --model /tmp/smol/llama [--split eval] [--formats alpaca,chat]
        [--output tokenization_ce.json]

On the correct rows of the offline source's held-out split, the mean cross-entropy (nats) of the first
response token, of the other response tokens and of all response tokens (EOS included), under `--model`
(a causal LM with its tokenizer), for:

- `split (old)`: prompt and response tokenized separately (alpaca), the encoding before clean tokenization;
- each of `--formats` tokenized cleanly (`wmtp_hf.data.encode_example`: one call on the full text, the
  label boundary from the offset mapping).

`first_share` is the first response token's part of the summed response CE. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch


def split_encoding(row: dict[str, Any], tokenizer: Any) -> tuple[list[int], int]:
    """The encoding before clean tokenization: prompt and response tokenized apart, then EOS."""
    from wmtp_hf.data import format_prompt

    prompt = tokenizer(format_prompt(row), add_special_tokens=True)["input_ids"]
    response = tokenizer(row["output"], add_special_tokens=False)["input_ids"]
    return list(prompt) + list(response) + [tokenizer.eos_token_id], len(prompt)


@torch.no_grad()
def response_ce(model: Any, ids: list[int], prompt_length: int) -> list[float]:
    """Per-token CE of the response tokens (positions prompt_length..end)."""
    logits = model(torch.tensor([ids])).logits[0, :-1].float()
    losses = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    return losses[prompt_length - 1 :].tolist()


def summarise(per_row: list[list[float]]) -> dict[str, float]:
    first = [r[0] for r in per_row]
    rest = [x for r in per_row for x in r[1:]]
    total = sum(first) + sum(rest)
    return {
        "rows": len(per_row),
        "tokens": len(first) + len(rest),
        "first": round(sum(first) / len(first), 3),
        "others": round(sum(rest) / len(rest), 3),
        "all": round(total / (len(first) + len(rest)), 3),
        "first_share": round(sum(first) / total, 4),
    }


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wmtp_hf.data import encode_example, load_source

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--split", default="eval")
    parser.add_argument("--formats", default="alpaca,chat")
    parser.add_argument("--output", default="tokenization_ce.json")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    rows = [r for r in load_source("offline", split=args.split) if r["is_correct"]]
    encoders = {"split (old)": lambda r: split_encoding(r, tokenizer)}
    for fmt in args.formats.split(","):
        encoders[f"{fmt} (clean)"] = lambda r, fmt=fmt: encode_example(r, tokenizer, fmt)
    report = {}
    for name, encode in encoders.items():
        report[name] = summarise([response_ce(model, *encode(r)) for r in rows])
        print(f"{name:>14}: {json.dumps(report[name])}", flush=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump({"model": args.model, "split": args.split, "results": report}, f, indent=2)


if __name__ == "__main__":
    main()
