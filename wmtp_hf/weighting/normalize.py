"""Advantage normalisation (docs/design.md §4.3): per batch (`zscore`) or by running statistics (`ema`),
all-reduced across processes.
"""

from __future__ import annotations

import math

import torch

from .options import NORMALIZE_MODES


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` in place across processes when a multi-process group is running; no-op otherwise."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _moments(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 `[3]` tensor `(count, sum, sum of squares)` of the masked entries of `x`."""
    mask = mask.bool()
    x = torch.where(mask, x.detach().to(torch.float64), 0.0)
    return torch.stack([mask.sum().to(torch.float64), x.sum(), (x * x).sum()])


class EmaNormalizer:
    """Running mean/variance of advantages for `normalize_advantages(mode="ema")`.

    Micro-batches only `accumulate` their (count, sum, sum of squares); `step()` (once per optimizer step)
    all-reduces them across processes and moves the running statistics, so gradient accumulation and one
    large batch normalise identically. During the first `warmup_steps` updates the momentum is at least
    `1 / (updates + 1)`: the first update takes the batch statistics, the warm-up averages the first batches.
    """

    def __init__(self, momentum: float = 0.1, warmup_steps: int = 10) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum: expected a value in (0, 1], got {momentum}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected >= 0, got {warmup_steps}")
        self.momentum = float(momentum)
        self.warmup_steps = int(warmup_steps)
        self.mean = 0.0
        self.var = 1.0
        self.updates = 0
        self.pending: torch.Tensor | None = None
        self._device: torch.device | None = None

    @property
    def std(self) -> float:
        """Running standard deviation `sqrt(max(var, 0))`."""
        return math.sqrt(max(self.var, 0.0))

    def accumulate(self, adv: torch.Tensor, mask: torch.Tensor) -> None:
        """Add this micro-batch's masked (count, sum, sum of squares) to the pending sums (float64)."""
        moments = _moments(adv, mask)
        self._device = moments.device
        self.pending = moments if self.pending is None else self.pending + moments.to(self.pending.device)

    def _pending_or_zeros(self) -> torch.Tensor:
        if self.pending is not None:
            return self.pending
        device = self._device
        if device is None:
            # Nothing accumulated here yet: still join the collective, on the device the backend needs.
            dist = torch.distributed
            nccl = dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        return torch.zeros(3, dtype=torch.float64, device=device)

    def step(self) -> None:
        """All-reduce the pending sums and, if any entry was seen, move the running statistics once."""
        count, total, squares = _all_reduce_sum(self._pending_or_zeros().clone()).tolist()
        self.pending = None
        if count <= 0:
            return
        batch_mean = total / count
        batch_var = max(squares / count - batch_mean * batch_mean, 0.0)
        m = self.momentum
        if self.updates < self.warmup_steps:
            m = max(m, 1.0 / (self.updates + 1))
        self.mean = (1.0 - m) * self.mean + m * batch_mean
        self.var = (1.0 - m) * self.var + m * batch_var
        self.updates += 1

    def state_dict(self) -> dict[str, float | int]:
        """JSON-serialisable state (pending sums excluded: `step()` always runs before a checkpoint)."""
        return {
            "momentum": self.momentum,
            "warmup_steps": self.warmup_steps,
            "mean": self.mean,
            "var": self.var,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        """Restore a `state_dict()` so a resumed run normalises exactly as the original."""
        self.momentum = float(state["momentum"])
        self.warmup_steps = int(state["warmup_steps"])
        self.mean = float(state["mean"])
        self.var = float(state["var"])
        self.updates = int(state["updates"])
        self.pending = None


def normalize_advantages(
    adv: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    state: EmaNormalizer | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Normalise advantages over the masked entries (`none`, `zscore` or `ema`); masked-out entries get 0.

    `zscore` uses this batch's mean and population std, all-reduced across processes. `ema` uses the
    running statistics of `state` as they are now (the adv unchanged before its first update) and then
    accumulates this batch into `state`; the trainer calls `state.step()` once per optimizer step.
    """
    mask = mask.bool()
    zero = torch.zeros_like(adv)
    if mode == "none":
        return torch.where(mask, adv, zero)
    if mode == "zscore":
        count, total, squares = _all_reduce_sum(_moments(adv, mask)).unbind()
        safe = count.clamp(min=1.0)
        mean = total / safe
        std = (squares / safe - mean * mean).clamp(min=0.0).sqrt()
        out = ((adv.to(torch.float64) - mean) / (std + eps)).to(adv.dtype)
        return torch.where(mask & (count > 0), out, zero)
    if mode == "ema":
        if state is None:
            raise ValueError("state: normalize 'ema' needs an EmaNormalizer state, got None")
        if state.updates == 0:
            out = adv
        else:
            out = ((adv.to(torch.float64) - state.mean) / (state.std + eps)).to(adv.dtype)
        state.accumulate(adv, mask)
        return torch.where(mask, out, zero)
    raise ValueError(f"normalize: expected one of {', '.join(NORMALIZE_MODES)}, got {mode!r}")
