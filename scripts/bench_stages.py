"""Benchmark the training stages vs `baseline`: per-step time and peak memory, same model, data and batch.

Variants (all train a `WmtpForMultiTokenPrediction` with the same weights, through the stage's own
`Trainer` subclass and config, `build_config(stage, None, ...)` with report_to none, save_strategy no,
logging off, eval_strategy no):

- `baseline`: `BaselineTrainer` (uniform MTP loss, every head), the reference of every ratio;
- `critic`: `CriticTrainer`; `CriticTrainer.load_model` adds the (seeded) value head and freezes all
  else, the loss runs the trunk only (`value_only=True`). docs/design.md §6 target: time <= 0.50 x baseline;
- `verifiable`: `VerifiableTrainer` on a critic output: the driver saves `CriticTrainer.load_model` of the
  same model (value head added, `value_head_stage: critic`) and the worker loads it through
  `VerifiableTrainer.load_model`, so every parameter trains (MTP loss on the correct rows weighted by TD
  errors of the value head, plus the value loss). Target: <= 1.10;
- `rho1_live`: `Rho1Trainer(reference=FOLDER)`: the reference is a plain `LlamaForCausalLM`, `to_llama()`
  of the same WMTP model (trunk + head 0, the architecture of the micro reference), loaded, frozen and
  run forward on every step by the trainer. Target: <= 1 + F_ref / F_policy + 0.10 with
  F_ref = 2 * (P_ref_blocks * N_pos + P_unembed * N_ref_rows) (reference forward) and
  F_policy = 6 * (P_policy_blocks * N_pos + P_unembed * N_policy_rows) (policy forward + backward), where
  P_*_blocks are the decoder-block parameters (reference: trunk + head 0; policy: trunk + all n heads),
  P_unembed the unembedding's, N_pos = B x T padded positions (every block runs on all of them),
  N_ref_rows the reference's next-token targets and N_policy_rows the targets of all n heads (both
  chunked cross-entropies unembed target rows only); attention scores, norms and embeddings are not
  counted. Computed from the timed batches and printed next to the measured ratio;
- `rho1_cached`: `Rho1Trainer(reference=None)` on the same rows with a `ref_token_losses` column,
  computed once by the driver with `wmtp_hf.reference.compute_reference_column` and the same reference.
  Target: <= 1.05;
- `baseline_lora`, `verifiable_lora`: the same stage with `use_peft: true` (the model wrapped by
  `wmtp_hf.train.lora.wrap_with_lora` as `wmtp_hf.train.run` does: LoRA rank `--lora-r` on every attention and MLP
  projection of trunk and heads; verifiable also trains its value head fully). Compared with their full
  stage (`lora/full`): trainable parameters, peak memory (held + working) and step time. No design bound;
  only `--variants baseline baseline_lora verifiable verifiable_lora` runs just these.

Data: the offline default (`load_source("offline", split="train")`, `tokenize_dataset` with the micro
tokenizer), a fixed seeded selection of `--batches` batches of `--batch` rows, each half correct and half
incorrect solutions (alternating), collated once by `WmtpDataCollator`. Every variant trains exactly these
batches in the same order, so per-step work differs only by stage.

Model: the micro preset (`wmtp_hf.micro.build_micro`: 8 blocks = 4 trunk + 4 heads, hidden 128, vocab
2048, ~2.0M parameters); `--hidden-size 256` etc. scales it (head dim 32, SwiGLU width 8/3, same blocks).

Measuring (helpers shared with `bench_train.py` / `bench_model.py` in `bench_common.py`). Each variant
runs in its own fresh process (`bench_common.Worker`) that builds its trainer as `wmtp_hf.train.run`
does (model from the stage's `load_model`, `WmtpDataCollator(tokenizer)`, `processing_class=tokenizer`),
calls `trainer.create_optimizer_and_scheduler`, and then runs steps itself. One step is what
`Trainer`'s inner loop does per optimizer step on a prepared batch: `trainer._get_num_items_in_batch`
(the stage's window counts), `trainer.training_step(model, batch, counts)` (forward, stage loss,
backward), `trainer._clip_grad_norm` (max_grad_norm 1.0), `optimizer.step()`, `lr_scheduler.step()`,
`model.zero_grad()` and the stage's `on_optimizer_step_end` hook; no data loading or collation.

- warm-up: `--warmup` untimed steps (AdamW state exists afterwards);
- memory: the next `--memory-steps` steps run under `StepMemoryProbe` (CPU: max of a live-tensor
  `TorchDispatchMode` tracker and the CPU-allocator events of the profiler, plus the RSS increase as a
  sanity number; CUDA: `max_memory_allocated`), phases `forward` (until the policy model's forward
  returns), `loss+backward` (stage loss, for rho1_live the reference forward, backward), `optimizer`
  (clipping and AdamW) and `sched+zero_grad`. Held memory = what persists across steps: parameters
  (for rho1_live the reference's too) and AdamW state; working = peak minus held; peak = held + working;
- threads: `--threads 1` by default on CPU. On a small shared machine (2 cores, other jobs running) torch's
  intra-op threads wait at barriers for a descheduled sibling and single steps stall by up to 10x; one
  thread per worker keeps the per-round ratios stable (`--threads 0`: torch's default);
- timing: `--rounds` rounds; in each, every variant in turn (round-robin, so background load hits all
  alike) runs `--steps` timed steps; timed step k of every variant trains batch k mod `--batches`, so
  round r does the same work in every variant. A round's time is the median of its steps; a variant's
  step time is the median over rounds, and its ratio vs baseline (`time/base`, the one checked against
  the bound) the median over rounds of the per-round ratio. The default, one step per round and many
  rounds, keeps each pair of compared steps a few seconds apart. `min/base` (fastest timed step vs the
  baseline's fastest, on a loaded machine the least disturbed estimate) is printed for context.

CPU default (about 5 minutes on 2 cores): `python scripts/bench_stages.py`.
GPU: `python scripts/bench_stages.py --device cuda --rounds 30`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from itertools import zip_longest
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    StepMemoryProbe,
    StepTimer,
    environment,
    held_tensors,
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
    "baseline": {"stage": "baseline", "label": "BaselineTrainer", "bound": None},
    "critic": {"stage": "critic", "label": "CriticTrainer (value head only)", "bound": 0.50},
    "verifiable": {"stage": "verifiable", "label": "VerifiableTrainer (TD weights)", "bound": 1.10},
    "rho1_live": {"stage": "rho1", "label": "Rho1Trainer, live reference", "bound": "flops"},
    "rho1_cached": {"stage": "rho1", "label": "Rho1Trainer, cached ref losses", "bound": 1.05},
    "baseline_lora": {"stage": "baseline", "label": "BaselineTrainer + LoRA", "bound": None, "full": "baseline"},
    "verifiable_lora": {"stage": "verifiable", "label": "VerifiableTrainer + LoRA", "bound": None,
                        "full": "verifiable"},
}  # fmt: skip
RHO1_MARGIN = 0.10


# --------------------------------------------------------------------------------------------------
# Driver: model, reference, critic output and the fixed batches, built once
# --------------------------------------------------------------------------------------------------


def micro_overrides(hidden: int) -> dict[str, int]:
    """The micro preset scaled to `hidden` (head dim 32, 2 query heads per KV head, SwiGLU width 8/3)."""
    return {
        "hidden_size": hidden,
        "intermediate_size": -(-int(8 * hidden / 3) // 32) * 32,
        "num_attention_heads": hidden // 32,
        "num_key_value_heads": max(1, hidden // 64),
    }


def select_rows(dataset: Any, n_batches: int, batch: int, seed: int) -> Any:
    """`n_batches * batch` rows: each batch half correct, half incorrect (alternating), seeded."""
    import numpy as np

    correct = np.asarray(dataset["is_correct"], dtype=bool)
    rng = np.random.default_rng(seed)
    n_correct, n_incorrect = (batch + 1) // 2, batch // 2
    good = rng.permutation(np.flatnonzero(correct))[: n_batches * n_correct]
    bad = rng.permutation(np.flatnonzero(~correct))[: n_batches * n_incorrect]
    if len(good) < n_batches * n_correct or len(bad) < n_batches * n_incorrect:
        raise SystemExit(f"--batches {n_batches} x --batch {batch}: not enough correct/incorrect rows")
    order: list[int] = []
    for b in range(n_batches):
        pairs = zip_longest(
            good[b * n_correct : (b + 1) * n_correct], bad[b * n_incorrect : (b + 1) * n_incorrect]
        )
        order += [int(i) for pair in pairs for i in pair if i is not None]
    return dataset.select(order)


def prepare(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Build the model (unless `--model-dir`), the critic output, the reference and the two row sets."""
    from wmtp_hf.data import load_source, tokenize_dataset
    from wmtp_hf.micro import build_micro
    from wmtp_hf.modeling_wmtp import WmtpForMultiTokenPrediction
    from wmtp_hf.reference import compute_reference_column, load_reference_model
    from wmtp_hf.train.components import load_tokenizer
    from wmtp_hf.train.stages import CriticTrainer, build_config

    if args.model_dir is None:
        print(f"[bench_stages] building the micro model (hidden {args.hidden_size}) ...", flush=True)
        args.model_dir = str(build_micro(tmp / "micro", seed=args.seed, **micro_overrides(args.hidden_size)))
    tokenizer = load_tokenizer(args.model_dir)
    print("[bench_stages] critic output, reference, rows and cached reference losses ...", flush=True)
    # A critic output: the same weights plus the value head CriticTrainer.load_model adds.
    critic_config = build_config(
        "critic",
        None,
        {"model_name_or_path": args.model_dir, "output_dir": str(tmp / "run"), "seed": args.seed},
    )
    critic = CriticTrainer.load_model(critic_config, args.model_dir, tokenizer)
    critic_dir = tmp / "critic-init"
    critic.save_pretrained(critic_dir)
    tokenizer.save_pretrained(critic_dir)
    # The reference: the model's next-token path as a plain LLaMA.
    reference_dir = tmp / "reference"
    WmtpForMultiTokenPrediction.from_pretrained(args.model_dir).to_llama().save_pretrained(reference_dir)
    tokenizer.save_pretrained(reference_dir)
    # The fixed rows, and the same rows with the reference losses cached.
    tokenized, _ = tokenize_dataset(
        load_source("offline", split="train"), tokenizer, max_length=args.max_length
    )
    rows = select_rows(tokenized, args.batches, args.batch, args.seed)
    rows.save_to_disk(str(tmp / "rows"))
    reference, _ = load_reference_model(str(reference_dir))
    column = compute_reference_column(rows, reference, tokenizer.pad_token_id, batch_size=args.batch)
    rows.add_column("ref_token_losses", column).save_to_disk(str(tmp / "rows_ref"))
    return {
        "model_dir": args.model_dir,
        "critic_dir": str(critic_dir),
        "reference_dir": str(reference_dir),
        "rows_dir": str(tmp / "rows"),
        "rows_ref_dir": str(tmp / "rows_ref"),
        "lengths": [int(n) for n in rows["length"]],
        "correct": int(sum(bool(c) for c in rows["is_correct"])),
    }


# --------------------------------------------------------------------------------------------------
# Worker: one variant's trainer, stepped directly
# --------------------------------------------------------------------------------------------------


def unembedding_rows(labels: torch.Tensor, n_heads: int) -> int:
    """Rows the chunked cross-entropy of `n_heads` heads unembeds (targets of heads 0..n-1)."""
    from wmtp_hf.losses import mtp_target_mask

    return int(mtp_target_mask(labels, n_heads).sum())


def flops_share(policy: torch.nn.Module, reference: torch.nn.Module, batches: list[dict[str, Any]]) -> dict:
    """F_ref / F_policy over `batches` (see the module docstring for the formula)."""
    n_heads = policy.config.n_future_tokens
    policy_blocks = sum(p.numel() for p in policy.model.layers.parameters())
    policy_blocks += sum(p.numel() for p in policy.model.extra_heads.parameters())
    ref_blocks = sum(p.numel() for p in reference.model.layers.parameters())
    unembed = policy.lm_head.weight.numel()
    positions = sum(b["input_ids"].numel() for b in batches)
    ref_rows = sum(unembedding_rows(b["labels"], 1) for b in batches)
    policy_rows = sum(unembedding_rows(b["labels"], n_heads) for b in batches)
    f_ref = 2.0 * (ref_blocks * positions + unembed * ref_rows)
    f_policy = 6.0 * (policy_blocks * positions + unembed * policy_rows)
    return {
        "formula": "F_ref / F_policy; F_ref = 2*(P_ref_blocks*N_pos + P_unembed*N_ref_rows), "
        "F_policy = 6*(P_policy_blocks*N_pos + P_unembed*N_policy_rows)",
        "P_ref_blocks": ref_blocks,
        "P_policy_blocks": policy_blocks,
        "P_unembed": unembed,
        "N_pos": positions,
        "N_ref_rows": ref_rows,
        "N_policy_rows": policy_rows,
        "F_ref": f_ref,
        "F_policy": f_policy,
        "share": f_ref / f_policy,
    }


class StageStepper:
    """A stage's trainer set up as `wmtp_hf.train.run` does, plus one optimizer step on a prepared batch."""

    def __init__(self, args: argparse.Namespace, paths: dict[str, str]) -> None:
        import datasets

        from wmtp_hf.data import WmtpDataCollator
        from wmtp_hf.train.components import load_tokenizer
        from wmtp_hf.train.lora import wrap_with_lora
        from wmtp_hf.train.stages import STAGE_TRAINERS, build_config

        variant = args.worker
        stage = VARIANTS[variant]["stage"]
        lora = "full" in VARIANTS[variant]
        self.run_dir = tempfile.mkdtemp(prefix=f"bench_stages.{variant}.")  # save_strategy no: stays empty
        self.device = torch.device(args.device)
        model_dir = paths["critic_dir"] if stage == "verifiable" else paths["model_dir"]
        self.config = build_config(
            stage,
            None,
            {
                "model_name_or_path": model_dir,
                "output_dir": self.run_dir,
                "report_to": "none",
                "save_strategy": "no",
                "logging_strategy": "no",
                "eval_strategy": "no",
                "disable_tqdm": True,
                "max_steps": args.warmup + args.memory_steps + args.rounds * args.steps,
                "per_device_train_batch_size": args.batch,
                "max_length": args.max_length,
                "seed": args.seed,
                "use_cpu": self.device.type == "cpu",
                **(
                    {
                        "use_peft": True,
                        "lora_r": args.lora_r,
                        "lora_alpha": 2 * args.lora_r,
                        "lora_dropout": args.lora_dropout,
                    }
                    if lora
                    else {}
                ),  # fmt: skip
            },
        )
        trainer_cls = STAGE_TRAINERS[stage]
        tokenizer = load_tokenizer(model_dir)
        rows = datasets.load_from_disk(paths["rows_ref_dir" if variant == "rho1_cached" else "rows_dir"])
        kwargs: dict[str, Any] = {}
        if variant == "rho1_live":
            kwargs["reference"] = paths["reference_dir"]
        elif variant == "rho1_cached":
            kwargs["reference"] = None
        model = trainer_cls.load_model(self.config, model_dir, tokenizer)
        if (
            lora
        ):  # as `wmtp_hf.train.run` wraps it (dry_run: the start folder is the base, nothing is written)
            model = wrap_with_lora(model, self.config, trainer_cls, model_dir, tokenizer, dry_run=True)
        collator = WmtpDataCollator(tokenizer)
        self.trainer = trainer_cls(
            model=model,
            args=self.config,
            train_dataset=rows,
            data_collator=collator,
            processing_class=tokenizer,
            **kwargs,
        )
        self.trainer.create_optimizer_and_scheduler(num_training_steps=self.config.max_steps)
        self.model = self.trainer.model
        self.batches = [
            collator([rows[i] for i in range(start, start + args.batch)])
            for start in range(0, len(rows), args.batch)
        ]
        self.probe: StepMemoryProbe | None = None
        self.first_loss: float | None = None
        self.model.register_forward_hook(self._forward_done)
        ref = self.trainer.ref_model if variant == "rho1_live" else None
        self.reference = ref
        self.info: dict[str, Any] = {
            "variant": variant,
            "label": VARIANTS[variant]["label"],
            "stage": stage,
            "trainer_class": type(self.trainer).__name__,
            "hidden_size": self.model.config.hidden_size,
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "reference_parameters": None if ref is None else sum(p.numel() for p in ref.parameters()),
            "value_head": getattr(self.model, "value_head", None) is not None,
            "threads": torch.get_num_threads(),
            "batches": [
                {"seq": int(b["input_ids"].shape[1]), "tokens": int(b["attention_mask"].sum())}
                for b in self.batches
            ],
        }
        if ref is not None:
            self.info["flops_share"] = flops_share(self.model, ref, self.batches)

    def _forward_done(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self.probe is not None:
            self.probe.phase("loss+backward")

    def _phase(self, name: str) -> None:
        if self.probe is not None:
            self.probe.phase(name)

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        """One optimizer step as `Trainer`'s inner loop runs it (no gradient accumulation)."""
        trainer, model = self.trainer, self.model
        self._phase("forward")
        counts = trainer._get_num_items_in_batch([batch], self.device)
        loss = trainer.training_step(model, batch, counts)
        self._phase("optimizer")
        if self.config.max_grad_norm > 0:
            trainer._clip_grad_norm(model)
        trainer.optimizer.step()
        self._phase("sched+zero_grad")
        trainer.lr_scheduler.step()
        model.zero_grad()
        trainer.state.global_step += 1
        trainer.on_optimizer_step_end()
        if self.first_loss is None:
            self.first_loss = float(loss)

    def held(self) -> list[torch.Tensor]:
        extra = list(self.reference.parameters()) if self.reference is not None else []
        return held_tensors(self.model, self.trainer.optimizer, extra)

    def close(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


def run_worker(args: argparse.Namespace) -> None:
    """Warm-up, memory probe, then `--steps` timed steps per `step` command (reported as one line)."""
    proto = protocol_stream()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    paths = json.loads(Path(args.paths).read_text())
    stepper = StageStepper(args, paths)
    n = len(stepper.batches)
    for i in range(args.warmup):
        stepper.step(stepper.batches[i % n])
    stepper.probe = StepMemoryProbe(stepper.device, stepper.held())
    stepper.probe.start()
    for i in range(args.memory_steps):
        stepper.step(stepper.batches[(args.warmup + i) % n])
    memory = stepper.probe.stop()
    stepper.probe = None
    proto.write(json.dumps({**stepper.info, "first_loss": stepper.first_loss, **memory}) + "\n")
    timer = StepTimer(stepper.device)
    timed = 0  # timed step k trains batch k % n, in every variant
    while wait_for_command():
        steps = []
        for _ in range(args.steps):
            timer.start()
            stepper.step(stepper.batches[timed % n])
            steps.append(timer.stop())
            timed += 1
        walls, cpus = [s["wall_s"] for s in steps], [s["cpu_s"] for s in steps]
        reply = {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "step_walls_s": walls}
        proto.write(json.dumps(reply) + "\n")
    stepper.close()


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--rounds", type=int, default=24, help="timing rounds (every variant in turn per round)")
    p.add_argument("--steps", type=int, default=1, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    p.add_argument("--memory-steps", type=int, default=1, help="untimed steps under the memory probe")
    p.add_argument("--batch", type=int, default=8, help="rows per batch (half correct, half incorrect)")
    p.add_argument("--batches", type=int, default=4, help="distinct batches, cycled through")
    p.add_argument("--max-length", type=int, default=1024, help="rows longer than this are not selected")
    p.add_argument("--hidden-size", type=int, default=128, help="micro model width (128: the preset)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (0: torch's default)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank of the *_lora variants (alpha = 2r)")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout of the *_lora variants")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--model-dir", default=None, help="WMTP model folder (default: micro built in a temp dir)")
    p.add_argument("--output", type=Path, default=Path("bench_results/bench_stages.json"))
    p.add_argument("--worker", choices=list(VARIANTS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--paths", default=None, help=argparse.SUPPRESS)
    add_tiny_option(p)
    args = apply_tiny(p.parse_args(argv), hidden_size=64, batch=2, batches=1, rounds=1, steps=1, warmup=1,
                      memory_steps=1, max_length=256, lora_r=2)  # fmt: skip
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if min(args.warmup, args.memory_steps, args.steps, args.rounds, args.batch, args.batches) < 1:
        p.error("--warmup, --memory-steps, --steps, --rounds, --batch and --batches must be at least 1")
    if args.hidden_size % 64:
        p.error("--hidden-size must be a multiple of 64")
    if "baseline" not in args.variants:
        args.variants.insert(0, "baseline")
    for name in list(args.variants):  # a LoRA variant is compared with its full stage in the same run
        full = VARIANTS[name].get("full")
        if full and full not in args.variants:
            args.variants.insert(args.variants.index(name), full)
    return args


def summarise(results: dict[str, dict[str, Any]]) -> None:
    """Ratios vs baseline (median of per-round ratios), the docs/design.md §6 bound and pass/fail of each variant."""
    base = results["baseline"]
    for name, r in results.items():
        r["time_ratio_vs_baseline"] = paired_ratio(r["steps"], base["steps"], lambda s: s["wall_s"])
        r["time_ratio_vs_baseline_of_medians"] = r["step_time_median_s"] / base["step_time_median_s"]
        r["total_memory_ratio_vs_baseline"] = r["peak_total_bytes"] / base["peak_total_bytes"]
        r["working_memory_ratio_vs_baseline"] = r["peak_working_bytes"] / base["peak_working_bytes"]
        walls = [w for s in r["steps"] for w in s["step_walls_s"]]
        r["step_time_pooled_median_s"] = statistics.median(walls)
        r["step_time_min_s"] = min(walls)
        base_min = min(w for s in base["steps"] for w in s["step_walls_s"])
        r["time_ratio_vs_baseline_of_minima"] = r["step_time_min_s"] / base_min
        bound = VARIANTS[name]["bound"]
        if bound == "flops":
            bound = 1.0 + r["flops_share"]["share"] + RHO1_MARGIN
        r["spec_bound"] = bound
        r["passed"] = None if bound is None else bool(r["time_ratio_vs_baseline"] <= bound)
        full = VARIANTS[name].get("full")
        if full:
            f = results[full]
            r["lora_vs_full"] = {
                "trainable_parameters_ratio": r["trainable_parameters"] / f["trainable_parameters"],
                "peak_memory_ratio": r["peak_total_bytes"] / f["peak_total_bytes"],
                "held_memory_ratio": r["baseline_bytes"] / f["baseline_bytes"],
                "working_memory_ratio": r["peak_working_bytes"] / f["peak_working_bytes"],
                "time_ratio": paired_ratio(r["steps"], f["steps"], lambda s: s["wall_s"]),
            }


def mb(n: float) -> str:
    return f"{n / MB:.1f}"


def count(n: int) -> str:
    """A parameter count for the table: 2.00M, 129."""
    return f"{n / 1e6:.2f}M" if n >= 10_000 else str(n)


def print_lora_table(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    """LoRA variants against their full stage: `lora / full (ratio)` per measure."""
    lora = {name: r for name, r in results.items() if "lora_vs_full" in r}
    if not lora:
        return
    print("\nLoRA step vs the full step of the same stage (lora / full (ratio), same run):")
    columns = ("trainable P", "peak MB", "held MB", "working MB")
    print(f"  {'variant':<16}{'vs':<12}" + "".join(f"{c:>26}" for c in columns) + f"{'time':>7}")
    for name, r in lora.items():
        full, x = results[VARIANTS[name]["full"]], r["lora_vs_full"]
        cells = [
            (
                count(r["trainable_parameters"]),
                count(full["trainable_parameters"]),
                x["trainable_parameters_ratio"],
            ),
            (mb(r["peak_total_bytes"]), mb(full["peak_total_bytes"]), x["peak_memory_ratio"]),
            (mb(r["baseline_bytes"]), mb(full["baseline_bytes"]), x["held_memory_ratio"]),
            (mb(r["peak_working_bytes"]), mb(full["peak_working_bytes"]), x["working_memory_ratio"]),
        ]
        text = "".join(f"{f'{a} / {b} ({ratio:.3f})':>26}" for a, b, ratio in cells)
        print(f"  {name:<16}{VARIANTS[name]['full']:<12}{text}{x['time_ratio']:>7.3f}")
    print(
        f"  (LoRA rank {args.lora_r}, alpha {2 * args.lora_r}, dropout {args.lora_dropout} on every attention and "
        "MLP projection of trunk and heads;\n   held = parameters + AdamW state; time = median per-round ratio)"
    )


def print_results(args: argparse.Namespace, prep: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    base = results["baseline"]
    seqs = [b["seq"] for b in base["batches"]]
    tokens = [b["tokens"] for b in base["batches"]]
    print(
        f"\ndevice={args.device} hidden={base['hidden_size']} params={base['num_parameters'] / 1e6:.2f}M "
        f"batch={args.batch} ({prep['correct']} of {len(prep['lengths'])} rows correct) "
        f"batches={args.batches} padded widths {seqs} ({sum(tokens) / len(tokens):.0f} tokens/batch); "
        f"warmup={args.warmup} memory_steps={args.memory_steps} rounds={args.rounds} x steps={args.steps} "
        f"threads={base['threads']}"
    )
    columns = ["variant:<13", "trainer:<34", "train P:>9", "step ms:>9", "peak MB:>9", "work MB:>9",
               "time/base:>10", "min/base:>9", "mem/base:>9", "bound:>8", "  result:<8"]  # fmt: skip
    print_table(columns, [
        [name, r["label"], count(r["trainable_parameters"]), f"{r['step_time_median_s'] * 1e3:.1f}",
         f"{r['peak_total_bytes'] / MB:.1f}", f"{r['peak_working_bytes'] / MB:.1f}",
         f"{r['time_ratio_vs_baseline']:.3f}", f"{r['time_ratio_vs_baseline_of_minima']:.3f}",
         f"{r['total_memory_ratio_vs_baseline']:.2f}",
         "-" if r["spec_bound"] is None else f"<={r['spec_bound']:.2f}",
         "  " + ("-" if r["passed"] is None else ("PASS" if r["passed"] else "FAIL"))]
        for name, r in results.items()
    ])  # fmt: skip
    print(
        "\nstep ms = median over rounds of the round's median step; time/base = median per-round ratio vs "
        "baseline (same batches, same load;\nchecked against the bound); min/base = fastest step vs the "
        "baseline's fastest; peak MB = held (parameters, AdamW state,\na live reference) + working peak; "
        "mem/base = peak ratio; train P = trainable parameters"
    )
    live = results.get("rho1_live")
    if live is not None:
        f = live["flops_share"]
        print(
            f"\nrho1_live bound = 1 + F_ref/F_policy + {RHO1_MARGIN:.2f} = 1 + {f['share']:.3f} + "
            f"{RHO1_MARGIN:.2f} = {live['spec_bound']:.3f} (measured {live['time_ratio_vs_baseline']:.3f})\n"
            f"  F_ref = 2*(P_ref_blocks*N_pos + P_unembed*N_ref_rows) = 2*({f['P_ref_blocks']}*"
            f"{f['N_pos']} + {f['P_unembed']}*{f['N_ref_rows']}) = {f['F_ref'] / 1e9:.2f} GFLOP\n"
            f"  F_policy = 6*(P_policy_blocks*N_pos + P_unembed*N_policy_rows) = 6*({f['P_policy_blocks']}*"
            f"{f['N_pos']} + {f['P_unembed']}*{f['N_policy_rows']}) = {f['F_policy'] / 1e9:.2f} GFLOP\n"
            "  (over the distinct batches; N_pos = padded positions, N_*_rows = unembedded target rows)"
        )
    print_lora_table(args, results)
    print_memory_detail(results, 12)
    print_round_times(results, 12, "round step times (ms, median of each round):")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        run_worker(args)
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_stages.") as tmp:
        prep = prepare(args, Path(tmp))
        paths = Path(tmp) / "paths.json"
        paths.write_text(json.dumps({k: v for k, v in prep.items() if k.endswith("_dir")}))
        args.paths = str(paths)
        argv_ = worker_argv(args, exclude=("worker", "variants", "output", "model_dir"))
        results = run_interleaved(__file__, args.variants, argv_, args.rounds, tag="bench_stages")
        args.paths = None
    summarise(results)
    print_results(args, prep, results)
    wall = time.perf_counter() - start
    print(f"\ntotal wall time {wall:.0f} s")
    report = {
        "config": run_config(args, exclude=("worker", "paths")),
        **environment(args.device),
        "rows": {"lengths": prep["lengths"], "correct": prep["correct"]},
        "wall_time_s": wall,
        "results": results,
    }
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
