"""Training: stage configs, `Trainer` subclasses and the `python -m wmtp_hf.train` CLI (docs/design.md §4, §5)."""

from . import stages
from .config import ConfigError, WmtpTrainingConfig
from .run_stage import run
from .stages import *  # noqa: F403  - every stage config and trainer, and the registries
from .trainer import WeightedMTPTrainer

__all__ = [*stages.__all__, "ConfigError", "WeightedMTPTrainer", "WmtpTrainingConfig", "run"]
