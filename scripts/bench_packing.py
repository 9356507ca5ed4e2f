"""Benchmark packing (padding-free batches, docs/training.md "Packing") against right padding, in one run.

For each dataset x tokenizer x stage x batch size, the same batches of the same rows go through the stage's
real loss (`Trainer.compute_loss`, on the micro model with the tokenizer's vocabulary) and its backward,
once right-padded and once packed (`WmtpDataCollator(packing=True)`), alternating round by round so load
on the machine hits both alike. Reported:

- padded fraction: padding tokens / all tokens of the batches, over every batch of the run order (packed:
  always 0, no padding is made);
- non-padding tokens/s: the non-padding tokens of the timed batches / their summed wall time (forward +
  backward of the stage loss; the optimizer step, identical in both, is left out);
- packed/padded: median over rounds of the paired step-time ratio padded / packed (same batch, same load),
  i.e. the gain in non-padding tokens/s; and that the packed loss equals the padded one;
- the same ratio on the process's CPU time (`... _cpu` in the JSON, "(CPU time)" in the table): on a CPU
  shared with other jobs, wall time also counts the time the step waited for a core, CPU time only the
  work (run with 1 thread, OMP_NUM_THREADS=1, for it to mean that). The goal is judged on wall time.

Datasets: the offline training rows (baseline's order: correct rows, seeded shuffle) and the CodeContests
sample in `../shared/data` (30 real problems; the file has no solutions, so each row is the problem's real
prompt with an empty response, i.e. the EOS; rows in a seeded shuffle). Tokenizers: the micro tokenizer
(2048 entries) and SmolLM2's (49152, the fetched `smollm2-135m` or --smol-tokenizer; skipped with the
reason when absent). Models: the micro model with each tokenizer's vocabulary, and SmolLM2-135M itself as
a 4-head WMTP model with its own tokenizer (`--models`, at `--real-batches`). Stages: baseline and rho1 (with cached reference losses: a `ref_token_losses` column of
seeded values, as `python -m wmtp_hf.data reference-losses` would add; selecting costs the same).

Goals (issue 27, CPU): padded fraction <= 5%, packed/padded >= 1.5 at batch 8.
CPU default (tens of minutes on 2 cores; SmolLM2-135M alone ~20 min): `python scripts/bench_packing.py`;
`--models micro` for the micro model only, `--models smollm2 --tokenizers smollm2` for SmolLM2 only.
GPU: `python scripts/bench_packing.py --device cuda --steps 10`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import StepTimer, environment  # noqa: E402
from bench_report import add_tiny_option, apply_tiny, print_table, run_config, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CODECONTESTS = REPO.parent / "shared" / "data" / "code_contests" / "train_sample30_partial.jsonl"
SMOL_NAME = "smollm2-135m"
GOAL_PADDED_FRACTION = 0.05
GOAL_SPEEDUP_BATCH8 = 1.5


# --------------------------------------------------------------------------------------------------
# Rows and tokenizers
# --------------------------------------------------------------------------------------------------


def load_tokenizers(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """`({name: tokenizer}, {name: why skipped})` for `args.tokenizers`."""
    from transformers import AutoTokenizer

    from wmtp_hf.micro import build_micro_tokenizer
    from wmtp_hf.tokenizer import train_code_tokenizer

    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in args.tokenizers.split(","):
        if name == "micro":
            out[name] = build_micro_tokenizer()
        elif name == "tiny":  # --tiny: a 296-entry BPE trained in a second
            out[name] = train_code_tokenizer(
                ["def f(x):\n    return x + 1\n", "print(i)\n"] * 20, vocab_size=296
            )
        elif name == "smollm2":
            folder = smol_folder("llama", args.smol_tokenizer)
            if folder is None or not (folder / "tokenizer.json").is_file():
                skipped[name] = f"no tokenizer at {folder} (python -m wmtp_hf.models fetch {SMOL_NAME})"
                continue
            out[name] = AutoTokenizer.from_pretrained(folder)
        else:
            raise SystemExit(f"--tokenizers: unknown tokenizer '{name}' (micro, smollm2, tiny)")
        if out[name].pad_token_id is None:
            out[name].pad_token = out[name].eos_token
    return out, skipped


def smol_folder(kind: str, given: str | None = None) -> Path | None:
    """SmolLM2's `llama` (tokenizer) or `wmtp` (4-head model) folder: `given`, else the fetched one, else None."""
    if given:
        return Path(given)
    from wmtp_hf.models.fetch import fetched

    folders = fetched(SMOL_NAME)
    return None if folders is None else Path(getattr(folders, kind))


def dataset_rows(name: str, args: argparse.Namespace) -> tuple[Any, str | None]:
    """Unified rows of a bench dataset, or `(None, why)` when it is absent."""
    import datasets

    from wmtp_hf.data import load_source

    if name == "offline":
        rows = load_source("offline", split="train")
        return rows.filter(lambda r: r["is_correct"]), None  # baseline / rho1 train on correct rows
    if name == "codecontests":
        path = Path(args.codecontests)
        if not path.is_file():
            return None, f"{path} absent (see ../shared/data/README.md)"
        from wmtp_hf.data.sources.codecontests import iter_records, problem_rows_from

        return datasets.Dataset.from_list(list(problem_rows_from(iter_records(path)))), None
    raise SystemExit(f"--datasets: unknown dataset '{name}' (offline, codecontests)")


def tokenized(rows: Any, tokenizer: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Tokenized features in a seeded order (the first `--max-rows`), with a seeded `ref_token_losses`."""
    from wmtp_hf.data import tokenize_dataset
    from wmtp_hf.data.prompt_formats import format_prompt

    if all(not out for out in rows["output"]):  # CodeContests sample: the real prompt, then only the EOS
        data = []
        for row in rows:
            prompt = tokenizer(format_prompt(row))["input_ids"]
            if len(prompt) < args.max_length:
                data.append({"input_ids": [*prompt, tokenizer.eos_token_id], "prompt_length": len(prompt)})
    else:
        data, _ = tokenize_dataset(rows, tokenizer, max_length=args.max_length)
    order = np.random.default_rng(args.seed).permutation(len(data))[: args.max_rows]
    rng = np.random.default_rng(args.seed + 1)
    features = []
    for i in order.tolist():
        row = shrunk(data[i], args.shrink)
        losses = rng.uniform(0.0, 4.0, len(row["input_ids"])).astype(np.float32)
        losses[: row["prompt_length"]] = 0.0
        features.append({"input_ids": row["input_ids"], "prompt_length": row["prompt_length"],
                         "is_correct": True, "difficulty": -1, "ref_token_losses": losses.tolist()})  # fmt: skip
    return features


def shrunk(row: dict[str, Any], factor: int) -> dict[str, Any]:
    """`row` cut to its first 1/`factor` of tokens, the last kept a target (--tiny: short rows whose lengths
    still differ, so its steps take milliseconds; the numbers mean nothing)."""
    if factor <= 1:
        return row
    n = max(2, len(row["input_ids"]) // factor)
    return {"input_ids": row["input_ids"][:n], "prompt_length": min(row["prompt_length"] // factor, n - 1)}


def batches_of(features: list[dict[str, Any]], batch: int) -> list[list[dict[str, Any]]]:
    return [features[i : i + batch] for i in range(0, len(features), batch)]


def padded_fraction(features: list[dict[str, Any]], batch: int) -> tuple[float, int, int]:
    """`(padding / all tokens, non-padding, padding)` of right-padded batches of `batch` rows."""
    real = pad = 0
    for part in batches_of(features, batch):
        lengths = [len(f["input_ids"]) for f in part]
        real += sum(lengths)
        pad += len(lengths) * max(lengths) - sum(lengths)
    return pad / max(real + pad, 1), real, pad


# --------------------------------------------------------------------------------------------------
# The stage's loss, padded and packed
# --------------------------------------------------------------------------------------------------


def build_model(model_name: str, tokenizer: Any, args: argparse.Namespace):
    """The micro model (vocabulary = the tokenizer's), or SmolLM2-135M as a 4-head WMTP model, seeded."""
    from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction
    from wmtp_hf.micro import MICRO_CONFIG

    torch.manual_seed(args.seed)
    if model_name == "smollm2":
        folder = smol_folder("wmtp", args.smol_model)
        return WmtpForMultiTokenPrediction.from_pretrained(folder, attn_implementation="sdpa").to(args.device)
    sizes = {**MICRO_CONFIG, "vocab_size": len(tokenizer), "max_position_embeddings": args.max_length}
    if args.tiny:
        sizes.update(hidden_size=32, intermediate_size=64, num_hidden_layers=4, n_future_tokens=2)
    config = WmtpConfig(**sizes, pad_token_id=tokenizer.pad_token_id)
    return WmtpForMultiTokenPrediction(config).to(args.device)


def build_trainer(stage: str, model: Any, features: list[dict[str, Any]], tmp: Path, device: str):
    """The stage's trainer around `model` (its loss is what is timed)."""
    import datasets

    from wmtp_hf.train.stages import STAGE_TRAINERS, build_config

    overrides = {"output_dir": str(tmp / stage), "report_to": "none", "use_cpu": device == "cpu"}
    config = build_config(stage, None, overrides)
    rows = datasets.Dataset.from_list(features[:2])
    extra = {"reference": None} if stage == "rho1" else {}
    return STAGE_TRAINERS[stage](model=model, args=config, train_dataset=rows, **extra)


def step(trainer: Any, batch: dict[str, Any], timer: StepTimer) -> tuple[dict[str, float], float]:
    """One forward + backward of the stage loss: `({wall_s, cpu_s}, loss)`."""
    model = trainer.model
    batch = trainer._prepare_inputs(batch)
    timer.start()
    counts = trainer._get_num_items_in_batch([batch], trainer.args.device)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=counts)
    loss.backward()
    times = timer.stop()
    model.zero_grad(set_to_none=True)
    return times, float(loss.detach())


def measure(
    trainer: Any, features: list[dict[str, Any]], batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Padded vs packed on the first `--steps` batches (after one warm-up round), alternating."""
    from wmtp_hf.data import WmtpDataCollator

    flash = trainer.model.config._attn_implementation.startswith("flash_attention")  # varlen arguments too
    collators = {
        "padded": WmtpDataCollator(pad_token_id=0),
        "packed": WmtpDataCollator(pad_token_id=0, packing=True, flash_attn_kwargs=flash),
    }
    parts = [p for p in batches_of(features, batch) if len(p) == batch] or batches_of(features, batch)[:1]
    timer = StepTimer(torch.device(args.device))
    trainer.model.train()
    for collate in collators.values():  # warm-up
        step(trainer, collate(parts[0]), timer)
    rounds = [parts[i % len(parts)] for i in range(args.steps)]
    times: dict[str, dict[str, list[float]]] = {n: {"wall_s": [], "cpu_s": []} for n in collators}
    loss_diff = 0.0
    real = 0
    for part in rounds:
        losses = {}
        for name, collate in collators.items():
            took, losses[name] = step(trainer, collate(part), timer)
            for clock in ("wall_s", "cpu_s"):
                times[name][clock].append(took[clock])
        loss_diff = max(
            loss_diff, abs(losses["packed"] - losses["padded"]) / max(abs(losses["padded"]), 1e-9)
        )
        real += sum(len(f["input_ids"]) for f in part)
    out: dict[str, Any] = {}
    for clock, suffix in (("wall_s", ""), ("cpu_s", "_cpu")):
        padded, packed = times["padded"][clock], times["packed"][clock]
        out[f"padded_tokens_per_s{suffix}"] = real / sum(padded)
        out[f"packed_tokens_per_s{suffix}"] = real / sum(packed)
        out[f"speedup{suffix}"] = statistics.median(a / b for a, b in zip(padded, packed, strict=True))
    out["max_rel_loss_diff"] = loss_diff
    out["step_time_s"] = {name: statistics.median(t["wall_s"]) for name, t in times.items()}
    return out


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def bench_case(
    case: dict[str, Any], trainer: Any, features: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """One row of the report: `case` (dataset, model, tokenizer, stage, batch) and its measurements."""
    batch = case["batch"]
    print(f"[bench_packing] {' / '.join(str(v) for v in case.values())} ...", flush=True)
    fraction, real, pad = padded_fraction(features, batch)
    result = {**case, "rows": len(features), "padded_fraction_padded": fraction, "padded_fraction_packed": 0.0,
              "tokens": {"non_padding": real, "padding": pad}, **measure(trainer, features, batch, args)}  # fmt: skip
    speed_ok = batch != 8 or result["speedup"] >= GOAL_SPEEDUP_BATCH8
    result["within_goal"] = result["padded_fraction_packed"] <= GOAL_PADDED_FRACTION and speed_ok
    gain = f"packed/padded {result['speedup']:.2f} (CPU time {result['speedup_cpu']:.2f})"
    print(f"  padded fraction {fraction:.3f} -> 0, {gain}", flush=True)
    return result


def models_for(tok_name: str, args: argparse.Namespace, skipped: dict[str, str]) -> list[str]:
    """The `--models` to run with tokenizer `tok_name`: the micro model with any, SmolLM2 with its own."""
    out = []
    for name in args.models.split(","):
        if name == "micro" or tok_name == "smollm2":
            out.append(name)
    if "smollm2" in out and smol_folder("wmtp", args.smol_model) is None:
        skipped["smollm2 model"] = f"not fetched (python -m wmtp_hf.models fetch {SMOL_NAME})"
        out.remove("smollm2")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, default=3, help="timed rounds (one padded and one packed step each)")
    p.add_argument("--batches", default="8,32", help="batch sizes (examples per batch)")
    p.add_argument("--stages", default="baseline,rho1")
    p.add_argument("--datasets", default="offline,codecontests")
    p.add_argument("--tokenizers", default="micro,smollm2")
    p.add_argument(
        "--models",
        default="micro,smollm2",
        help="micro (any tokenizer's vocabulary), smollm2 (SmolLM2-135M, 4 heads, its tokenizer)",
    )
    p.add_argument("--real-batches", default="8", help="batch sizes for the smollm2 model (slow on CPU)")
    p.add_argument(
        "--smol-tokenizer", default=None, help=f"SmolLM2's tokenizer folder (default: {SMOL_NAME})"
    )
    p.add_argument("--smol-model", default=None, help=f"SmolLM2's WMTP folder (default: {SMOL_NAME})")
    p.add_argument("--codecontests", default=str(CODECONTESTS), help="the CodeContests sample (JSONL)")
    p.add_argument("--max-length", type=int, default=2048, help="longer rows are dropped, as in training")
    p.add_argument("--max-rows", type=int, default=None, help="rows per dataset (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--shrink", type=int, default=1, help="keep the first 1/N of each row's tokens (--tiny: 8)"
    )
    p.add_argument("--output", type=Path, default=Path("bench_results/bench_packing.json"))
    add_tiny_option(p)
    tiny = dict(
        steps=1, batches="2,4", tokenizers="tiny", max_rows=6, max_length=4096, models="micro", shrink=8
    )
    args = apply_tiny(p.parse_args(argv), **tiny)
    unknown = set(args.models.split(",")) - {"micro", "smollm2"}
    if unknown:
        raise SystemExit(f"--models: unknown model '{sorted(unknown)[0]}' (micro, smollm2)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    tokenizers, skipped = load_tokenizers(args)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_packing.") as tmp:
        for data_name in args.datasets.split(","):
            rows, why = dataset_rows(data_name, args)
            if rows is None:
                skipped[data_name] = why
                continue
            for tok_name, tokenizer in tokenizers.items():
                features = tokenized(rows, tokenizer, args)
                if not features:
                    skipped[f"{data_name}/{tok_name}"] = f"no row within --max-length {args.max_length}"
                    continue
                for model_name in models_for(tok_name, args, skipped):
                    batches = args.real_batches if model_name == "smollm2" else args.batches
                    for stage in args.stages.split(","):
                        model = build_model(model_name, tokenizer, args)
                        trainer = build_trainer(stage, model, features, Path(tmp), args.device)
                        for batch in (int(b) for b in batches.split(",")):
                            case = {"dataset": data_name, "model": model_name, "tokenizer": tok_name,
                                    "stage": stage, "batch": batch}  # fmt: skip
                            results.append(bench_case(case, trainer, features, args))
    print()
    print_table(
        ["dataset:<14", "model:<8", "tokenizer:<10", "stage:<10", "batch:>6", "padded frac:>12", "packed frac:>12",
         "padded tok/s:>13", "packed tok/s:>13", "packed/padded:>14", "(CPU time):>11", "loss diff:>10"],
        [[r["dataset"], r["model"], r["tokenizer"], r["stage"], r["batch"], f"{r['padded_fraction_padded']:.3f}",
          f"{r['padded_fraction_packed']:.3f}", f"{r['padded_tokens_per_s']:.0f}", f"{r['packed_tokens_per_s']:.0f}",
          f"{r['speedup']:.2f}", f"{r['speedup_cpu']:.2f}", f"{r['max_rel_loss_diff']:.1e}"] for r in results],
    )  # fmt: skip
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    wall = time.perf_counter() - start
    print(f"\ngoals: padded fraction <= {GOAL_PADDED_FRACTION}, packed/padded >= {GOAL_SPEEDUP_BATCH8} at batch 8; "
          f"met: {all(r['within_goal'] for r in results)}; total wall time {wall:.0f} s")  # fmt: skip
    report = {
        "config": run_config(args),
        **environment(args.device),
        "goals": {"padded_fraction_max": GOAL_PADDED_FRACTION, "speedup_batch8_min": GOAL_SPEEDUP_BATCH8},
        "within_goal": all(r["within_goal"] for r in results),
        "skipped": skipped,
        "wall_time_s": wall,
        "results": results,
    }
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
