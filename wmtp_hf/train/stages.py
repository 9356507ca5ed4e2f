"""Stage name -> Trainer class."""

from __future__ import annotations

from .trainer import BaselineTrainer, WeightedMTPTrainer

STAGE_TRAINERS: dict[str, type[WeightedMTPTrainer]] = {"baseline": BaselineTrainer}
