"""Critic targets and advantages over masked positions (docs/design.md §4.2, §4.3): Monte-Carlo and lambda
returns, token-indexed TD errors, GAE.

Per-token quantities are indexed by the token's own position j (`[B, T]`); `losses.target_weights_per_head`
maps them to heads.
"""

from __future__ import annotations

import torch

from .masks import token_mask_from_value_mask


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
