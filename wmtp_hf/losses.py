"""Loss math of WMTP (docs/design.md §4): the chunked per-token cross-entropy the model computes, and the plain
functions over per-token losses `[B, T, n]` that the training stages weight and sum; the critic's losses
(value regression, the pairwise Bradley-Terry loss) and a reference model's per-token CE (Rho-1).

Imports only `torch`: `modeling_wmtp.py` imports it relatively, so `save_pretrained` ships it and
`trust_remote_code` loads it where `wmtp_hf` is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "chunked_cross_entropy",
    "head_targets",
    "packed_segment_ids",
    "mtp_token_losses",
    "mtp_target_mask",
    "shift_labels_for_head",
    "head_target_counts",
    "resolve_head_weights",
    "weighted_mtp_loss",
    "target_weights_per_head",
    "value_error_terms",
    "value_regression_loss",
    "reference_token_losses",
    "reference_token_losses_by_row",
    "bradley_terry_loss",
    "masked_row_mean",
]


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Per-row `-log softmax(hidden @ weight.T)[target]` computed `chunk_size` rows at a time.

    Only one chunk of logits lives at a time, in the forward and in the backward (which recomputes
    it), so memory is `chunk_size x vocab` instead of `rows x vocab`. Softmax runs in float32.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        rows = hidden.shape[0]
        losses = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        for start in range(0, rows, chunk_size):
            end = min(start + chunk_size, rows)
            logits = (hidden[start:end] @ weight.T).float()
            losses[start:end] = -logits.gather(1, targets[start:end, None])[:, 0]
            row_max = logits.amax(dim=-1)
            chunk_lse = logits.sub_(row_max[:, None]).exp_().sum(dim=-1).log_().add_(row_max)  # in place
            del logits  # free this chunk before the next one is computed
            losses[start:end] += chunk_lse
            lse[start:end] = chunk_lse
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            acc_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
            grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end]
            grad_logits = (h @ weight.T).float()
            grad_logits.sub_(lse[start:end, None]).exp_()  # softmax from the saved log-sum-exp, in place
            grad_logits.scatter_add_(1, targets[start:end, None], torch.full_like(grad_logits[:, :1], -1.0))
            grad_logits.mul_(grad_losses[start:end, None].float())
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start:end])
            if grad_weight is not None:
                if grad_weight.dtype == grad_logits.dtype:
                    grad_weight.addmm_(grad_logits.T, h)
                else:
                    grad_weight += (grad_logits.T @ h).to(grad_weight.dtype)
            del grad_logits  # free this chunk before the next one is computed
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Per-token cross-entropy of `hidden @ weight.T` against `labels`, without materialising logits.

    Args:
        hidden: `[..., D]` hidden states (already final-normed).
        weight: `[V, D]` unembedding matrix.
        labels: `[...]` target ids; `-100` marks positions without a target.
    Returns:
        `[...]` float32 losses, exactly 0 (and gradient-free) where `labels == -100`.
    """
    flat_labels = labels.reshape(-1)
    valid = (flat_labels != IGNORE_INDEX).nonzero().squeeze(-1)
    losses = torch.zeros(flat_labels.shape[0], dtype=torch.float32, device=hidden.device)
    if valid.numel() > 0:
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, valid)
        valid_losses = _ChunkedLinearCrossEntropy.apply(rows, weight, flat_labels[valid], chunk_size)
        losses = losses.index_put((valid,), valid_losses)
    return losses.view(labels.shape)


def _shift_left(labels: torch.Tensor, shift: int) -> torch.Tensor:
    """`labels[:, t + shift]` at each position t, -100 past the end."""
    pad = labels.new_full((labels.shape[0], min(shift, labels.shape[1])), IGNORE_INDEX)
    return torch.cat([labels[:, shift:], pad], dim=1)


def shift_labels_for_head(labels: torch.Tensor, head: int) -> torch.Tensor:
    """Targets of head `head` at each position: `labels[:, t + 1 + head]`, -100 past the end."""
    return _shift_left(labels, head + 1)


def packed_segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """`[B, T]` long: which packed example each position belongs to (0, 1, ... along a row).

    A new example starts wherever the position id does not grow by exactly one, as transformers'
    `find_packed_sequence_indices` reads restarting `position_ids` (examples flattened into one row).
    """
    position_ids = position_ids.reshape(-1, position_ids.shape[-1])
    steps = torch.diff(position_ids, dim=-1, prepend=position_ids[:, :1] - 1)
    return (steps != 1).long().cumsum(dim=-1)


def head_targets(
    labels: torch.Tensor | None,
    n_heads: int,
    shift_labels: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[B, T, n]` target ids: entry `[b, t, k]` is what head k predicts at position t, -100 for none.

    From `labels` (not shifted) head k reads `labels[:, t + 1 + k]`. `shift_labels` (already shifted by
    one, `shift_labels[:, t] = labels[:, t + 1]`, as `Trainer` passes them under context parallelism)
    take precedence: head k reads `shift_labels[:, t + k]`. With `segment_ids` (`[B, T]`, packed examples,
    see `packed_segment_ids`) a target in another example than position t is -100: near the end of an
    example head k would otherwise predict the next example's tokens.
    """
    if shift_labels is not None:
        targets = torch.stack([_shift_left(shift_labels, k) for k in range(n_heads)], dim=-1)
    elif labels is None:
        raise ValueError("head_targets: pass labels or shift_labels")
    else:
        targets = torch.stack([shift_labels_for_head(labels, k) for k in range(n_heads)], dim=-1)
    if segment_ids is not None:
        segment_ids = segment_ids.to(targets.device).expand(targets.shape[:2])
        later = torch.stack([_shift_left(segment_ids, k + 1) for k in range(n_heads)], dim=-1)
        targets = targets.masked_fill(later != segment_ids[..., None], IGNORE_INDEX)
    return targets


def mtp_token_losses(
    head_hidden: tuple[torch.Tensor, ...] | list[torch.Tensor],
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    chunk_size: int = 1024,
    shift_labels: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[B, T, n]` per-token CE: entry `[b, t, k]` is `CE_k(t) = -log p_k(x_{t+1+k} | x_<=t)`, 0 without target.

    All heads go through one chunked call, so the unembedding gradient is accumulated in one buffer.
    Targets come from `labels` or `shift_labels` as in `head_targets` (none across packed examples when
    `segment_ids` are given).
    """
    hidden = torch.stack(tuple(head_hidden), dim=2)  # [B, T, n, D]
    targets = head_targets(labels, len(head_hidden), shift_labels, segment_ids)
    return chunked_cross_entropy(hidden, weight, targets, chunk_size)


def mtp_target_mask(
    labels: torch.Tensor | None,
    n_heads: int,
    shift_labels: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[B, T, n]` bool: `m_k(t)`, whether head k at position t has a (response) target (in its own
    example when `segment_ids` mark packed examples)."""
    return head_targets(labels, n_heads, shift_labels, segment_ids) != IGNORE_INDEX


def weighted_mtp_loss(
    token_losses: torch.Tensor,
    target_mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    head_weights: torch.Tensor | None = None,
    num_items: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """docs/design.md §4.1: `L = sum_k alpha_k * sum_t w_k(t) m_k(t) CE_k(t) / N_k`.

    Args:
        token_losses: `[B, T, n]` per-token CE (0 where there is no target).
        target_mask: `[B, T, n]` bool `m_k(t)`.
        weights: `[B, T, n]` token weights `w_k(t)` (detached here), or None for `w = 1`.
        head_weights: `[n]` `alpha_k`, default `1/n`.
        num_items: token counts `N_k` of the whole accumulation window (across processes), one per head
            or one scalar for all heads; defaults to this batch's `sum_t m_k(t)`. Heads without targets
            contribute 0.
    """
    n_heads = token_losses.shape[-1]
    terms = token_losses * target_mask
    if weights is not None:
        terms = terms * weights.detach().to(terms.dtype)
    sums = terms.sum(dim=(0, 1))
    if num_items is None:
        counts = target_mask.sum(dim=(0, 1))
    else:
        counts = torch.as_tensor(num_items, device=sums.device).expand(n_heads)
    counts = counts.to(sums.dtype).clamp(min=1)
    if head_weights is None:
        head_weights = torch.full((n_heads,), 1.0 / n_heads)
    return (head_weights.to(sums.device, sums.dtype) * sums / counts).sum()


def head_target_counts(labels: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`[n]` number of (response) targets of each head in `labels`: `sum_t m_k(t)`."""
    return mtp_target_mask(labels, n_heads).sum(dim=(0, 1))


def resolve_head_weights(head_weights: Sequence[float] | None, n_heads: int) -> torch.Tensor:
    """`alpha_k`: the configured head weights, or `1/n` each."""
    if head_weights is None:
        return torch.full((n_heads,), 1.0 / n_heads)
    if len(head_weights) != n_heads:
        raise ValueError(f"head_weights: expected {n_heads} values (one per head), got {len(head_weights)}")
    return torch.as_tensor(head_weights, dtype=torch.float32)


def target_weights_per_head(token_weights: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Turn per-token weights `[B, T]` (weight of token `x_j` at index j) into `[B, T, n]` per head.

    Head k at position t predicts `x_{t+1+k}`, so it gets `token_weights[:, t + 1 + k]` (0 past the end).
    """
    batch, seq = token_weights.shape
    out = token_weights.new_zeros(batch, seq, n_heads)
    for k in range(n_heads):
        shift = k + 1
        if shift < seq:
            out[:, : seq - shift, k] = token_weights[:, shift:]
    return out


def value_error_terms(values: torch.Tensor, targets: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-position `l(V_t, G_t)`: squared error (`mse`) or Huber with delta 1 (`huber`); targets detached."""
    diff = values.float() - targets.detach().float()
    if kind == "mse":
        return diff.square()
    if kind == "huber":
        return torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=1.0)
    raise ValueError(f"value loss: expected 'mse' or 'huber', got {kind!r}")


def value_regression_loss(
    values: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "mse",
    count: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """`sum_t l(V_t, G_t) m(t) / count` with `l` squared error (`mse`) or Huber (`huber`, delta 1).

    `count` is the number of value positions of the whole accumulation window (across processes), so
    accumulation equals one large batch; defaults to this batch's `sum m`. Targets are detached.
    """
    total = (value_error_terms(values, targets, kind) * mask).sum()
    if count is None:
        count = mask.sum()
    return total / torch.as_tensor(count, device=total.device, dtype=total.dtype).clamp(min=1)


def bradley_terry_loss(v_correct: torch.Tensor, v_incorrect: torch.Tensor) -> torch.Tensor:
    """`[P]` Bradley-Terry loss `-log sigmoid(v_correct - v_incorrect)` per (correct, incorrect) pair."""
    return -F.logsigmoid(v_correct - v_incorrect)


def masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[B]` mean of each row's masked entries (0 for rows with none), differentiable in `values`."""
    mask = mask.bool()
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim=1)
    return total / mask.sum(dim=1).clamp(min=1).to(total.dtype)


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
            row = F.cross_entropy(logits.transpose(1, 2), row_targets.clamp(min=0), reduction="none")
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
