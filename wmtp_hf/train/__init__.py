"""Training: stage configs, `Trainer` subclasses and the `python -m wmtp_hf.train` CLI (SPEC §4, §5)."""

from .config import STAGE_CONFIGS, BaselineConfig, ConfigError, WmtpTrainingConfig, build_config
from .stages import STAGE_TRAINERS
from .trainer import BaselineTrainer, WeightedMTPTrainer

__all__ = [
    "STAGE_CONFIGS",
    "STAGE_TRAINERS",
    "BaselineConfig",
    "BaselineTrainer",
    "ConfigError",
    "WeightedMTPTrainer",
    "WmtpTrainingConfig",
    "build_config",
]
