"""Benchmark stage sampling on a synthetic 3.7M-row processed dataset: peak RSS and time per step.

    python scripts/bench_data.py [--rows 3700000] [--samples 200000] [--workdir DIR] [--output bench_data.json]

Each measurement runs in a fresh child process (so one step's memory does not pollute the next); peak
RSS is the child's `ru_maxrss`, which includes the interpreter and library imports ("open" row = that
baseline plus memory-mapping the dataset). Target (docs/design.md §3.4): picking 200K of 3.7M rows < 1 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import add_tiny_option, apply_tiny, print_table, write_report  # noqa: E402

CHUNK = 100_000


def build(path: Path, rows: int) -> None:
    """Write a tokenized-style dataset (short token lists + metadata) as an Arrow stream, chunk by chunk."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    schema = pa.schema(
        [
            ("input_ids", pa.list_(pa.int32())),
            ("prompt_length", pa.int64()),
            ("length", pa.int64()),
            ("task_id", pa.string()),
            ("problem_id", pa.string()),
            ("source", pa.string()),
            ("is_correct", pa.bool_()),
            ("difficulty", pa.int64()),
        ]
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            lengths = rng.integers(16, 64, n)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            ids = pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(rng.integers(3, 32000, offsets[-1], dtype=np.int32))
            )
            problem = (np.arange(start, start + n) // 280).astype(str)
            correct = rng.random(n) < 0.35
            table = pa.table(
                {
                    "input_ids": ids,
                    "prompt_length": pa.array(lengths // 2),
                    "length": pa.array(lengths),
                    "task_id": pa.array(
                        [
                            f"p{p}_{'correct' if c else 'incorrect'}_{i}"
                            for p, c, i in zip(problem, correct, range(start, start + n), strict=True)
                        ]
                    ),
                    "problem_id": pa.array([f"p{p}" for p in problem]),
                    "source": pa.array(["codecontests"] * n),
                    "is_correct": pa.array(correct),
                    "difficulty": pa.array(rng.integers(0, 12, n)),
                },
                schema=schema,
            )
            writer.write_table(table)


def child(task: str, path: str, samples: int) -> dict:
    """One measurement (runs in its own process)."""
    started = time.perf_counter()
    if task == "build":
        build(Path(path), int(samples))
        return {"seconds": time.perf_counter() - started}
    import datasets

    from wmtp_hf.data import WmtpDataCollator
    from wmtp_hf.data.sampling import order_indices

    imported = time.perf_counter()
    ds = datasets.Dataset.from_file(path)
    result = {"import_seconds": imported - started}
    if task != "open":
        order = {"critic": "balanced", "curriculum": "curriculum"}[task]  # the critic's, verifiable's order
        picked = ds.select(order_indices(order, ds, n_samples=samples, seed=0))
        batch = WmtpDataCollator(pad_token_id=0)([picked[i] for i in range(32)])  # read a first batch
        assert batch["input_ids"].shape[0] == 32 and len(picked) == samples
    result["seconds"] = time.perf_counter() - imported
    result["rows"] = len(ds)
    return result


def measure(task: str, path: Path, samples: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", task, str(path), str(samples)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"error: child '{task}' failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        out = child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for line in (
            Path("/proc/self/status").read_text().splitlines() if Path("/proc/self/status").exists() else []
        ):
            if line.startswith(
                ("RssAnon:", "RssFile:")
            ):  # final RSS split: private memory vs mapped file pages
                out[line.split(":")[0].lower() + "_mb"] = int(line.split()[1]) / 1024
        print(json.dumps(out))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=3_700_000)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--workdir", help="where the synthetic dataset goes (default: a temp folder)")
    parser.add_argument("--output", default="bench_data.json", help="JSON results file")
    add_tiny_option(parser)
    args = apply_tiny(parser.parse_args(), rows=2_000, samples=100)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / "data.arrow"
        results = {"build": measure("build", path, args.rows)}
        results["build"]["file_mb"] = path.stat().st_size / 2**20
        for task in ("open", "critic", "curriculum"):
            results[task] = measure(task, path, args.samples)
    print(f"rows={args.rows:,}  samples={args.samples:,}  file={results['build']['file_mb']:.0f} MB")
    print_table(
        ["step:<12", "time (s):>10", "peak RSS (MB):>16", "anon at end:>13", "file at end:>13"],
        [
            [task, f"{r['seconds']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r.get('rssanon_mb', float('nan')):.0f}",
             f"{r.get('rssfile_mb', float('nan')):.0f}"]
            for task, r in results.items()
        ],
    )  # fmt: skip
    worst = max(results[t]["peak_rss_mb"] for t in ("critic", "curriculum"))
    summary = {
        "rows": args.rows,
        "samples": args.samples,
        "results": results,
        "target_mb": 1024,
        "within_target": worst < 1024,
    }
    print(f"peak RSS while sampling: {worst:.0f} MB (target < 1024 MB) -> {'OK' if worst < 1024 else 'OVER'}")
    write_report(args.output, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
