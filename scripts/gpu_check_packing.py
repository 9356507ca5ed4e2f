"""gpu_check section `packing` (issue 27): padded vs packed batches of the offline training rows.

For baseline and rho1 at each batch size, the same batches go through the stage's loss and backward once
right-padded and once packed (scripts/bench_packing.py's `measure`: alternating, after a warm-up), on a
WMTP model built from gpu_check's size in its dtype, with `flash_attention_2` when flash-attn is importable
on a GPU (the packed batch then carries the varlen `cu_seq_lens_*` / `max_length_*`) and `sdpa` otherwise.
Reported per stage and batch: padded fraction (padded; packed is 0 by construction), non-padding tokens/s
of each, packed/padded (median of the paired step-time ratios) and the relative loss difference.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# Per gpu_check size: the tokenizer for the rows, batch sizes, timed rounds, row cut (--tiny: 1/8 of each).
PACKING = {
    "full": {"tokenizer": "micro", "batches": (8, 32), "steps": 5, "max_rows": None, "shrink": 1},
    "tiny": {"tokenizer": "tiny", "batches": (2, 4), "steps": 1, "max_rows": 8, "shrink": 8},
}
# Packed vs padded loss: equal in float32 (tests/data/test_packing.py); bf16 kernels round differently.
LOSS_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def attention_backend(device: torch.device) -> tuple[str, str | None]:
    """`(attn_implementation, why not flash)`: flash_attention_2 on a GPU with flash-attn, else sdpa."""
    if device.type != "cuda":
        return "sdpa", "flash attention needs a GPU"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "sdpa", "flash-attn is not installed"
    return "flash_attention_2", None


def packing(
    size: dict, device: torch.device, dtype: torch.dtype, tiny: bool, wmtp_config: Callable[..., Any]
) -> dict[str, Any]:
    """The section's report (`wmtp_config(size, n_heads, **extra)`: gpu_check's model config)."""
    import bench_packing as bp

    from wmtp_hf import WmtpForMultiTokenPrediction

    plan = PACKING["tiny" if tiny else "full"]
    args = argparse.Namespace(device=device.type, steps=plan["steps"], seed=0, max_length=2048, tiny=tiny,
                              max_rows=plan["max_rows"], shrink=plan["shrink"], tokenizers=plan["tokenizer"],
                              smol_tokenizer=None)  # fmt: skip
    tokenizer = bp.load_tokenizers(args)[0][plan["tokenizer"]]
    features = bp.tokenized(bp.dataset_rows("offline", args)[0], tokenizer, args)
    attn, why = attention_backend(device)
    model_size = {**size, "vocab": max(size["vocab"], len(tokenizer)), "seq": args.max_length}
    result: dict[str, Any] = {
        "attn_implementation": attn,
        "rows": len(features),
        "tokenizer": plan["tokenizer"],
    }
    if why:
        result["no_flash"] = why
    with tempfile.TemporaryDirectory(prefix="gpu_check_packing.") as tmp:
        for stage in ("baseline", "rho1"):
            torch.manual_seed(0)
            model = WmtpForMultiTokenPrediction(
                wmtp_config(model_size, size["heads"], attn_implementation=attn)
            )
            model = model.to(device=device, dtype=dtype)
            trainer = bp.build_trainer(stage, model, features, Path(tmp), device.type)
            for batch in plan["batches"]:
                fraction = bp.padded_fraction(features, batch)[0]
                measured = bp.measure(trainer, features, batch, args)
                result[f"{stage}_b{batch}"] = {
                    "padded_fraction": round(fraction, 4),
                    "packed_fraction": 0.0,
                    "padded_tok_s": round(measured["padded_tokens_per_s"], 1),
                    "packed_tok_s": round(measured["packed_tokens_per_s"], 1),
                    "packed_over_padded": round(measured["speedup"], 3),
                    "loss_rel_diff": float(f"{measured['max_rel_loss_diff']:.2e}"),
                }
                if measured["max_rel_loss_diff"] > LOSS_TOLERANCE.get(dtype, 2e-2):
                    raise RuntimeError(f"{stage} batch {batch}: packed loss differs from padded: {result}")
            model = trainer = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return result
