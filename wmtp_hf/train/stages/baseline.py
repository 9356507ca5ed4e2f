"""`baseline`: every head trained with the uniform MTP loss on correct solutions (docs/design.md §4.1, w = 1)."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from ..config import WmtpTrainingConfig
from ..trainer import WeightedMTPTrainer


@dataclass
class BaselineConfig(WmtpTrainingConfig):
    """`baseline`: all heads, uniform MTP loss on correct solutions."""

    stage: typing.ClassVar[str] = "baseline"


class BaselineTrainer(WeightedMTPTrainer):
    """`baseline`: every head, uniform token weights (`token_weights` returns None)."""
