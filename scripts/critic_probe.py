"""Does a trained critic find the mutation? Held-out numbers of a critic on the offline default data.

    python scripts/critic_probe.py --model runs/critic/final [--split eval]

Prints (and writes as JSON with `--output`) two numbers on the offline default's held-out problems:
- `auroc`: AUROC of each response's last value `V_{T-1}` against is_correct (canonical vs mutant);
- `td_on_mutation`: the fraction of mutants whose most negative TD error falls on the first token where the
  mutant differs from its problem's canonical solution, or on the token after it.
"""

from __future__ import annotations

import argparse
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from wmtp_hf.data import WmtpDataCollator, load_source, tokenize_dataset  # noqa: E402
from wmtp_hf.stats import binary_auroc  # noqa: E402
from wmtp_hf.weighting import response_token_mask, td_errors, value_positions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/critic/final")
    parser.add_argument("--split", default="eval")
    parser.add_argument("--output", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rows, _ = tokenize_dataset(load_source("offline", split=args.split), tokenizer, max_length=2048)
    collate = WmtpDataCollator(tokenizer)
    canonical = {r["problem_id"]: r for r in rows if r["is_correct"]}
    last_values, labels, hits, mutants = [], [], 0, 0
    for row in rows:
        batch = collate([row])
        with torch.no_grad():
            values = model(batch["input_ids"], value_only=True).value
        mask = value_positions(batch["labels"])
        last_values.append(float(values[0][mask[0]][-1]))
        labels.append(bool(row["is_correct"]))
        good = canonical.get(row["problem_id"])
        if row["is_correct"] or good is None:
            continue
        diff = next(
            (i for i, (a, b) in enumerate(zip(row["input_ids"], good["input_ids"], strict=False)) if a != b),
            min(len(row["input_ids"]), len(good["input_ids"])),
        )
        deltas = td_errors(values, batch["reward"], mask, 1.0)[0]
        tokens = response_token_mask(batch["labels"])[0]
        worst = int(deltas.masked_fill(~tokens, math.inf).argmin())
        hits += worst in (diff, diff + 1)
        mutants += 1
    result = {
        "model": args.model,
        "split": args.split,
        "rows": len(rows),
        "auroc": round(binary_auroc(torch.tensor(last_values), torch.tensor(labels)), 4),
        "td_on_mutation": round(hits / max(mutants, 1), 4),
        "mutants": mutants,
    }
    print(json.dumps(result))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
