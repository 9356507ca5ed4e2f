"""Benchmark a WMTP training step: step time and peak memory, n_future 1 vs 4 vs a naive all-logits loss.

docs/design.md §6 targets, checked here (never in a timed test):

- the n=4 step's peak *working* memory is at most 1.15x the n=1 step's, and far below a naive
  implementation that materialises the `[B, T, n, V]` logits;
- the n=4 step's time is at most (analytic FLOPs ratio n=4 / n=1) x 1.15 of the n=1 step's.

Variants (each a full training step on the same random batch, every position labelled: forward with
labels, backward, AdamW step, `zero_grad(set_to_none=False)`), all with `--layers` blocks in total:

- `n1`: `n_future_tokens=1`, the model's chunked loss (`labels=` forward);
- `n4`: `n_future_tokens=4`, the model's chunked loss;
- `n4_naive`: `n_future_tokens=4`, `return_all_heads=True` forward, the full `[B, T, n, V]` logits and
  one `F.cross_entropy` per head (the straightforward implementation, the comparison point).

Memory. *Working* memory of a step = peak memory during the step minus the memory held before it
(parameters, persistent gradients, AdamW state, the batch); *total* = peak during the step. Each variant
runs in its own fresh subprocess so that variants cannot pollute each other's allocator or caches.

- CUDA: `torch.cuda.reset_peak_memory_stats()` / `max_memory_allocated()` around the step, minus
  `memory_allocated()` before it.
- CPU: there is no allocator peak counter and RSS is coarse (glibc keeps freed chunks, page
  granularity), so one extra, untimed step is measured two ways at once:
  (1) `LiveTensorTracker`, a `TorchDispatchMode` that sees every op output (forward, autograd backward,
  optimizer), counts each new untyped storage once (keyed by `data_ptr`; storages alive before the step
  are excluded) and subtracts its bytes when a `weakref.finalize` on the storage fires: the exact peak of
  live tensor bytes, per phase (forward / backward / optimizer), with what was alive at the peak. It
  cannot see scratch buffers that a kernel allocates and frees internally.
  (2) `AllocatorPeak`: the allocation events of `torch.profiler(profile_memory=True)` (not its
  aggregated tables), which carry c10's running total of CPU-allocator bytes allocated during the
  profile, internal scratch buffers included.
  Working memory = max of the two (they agree to the byte when no kernel scratch dominates). As a
  sanity number the peak RSS increase over the step is reported too (VmHWM after resetting it via
  `/proc/self/clear_refs`, else psutil sampling every 1 ms).

Time. The variants' processes stay alive and are stepped round-robin (`--steps` rounds), so background
load on a shared machine hits every variant alike; the step time is the median over rounds (no tracker
or profiler active), and the time ratio vs n=1 used for the target is the median of the per-round
ratios (ratio of medians and of minima are reported too).

FLOPs (analytic, matmuls only; embedding lookup, norms, softmax and other element-wise work not
counted). Per token: `6 * P_block * L` for the `L` blocks (the same for n=1 and n=4: the number of
blocks is fixed, extra heads replace trunk blocks) plus causal attention `6 * L * T * D`; per target row
of each head, the unembedding costs `8 * V * D` with the chunked loss (forward 2, recomputed logits in
backward 2, grad-input 2, grad-weight 2) and `6 * V * D` on all `T` positions for the naive loss.
The time target is `t(n4) / t(n1) <= FLOPs(n4) / FLOPs(n1) * 1.15`.

CPU default (about 2-4 minutes on 2 cores; hidden 256, 8 blocks, batch 2, seq 512, vocab 32000):

    python scripts/bench_model.py

GPU run with a bigger model (about 0.95B parameters, bfloat16):

    python scripts/bench_model.py --device cuda --hidden 2048 --layers 16 --heads 16 \\
        --seq 2048 --batch 4 --warmup 3 --steps 10 --output bench_results/bench_model_cuda.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    StepMemoryProbe,
    StepTimer,
    environment,
    held_tensors,
    matmul_flops,
    protocol_stream,
    run_interleaved,
    sync,
    wait_for_command,
    worker_argv,
)
from bench_report import (  # noqa: E402
    MB,
    add_tiny_option,
    apply_tiny,
    print_memory_detail,
    print_round_times,
    print_table,
    run_config,
    write_report,
)

VARIANTS: dict[str, dict[str, Any]] = {
    "n1": {"n_future": 1, "naive": False, "label": "n_future=1 (chunked loss)"},
    "n4": {"n_future": 4, "naive": False, "label": "n_future=4 (chunked loss)"},
    "n4_naive": {"n_future": 4, "naive": True, "label": "n_future=4 naive [B,T,n,V] logits"},
}
MEMORY_TOLERANCE = 1.15
TIME_TOLERANCE = 1.15


# --------------------------------------------------------------------------------------------------
# Model, step, FLOPs
# --------------------------------------------------------------------------------------------------


def llama_intermediate(hidden: int, multiple_of: int = 256) -> int:
    """LLaMA's SwiGLU width: `int(2 * 4 * D / 3)` rounded up to `multiple_of`."""
    h = int(2 * 4 * hidden / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def build_model(args: argparse.Namespace, n_future: int, device: torch.device, dtype: torch.dtype):
    """A fresh seeded `WmtpForMultiTokenPrediction` in train mode (same init for equal `n_future`)."""
    from wmtp_hf.configuration_wmtp import WmtpConfig
    from wmtp_hf.modeling_wmtp import WmtpForMultiTokenPrediction

    config = WmtpConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or llama_intermediate(args.hidden),
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        max_position_embeddings=max(args.seq, 2048),
        n_future_tokens=n_future,
        loss_chunk_size=args.loss_chunk_size,
        use_cache=False,
        attn_implementation=args.attn,
    )
    torch.manual_seed(args.seed)
    model = WmtpForMultiTokenPrediction(config).to(device=device, dtype=dtype)
    return model.train()


def analytic_flops(
    args: argparse.Namespace, model: torch.nn.Module, n_future: int, naive: bool
) -> dict[str, float]:
    """Matmul FLOPs of one training step (see module docstring for what is counted)."""
    cfg = model.config
    if naive:
        rows, factor = float(args.batch * args.seq * n_future), 6.0
    else:
        rows, factor = float(sum(args.batch * max(args.seq - 1 - k, 0) for k in range(n_future))), 8.0
    return matmul_flops(
        block_params=sum(p.numel() for p in model.model.layers[0].parameters()),
        n_blocks=len(model.model.layers) + len(model.model.extra_heads),
        attn_width=cfg.num_attention_heads * cfg.head_dim,
        batch=args.batch,
        seq=args.seq,
        vocab=cfg.vocab_size,
        hidden=cfg.hidden_size,
        unembed_rows=rows,
        unembed_factor=factor,
    )


def make_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    naive: bool,
) -> Callable[[Callable[[str], None]], float]:
    """A closure running one full training step; `phase(name)` is called at each phase boundary."""
    n_future = model.config.n_future_tokens
    seq = input_ids.shape[1]

    def step(phase: Callable[[str], None]) -> float:
        phase("forward")
        if naive:
            out = model(input_ids, return_all_heads=True, skip_logits=True)
            logits = out.mtp_logits  # [B, T, n, V]
            head_losses = [
                F.cross_entropy(
                    logits[:, : seq - 1 - k, k].reshape(-1, logits.shape[-1]).float(),
                    labels[:, 1 + k :].reshape(-1),
                    ignore_index=-100,
                )
                for k in range(n_future)
            ]
            loss = torch.stack(head_losses).mean()
            del logits, head_losses
        else:
            out = model(input_ids, labels=labels)
            loss = out.loss
        del out
        phase("backward")
        loss.backward()
        phase("optimizer")
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        value = float(loss.detach())
        phase("end")
        return value

    return step


def measure_memory(
    step: Callable[[Callable[[str], None]], float],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Iterable[torch.Tensor],
    device: torch.device,
) -> dict[str, Any]:
    """Run one (untimed) step and return its peak working / held memory, phase peaks and RSS delta."""
    probe = StepMemoryProbe(device, held_tensors(model, optimizer, batch))
    probe.start()
    step(probe.phase)
    return probe.stop()


def run_worker(args: argparse.Namespace) -> None:
    """One variant in this fresh process: set up, warm up, measure memory, then time steps on request.

    Protocol (one JSON object per line on the original stdout; everything else goes to stderr): the
    worker prints its setup/memory result, then answers each `step` line on stdin with that step's
    wall and CPU time, until `quit`.
    """
    proto = protocol_stream()
    spec = VARIANTS[args.worker]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = build_model(args, spec["n_future"], device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(args.seed + 1)
    input_ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
    labels = input_ids.clone()
    step = make_step(model, optimizer, input_ids, labels, spec["naive"])

    def noop(_: str) -> None:
        return None

    losses = [step(noop) for _ in range(max(args.warmup, 1))]  # >= 1: AdamW state exists before measuring
    sync(device)
    result = {
        "variant": args.worker,
        "label": spec["label"],
        "n_future": spec["n_future"],
        "naive": spec["naive"],
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_blocks": len(model.model.layers) + len(model.model.extra_heads),
        "first_loss": losses[0],
        "flops": analytic_flops(args, model, spec["n_future"], spec["naive"]),
        "threads": torch.get_num_threads(),
        **measure_memory(step, model, optimizer, (input_ids, labels), device),
    }
    proto.write(json.dumps(result) + "\n")
    timer = StepTimer(device)
    while wait_for_command():
        timer.start()
        step(noop)
        proto.write(json.dumps(timer.stop()) + "\n")


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="default: fp32 CPU, bf16 CUDA"
    )
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=None, help="default: LLaMA formula (multiple of 256)")
    p.add_argument(
        "--layers", type=int, default=8, help="total blocks (trunk + heads), same for all variants"
    )
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed rounds (one step of each variant per round)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--loss-chunk-size", type=int, default=1024, help="WmtpConfig.loss_chunk_size")
    p.add_argument("--attn", default="sdpa", help="attn_implementation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--output", type=Path, default=Path("bench_results/bench_model.json"))
    p.add_argument("--worker", choices=list(VARIANTS), default=None, help=argparse.SUPPRESS)
    add_tiny_option(p)
    args = apply_tiny(p.parse_args(argv), hidden=32, layers=5, heads=2, vocab=128, seq=16, batch=1, steps=1,
                      warmup=1, loss_chunk_size=64)  # fmt: skip
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    if "n1" not in args.variants:
        args.variants.insert(0, "n1")
    return args


def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each variant in its own process (memory measured alone), timed interleaved round-robin."""
    argv = worker_argv(args, exclude=("worker", "variants", "output"))
    results = run_interleaved(__file__, args.variants, argv, args.steps, tag="bench_model")
    for r in results.values():
        r["tokens_per_s"] = args.batch * args.seq / r["step_time_median_s"]
    return results


def summarise(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratios vs n=1 and pass/fail of each docs/design.md §6 target."""
    base = results["n1"]
    for r in results.values():
        paired = [a["wall_s"] / b["wall_s"] for a, b in zip(r["steps"], base["steps"], strict=True)]
        r["time_ratio_vs_n1_per_round"] = paired
        r["time_ratio_vs_n1"] = statistics.median(paired)
        r["time_ratio_vs_n1_of_medians"] = r["step_time_median_s"] / base["step_time_median_s"]
        r["time_ratio_vs_n1_of_mins"] = r["step_time_min_s"] / base["step_time_min_s"]
        r["working_memory_ratio_vs_n1"] = r["peak_working_bytes"] / base["peak_working_bytes"]
        r["total_memory_ratio_vs_n1"] = r["peak_total_bytes"] / base["peak_total_bytes"]
        r["flops_ratio_vs_n1"] = r["flops"]["total"] / base["flops"]["total"]
    targets: dict[str, Any] = {}
    if "n4" in results:
        n4 = results["n4"]
        allowed = n4["flops_ratio_vs_n1"] * TIME_TOLERANCE
        targets["n4_memory"] = {
            "measured_ratio": n4["working_memory_ratio_vs_n1"],
            "allowed_ratio": MEMORY_TOLERANCE,
            "pass": n4["working_memory_ratio_vs_n1"] <= MEMORY_TOLERANCE,
        }
        targets["n4_time"] = {
            "measured_ratio": n4["time_ratio_vs_n1"],
            "ratio_of_medians": n4["time_ratio_vs_n1_of_medians"],
            "ratio_of_mins": n4["time_ratio_vs_n1_of_mins"],
            "flops_ratio": n4["flops_ratio_vs_n1"],
            "allowed_ratio": allowed,
            "pass": n4["time_ratio_vs_n1"] <= allowed,
        }
    if "n4" in results and "n4_naive" in results:
        naive = results["n4_naive"]
        targets["n4_below_naive_memory"] = {
            "naive_ratio_vs_n1": naive["working_memory_ratio_vs_n1"],
            "n4_over_naive": results["n4"]["peak_working_bytes"] / naive["peak_working_bytes"],
            "pass": results["n4"]["peak_working_bytes"] < naive["peak_working_bytes"],
        }
        targets["loss_check_n4_vs_naive_first_step"] = {
            "abs_diff": abs(results["n4"]["first_loss"] - naive["first_loss"]),
        }
    return targets


def print_results(
    args: argparse.Namespace, results: dict[str, dict[str, Any]], targets: dict[str, Any]
) -> None:
    print(
        f"\ndevice={args.device} dtype={args.dtype} hidden={args.hidden} blocks={args.layers} "
        f"heads={args.heads} vocab={args.vocab} seq={args.seq} batch={args.batch} steps={args.steps}"
    )
    columns = ["variant:<36", "step ms:>10", "tokens/s:>10", "work MB:>10", "total MB:>10", "RSS d MB:>10",
               "time x:>8", "mem x:>8", "FLOPs x:>9"]  # fmt: skip
    print_table(columns, [
        [r["label"], f"{r['step_time_median_s'] * 1e3:.0f}", f"{r['tokens_per_s']:.0f}",
         f"{r['peak_working_bytes'] / MB:.1f}", f"{r['peak_total_bytes'] / MB:.1f}",
         "-" if r["rss_delta_bytes"] is None else f"{r['rss_delta_bytes'] / MB:.0f}",
         f"{r['time_ratio_vs_n1']:.2f}", f"{r['working_memory_ratio_vs_n1']:.2f}", f"{r['flops_ratio_vs_n1']:.2f}"]
        for r in results.values()
    ])  # fmt: skip
    print_memory_detail(results, 10, loss=False)
    print_round_times(results, 10, "step times (s) per round:", scale=1)
    print("\ntargets (docs/design.md §6):")
    if "n4_memory" in targets:
        t = targets["n4_memory"]
        print(
            f"  n4 peak working memory {t['measured_ratio']:.3f}x n1 (<= {t['allowed_ratio']:.2f}): "
            f"{'PASS' if t['pass'] else 'FAIL'}"
        )
        t = targets["n4_time"]
        print(
            f"  n4 step time {t['measured_ratio']:.3f}x n1 (<= FLOPs {t['flops_ratio']:.3f} x {TIME_TOLERANCE} = "
            f"{t['allowed_ratio']:.3f}): {'PASS' if t['pass'] else 'FAIL'}  [median of per-round ratios; "
            f"ratio of medians {t['ratio_of_medians']:.3f}, of minima {t['ratio_of_mins']:.3f}]"
        )
    if "n4_below_naive_memory" in targets:
        t = targets["n4_below_naive_memory"]
        print(
            f"  naive working memory {t['naive_ratio_vs_n1']:.2f}x n1; n4 = {t['n4_over_naive']:.2f}x naive: "
            f"{'PASS' if t['pass'] else 'FAIL'}"
        )
        d = targets["loss_check_n4_vs_naive_first_step"]["abs_diff"]
        print(f"  first-step loss |n4 - naive| = {d:.2e} (same init, same batch)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        run_worker(args)
        return 0
    results = run_all(args)
    targets = summarise(args, results)
    print_results(args, results, targets)
    config = run_config(args, exclude=("worker",))
    print()
    write_report(
        args.output, {"config": config, **environment(args.device), "results": results, "targets": targets}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
