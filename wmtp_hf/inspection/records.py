"""What the inspection shows, per response token: CE per head, value / TD error / weight, excess / kept.

`inspect_examples` runs the model (and a reference) on a few tokenized rows and applies the weighted stages'
own functions to them as one batch: `td_token_weights` of the verifiable stage (docs/design.md §4.3) when the model has
a value head, `rho1_weights` / `excess_losses` (docs/design.md §4.4) when there is a reference. The result is plain data
(`Inspection`) that `html_page`, `plot` and `json` turn into files.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import WmtpDataCollator
from ..errors import DataError
from ..losses import mtp_target_mask, reference_token_losses
from ..weighting import (
    EmaNormalizer,
    Rho1Weighting,
    VerifiableWeighting,
    excess_losses,
    rho1_weights,
    td_token_weights,
)

VERIFIABLE_OPTIONS = (
    "advantage",
    "gamma",
    "lam",
    "normalize",
    "beta",
    "weight_min",
    "weight_max",
    "policy_on",
)
RHO1_OPTIONS = ("k_percent",)
RHO1_SELECTION = "batch"  # the top k_percent of each head is taken over all inspected examples at once


@dataclass
class TokenRecord:
    """One response token `x_j` and what each head and the weighting made of it.

    `ce[k]` is `CE_k(j-1-k)`: head k's loss on this token, predicted k+1 tokens ahead (None when the
    context is too short). `weight` is the verifiable weight of the token (every head's target `x_j` gets it);
    `excess[k]` / `kept[k]` are head k's Rho-1 excess loss and selection for this token.
    """

    position: int
    token_id: int
    text: str
    ce: list[float | None]
    value: float | None = None
    td_error: float | None = None
    weight: float | None = None
    ref_ce: float | None = None
    excess: list[float | None] | None = None
    kept: list[bool | None] | None = None


@dataclass
class ExampleRecord:
    """One inspected row: its prompt text and its response tokens."""

    task_id: str
    problem_id: str
    is_correct: bool
    prompt: str
    tokens: list[TokenRecord]
    in_policy_loss: bool | None = None  # verifiable: whether its MTP loss covers this row (policy_on)


@dataclass
class Inspection:
    """Everything the page, the PNG and the JSON show; `settings` holds the weighting options used."""

    examples: list[ExampleRecord]
    n_heads: int
    has_value: bool
    has_reference: bool
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # model, reference, dataset, split: for titles

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become None)."""
        return _finite(dataclasses.asdict(self))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def token_texts(tokenizer: Any, ids: Sequence[int], start: int, window: int = 8) -> list[str]:
    """The text each of `ids[start:]` adds to the decoded string, whitespace kept.

    Decoding one id alone loses context (SentencePiece drops a leading space, byte-level BPE may split a
    character), so each token's text is the growth of the decoded text over a few previous tokens.
    """
    texts = []
    for j in range(start, len(ids)):
        lo = max(0, j - window)
        before = tokenizer.decode(ids[lo:j], clean_up_tokenization_spaces=False) if j > lo else ""
        after = tokenizer.decode(ids[lo : j + 1], clean_up_tokenization_spaces=False)
        # A token that ends inside a character adds nothing; the token completing it adds the character.
        before, after = before.rstrip("\ufffd"), after.rstrip("\ufffd")
        texts.append(after[len(before) :] if after.startswith(before) else tokenizer.decode([ids[j]]))
    return texts


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def _forward(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], reference: torch.nn.Module | None, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`[B, T, n]` token losses, `[B, T]` values (or None), `[B, T]` reference CE (or None), on the CPU."""
    device = _model_device(model)
    losses, values, refs = [], [], []
    for start in range(0, batch["input_ids"].shape[0], batch_size):
        part = {k: v[start : start + batch_size].to(device) for k, v in batch.items()}
        out = model(
            input_ids=part["input_ids"],
            attention_mask=part["attention_mask"],
            labels=part["labels"],
            skip_logits=True,
        )
        losses.append(out.token_losses.float().cpu())
        if out.value is not None:
            values.append(out.value.float().cpu())
        if reference is not None:
            ref_device = _model_device(reference)
            refs.append(
                reference_token_losses(
                    reference,
                    part["input_ids"].to(ref_device),
                    part["attention_mask"].to(ref_device),
                    part["labels"].to(ref_device),
                ).cpu()
            )
    return (
        torch.cat(losses),
        torch.cat(values) if values else None,
        torch.cat(refs) if refs else None,
    )


def inspect_examples(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    reference: torch.nn.Module | None = None,
    stage_config: Any = None,
    *,
    ema: EmaNormalizer | None = None,
    batch_size: int = 4,
    labels: Mapping[str, str] | None = None,
) -> Inspection:
    """Per-token CE per head, and the weighted stages' view, of tokenized `rows` taken as one batch.

    Args:
        model: a `WmtpForMultiTokenPrediction` (with a value head: value, TD error and verifiable weight).
        tokenizer: its tokenizer (token texts; the pad id of the batch).
        rows: mappings with `input_ids` and `prompt_length` (as `tokenize_dataset` / `prepare` write), and
            optionally `is_correct`, `task_id`, `problem_id` and `ref_token_losses` (a cached reference).
        reference: a causal LM with the same tokenizer (frozen): Rho-1 excess losses and kept/dropped. Without
            it, a `ref_token_losses` column in every row serves instead.
        stage_config: where the verifiable (`beta`, `normalize`, ...) and rho1 (`k_percent`) options come
            from, e.g. a `VerifiableConfig` or `Rho1Config`; missing ones take the stages' defaults.
        ema: the verifiable stage's running normaliser, for `normalize: ema` (without it: the z-score of
            these examples, said in `notes`).
        batch_size: rows per forward; the weighting still sees all rows as one batch.
        labels: names for titles (`model`, `reference`, `dataset`, `split`).
    """
    if not rows:
        raise DataError("rows: expected at least one tokenized row")
    unwrapped = getattr(model, "module", model)
    n_heads = int(unwrapped.config.n_future_tokens)
    features = [dict(r) for r in rows]
    batch = WmtpDataCollator(tokenizer)(features)
    cached_ref = batch.pop("ref_token_losses", None)
    rewards = batch.pop("reward")
    batch.pop("difficulty")
    was_training = model.training
    model.eval()
    try:
        token_losses, values, ref = _forward(model, batch, reference, batch_size)
    finally:
        model.train(was_training)
    if ref is None and cached_ref is not None:
        ref = cached_ref.float().masked_fill(batch["labels"] == -100, 0.0)
    numbers = BatchNumbers(token_losses, mtp_target_mask(batch["labels"], n_heads), values=values, ref=ref)
    settings: dict[str, Any] = {}
    notes: list[str] = []
    if values is not None:
        device = _model_device(model)
        settings["verifiable"] = _verifiable_view(
            numbers, batch["labels"], rewards, stage_config, ema, notes, device
        )
        if getattr(unwrapped.config, "value_head_stage", None) not in ("critic", "verifiable"):
            notes.append("the value head was not trained by a critic stage: its values are not meaningful")
    if ref is not None:
        settings["rho1"] = _rho1_view(numbers, stage_config)
    if values is None and ref is None:
        notes.append(
            "no value head and no reference: CE per head only (a critic or verifiable output has a value head; "
            "a reference model gives Rho-1's view)"
        )
    policy_on_all = settings.get("verifiable", {}).get("policy_on") == "all"
    examples = []
    for b, row in enumerate(features):
        ids = [int(i) for i in row["input_ids"]]
        start = int(row["prompt_length"])
        texts = token_texts(tokenizer, ids, start)
        is_correct = bool(row.get("is_correct", False))
        examples.append(
            ExampleRecord(
                task_id=str(row.get("task_id", f"row {b}")),
                problem_id=str(row.get("problem_id", "")),
                is_correct=is_correct,
                prompt=tokenizer.decode(ids[:start], clean_up_tokenization_spaces=False),
                tokens=[numbers.token(b, j, ids[j], text) for j, text in enumerate(texts, start)],
                in_policy_loss=(is_correct or policy_on_all) if values is not None else None,
            )
        )
    return Inspection(
        examples=examples,
        n_heads=n_heads,
        has_value=values is not None,
        has_reference=ref is not None,
        settings=settings,
        notes=notes,
        labels=dict(labels or {}),
    )


@dataclass
class BatchNumbers:
    """The batch's per-position tensors (`[B, T]`, or `[B, T, n]` per head), read out token by token."""

    token_losses: torch.Tensor
    target_mask: torch.Tensor
    values: torch.Tensor | None = None
    deltas: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    ref: torch.Tensor | None = None
    excess: torch.Tensor | None = None
    kept: torch.Tensor | None = None

    def per_head(self, tensor: torch.Tensor, b: int, j: int) -> list[Any]:
        """Head k's entry for token j: `[b, j-1-k, k]`, None where head k has no such target."""
        out = []
        for k in range(tensor.shape[-1]):
            t = j - 1 - k
            out.append(tensor[b, t, k].item() if t >= 0 and bool(self.target_mask[b, t, k]) else None)
        return out

    def token(self, b: int, j: int, token_id: int, text: str) -> TokenRecord:
        record = TokenRecord(j, token_id, text, ce=self.per_head(self.token_losses, b, j))
        if self.values is not None:
            record.value = self.values[b, j].item()
            record.td_error = self.deltas[b, j].item()
            record.weight = self.weights[b, j].item()
        if self.ref is not None:
            record.ref_ce = self.ref[b, j].item()
            record.excess = self.per_head(self.excess, b, j)
            record.kept = [None if k is None else bool(k) for k in self.per_head(self.kept, b, j)]
        return record


def _verifiable_view(
    numbers: BatchNumbers,
    labels: torch.Tensor,
    rewards: torch.Tensor,
    stage_config: Any,
    ema: EmaNormalizer | None,
    notes: list[str],
    device: torch.device,
) -> dict[str, Any]:
    """TD errors and weights by the stage's own `td_token_weights`; returns the options used."""
    opts = VerifiableWeighting.of(stage_config)
    if opts.normalize == "ema" and ema is None:
        notes.append(
            "normalize: ema, but the running statistics are not saved with the model: advantages are "
            "z-scored over the inspected examples instead"
        )
        opts = dataclasses.replace(opts, normalize="zscore")
    ema = copy.deepcopy(ema)  # normalising accumulates into the state: leave the caller's untouched
    # On the model's device: with several processes `zscore` all-reduces its moments (NCCL needs GPU tensors);
    # every process inspects the same rows, so the statistics stay these rows'.
    inputs = (t.to(device) for t in (numbers.values, labels, rewards))
    deltas, weights = td_token_weights(*inputs, opts, ema)
    numbers.deltas, numbers.weights = deltas.cpu(), weights.cpu()
    return {name: getattr(opts, name) for name in VERIFIABLE_OPTIONS}


def _rho1_view(numbers: BatchNumbers, stage_config: Any) -> dict[str, Any]:
    """Excess losses and the top-`k_percent` selection of every head over the whole batch."""
    opts = Rho1Weighting.of(stage_config)
    numbers.kept = rho1_weights(numbers.token_losses, numbers.ref, numbers.target_mask, opts.k_percent) > 0
    numbers.excess = excess_losses(numbers.token_losses, numbers.ref)
    return {**{name: getattr(opts, name) for name in RHO1_OPTIONS}, "selection": RHO1_SELECTION}
