"""Long work that only the main process does (the Hub upload of `final/`), with the other processes
waiting for it on the process group's store under a timeout sized to the work.

Waiting in a collective (a barrier) is bounded by the process group's timeout (`ddp_timeout`, 1800 s by
default): an upload of a large model that takes longer would kill the job mid-upload. A store wait takes
its own timeout and keeps no collective in flight, so no watchdog fires meanwhile.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from ..errors import WmtpError
from ..messages import first_line

_CALLS = itertools.count()
OK = "ok"


def upload_timeout_s(folder: Path, floor_s: float = 1800.0, min_bytes_per_s: float = 1e6) -> float:
    """How long to wait for an upload of `folder`: `floor_s` plus its size at `min_bytes_per_s` (1 MB/s)."""
    size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    return floor_s + size / min_bytes_per_s


def run_on_main_process(fn: Callable[[], Any], timeout_s: Callable[[], float]) -> Any:
    """`fn()` on every process (only the main one does the long work in it, e.g. `Trainer.push_to_hub`);
    the others then wait until the main process has finished, for at most `timeout_s()` seconds (computed
    on the main process). A failure on the main process is raised there and, as one line, on the others."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn()
    key = f"wmtp_hf/main_process_work/{next(_CALLS)}"
    store = dist.distributed_c10d._get_default_store()  # the group's own store (no private group state)
    if dist.get_rank() == 0:
        store.set(f"{key}/timeout", str(timeout_s()))
        try:
            result = fn()
        except BaseException as err:
            store.set(key, f"failed on process 0: {first_line(err)}")
            raise
        store.set(key, OK)
        return result
    result = fn()
    store.wait([f"{key}/timeout"])  # set at once by process 0, which is past the same point
    limit = float(store.get(f"{key}/timeout").decode())
    try:
        store.wait([key], timedelta(seconds=limit))
    except Exception as err:  # a store timeout: RuntimeError or DistStoreError, by torch version
        raise WmtpError(f"process 0 did not finish within {limit:.0f} s ({first_line(err)})") from None
    status = store.get(key).decode()
    if status != OK:
        raise WmtpError(status)  # e.g. a failed Hub upload: its own message, not a config error
    return result
