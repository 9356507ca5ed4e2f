"""Token-weighting math of the weighted stages (docs/design.md §4.2–4.4), as plain functions over tensors.

Conventions (docs/design.md §4): `labels` are `[B, T]` token ids with -100 where a token is not a response token
(prompt, padding). A *value position* t is one whose next token `x_{t+1}` is a response token; `V_t` is
the value after reading `x_t`. Per-token quantities (TD errors, advantages, weights, reference losses) are
indexed by the token's own position j (`[B, T]`); `losses.target_weights_per_head` maps them to heads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .losses import IGNORE_INDEX, chunked_cross_entropy, target_weights_per_head

__all__ = [
    "VerifiableWeighting",
    "Rho1Weighting",
    "td_token_weights",
    "reference_token_losses",
    "value_positions",
    "response_token_mask",
    "token_mask_from_value_mask",
    "mc_returns",
    "lambda_returns",
    "td_errors",
    "gae",
    "EmaNormalizer",
    "normalize_advantages",
    "td_weights",
    "weight_stats",
    "tensor_stats",
    "binary_auroc",
    "explained_variance",
    "ref_losses_per_head",
    "excess_losses",
    "rho1_keep_counts",
    "rho1_weights",
    "bradley_terry_loss",
    "masked_row_mean",
]

NORMALIZE_MODES = ("none", "zscore", "ema")


class _Options:
    """`of(source)`: the options read from any object that has them (a stage config, a namespace), the
    defaults for the rest; checked by `__post_init__`."""

    @classmethod
    def of(cls, source: Any = None) -> Any:
        return cls(
            **{f.name: getattr(source, f.name) for f in dataclasses.fields(cls) if hasattr(source, f.name)}
        )


@dataclass
class VerifiableWeighting(_Options):
    """The verifiable stage's token-weight options (docs/design.md §4.3) and their defaults.

    `VerifiableConfig` takes its defaults from here and checks its values here; `wmtp_hf.inspection`
    reads the same options, so an inspect page shows the weights training uses."""

    advantage: str = "td"  # td (A = delta) or gae
    gamma: float = 1.0
    lam: float = 0.95
    normalize: str = "none"  # none, zscore or ema
    ema_momentum: float = 0.1
    ema_warmup_steps: int = 10
    beta: float = 0.9
    weight_min: float = 0.1
    weight_max: float = 5.0
    policy_on: str = "correct"  # rows the MTP loss imitates: correct or all

    def __post_init__(self) -> None:
        choices = {"advantage": ("td", "gae"), "normalize": NORMALIZE_MODES, "policy_on": ("correct", "all")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma: expected a number in (0, 1], got {self.gamma}")
        if not 0 <= self.lam <= 1:
            raise ValueError(f"lam: expected a number in [0, 1], got {self.lam}")
        if self.beta <= 0:
            raise ValueError(f"beta: expected a positive number, got {self.beta}")
        if not 0 <= self.weight_min <= self.weight_max:
            raise ValueError(
                f"weight_min, weight_max: expected 0 <= weight_min <= weight_max, got {self.weight_min}, {self.weight_max}"
            )
        if not 0 < self.ema_momentum <= 1:
            raise ValueError(f"ema_momentum: expected a number in (0, 1], got {self.ema_momentum}")


@dataclass
class Rho1Weighting(_Options):
    """The Rho-1 stage's token-selection option (docs/design.md §4.4) and its default; shared like
    `VerifiableWeighting` by `Rho1Config` and the inspection."""

    k_percent: float = 0.6  # fraction of each head's valid targets kept per batch

    def __post_init__(self) -> None:
        if not 0 < self.k_percent <= 1:
            raise ValueError(f"k_percent: expected a number in (0, 1], got {self.k_percent}")


@torch.no_grad()
def reference_token_losses(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    chunk_size: int = 1024,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[B, T]` float32 `CE_ref(j) = -log p_ref(x_j | x_<j)` of a causal LM, 0 where `labels[j] == -100`.

    A packed row (examples back to back, `position_ids` restarting at each, no attention mask; its labels
    -100 on each example's first token, as `WmtpDataCollator(packing=True)` writes them) runs without a
    cache, so attention and targets stay inside each example.

    The cross-entropy is computed `chunk_size` positions at a time from the model's final hidden states
    and its output projection, so a 32k–128k vocabulary never materialises `[B, T, V]` logits. Models
    whose logits are not a plain bias-free projection of the last hidden state (biases, soft-capping,
    logit scaling) fall back to one row of full logits at a time.
    """
    targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    plain_projection = (
        isinstance(head, nn.Linear)
        and head.bias is None
        and not getattr(model.config, "final_logit_softcapping", None)
        and getattr(model.config, "logit_scale", None) in (None, 1.0)
        and hasattr(model, "base_model_prefix")
        and hasattr(model, getattr(model, "base_model_prefix", ""))
    )
    if plain_projection:
        base = getattr(model, model.base_model_prefix)
        hidden = base(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        losses = chunked_cross_entropy(hidden, head.weight, targets, chunk_size)
    else:
        rows = []
        for b in range(input_ids.shape[0]):
            mask = attention_mask[b : b + 1] if attention_mask is not None else None
            positions = position_ids[b : b + 1] if position_ids is not None else None
            logits = model(
                input_ids=input_ids[b : b + 1], attention_mask=mask, position_ids=positions, use_cache=False
            ).logits
            logits = logits.float()
            row_targets = targets[b : b + 1]
            row = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), row_targets.clamp(min=0), reduction="none"
            )
            rows.append(row.masked_fill(row_targets == IGNORE_INDEX, 0.0))
        losses = torch.cat(rows)
    # CE of token j is predicted at position j-1: shift right by one so it is indexed by the token.
    losses = torch.cat([losses.new_zeros(losses.shape[0], 1), losses[:, :-1]], dim=1)
    return losses.masked_fill(labels == IGNORE_INDEX, 0.0)


@torch.no_grad()
def reference_token_losses_by_row(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    lengths: torch.Tensor | list[int],
    chunk_size: int = 1024,
) -> torch.Tensor:
    """`[B, W]` float32 `CE_ref` of B examples, each scored alone, unpadded (`reference_token_losses` of
    a one-row batch without attention mask), so a token's loss does not depend on the other rows.

    Scored in a batch, the same row's losses change in the last bits with the batch's width and
    companions (padding changes the kernels' shapes: about 4e-6 nats on SmolLM2-135M), so losses
    cached in `reference_batch_size` rows and live losses of the training batch differed, and with them
    the kept tokens wherever excess losses were near-ties. Scored alone, cached and live are bit-identical.

    `input_ids` and `labels` are `[B, W]` right-padded rows with `lengths[b]` real tokens (`W` is the
    output width), or one packed row `[1, N]` of examples `lengths` long back to back (`W = max(lengths)`).
    """
    lengths = [int(n) for n in lengths]
    packed = input_ids.shape[0] == 1 and len(lengths) > 1
    width = max(lengths, default=0) if packed else input_ids.shape[1]
    out = torch.zeros(len(lengths), width, dtype=torch.float32, device=input_ids.device)
    start = 0
    for b, n in enumerate(lengths):
        row, at = (0, start) if packed else (b, 0)
        if n > 0:
            ids, targets = input_ids[row : row + 1, at : at + n], labels[row : row + 1, at : at + n]
            out[b, :n] = reference_token_losses(model, ids, None, targets, chunk_size=chunk_size)[0].float()
        start += n
    return out


# --------------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------------


def value_positions(labels: torch.Tensor) -> torch.Tensor:
    """`[B, T]` bool: t is a value position iff `x_{t+1}` is a response token (`labels[b, t+1] != -100`).

    These are the positions whose value `V_t` the critic is trained on: from the last prompt token to the
    token before the last response token. `t = T-1` never is (it has no next token).
    """
    out = torch.zeros_like(labels, dtype=torch.bool)
    out[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return out


def response_token_mask(labels: torch.Tensor) -> torch.Tensor:
    """`[B, T]` bool: token j is a response token (`labels[b, j] != -100`)."""
    return labels != IGNORE_INDEX


def token_mask_from_value_mask(value_mask: torch.Tensor) -> torch.Tensor:
    """`[B, T]` bool token mask: token j is a response token iff `j-1` is a value position (never j = 0).

    Token-indexed quantities (TD errors, advantages) live where this is True; it equals
    `response_token_mask(labels)` whenever no response token sits at position 0.
    """
    value_mask = value_mask.bool()
    out = torch.zeros_like(value_mask)
    out[:, 1:] = value_mask[:, :-1]
    return out


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


def _powers(base: float, exponents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`base ** exponents` elementwise in `dtype` (`0 ** 0 = 1`)."""
    return torch.full((), base, dtype=dtype, device=exponents.device).pow(exponents.to(dtype))


def _next_masked_index(mask: torch.Tensor) -> torch.Tensor:
    """`[B, T]` long: index of the next True position strictly after t in the row, T when there is none."""
    seq = mask.shape[1]
    idx = torch.arange(seq, device=mask.device).expand_as(mask)
    idx = torch.where(mask, idx, torch.full_like(idx, seq))
    # Reverse running minimum gives the first True at or after t; shift left for "strictly after".
    at_or_after = idx.flip(1).cummin(dim=1).values.flip(1)
    return torch.cat([at_or_after[:, 1:], at_or_after.new_full((mask.shape[0], 1), seq)], dim=1)


def _masked_reverse_discounted_cumsum(
    x: torch.Tensor, mask: torch.Tensor, discount: float, chunk: int = 64
) -> torch.Tensor:
    """`y_t = x_t + discount * y_{t'}` at masked t, with t' the next masked position of the row (0 if none).

    Equivalently `y_t = sum_l discount**l * x_{t_l}` over the masked positions `t_0 = t < t_1 < ...` of the
    row. Masked-out entries of `x` never contribute and get 0. Computed `chunk` positions at a time: inside
    a chunk as an explicit `[B, C, C]` weighted sum (elementwise, so TF32 matmuls cannot blur it), across
    chunks through a per-row carry, so the Python loop runs `T / chunk` times instead of T.
    """
    mask = mask.bool()
    batch, seq = x.shape
    carry = x.new_zeros(batch)
    pieces: list[torch.Tensor] = []
    for end in range(seq, 0, -chunk):
        start = max(0, end - chunk)
        ms = mask[:, start:end]
        xs = torch.where(ms, x[:, start:end], torch.zeros_like(x[:, start:end]))
        size = end - start
        # n[i] = number of masked positions at or after i inside the chunk.
        n = ms.flip(1).long().cumsum(dim=1).flip(1)
        # For masked i <= j (j masked), j is the (n[i] - n[j])-th masked position after i.
        exponent = n[:, :, None] - n[:, None, :]
        ar = torch.arange(size, device=x.device)
        upper = ar[:, None] <= ar[None, :]
        valid = upper[None] & ms[:, None, :]
        weights = torch.where(valid, _powers(discount, exponent.clamp(min=0), x.dtype), 0.0)
        y = (weights * xs[:, None, :]).sum(dim=-1) + _powers(discount, n, x.dtype) * carry[:, None]
        y = torch.where(ms, y, torch.zeros_like(y))
        pieces.append(y)
        first = ms.long().argmax(dim=1, keepdim=True)
        carry = torch.where(ms.any(dim=1), y.gather(1, first).squeeze(1), carry)
    if not pieces:
        return torch.zeros_like(x)
    return torch.cat(pieces[::-1], dim=1)


# --------------------------------------------------------------------------------------------------------
# Returns, TD errors, GAE (docs/design.md §4.2, §4.3)
# --------------------------------------------------------------------------------------------------------


def mc_returns(rewards: torch.Tensor, value_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """`[B, T]` Monte-Carlo critic targets `G_t = gamma ** L_t * R_b` at value positions, 0 elsewhere.

    `L_t` is the number of value positions of the row strictly after t (= response tokens after
    `x_{t+1}`): the sequence-level reward is discounted back from the end of the response.
    """
    value_mask = value_mask.bool()
    dtype = _float_dtype(rewards)
    after = value_mask.long().sum(dim=1, keepdim=True) - value_mask.long().cumsum(dim=1)
    returns = _powers(gamma, after, dtype) * rewards.to(dtype)[:, None]
    return torch.where(value_mask, returns, torch.zeros_like(returns))


def lambda_returns(
    values: torch.Tensor, rewards: torch.Tensor, value_mask: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """`[B, T]` lambda-return critic targets over the critic's own detached values, 0 off value positions.

    Backward over the value positions of a row: the last one gets `R_b`; any other t, with next value
    position t', gets `gamma * ((1 - lam) * V_{t'} + lam * G_{t'})`. `lam = 1` is `mc_returns`, `lam = 0`
    the TD(0) target `gamma * V_{t'}`.
    """
    values = values.detach()
    value_mask = value_mask.bool()
    batch, seq = values.shape
    nxt = _next_masked_index(value_mask)
    padded = torch.cat([values, values.new_zeros(batch, 1)], dim=1)
    next_value = padded.gather(1, nxt)
    is_last = value_mask & (nxt == seq)
    rewards = rewards.to(values.dtype)[:, None].expand_as(values)
    # G_t = c_t + gamma * lam * G_{t'} with c_t = gamma * (1 - lam) * V_{t'}, and c_t = R at the last one.
    own = torch.where(is_last, rewards, gamma * (1.0 - lam) * next_value)
    return _masked_reverse_discounted_cumsum(own, value_mask, gamma * lam)


def td_errors(
    values: torch.Tensor, rewards: torch.Tensor, value_mask: torch.Tensor, gamma: float
) -> torch.Tensor:
    """`[B, T]` token-indexed TD errors over detached values, 0 at non-response tokens.

    Response token j (one with `value_mask[j-1]`) gets `delta_j = gamma * V_j - V_{j-1}`, and the last
    response token of the row `R_b - V_{j-1}`: how much reading `x_j` changed the critic's estimate.
    """
    values = values.detach()
    token_mask = token_mask_from_value_mask(value_mask)
    prev = torch.cat([values.new_zeros(values.shape[0], 1), values[:, :-1]], dim=1)
    after = token_mask.long().sum(dim=1, keepdim=True) - token_mask.long().cumsum(dim=1)
    is_last = token_mask & (after == 0)
    rewards = rewards.to(values.dtype)[:, None].expand_as(values)
    deltas = torch.where(is_last, rewards, gamma * values) - prev
    return torch.where(token_mask, deltas, torch.zeros_like(deltas))


def gae(deltas: torch.Tensor, token_mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """`[B, T]` generalised advantage `A_j = sum_l (gamma * lam) ** l * delta_{j_l}` over masked tokens.

    `j_0 = j, j_1, ...` are the row's masked positions from j on, so nothing leaks across rows or from
    masked-out positions; 0 where `token_mask` is False. `lam = 0` gives `A = delta`.
    """
    return _masked_reverse_discounted_cumsum(deltas, token_mask, gamma * lam)


# --------------------------------------------------------------------------------------------------------
# Advantage normalisation
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Weights and their statistics
# --------------------------------------------------------------------------------------------------------


def td_weights(
    adv: torch.Tensor, beta: float, w_min: float, w_max: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Token weights `clamp(exp(adv / beta), w_min, w_max)` (0 where `mask` is False, when given).

    Tokens that raised the value are up-weighted, those that lowered it down-weighted; the clamp bounds
    how far one token can dominate or vanish from the MTP loss.
    """
    if not beta > 0:
        raise ValueError(f"beta: expected > 0, got {beta}")
    if not 0 <= w_min:
        raise ValueError(f"w_min: expected >= 0, got {w_min}")
    if not w_min <= w_max:
        raise ValueError(f"w_max: expected >= w_min ({w_min}), got {w_max}")
    weights = torch.exp(adv / beta).clamp(min=w_min, max=w_max)
    if mask is not None:
        weights = torch.where(mask.bool(), weights, torch.zeros_like(weights))
    return weights


def weight_stats(weights: torch.Tensor, mask: torch.Tensor, w_min: float, w_max: float) -> dict[str, float]:
    """Logging statistics of the masked weights: mean, population std, min, max, entropy, clipped fraction.

    `weight_entropy` is the Shannon entropy (nats) of the weights normalised to a distribution over the
    masked entries (0 if they sum to 0); `weight_clipped_frac` the fraction at `w_min` or `w_max`.
    Empty dict when nothing is masked.
    """
    w = weights.detach()[mask.bool()].to(torch.float64)
    if w.numel() == 0:
        return {}
    total = w.sum()
    p = w / total.clamp(min=torch.finfo(torch.float64).tiny)
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum()
    entropy = torch.where(total > 0, entropy, torch.zeros_like(entropy))
    clipped = ((w <= w_min) | (w >= w_max)).to(torch.float64).mean()
    mean = w.mean()
    std = ((w * w).mean() - mean * mean).clamp(min=0.0).sqrt()
    values = torch.stack([mean, std, w.min(), w.max(), entropy, clipped]).tolist()
    names = ["mean", "std", "min", "max", "entropy", "clipped_frac"]
    return {f"weight_{name}": value for name, value in zip(names, values, strict=True)}


def tensor_stats(x: torch.Tensor, mask: torch.Tensor, prefix: str) -> dict[str, float]:
    """`{prefix}_mean/_std/_min/_max` (population std) of the masked entries of `x`; empty if none."""
    v = x.detach()[mask.bool()].to(torch.float64)
    if v.numel() == 0:
        return {}
    mean = v.mean()
    std = ((v * v).mean() - mean * mean).clamp(min=0.0).sqrt()
    values = torch.stack([mean, std, v.min(), v.max()]).tolist()
    return {
        f"{prefix}_{name}": value for name, value in zip(["mean", "std", "min", "max"], values, strict=True)
    }


# --------------------------------------------------------------------------------------------------------
# Critic evaluation
# --------------------------------------------------------------------------------------------------------


def binary_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: P(random positive scores above random negative), ties counting 1/2.

    Mann-Whitney U from average ranks (O(N log N), float64). NaN when either class is empty.
    """
    scores = scores.detach().reshape(-1).to(torch.float64)
    positive = labels.reshape(-1).bool()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(dim=0).to(torch.float64)
    average_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0
    rank_sum = average_rank[inverse][positive].sum()
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def explained_variance(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """`1 - Var(target - pred) / Var(target)` over masked entries (population, float64).

    1 is a perfect critic, 0 one no better than the mean; NaN when there are no entries or the targets
    are constant.
    """
    mask = mask.bool()
    y = target.detach()[mask].to(torch.float64)
    if y.numel() == 0:
        return float("nan")
    residual = y - pred.detach()[mask].to(torch.float64)
    var_y = float(y.var(unbiased=False))
    if var_y == 0.0:
        return float("nan")
    return 1.0 - float(residual.var(unbiased=False)) / var_y


# --------------------------------------------------------------------------------------------------------
# Rho-1 (docs/design.md §4.4)
# --------------------------------------------------------------------------------------------------------


def ref_losses_per_head(ref_token_losses: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`[B, T, n]` reference loss of each head's target: `[b, t, k] = ref[b, t+1+k]` (0 past the end)."""
    return target_weights_per_head(ref_token_losses, n_heads)


def excess_losses(token_losses: torch.Tensor, ref_token_losses: torch.Tensor) -> torch.Tensor:
    """`[B, T, n]` excess loss `e_k(t) = CE_k(t) - CE_ref(t+1+k)`: how much harder a target is than for
    the reference (only meaningful where the target mask is set)."""
    ref = ref_losses_per_head(ref_token_losses, token_losses.shape[-1])
    return token_losses - ref.to(token_losses.dtype)


def _check_k_percent(k_percent: float) -> None:
    if not 0.0 < k_percent <= 1.0:
        raise ValueError(f"k_percent: expected a value in (0, 1], got {k_percent}")


def rho1_keep_counts(target_mask: torch.Tensor, k_percent: float) -> torch.Tensor:
    """`[n]` long: tokens kept per head, `round(k_percent * valid_k)` and at least 1 when any is valid.

    The same rule as `rho1_weights`, so the trainer can normalise the loss over the accumulation window.
    """
    _check_k_percent(k_percent)
    valid = target_mask.bool().sum(dim=(0, 1)).tolist()
    keep = [max(round(k_percent * v), 1) if v > 0 else 0 for v in valid]
    return torch.tensor(keep, dtype=torch.long, device=target_mask.device)


EXCESS_RESOLUTION = 2.0**-10  # nats: excess losses are ranked on this grid, finer differences are ties


def ranked_excess(excess: torch.Tensor) -> torch.Tensor:
    """`excess` (float32, or float64) rounded to the nearest multiple of `EXCESS_RESOLUTION` (half to even).

    Differences below about 1e-3 nats are float noise (kernel shapes, summation order), not a signal:
    with the start model as reference, head 0's excess is 0 up to that noise, and its kept tokens must
    follow the tie rule, not the noise."""
    excess = excess if excess.dtype == torch.float64 else excess.float()
    return torch.round(excess / EXCESS_RESOLUTION) * EXCESS_RESOLUTION


def rho1_weights(
    token_losses: torch.Tensor, ref_token_losses: torch.Tensor, target_mask: torch.Tensor, k_percent: float
) -> torch.Tensor:
    """`[B, T, n]` 0/1 Rho-1 weights (detached, dtype of `token_losses`): per head, over the whole batch,
    keep the `rho1_keep_counts` valid targets with the largest excess loss (`ranked_excess`: on a grid
    of `EXCESS_RESOLUTION` nats).

    Ties go to the smaller flat index `b * T + t`, so the selection is deterministic.
    """
    keep = rho1_keep_counts(target_mask, k_percent)
    batch, seq, n_heads = token_losses.shape
    mask = target_mask.bool().reshape(batch * seq, n_heads).T
    excess = excess_losses(token_losses.detach(), ref_token_losses.detach())
    excess = ranked_excess(excess).reshape(batch * seq, n_heads).T
    excess = torch.where(mask, excess, torch.full_like(excess, -math.inf))
    # Lexicographic (valid first, largest excess, smallest index) from two stable sorts.
    order = torch.sort(excess, dim=1, descending=True, stable=True).indices
    by_valid = torch.sort(mask.gather(1, order).to(torch.uint8), dim=1, descending=True, stable=True).indices
    order = order.gather(1, by_valid)
    rank = torch.arange(batch * seq, device=token_losses.device)
    selected = (rank[None, :] < keep[:, None]).to(token_losses.dtype)
    out = torch.zeros_like(excess, dtype=token_losses.dtype).scatter(1, order, selected)
    return out.T.reshape(batch, seq, n_heads)


# --------------------------------------------------------------------------------------------------------
# Pairwise critic loss (docs/design.md §4.2)
# --------------------------------------------------------------------------------------------------------


def bradley_terry_loss(v_correct: torch.Tensor, v_incorrect: torch.Tensor) -> torch.Tensor:
    """`[P]` Bradley-Terry loss `-log sigmoid(v_correct - v_incorrect)` per (correct, incorrect) pair."""
    return -F.logsigmoid(v_correct - v_incorrect)


def masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[B]` mean of each row's masked entries (0 for rows with none), differentiable in `values`."""
    mask = mask.bool()
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim=1)
    return total / mask.sum(dim=1).clamp(min=1).to(total.dtype)


def td_token_weights(
    values: torch.Tensor,
    labels: torch.Tensor,
    rewards: torch.Tensor,
    options: Any,
    ema: EmaNormalizer | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`([B, T] TD errors, [B, T] token weights)` of the verifiable stage, from the value head's `values`.

    `options` carries `advantage`, `gamma`, `lam`, `normalize`, `beta`, `weight_min` and `weight_max` (a
    `VerifiableWeighting`, a `VerifiableConfig`, or any object with them); `ema` is the running normaliser
    of `normalize: ema`. The stage's loss and `wmtp_hf.inspection` both call this, so the page shows the
    weights training uses.
    """
    values = values.detach().float()
    vmask, tmask = value_positions(labels), response_token_mask(labels)
    deltas = td_errors(values, rewards, vmask, options.gamma)
    adv = deltas if options.advantage == "td" else gae(deltas, tmask, options.gamma, options.lam)
    adv = normalize_advantages(adv, tmask, options.normalize, ema)
    weights = td_weights(adv, options.beta, options.weight_min, options.weight_max, tmask)
    return deltas, weights
