"""One-command GPU check (no Hub: every model is built from a config): prints a table and writes JSON.

    python scripts/gpu_check.py [--output gpu_check.json]      # ~1B models on one H100/H200-class GPU
    python scripts/gpu_check.py --tiny                          # the same code at tiny size (CPU, CI)

Sections (each independent: one that fails records its error and the rest still run):
1. `fsdp2_train`: bf16 FSDP2 (`fully_shard`, one process) training of a ~1B WMTP (n=4): tokens/s, MFU
   (6 x parameters x tokens/s over the GPU's dense bf16 peak), peak memory.
2. `heads_memory`: peak memory of one training step, n=4 vs n=1, at 4096 tokens.
3. `chunked_loss`: the model's chunked loss vs a plain loss over `[B, T, n, V]` logits (time, memory, and
   that they agree).
4. `attention_parity`: sdpa vs flash_attention_2 logits (if flash-attn is installed).
5. `speculative`: self-speculative decoding speed-up on the heads-agree (cycle) model at ~1B parameters,
   and that its tokens equal plain greedy decoding.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction  # noqa: E402
from wmtp_hf.cycle_model import build_cycle_model  # noqa: E402

# Dense bf16 peak FLOP/s by device name (MFU's denominator).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}

SIZES = {
    "full": {"hidden_size": 2048, "intermediate_size": 5632, "trunk": 16, "heads": 4, "vocab": 32000,
             "attention_heads": 16, "batch": 4, "seq": 2048, "steps": 10, "memory_seq": 4096,
             "cycle_vocab": 2048, "cycle_trunk": 16, "new_tokens": 256},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "trunk": 2, "heads": 4, "vocab": 256,
             "attention_heads": 4, "batch": 2, "seq": 64, "steps": 2, "memory_seq": 128,
             "cycle_vocab": 64, "cycle_trunk": 2, "new_tokens": 16},
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
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        result = fn()
    synchronize(device)
    return result, (time.perf_counter() - start) / repeat


def ensure_process_group(device: torch.device) -> None:
    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, rank=0, world_size=1)


def fsdp2_train(size: dict, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    ensure_process_group(device)
    torch.manual_seed(0)
    with torch.device(device):
        model = WmtpForMultiTokenPrediction(wmtp_config(size, size["heads"]))
    n_params = sum(p.numel() for p in model.parameters())
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in model.model.modules():
        if type(layer).__name__ == "WmtpDecoderLayer":
            fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, size["vocab"], (size["batch"], size["seq"]), device=device)

    def step() -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _, seconds = timed(device, step, repeat=size["steps"])
    tokens_per_s = ids.numel() / seconds
    peak = PEAK_BF16.get(next((k for k in PEAK_BF16 if k in device_name(device)), ""), None)
    return {
        "parameters": n_params,
        "tokens_per_step": ids.numel(),
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": round(6 * n_params * tokens_per_s / peak, 4) if peak and device.type == "cuda" else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.type == "cuda"
        else None,
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


def speculative(size: dict, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    vocab = size["cycle_vocab"]
    model = build_cycle_model(list(range(1, vocab)), vocab_size=vocab, n_future_tokens=size["heads"],
                              trunk_layers=size["cycle_trunk"])  # fmt: skip
    model = model.to(device=device, dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.tensor([[1, 2, 3, 4]], device=device)
    options = {"max_new_tokens": size["new_tokens"], "do_sample": False, "min_new_tokens": size["new_tokens"]}
    with torch.no_grad():
        model.generate(ids, **options)  # warm-up
        plain, t_plain = timed(device, lambda: model.generate(ids, **options))
        fast, t_fast = timed(device, lambda: model.generate(ids, mtp_speculative=True, **options))
    return {"parameters": n_params, "new_tokens": size["new_tokens"], "plain_s": round(t_plain, 4),
            "speculative_s": round(t_fast, 4), "speedup": round(t_plain / t_fast, 2),
            "same_tokens": bool(torch.equal(plain, fast))}  # fmt: skip


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
    parser.add_argument("--tiny", action="store_true", help="tiny models (runs on CPU in seconds; for CI)")
    parser.add_argument("--output", default="gpu_check.json", help="JSON report path")
    parser.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and device.type != "cuda":
        print("error: gpu_check needs a CUDA GPU at full size; use --tiny on CPU", file=sys.stderr)
        return 2
    size = SIZES["tiny" if args.tiny else "full"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sections = {"fsdp2_train": fsdp2_train, "heads_memory": heads_memory, "chunked_loss": chunked_loss,
                "attention_parity": attention_parity, "speculative": speculative}  # fmt: skip
    report = {"device": device_name(device), "size": "tiny" if args.tiny else "full", "dtype": str(dtype),
              "torch": torch.__version__, "sections": {}}  # fmt: skip
    for name, fn in sections.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        try:
            report["sections"][name] = fn(size, device, dtype)
        except Exception as err:  # one failing check must not hide the others
            report["sections"][name] = {"error": f"{type(err).__name__}: {err}"[:500]}
        report["sections"][name]["wall_s"] = round(time.perf_counter() - start, 2)
    with contextlib.suppress(Exception):
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_table(report)
    failed = [n for n, v in report["sections"].items() if "error" in v]
    if failed:
        print(f"error: gpu_check sections failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
