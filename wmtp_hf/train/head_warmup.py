"""Head warm-up: for the first `head_warmup_steps` optimizer steps only the extra heads (heads 1..n-1) train.

Fresh extra heads of a pretrained model predict the wrong token (a `copy_last` head predicts the next token,
not the one k ahead: CE 11-13 on SmolLM2), and their large gradients would flood the shared trunk. During
the warm-up every other parameter (trunk, head 0, the shared final norm and unembedding, LoRA adapters
outside the extra heads) has its gradient dropped (set to None) after the backward pass and before
gradient clipping and the optimizer step. AdamW skips a parameter without a gradient entirely (no moment,
no step count, no weight decay), so those weights stay bit-identical, and after the warm-up they start
with a fresh optimizer state. Nothing toggles `requires_grad` mid-run, so this works the same under DDP and
FSDP2 (whose sharded parameters carry their reduced gradient shards when the step runs). A run that is
all warm-up (`head_warmup_steps >= max_steps`, e.g. training drafting heads) instead freezes everything
else up front, before the model is wrapped, so its backward pass stops at the extra heads.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

EXTRA_HEADS = "extra_heads."  # module-name part of heads 1..n-1 (modeling_wmtp.WmtpModel.extra_heads)


def is_extra_head_parameter(name: str) -> bool:
    """Whether parameter `name` belongs to an extra head block (also under peft or FSDP wrappers)."""
    return EXTRA_HEADS in name


def drop_frozen_gradients(model: torch.nn.Module) -> int:
    """Set the gradient of every parameter outside the extra heads to None; returns how many were dropped."""
    dropped = 0
    for name, param in model.named_parameters():
        if param.grad is not None and not is_extra_head_parameter(name):
            param.grad = None
            dropped += 1
    return dropped


def freeze_outside_extra_heads(model: torch.nn.Module) -> int:
    """`requires_grad_(False)` on every trainable parameter outside the extra heads (a run that is all
    warm-up, before any wrapping); returns how many were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if param.requires_grad and not is_extra_head_parameter(name):
            param.requires_grad_(False)
            frozen += 1
    return frozen


def split_head_groups(optimizer: torch.optim.Optimizer, model: torch.nn.Module, head_lr: float) -> int:
    """Move the extra heads' parameters of every param group into a copy of that group with `lr=head_lr`
    (before the first step, so no optimizer state moves); returns how many parameters moved."""
    heads = {id(p) for n, p in model.named_parameters() if is_extra_head_parameter(n)}
    moved = 0
    for group in list(optimizer.param_groups):
        own = [p for p in group["params"] if id(p) in heads]
        if not own:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in heads]
        optimizer.add_param_group(
            {**{k: v for k, v in group.items() if k != "params"}, "params": own, "lr": head_lr}
        )
        moved += len(own)
    logger.info("head_learning_rate %g: %d extra-head parameter tensors in their own groups", head_lr, moved)
    return moved


class _HeadWarmupCallback(TrainerCallback):
    """Drops the frozen gradients right before the optimizer step (also when no clipping runs)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.drop_warmup_gradients()

    def on_step_end(self, args, state, control, **kwargs):
        steps = self.trainer.head_warmup_steps
        if steps and state.global_step == steps:
            logger.info("head warm-up done after %d steps: every parameter trains from now on", steps)


class HeadWarmupMixin:
    """`Trainer` mixin: the head warm-up of `args.head_warmup_steps` (stages that train the heads)."""

    trains_heads = True  # a stage whose loss does not train the prediction heads (the critic) sets False

    def setup_head_warmup(self) -> None:
        """Read the option and register the callback; call from `__init__` once the model is set."""
        steps = int(getattr(self.args, "head_warmup_steps", 0) or 0)
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if steps and not (self.trains_heads and any(is_extra_head_parameter(n) for n in names)):
            logger.info(
                "head_warmup_steps=%d: this stage trains no extra head, so there is no warm-up", steps
            )
            steps = 0
        self.head_warmup_steps = steps
        if steps:
            logger.info("head warm-up: the first %d optimizer steps train only heads 1..n-1", steps)
            self.callback_handler.add_callback(_HeadWarmupCallback(self))
        if steps and 0 < self.args.max_steps <= steps:
            frozen = freeze_outside_extra_heads(self.model)
            logger.info(
                "head warm-up spans the whole run: %d tensors outside the extra heads frozen up front, so the "
                "backward pass stops at the extra heads (no trunk gradients computed and dropped)",
                frozen,
            )

    def in_head_warmup(self) -> bool:
        """Whether the optimizer step about to run is one of the warm-up's."""
        return bool(getattr(self, "head_warmup_steps", 0)) and self.state.global_step < self.head_warmup_steps

    def drop_warmup_gradients(self) -> None:
        if self.in_head_warmup():
            drop_frozen_gradients(self.model_wrapped if self.model_wrapped is not None else self.model)

    def create_optimizer(self, model: torch.nn.Module | None = None):
        """Transformers' optimizer, the extra heads in groups of their own at `head_learning_rate` (when
        set and different): the scheduler then scales both rates alike."""
        optimizer = super().create_optimizer(model)
        head_lr = getattr(self.args, "head_learning_rate", None)
        if head_lr is not None and head_lr != self.args.learning_rate and self.trains_heads:
            split_head_groups(optimizer, model if model is not None else self.model, head_lr)
        return optimizer

    def _clip_grad_norm(self, model: torch.nn.Module):
        """Drop the frozen gradients before clipping, so the clip sees only what the warm-up trains."""
        self.drop_warmup_gradients()
        return super()._clip_grad_norm(model)
