"""CPU threads for torch (`--threads` of train and evaluate): explicit, `$OMP_NUM_THREADS`, or a default
of half the cores (shared among a machine's training processes; evaluate at most 4), at least 1.

torch's own default is one thread per core in every process. When other processes want the same cores
(other jobs, data-parallel workers, the sandbox) its spinning threads contend: measured on a busy 2-core
machine (scripts/bench_threads.py, docs/evaluation.md), 2 threads instead of 1 made SmolLM2-135M
generation 2-13x and micro-model training 8-21x slower, while 1 thread on an idle machine costs at most
the second core. Losing a little when alone beats losing most when shared.
"""

from __future__ import annotations

import os

import torch

from .errors import UsageError

EVALUATE_MAX_THREADS = 4  # generation of small models gains little beyond this


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def env_threads() -> int | None:
    """`$OMP_NUM_THREADS` when it is a positive integer (the user's choice wins over our defaults)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def evaluate_default_threads() -> int:
    """`$OMP_NUM_THREADS`, else half the cores, between 1 and 4."""
    return env_threads() or max(1, min(available_cores() // 2, EVALUATE_MAX_THREADS))


def train_default_threads() -> int:
    """`$OMP_NUM_THREADS`, else half the cores divided among this machine's training processes
    (`$LOCAL_WORLD_SIZE` under torchrun / accelerate launch), at least 1."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    per_machine = int(local) if local.isdigit() and int(local) > 0 else 1
    return env_threads() or max(1, available_cores() // (2 * per_machine))


def set_threads(threads: int | None, *, default: int, option: str = "--threads") -> int:
    """Set torch's intra-op threads to `threads` (or `default`) and, when still possible, its inter-op
    threads too (torch allows that once, before any parallel work); returns the count."""
    count = default if threads is None else threads
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UsageError(f"{option}: expected a positive number of threads, got {threads!r}")
    torch.set_num_threads(count)
    if torch.get_num_interop_threads() != count:
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError:  # inter-op work already ran in this process (e.g. a second call)
            pass
    return count
