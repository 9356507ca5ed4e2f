"""Measuring helpers shared by `bench_model.py`, `bench_train.py` and `bench_stages.py`.

- Memory of a training step (`StepMemoryProbe`): on CUDA `max_memory_allocated` around the step minus
  `memory_allocated` before it; on CPU, which has no allocator peak counter, the max of two exact
  counters: `LiveTensorTracker` (a `TorchDispatchMode` over live tensor storages) and `AllocatorPeak`
  (c10 CPU-allocator events of `torch.profiler(profile_memory=True)`, kernel scratch included), plus the
  peak RSS increase (`PeakRss`) as a coarse sanity number.
- Interleaved timing (`run_interleaved`): each variant runs in its own fresh subprocess (`Worker`) that
  reports its setup/memory result, then answers `step` commands one step at a time, so the driver can
  step the variants round-robin and background load hits every variant alike.
- Analytic matmul FLOPs of a training step (`matmul_flops`) and run metadata (`environment`).

Reporting (tables, the JSON file, `--tiny`) is in `bench_report.py`, which imports no torch.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from bench_report import MB  # noqa: E402  - scripts/ is on sys.path (each bench puts it there)
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

# --------------------------------------------------------------------------------------------------
# Memory measurement
# --------------------------------------------------------------------------------------------------


class LiveTensorTracker(TorchDispatchMode):
    """Exact peak of live tensor-storage bytes created while the mode is active.

    Every op output's untyped storage is counted once (keyed by `data_ptr`; storages in `ignore_ptrs`,
    i.e. alive before, are excluded) and subtracted when a `weakref.finalize` on it fires. Kernel-internal
    scratch buffers are invisible here (see `AllocatorPeak`).
    """

    def __init__(self, ignore_ptrs: Iterable[int] = ()) -> None:
        super().__init__()
        self.ignore_ptrs = set(ignore_ptrs)
        self.live: dict[int, tuple[int, str, tuple[int, ...], str]] = {}
        self.current = 0
        self.peak = 0
        self.phase = "step"
        self.phase_peaks: dict[str, int] = defaultdict(int)
        self.at_peak: dict[int, tuple[int, str, tuple[int, ...], str]] = {}
        self.peak_phase = ""

    def set_phase(self, name: str) -> None:
        """Start a new phase; its peak counts what is live from now on, including older tensors."""
        self.phase = name
        self.phase_peaks[name] = max(self.phase_peaks[name], self.current)

    def _free(self, ptr: int) -> None:
        entry = self.live.pop(ptr, None)
        if entry is not None:
            self.current -= entry[0]

    def _track(self, tensor: torch.Tensor, op: str) -> None:
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self.live or ptr in self.ignore_ptrs:
            return
        nbytes = storage.nbytes()
        self.live[ptr] = (nbytes, op, tuple(tensor.shape), self.phase)
        weakref.finalize(storage, self._free, ptr)
        self.current += nbytes
        if self.current > self.phase_peaks[self.phase]:
            self.phase_peaks[self.phase] = self.current
        if self.current > self.peak:
            self.peak = self.current
            self.peak_phase = self.phase
            self.at_peak = dict(self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        op = str(func.overloadpacket.__name__)
        for leaf in pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf, op)
        return out

    def breakdown(self, top: int = 12) -> list[dict[str, Any]]:
        """What was alive at the peak, grouped by (creating phase, op, shape), largest first."""
        groups: dict[tuple[str, str, tuple[int, ...]], list[int]] = defaultdict(lambda: [0, 0])
        for nbytes, op, shape, phase in self.at_peak.values():
            group = groups[(phase, op, shape)]
            group[0] += nbytes
            group[1] += 1
        rows = sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]
        return [
            {"phase": p, "op": o, "shape": list(s), "count": c, "mb": round(b / MB, 2)}
            for (p, o, s), (b, c) in rows
        ]


def _read_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRss:
    """Peak RSS increase over a block: VmHWM after resetting it (Linux), else psutil sampling."""

    def __enter__(self) -> PeakRss:
        import psutil

        self._proc = psutil.Process()
        self.method = "psutil-sampling-1ms"
        try:
            Path("/proc/self/clear_refs").write_text("5")
            if _read_status_kb("VmHWM") is not None:
                self.method = "VmHWM-reset"
        except OSError:
            pass
        self.start = self._proc.memory_info().rss
        self._peak = self.start
        self._stop = threading.Event()
        if self.method.startswith("psutil"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.method == "VmHWM-reset":
            self._peak = (_read_status_kb("VmHWM") or 0) * 1024
        else:
            self._thread.join()
        self.delta = max(self._peak - self.start, 0)


class AllocatorPeak:
    """Peak bytes allocated (and not yet freed) through c10's CPU allocator during a block.

    Reads the allocation events of `torch.profiler.profile(profile_memory=True)`: each carries the
    running total of bytes allocated since profiling started, including scratch buffers that kernels
    allocate internally (which a dispatch mode cannot see). Uses a private profiler API, so on failure
    `peak` is None and only the dispatch tracker is used.
    """

    def __enter__(self) -> AllocatorPeak:
        from torch.profiler import ProfilerActivity, profile

        self.peak: int | None = None
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._prof.__exit__(*exc)
        try:
            from torch._C._profiler import _EventType

            totals: list[tuple[int, int, int]] = []
            stack = list(self._prof.profiler.kineto_results.experimental_event_tree())
            while stack:
                node = stack.pop()
                if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
                    fields = node.extra_fields
                    totals.append((node.start_time_ns, fields.total_allocated, fields.alloc_size))
                stack.extend(node.children)
            if totals:
                totals.sort()
                start = totals[0][1] - totals[0][2]  # running total before the first event
                self.peak = max(t for _, t, _ in totals) - start
        except Exception as err:  # private API: degrade to the dispatch tracker only
            print(f"[bench] allocator events unavailable ({err!r})", file=sys.stderr)


def storage_ptrs(tensors: Iterable[torch.Tensor]) -> dict[int, int]:
    """`data_ptr -> nbytes` of the distinct storages behind `tensors`."""
    out: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() != 0:
            out[storage.data_ptr()] = storage.nbytes()
    return out


def held_tensors(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, extra: Iterable[torch.Tensor] = ()
) -> list[torch.Tensor]:
    """Tensors that persist across steps: parameters, existing gradients, optimizer state, `extra`."""
    out = [*model.parameters(), *extra]
    out += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        out += [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return out


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepMemoryProbe:
    """Peak memory of the training step(s) between `start()` and `stop()`, split into named phases.

    `held` are the tensors alive before the step that persist (see `held_tensors`); their bytes are the
    baseline. `stop()` returns `peak_working_bytes` (peak minus baseline, max over phases and, on CPU, the
    allocator counter), `peak_total_bytes`, `phase_peak_working_bytes`, the RSS delta (CPU) and details.
    """

    def __init__(self, device: torch.device, held: Iterable[torch.Tensor]) -> None:
        self.device = device
        self.held = storage_ptrs(t for t in held if t.device.type == device.type)
        self._phase_peaks: dict[str, int] = {}
        self._current = "start"

    def start(self) -> None:
        gc.collect()
        sync(self.device)
        if self.device.type == "cuda":
            self.baseline = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.baseline = sum(self.held.values())
            self.tracker = LiveTensorTracker(ignore_ptrs=self.held)
            self._contexts = [PeakRss(), AllocatorPeak(), self.tracker]
            for ctx in self._contexts:
                ctx.__enter__()

    def phase(self, name: str) -> None:
        """Mark the start of phase `name` (a step's phases may repeat over several steps)."""
        if self.device.type == "cuda":
            sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self.baseline
            self._phase_peaks[self._current] = max(self._phase_peaks.get(self._current, 0), peak)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._current = name
        else:
            self.tracker.set_phase(name)

    def stop(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peak_breakdown": [], "rss_delta_bytes": None, "rss_method": None}
        if self.device.type == "cuda":
            self.phase("end")
            phase_peaks = dict(self._phase_peaks)
            phase_peaks.pop("start", None)
            out["memory_method"] = "torch.cuda.max_memory_allocated - memory_allocated before the step"
        else:
            for ctx in reversed(self._contexts):
                ctx.__exit__(None, None, None)
            rss, allocator, tracker = self._contexts
            phase_peaks = dict(tracker.phase_peaks)
            out["peak_breakdown"] = tracker.breakdown()
            out["rss_delta_bytes"], out["rss_method"] = rss.delta, rss.method
            out["live_tensor_peak_bytes"] = tracker.peak
            out["allocator_peak_bytes"] = allocator.peak
            out["memory_method"] = (
                "max(LiveTensorTracker: TorchDispatchMode over live storage bytes, "
                "CPU allocator events of torch.profiler(profile_memory=True))"
            )
        phase_peaks.pop("end", None)
        working = max(phase_peaks.values(), default=0)
        working = max(working, out.get("allocator_peak_bytes") or 0)
        out.update(
            baseline_bytes=self.baseline,
            held_bytes_counted=sum(self.held.values()),
            peak_working_bytes=working,
            peak_total_bytes=self.baseline + working,
            phase_peak_working_bytes=phase_peaks,
        )
        return out


# --------------------------------------------------------------------------------------------------
# Analytic FLOPs
# --------------------------------------------------------------------------------------------------


def matmul_flops(
    block_params: int,
    n_blocks: int,
    attn_width: int,
    batch: int,
    seq: int,
    vocab: int,
    hidden: int,
    unembed_rows: float,
    unembed_factor: float,
) -> dict[str, float]:
    """Matmul FLOPs of one training step on a `[batch, seq]` batch (norms, softmax, embedding not counted).

    Blocks: `6 * block_params * n_blocks` per position; causal attention: `6 * n_blocks * seq * attn_width`
    per position; unembedding: `unembed_factor * vocab * hidden` per row (6 for plain logits + CE on
    `unembed_rows` rows, 8 for the chunked loss, whose backward recomputes the logits).
    """
    positions = float(batch * seq)
    blocks = 6.0 * block_params * n_blocks * positions
    attention = 6.0 * n_blocks * seq * attn_width * positions
    unembed = unembed_factor * float(vocab * hidden) * unembed_rows
    return {
        "blocks": blocks,
        "attention": attention,
        "unembedding": unembed,
        "total": blocks + attention + unembed,
    }


# --------------------------------------------------------------------------------------------------
# Worker processes and interleaved timing
# --------------------------------------------------------------------------------------------------


class StepTimer:
    """Wall and CPU time of one step: `start()` collects garbage and syncs first, `stop()` syncs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        gc.collect()
        sync(self.device)
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def stop(self) -> dict[str, float]:
        sync(self.device)
        return {"wall_s": time.perf_counter() - self._t0, "cpu_s": time.process_time() - self._c0}


def protocol_stream() -> IO[str]:
    """A line-buffered stream on the original stdout for the worker protocol; stdout itself is redirected
    to stderr, so stray prints (ours, libraries', C code's) cannot corrupt the protocol."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return proto


def wait_for_command(stream: IO[str] = sys.stdin) -> bool:
    """Block until the driver sends a line; True for `step`, False for anything else (or EOF)."""
    return stream.readline().strip() == "step"


def worker_argv(args: argparse.Namespace, exclude: Sequence[str]) -> list[str]:
    """`args` back as command-line options (`--name value`, a true flag as `--name`), skipping `exclude`,
    None and false flags."""
    argv: list[str] = []
    for name, value in vars(args).items():
        if value is None or value is False or name in exclude:
            continue
        argv += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


class Worker:
    """A variant's measuring process, `python SCRIPT --worker VARIANT ARGV...`, driven over pipes."""

    def __init__(self, script: str, variant: str, argv: Sequence[str]) -> None:
        cmd = [sys.executable, os.path.abspath(script), "--worker", variant, *argv]
        self.variant = variant
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.variant} exited with {self.proc.wait()} (see its stderr above)")
        return json.loads(line)

    def step(self) -> dict[str, Any]:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        self.proc.wait()


def run_interleaved(
    script: str, variants: Sequence[str], argv: Sequence[str], rounds: int, tag: str
) -> dict[str, dict[str, Any]]:
    """Start each variant's worker in turn (its setup and memory measurement run alone), then time one step
    of every variant per round, round-robin. Returns each worker's setup result with `steps` (the per-step
    replies) and `step_time_median_s`, `step_time_min_s`, `cpu_time_median_s`."""
    workers: dict[str, Worker] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for variant in variants:
            print(f"[{tag}] {variant}: setup, warm-up, memory (fresh process) ...", flush=True)
            workers[variant] = Worker(script, variant, argv)
            results[variant] = workers[variant].read()
            results[variant]["steps"] = []
        for i in range(rounds):
            print(f"[{tag}] timing round {i + 1}/{rounds} ...", flush=True)
            for variant, worker in workers.items():
                results[variant]["steps"].append(worker.step())
    finally:
        for worker in workers.values():
            worker.close()
    for r in results.values():
        walls = [s["wall_s"] for s in r["steps"]]
        r["step_time_median_s"] = statistics.median(walls)
        r["step_time_min_s"] = min(walls)
        r["cpu_time_median_s"] = statistics.median(s["cpu_s"] for s in r["steps"])
    return results


def paired_ratio(
    steps: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], float]
) -> float:
    """Median over rounds of `key(step) / key(base step)` (same round, same load)."""
    return statistics.median(key(a) / key(b) for a, b in zip(steps, base, strict=True))


def environment(device: str) -> dict[str, Any]:
    """Device name, CPU count and library versions for the JSON report."""
    import transformers

    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
