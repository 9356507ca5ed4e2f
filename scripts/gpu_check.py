"""One-command GPU check of the real path (no Hub: every model is built from a config): prints a table and
writes JSON after each section, so a run cut short keeps what it measured.

    python scripts/gpu_check.py [--output gpu_check.json]   # one H100/H200-class GPU (or several), < 8 min
    python scripts/gpu_check.py --tiny                       # the same code at tiny size on CPU (CI runs it)

Sections (each independent: one that fails records its error and the rest still run):
1. `train_path`: rho1 with a LLaMA reference on a ~0.66B WMTP (n=4) through `python -m wmtp_hf.train`
   under `accelerate launch --config_file accelerate_configs/fsdp_4xa100.yaml` on the GPUs present, bf16
   (on CPU: torchrun with configs/fsdp_cpu.yaml, float32): run_summary says fsdp2 on every process, a
   SHARDED checkpoint, a resume from it matching the uninterrupted losses, and `final/` loading with
   `trust_remote_code` where `wmtp_hf` cannot be imported, in the dtype the run trained in
   (scripts/gpu_check_path.py).
2. `precision`: the same fixed batch trained in fp32 and in bf16 autocast: bf16 loss goes down and stays
   near fp32's.
3. `mfu`: bf16 FSDP2 (`fully_shard`) training of a ~1.2B WMTP (n=4): tokens/s and MFU with the model
   FLOPs of `wmtp_hf.flops` (unembedding x n heads, attention included, embedding excluded), timed with
   CUDA events after warm-up; peak memory.
4. `heads_memory`: peak memory of one training step, n=4 vs n=1, at 4096 tokens.
5. `chunked_loss`: the model's chunked loss vs a plain loss over `[B, T, n, V]` logits.
6. `attention_parity`: sdpa vs flash_attention_2 logits (if flash-attn is installed).
7. `speculative`: self-speculative decoding on cycle models whose heads always agree and whose extra
   heads agree only partly: acceptance rate and speed-up, median of 3 after a warm-up, tokens equal to
   greedy decoding.
8. `packing`: padded vs packed batches (issue 27) of the offline training rows, baseline and rho1 at
   batch 8 and 32, on the `mfu` model size with flash_attention_2 varlen when flash-attn is installed
   (sdpa otherwise): padded fraction, non-padding tokens/s of each, packed/padded, loss difference
   (scripts/gpu_check_packing.py).
Every section on CUDA also records its peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_packing import packing  # noqa: E402
from gpu_check_path import train_path  # noqa: E402

from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction  # noqa: E402
from wmtp_hf.cycle_model import build_cycle_model  # noqa: E402
from wmtp_hf.fileio import atomic_write_text  # noqa: E402
from wmtp_hf.flops import mfu, training_flops_per_token  # noqa: E402

# Dense bf16 peak FLOP/s by device name (MFU's denominator).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}

SIZES = {
    "full": {"hidden_size": 2048, "intermediate_size": 5632, "trunk": 16, "heads": 4, "vocab": 32000,
             "attention_heads": 16, "batch": 4, "seq": 2048, "steps": 10, "memory_seq": 4096,
             "cycle_vocab": 2048, "cycle_trunk": 16, "new_tokens": 256,
             "precision": {"hidden_size": 1024, "intermediate_size": 2816, "trunk": 12, "batch": 4, "seq": 512,
                           "steps": 8},
             "path": {"hidden": 1536, "intermediate": 4096, "trunk": 16, "heads": 4, "vocab": 32000,
                      "attention_heads": 12, "ref_hidden": 1024, "ref_intermediate": 2816, "ref_layers": 8,
                      "batch": 8, "max_length": 512, "steps": 6}},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "trunk": 2, "heads": 4, "vocab": 256,
             "attention_heads": 4, "batch": 2, "seq": 64, "steps": 2, "memory_seq": 128,
             "cycle_vocab": 64, "cycle_trunk": 2, "new_tokens": 24,
             "precision": {"hidden_size": 64, "intermediate_size": 128, "trunk": 2, "batch": 2, "seq": 32,
                           "steps": 6},
             "path": {"hidden": 32, "intermediate": 64, "trunk": 2, "heads": 2, "vocab": 2048,
                      "attention_heads": 4, "ref_hidden": 32, "ref_intermediate": 64, "ref_layers": 2,
                      "batch": 2, "max_length": 256, "steps": 4}},
}  # fmt: skip


def wmtp_config(size: dict, n_heads: int, **extra: Any) -> WmtpConfig:
    return WmtpConfig(
        vocab_size=size["vocab"], hidden_size=size["hidden_size"], intermediate_size=size["intermediate_size"],
        num_hidden_layers=size["trunk"] + n_heads, n_future_tokens=n_heads,
        num_attention_heads=size["attention_heads"], num_key_value_heads=size["attention_heads"],
        max_position_embeddings=max(size["seq"], size["memory_seq"]), **extra,
    )  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_of(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """`(fn(), peak GiB allocated during fn)`; the peak is None on CPU (no allocator counter)."""
    if device.type != "cuda":
        return fn(), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() / 2**30


def timed(device: torch.device, fn: Callable[[], Any], repeat: int = 1) -> tuple[Any, float]:
    """`(last result, seconds per call)`: CUDA events on a GPU (the device's own clock), else wall time."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(repeat):
            result = fn()
        end.record()
        torch.cuda.synchronize()
        return result, start.elapsed_time(end) / 1000 / repeat
    begin = time.perf_counter()
    for _ in range(repeat):
        result = fn()
    return result, (time.perf_counter() - begin) / repeat


def ensure_process_group(device: torch.device) -> None:
    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, rank=0, world_size=1)


def precision(size: dict, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The same fixed batch, the same start: fp32 throughout vs fp32 weights with bf16 autocast."""
    small = {**size, **size["precision"]}
    ids = torch.randint(
        0, size["vocab"], (small["batch"], small["seq"]), generator=torch.Generator().manual_seed(0)
    )
    ids = ids.to(device)
    curves = {}
    for name, autocast in (("fp32", False), ("bf16", True)):
        torch.manual_seed(0)
        model = WmtpForMultiTokenPrediction(wmtp_config(small, size["heads"])).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
        losses = []
        for _ in range(small["steps"]):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(float(loss.detach()), 4))
        curves[name] = losses
        model = optimizer = None
    result = {"fp32": curves["fp32"], "bf16": curves["bf16"],
              "final_rel_diff": round(abs(curves["bf16"][-1] - curves["fp32"][-1]) / curves["fp32"][-1], 4)}  # fmt: skip
    if not curves["bf16"][-1] < curves["bf16"][0] - 0.1:
        raise RuntimeError(f"bf16 loss does not go down on a fixed batch: {curves['bf16']}")
    if result["final_rel_diff"] > 0.1:
        raise RuntimeError(f"bf16 ends {result['final_rel_diff']:.1%} away from fp32: {result}")
    return result


def mfu_section(size: dict, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    ensure_process_group(device)
    torch.manual_seed(0)
    config = wmtp_config(size, size["heads"])
    with torch.device(device):
        model = WmtpForMultiTokenPrediction(config)
    n_params = sum(p.numel() for p in model.parameters())
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype)  # accelerate's bf16 policy
    for layer in model.model.modules():
        if type(layer).__name__ in model._no_split_modules:
            fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, size["vocab"], (size["batch"], size["seq"]), device=device)

    def step() -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(2):  # warm-up: allocations, kernel selection, the optimizer's state
        step()
    synchronize(device)
    _, seconds = timed(device, step, repeat=size["steps"])
    tokens_per_s = ids.numel() / seconds
    flops = training_flops_per_token(config, size["seq"])
    peak = PEAK_BF16.get(next((k for k in PEAK_BF16 if k in device_name(device)), ""), None)
    naive = 6 * n_params  # the old count: every parameter once, embedding included, attention left out
    return {
        "parameters": n_params,
        "tokens_per_step": ids.numel(),
        "step_s": round(seconds, 4),
        "tokens_per_s": round(tokens_per_s, 1),
        "flops_per_token": flops,
        "flops_vs_6N": round(flops / naive, 3),
        "mfu": round(mfu(flops, tokens_per_s, peak), 4) if peak and device.type == "cuda" else None,
        "peak_bf16_flops": peak,
    }


def step_memory(size: dict, n_heads: int, device: torch.device, dtype: torch.dtype) -> float | None:
    torch.manual_seed(0)
    model = WmtpForMultiTokenPrediction(wmtp_config(size, n_heads)).to(device=device, dtype=dtype)
    ids = torch.randint(0, size["vocab"], (1, size["memory_seq"]), device=device)

    _, peak = peak_memory_of(device, lambda: model(input_ids=ids, labels=ids).loss.backward())
    model = None  # free it before the next size is measured
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return None if peak is None else round(peak, 2)


def heads_memory(size: dict, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    n4, n1 = step_memory(size, size["heads"], device, dtype), step_memory(size, 1, device, dtype)
    return {"tokens": size["memory_seq"], "n4_peak_gib": n4, "n1_peak_gib": n1,
            "ratio": round(n4 / n1, 3) if n4 and n1 else None}  # fmt: skip


def plain_mtp_loss(model: WmtpForMultiTokenPrediction, ids: torch.Tensor) -> torch.Tensor:
    """Uniform MTP loss from full `[B, T, n, V]` logits: head k at t predicts `ids[t + 1 + k]`."""
    logits = model(input_ids=ids, return_all_heads=True).mtp_logits.float()
    n = logits.shape[2]
    losses = []
    for k in range(n):
        pred, target = logits[:, : ids.shape[1] - 1 - k, k], ids[:, 1 + k :]
        losses.append(torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1)))
    return torch.stack(losses).mean()


def chunked_loss(size: dict, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    torch.manual_seed(0)
    model = WmtpForMultiTokenPrediction(wmtp_config(size, size["heads"])).to(device=device, dtype=dtype)
    ids = torch.randint(0, size["vocab"], (1, size["memory_seq"]), device=device)
    results = {}
    for name, fn in (
        ("chunked", lambda: model(input_ids=ids, labels=ids).loss),
        ("plain", lambda: plain_mtp_loss(model, ids)),
    ):

        def step(fn=fn) -> float:
            loss = fn()
            loss.backward()
            model.zero_grad(set_to_none=True)
            return float(loss.detach())

        step()
        (loss, peak) = peak_memory_of(device, step)
        _, seconds = timed(device, step, repeat=3)
        results[name] = {
            "loss": loss,
            "seconds": round(seconds, 4),
            "peak_gib": None if peak is None else round(peak, 2),
        }
    results["loss_diff"] = abs(results["chunked"]["loss"] - results["plain"]["loss"])
    return results


def attention_parity(size: dict, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return {"skipped": "flash-attn is not installed"}
    if device.type != "cuda":
        return {"skipped": "flash attention needs a GPU"}
    torch.manual_seed(0)
    sdpa = WmtpForMultiTokenPrediction(wmtp_config(size, size["heads"], attn_implementation="sdpa"))
    sdpa = sdpa.to(device=device, dtype=dtype).eval()
    flash = WmtpForMultiTokenPrediction(
        wmtp_config(size, size["heads"], attn_implementation="flash_attention_2")
    )
    flash.load_state_dict(sdpa.state_dict())
    flash = flash.to(device=device, dtype=dtype).eval()
    ids = torch.randint(0, size["vocab"], (2, size["seq"]), device=device)
    with torch.no_grad():
        a = sdpa(input_ids=ids, return_all_heads=True).mtp_logits.float()
        b = flash(input_ids=ids, return_all_heads=True).mtp_logits.float()
    return {"max_abs_diff": float((a - b).abs().max()), "logit_std": float(a.std())}


def partly_agreeing_cycle_model(size: dict, swaps: float = 0.15) -> WmtpForMultiTokenPrediction:
    """A cycle model whose head 0 walks one cycle and whose extra heads follow a cycle with a fraction
    `swaps` of neighbours exchanged: their drafts are right only part of the time."""
    vocab = size["cycle_vocab"]
    cycle = list(range(1, vocab))
    other = cycle.copy()
    for i in sorted(random.Random(0).sample(range(0, len(cycle) - 1, 2), int(swaps * len(cycle) / 2))):
        other[i], other[i + 1] = other[i + 1], other[i]
    build = dict(vocab_size=vocab, n_future_tokens=size["heads"], trunk_layers=size["cycle_trunk"])
    model, drafts = build_cycle_model(cycle, **build), build_cycle_model(other, **build)
    for k in range(1, size["heads"]):
        model.model.prediction_heads[k].load_state_dict(drafts.model.prediction_heads[k].state_dict())
    return model


def decode_stats(model: Any, device: torch.device, options: dict) -> dict[str, Any]:
    """Plain greedy vs self-speculative decoding: one warm-up each, then 3 timed runs each (median)."""
    ids = torch.tensor([[1, 2, 3, 4]], device=device)
    with torch.no_grad():
        model.generate(ids, **options)
        model.generate(ids, mtp_speculative=True, **options)
        plain = [timed(device, lambda: model.generate(ids, **options)) for _ in range(3)]
        fast = [timed(device, lambda: model.generate(ids, mtp_speculative=True, return_dict_in_generate=True,
                                                     **options)) for _ in range(3)]  # fmt: skip
    rates = [out.accepted_draft_tokens / max(out.draft_tokens, 1) for out, _ in fast]
    t_plain, t_fast = statistics.median(t for _, t in plain), statistics.median(t for _, t in fast)
    return {"acceptance_rate": round(statistics.median(rates), 4), "plain_s": round(t_plain, 4),
            "speculative_s": round(t_fast, 4), "speedup": round(t_plain / t_fast, 2),
            "tokens_per_forward": round(fast[0][0].tokens_per_forward, 3),
            "same_tokens": bool(torch.equal(plain[0][0], fast[0][0].sequences))}  # fmt: skip


def speculative(size: dict, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    vocab = size["cycle_vocab"]
    options = {"max_new_tokens": size["new_tokens"], "do_sample": False, "min_new_tokens": size["new_tokens"]}
    agree = build_cycle_model(list(range(1, vocab)), vocab_size=vocab, n_future_tokens=size["heads"],
                              trunk_layers=size["cycle_trunk"])  # fmt: skip
    result = {"parameters": sum(p.numel() for p in agree.parameters()), "new_tokens": size["new_tokens"]}
    for name, model in (("heads_agree", agree), ("heads_partly_agree", partly_agreeing_cycle_model(size))):
        result[name] = decode_stats(model.to(device=device, dtype=dtype).eval(), device, options)
        if not result[name]["same_tokens"]:
            raise RuntimeError(f"{name}: speculative decoding differs from greedy decoding")
    if (
        not 0
        < result["heads_partly_agree"]["acceptance_rate"]
        < result["heads_agree"]["acceptance_rate"]
        == 1
    ):
        raise RuntimeError(f"acceptance rates are not as built: {result}")
    return result


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def print_table(report: dict[str, Any]) -> None:
    print(f"gpu_check on {report['device']} ({report['size']}, {report['dtype']})")
    for section, values in report["sections"].items():
        if not isinstance(values, dict):
            continue
        flat = ", ".join(f"{k}={v}" for k, v in values.items() if not isinstance(v, dict))
        nested = "; ".join(f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items())
                           for k, v in values.items() if isinstance(v, dict))  # fmt: skip
        print(f"  {section:<18} {flat}{'; ' if flat and nested else ''}{nested}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models (runs on CPU; for CI)")
    parser.add_argument(
        "--output", default="gpu_check.json", help="JSON report path (written after each section)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and device.type != "cuda":
        print("error: gpu_check needs a CUDA GPU at full size; use --tiny on CPU", file=sys.stderr)
        return 2
    size = SIZES["tiny" if args.tiny else "full"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    sections = {"train_path": lambda s, d, t: train_path(s, d, work), "precision": precision, "mfu": mfu_section,
                "heads_memory": heads_memory, "chunked_loss": chunked_loss, "attention_parity": attention_parity,
                "speculative": speculative,
                "packing": lambda s, d, t: packing(s, d, t, args.tiny, wmtp_config)}  # fmt: skip
    report = {"device": device_name(device), "gpus": torch.cuda.device_count(), "size": "tiny" if args.tiny else "full",
              "dtype": str(dtype), "torch": torch.__version__, "sections": {}}  # fmt: skip
    for name, fn in sections.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            report["sections"][name] = fn(size, device, dtype)
        except Exception as err:  # one failing check must not hide the others
            report["sections"][name] = {"error": f"{type(err).__name__}: {err}"[:1500]}
        report["sections"][name]["wall_s"] = round(time.perf_counter() - start, 2)
        if device.type == "cuda":
            report["sections"][name]["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        atomic_write_text(
            args.output, json.dumps(report, indent=2) + "\n"
        )  # a cut-short run keeps its sections
    with contextlib.suppress(Exception):
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    print_table(report)
    failed = [n for n, v in report["sections"].items() if "error" in v]
    if failed:
        print(f"error: gpu_check sections failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
