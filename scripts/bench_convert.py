"""Memory of the Meta -> HF conversion: shows that tensors stream instead of being held twice.

    python scripts/bench_convert.py --dim 2048 --layers 12 --dtype bfloat16

Writes a synthetic Meta checkpoint (`consolidated.pth` in float32 + `params.json`) of the given size,
converts it with `scripts/convert_meta_checkpoint.py` in a child process, and samples the child's
`RssAnon` (private memory: what can run a machine out of RAM) and `RssFile` (pages of the memory-mapped
checkpoint, which the kernel can drop at any time) every 20 ms. Prints a table and writes JSON.
For the 7B_1T_4 checkpoint, private memory is bounded by one output shard (2 GB) + one tensor.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from wmtp_hf.convert_meta import config_from_params, key_map
from wmtp_hf.modeling_wmtp import WmtpForMultiTokenPrediction

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import add_tiny_option, apply_tiny, print_table, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_checkpoint(folder: Path, params: dict) -> int:
    """A Meta-format checkpoint with every key of `params`' architecture; returns its size in bytes."""
    config = config_from_params(params)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WmtpForMultiTokenPrediction(config).state_dict().items()}
    state = {meta_key: torch.full(shapes[hf_key], 0.01) for meta_key, hf_key in key_map(config).items()}
    (folder / "params.json").write_text(json.dumps(params))
    torch.save(state, folder / "consolidated.pth")
    return (folder / "consolidated.pth").stat().st_size


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=12, help="Meta n_layers (all blocks)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--n-future", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--output", default="bench_results/bench_convert.json")
    add_tiny_option(parser)
    args = apply_tiny(parser.parse_args(), dim=64, layers=3, heads=4, vocab=256, n_future=2)
    params = {"dim": args.dim, "n_layers": args.layers, "n_heads": args.heads, "vocab_size": args.vocab,
              "multiple_of": 256, "norm_eps": 1e-5, "n_future_tokens": args.n_future}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "meta", Path(tmp) / "hf"
        src.mkdir()
        size = write_checkpoint(src, params)
        cmd = [sys.executable, str(REPO / "scripts" / "convert_meta_checkpoint.py"), "--input-dir", str(src),
               "--output-dir", str(out), "--dtype", args.dtype]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak_anon = peak_file = 0
        while proc.poll() is None:
            peak_anon = max(peak_anon, status_kb(proc.pid, "RssAnon"))
            peak_file = max(peak_file, status_kb(proc.pid, "RssFile"))
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        written = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    result = {
        "params": params,
        "dtype": args.dtype,
        "checkpoint_gb": size / 1e9,
        "output_gb": written / 1e9,
        "peak_private_gb": peak_anon * 1024 / 1e9,
        "peak_mapped_file_gb": peak_file * 1024 / 1e9,
        "seconds": elapsed,
    }
    print_table(
        ["checkpoint GB:>14", " output GB:>11", " peak private GB:>17", " peak mapped GB:>16", " seconds:>9"],
        [[f"{result['checkpoint_gb']:.2f}", f"{result['output_gb']:.2f}", f"{result['peak_private_gb']:.2f}",
          f"{result['peak_mapped_file_gb']:.2f}", f"{elapsed:.1f}"]],
    )  # fmt: skip
    write_report(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
