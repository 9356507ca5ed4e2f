"""Benchmark training steps under the real `Trainer` stack: micro WMTP n_future 4 and 1 vs a plain LLaMA.

Variants (the micro preset, `wmtp_hf.micro.MICRO_CONFIG`, with the same total number of blocks):

- `llama`: `transformers.LlamaForCausalLM` with the same hidden / intermediate / heads / vocab and
  `num_hidden_layers` = the micro model's total blocks, built as `to_llama()` of the n=1 model (so the
  same parameters and the same initial weights), trained by a plain `transformers.Trainer` with its
  standard loss (full `[B, T, V]` logits, shifted cross-entropy);
- `n1`: `WmtpForMultiTokenPrediction` with `n_future_tokens=1`, trained by `BaselineTrainer`;
- `n4`: the micro preset itself (`n_future_tokens=4`), loaded by `wmtp_hf.train.components.load_model`
  and trained by `BaselineTrainer`.

All use the same `BaselineConfig` (`build_config("baseline", ...)`: report_to none, save_strategy no,
logging off, `max_steps` = warm-up + memory + timed steps), the offline baseline data from
`build_train_dataset` in the same sequential order, and `WmtpDataCollator` (LLaMA: `reward` and
`difficulty` dropped by a thin wrapper). Round i therefore trains the same batch in every variant (the
offline baseline rows, 133 correct solutions, make 17 batches of 8 (the last of 5); runs longer than that
repeat them epoch by epoch, in the same order).

Measuring (helpers shared with `bench_model.py` in `bench_common.py`). Each variant runs in its own fresh
process; a `TrainerCallback` drives it:

- warm-up: `--warmup` steps, untimed (AdamW state exists afterwards);
- memory: the next `--memory-steps` steps run under `StepMemoryProbe` (CPU: max of a live-tensor
  `TorchDispatchMode` tracker and the CPU-allocator events of the profiler, plus the RSS increase as a
  sanity number; CUDA: `max_memory_allocated`), phases `data` (fetch + collate + the Trainer's
  logging/saving checks), `forward` (model forward), `loss+backward` (the trainer's loss, backward, grad
  clipping), `optimizer`, `sched+zero_grad`. Working memory = peak minus what persists across steps
  (parameters and AdamW state; the Trainer frees gradients every step, so they count as working memory);
  total = both;
- timing: then the callback blocks in `on_step_end` until the driver sends `step`, and the step's wall
  time runs from there to the next `on_step_end`: one full Trainer iteration (data, forward, loss,
  backward, clipping, optimizer, scheduler, zero_grad). The driver steps the variants round-robin
  (`--steps` rounds), so machine load affects all alike.

tokens/s = non-padding tokens (attention-mask sum, prompt included) of the timed steps / their summed wall
time; ratios vs LLaMA and vs n=1 of step time are medians of per-round ratios (same batch, same load).
Analytic matmul FLOPs per step use the real batch: blocks and attention on all `B x T` positions, the
unembedding on `B x T` rows at 6 FLOPs/param for LLaMA (all logits), and on the per-head target rows at
8 FLOPs/param for WMTP's chunked loss (the backward recomputes logits).

CPU default (about 3 minutes on 2 cores): `python scripts/bench_train.py`.
GPU: `python scripts/bench_train.py --device cuda --steps 50`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import torch
from transformers import Trainer, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    StepMemoryProbe,
    StepTimer,
    environment,
    held_tensors,
    matmul_flops,
    paired_ratio,
    protocol_stream,
    run_interleaved,
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
    "llama": {"n_future": None, "label": "LlamaForCausalLM + Trainer"},
    "n1": {"n_future": 1, "label": "WMTP n=1 + BaselineTrainer"},
    "n4": {"n_future": 4, "label": "WMTP n=4 + BaselineTrainer"},
}


# --------------------------------------------------------------------------------------------------
# Worker: one variant under the real Trainer
# --------------------------------------------------------------------------------------------------


class DropExtrasCollator:
    """`WmtpDataCollator` output without the stage-only entries (`reward`, `difficulty`) for a plain model."""

    def __init__(self, collator: Any, drop: tuple[str, ...]) -> None:
        self.collator = collator
        self.drop = drop

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(features)
        return {k: v for k, v in batch.items() if k not in self.drop}


class BatchStats:
    """Forward pre-hook recording the shape, non-padding tokens and loss rows of the batch the model sees."""

    def __init__(self, model: torch.nn.Module, n_future: int | None) -> None:
        cfg = model.config
        layers = model.model.layers
        self.n_future = n_future
        self.flops_args = {
            "block_params": sum(p.numel() for p in layers[0].parameters()),
            "n_blocks": len(layers) + len(getattr(model.model, "extra_heads", ())),
            "attn_width": cfg.num_attention_heads * cfg.head_dim,
            "vocab": cfg.vocab_size,
            "hidden": cfg.hidden_size,
        }
        self.last: dict[str, Any] = {}
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        from wmtp_hf.losses import mtp_target_mask

        ids, mask, labels = kwargs["input_ids"], kwargs.get("attention_mask"), kwargs["labels"]
        batch, seq = ids.shape
        if self.n_future is None:  # plain LM: logits (and CE) on every position
            rows, factor, targets = float(batch * seq), 6.0, int((labels[:, 1:] != -100).sum())
        else:
            targets = int(mtp_target_mask(labels, self.n_future).sum())
            rows, factor = float(targets), 8.0
        flops = matmul_flops(
            batch=batch, seq=seq, unembed_rows=rows, unembed_factor=factor, **self.flops_args
        )
        self.last = {
            "batch": batch,
            "seq": seq,
            "tokens": int(mask.sum()) if mask is not None else batch * seq,
            "loss_targets": targets,
            "flops": flops["total"],
        }


class BenchCallback(TrainerCallback):
    """Warm-up, memory probe, then one timed step per `step` command (see the module docstring)."""

    def __init__(
        self,
        proto: IO[str],
        device: torch.device,
        warmup: int,
        memory_steps: int,
        stats: BatchStats,
        info: dict[str, Any],
    ) -> None:
        self.proto = proto
        self.device = device
        self.memory_start = warmup
        self.timing_start = warmup + memory_steps
        self.stats = stats
        self.info = info
        self.probe: StepMemoryProbe | None = None
        self.timer = StepTimer(device)
        self.memory_batches: list[dict[str, Any]] = []
        self.losses: list[float] = []

    def forward_done(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        """Forward hook on the model: the forward phase ends, keep the first losses as a sanity check."""
        if self.probe is not None:
            self.probe.phase("loss+backward")
        if len(self.losses) < 1 and getattr(output, "loss", None) is not None:
            self.losses.append(float(output.loss.detach()))

    def _phase(self, name: str) -> None:
        if self.probe is not None:
            self.probe.phase(name)

    def on_step_begin(self, args, state, control, **kwargs):
        self._phase("forward")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._phase("optimizer")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._phase("sched+zero_grad")

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        if self.probe is not None:
            self.memory_batches.append(self.stats.last)
        if step == self.memory_start:
            self.probe = StepMemoryProbe(self.device, held_tensors(model, optimizer))
            self.probe.start()
            self.probe.phase("data")
            return control
        if step < self.timing_start:
            return control
        if step == self.timing_start:
            memory = self.probe.stop()
            self.probe = None
            self.proto.write(
                json.dumps(
                    {
                        **self.info,
                        "first_loss": self.losses[0],
                        "memory_batches": self.memory_batches,
                        **memory,
                    }
                )
                + "\n"
            )
        else:
            self.proto.write(json.dumps({**self.timer.stop(), **self.stats.last}) + "\n")
        if step < state.max_steps:
            if not wait_for_command():
                control.should_training_stop = True
                return control
            self.timer.start()
        return control


def build_variant(variant: str, config: Any, tokenizer: Any) -> torch.nn.Module:
    """The variant's model: n4 through `load_model` (the micro preset), n1 fresh with the same seed, LLaMA
    as `to_llama()` of the n1 model (same parameters, same initial weights)."""
    from wmtp_hf.configuration_wmtp import WmtpConfig
    from wmtp_hf.modeling_wmtp import WmtpForMultiTokenPrediction
    from wmtp_hf.train.components import load_model

    if variant == "n4":
        return load_model(config, config.model_name_or_path, tokenizer)
    wmtp_config = WmtpConfig.from_pretrained(config.model_name_or_path, n_future_tokens=1)
    if config.attn_implementation:
        wmtp_config._attn_implementation = config.attn_implementation
    torch.manual_seed(config.seed)
    model = WmtpForMultiTokenPrediction(wmtp_config)
    return model.to_llama() if variant == "llama" else model


def run_worker(args: argparse.Namespace) -> None:
    """Train one variant for warm-up + memory + timed steps, reporting over the worker protocol."""
    from wmtp_hf.data import WmtpDataCollator
    from wmtp_hf.train.components import build_train_dataset, load_tokenizer
    from wmtp_hf.train.stages import BaselineTrainer, build_config
    from wmtp_hf.train.trainer import BATCH_EXTRAS

    proto = protocol_stream()
    run_dir = tempfile.mkdtemp(prefix=f"bench_train.{args.worker}.")  # save_strategy no: stays empty
    spec = VARIANTS[args.worker]
    device = torch.device(args.device)
    config = build_config(
        "baseline",
        overrides={
            "model_name_or_path": args.model_dir,
            "output_dir": run_dir,
            "report_to": "none",
            "save_strategy": "no",
            "logging_strategy": "no",
            "disable_tqdm": True,
            "max_steps": args.warmup + args.memory_steps + args.steps,
            "per_device_train_batch_size": args.batch,
            "max_length": args.max_length,
            "seed": args.seed,
            "use_cpu": device.type == "cpu",
        },
    )
    tokenizer = load_tokenizer(config.model_name_or_path)
    dataset, data_report = build_train_dataset(config, tokenizer, BaselineTrainer.sample_order)
    model = build_variant(args.worker, config, tokenizer)
    stats = BatchStats(model, spec["n_future"])
    info = {
        "variant": args.worker,
        "label": spec["label"],
        "model_class": type(model).__name__,
        "trainer_class": "Trainer" if spec["n_future"] is None else "BaselineTrainer",
        "n_future": spec["n_future"],
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_blocks": stats.flops_args["n_blocks"],
        "data": data_report,
        "threads": torch.get_num_threads(),
    }
    callback = BenchCallback(proto, device, args.warmup, args.memory_steps, stats, info)
    model.register_forward_hook(callback.forward_done, with_kwargs=True)
    collator = WmtpDataCollator(tokenizer)
    if spec["n_future"] is None:
        trainer_cls, collator = Trainer, DropExtrasCollator(collator, BATCH_EXTRAS)
    else:
        trainer_cls = BaselineTrainer
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    shutil.rmtree(run_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, default=80, help="timed rounds (one step of each variant per round)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least 1)")
    p.add_argument("--memory-steps", type=int, default=2, help="untimed steps under the memory probe")
    p.add_argument("--batch", type=int, default=8, help="per_device_train_batch_size")
    p.add_argument(
        "--max-length", type=int, default=1024, help="BaselineConfig.max_length (longer rows dropped)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--model-dir", default=None, help="micro model folder (default: built in a temp dir)")
    p.add_argument("--output", type=Path, default=Path("bench_results/bench_train.json"))
    p.add_argument("--worker", choices=list(VARIANTS), default=None, help=argparse.SUPPRESS)
    add_tiny_option(p)
    args = apply_tiny(p.parse_args(argv), steps=1, warmup=1, memory_steps=1, batch=2, max_length=256)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.warmup < 1 or args.memory_steps < 1 or args.steps < 1:
        p.error("--warmup, --memory-steps and --steps must be at least 1")
    for base in ("n1", "llama"):
        if base not in args.variants:
            args.variants.insert(0, base)
    return args


def summarise(results: dict[str, dict[str, Any]]) -> None:
    """Add tokens/s, FLOP rates and the ratios vs LLaMA and vs n=1 to each variant's result."""
    for r in results.values():
        steps = r["steps"]
        wall = sum(s["wall_s"] for s in steps)
        r["tokens"] = sum(s["tokens"] for s in steps)
        r["tokens_per_s"] = r["tokens"] / wall
        r["flops_per_s"] = sum(s["flops"] for s in steps) / wall
    for base_name in ("llama", "n1"):
        base = results[base_name]
        for r in results.values():
            r[f"time_ratio_vs_{base_name}"] = paired_ratio(r["steps"], base["steps"], lambda s: s["wall_s"])
            r[f"time_ratio_vs_{base_name}_of_medians"] = r["step_time_median_s"] / base["step_time_median_s"]
            r[f"tokens_per_s_ratio_vs_{base_name}"] = r["tokens_per_s"] / base["tokens_per_s"]
            r[f"flops_ratio_vs_{base_name}"] = paired_ratio(r["steps"], base["steps"], lambda s: s["flops"])
            r[f"total_memory_ratio_vs_{base_name}"] = r["peak_total_bytes"] / base["peak_total_bytes"]
            r[f"working_memory_ratio_vs_{base_name}"] = r["peak_working_bytes"] / base["peak_working_bytes"]


def print_results(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    """The side-by-side table, memory detail and per-round step times."""
    first = next(iter(results.values()))
    widths = [s["seq"] for s in first["steps"]]
    print(
        f"\ndevice={args.device} batch={args.batch} max_length={args.max_length} warmup={args.warmup} "
        f"memory_steps={args.memory_steps} timed_steps={args.steps} threads={first['threads']}; "
        f"padded width per step {min(widths)}-{max(widths)} (median {statistics.median(widths):.0f}), "
        f"{first['tokens'] / len(first['steps']):.0f} non-padding tokens/step"
    )
    columns = ["variant:<30", "params:>9", "tokens/s:>10", "step ms:>9", "peak MB:>9", "work MB:>9",
               "RSS d MB:>9", "speed/L:>9", "time/L:>8", "time/n1:>8", "mem/L:>7", "mem/n1:>7", "FLOPs/L:>8",
               "GFLOP/s:>8"]  # fmt: skip
    print_table(columns, [
        [r["label"], f"{r['num_parameters'] / 1e6:.2f}M", f"{r['tokens_per_s']:.0f}",
         f"{r['step_time_median_s'] * 1e3:.0f}", f"{r['peak_total_bytes'] / MB:.1f}",
         f"{r['peak_working_bytes'] / MB:.1f}",
         "-" if r["rss_delta_bytes"] is None else f"{r['rss_delta_bytes'] / MB:.0f}",
         f"{r['tokens_per_s_ratio_vs_llama']:.2f}", f"{r['time_ratio_vs_llama']:.2f}",
         f"{r['time_ratio_vs_n1']:.2f}", f"{r['total_memory_ratio_vs_llama']:.2f}",
         f"{r['total_memory_ratio_vs_n1']:.2f}", f"{r['flops_ratio_vs_llama']:.2f}", f"{r['flops_per_s'] / 1e9:.2f}"]
        for r in results.values()
    ])  # fmt: skip
    print(
        "\nspeed/L = tokens/s ratio vs LLaMA; time/L, time/n1 = median per-round step-time ratio (same batch); "
        "mem = peak total ratio;\nFLOPs/L = analytic matmul FLOPs ratio vs LLaMA (median per round)"
    )
    print_memory_detail(results, 6)
    print_round_times(results, 6, "step times (ms) per round:")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        run_worker(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        if args.model_dir is None:
            from wmtp_hf.micro import build_micro

            print("[bench_train] building the micro model and tokenizer ...", flush=True)
            args.model_dir = str(build_micro(Path(tmp) / "micro-init", seed=args.seed))
        argv_ = worker_argv(args, exclude=("worker", "variants", "output"))
        results = run_interleaved(__file__, args.variants, argv_, args.steps, tag="bench_train")
    summarise(results)
    print_results(args, results)
    print()
    write_report(args.output, {"config": run_config(args), **environment(args.device), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
