"""Launch forms that would silently do something else stop before any work, with one line saying why and
what to run instead (docs/distributed.md, "How to launch").

- `accelerate launch` with a several-process CPU config (`--cpu --num_processes 2`, a MULTI_CPU config)
  starts ONE process (its CPU launcher needs mpirun for more) and would exit 0 as a one-process run;
- accelerate's FSDP (`ACCELERATE_USE_FSDP`, from an FSDP accelerate config) on a machine without GPUs:
  accelerate never gives FSDP on CPU, and every process would train alone into the same output folder;
- any launcher that started N processes that would not train together (world size 1 in each).
"""

from __future__ import annotations

import os
from typing import Any

from .config import ConfigError

# Where a launcher puts the process count: torchrun / accelerate's GPU launcher, then MPI launchers.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
CPU_DDP = "OMP_NUM_THREADS=1 torchrun --nproc_per_node N -m wmtp_hf.train ..."
CPU_FSDP = "OMP_NUM_THREADS=1 torchrun --nproc_per_node N -m wmtp_hf.train ... --config configs/fsdp_cpu.yaml"


def launched_world_size(env: dict[str, str]) -> int | None:
    """The process count a launcher set in the environment, or None (a plain `python`)."""
    for name in WORLD_SIZE_VARIABLES:
        if env.get(name, "").strip().isdigit():
            return int(env[name])
    return None


def _true(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def check_launch(config: Any, env: dict[str, str] | None = None, has_gpu: bool | None = None) -> None:
    """Raise a one-line `ConfigError` when the processes this launch started would not train as asked."""
    import torch

    env = dict(os.environ) if env is None else env
    has_gpu = torch.cuda.is_available() if has_gpu is None else has_gpu
    launched = launched_world_size(env)
    by_accelerate = "ACCELERATE_MIXED_PRECISION" in env  # every `accelerate launch` sets it
    if by_accelerate and launched is None and "MASTER_PORT" in env:
        # accelerate's one-process launcher sets MASTER_ADDR/PORT only when more processes were asked for.
        raise ConfigError(
            "launch: accelerate launch asked for several CPU processes but started one (its CPU launcher "
            f"needs mpirun); run {CPU_DDP} for DDP, or {CPU_FSDP} for FSDP2, or drop --num_processes for one"
        )
    if _true(env.get("ACCELERATE_USE_FSDP")) and not has_gpu:
        raise ConfigError(
            "launch: the accelerate config asks for FSDP but this machine has no GPU (accelerate never gives "
            f"FSDP on CPU: each process would train alone); for FSDP2 on CPU run {CPU_FSDP}"
        )
    world = int(config.world_size)
    if launched is not None and launched > 1 and world != launched:
        raise ConfigError(
            f"launch: {launched} processes were started but each would train as world size {world} (N "
            f"independent trainings into one output_dir); on CPU run {CPU_DDP} (add --config "
            "configs/fsdp_cpu.yaml for FSDP2), on GPUs accelerate launch with a GPU config"
        )
