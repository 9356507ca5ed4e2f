"""Training: stage configs, `Trainer` subclasses and the `python -m wmtp_hf.train` CLI (SPEC §4, §5)."""

from .config import ConfigError, WmtpTrainingConfig, build_config
from .stages import (
    STAGE_CONFIGS,
    STAGE_TRAINERS,
    BaselineConfig,
    BaselineTrainer,
    CriticConfig,
    CriticTrainer,
    ReferenceConfig,
    ReferenceTrainer,
    Rho1Config,
    Rho1Trainer,
    VerifiableConfig,
    VerifiableTrainer,
)
from .trainer import WeightedMTPTrainer

__all__ = [
    "STAGE_CONFIGS",
    "STAGE_TRAINERS",
    "BaselineConfig",
    "BaselineTrainer",
    "ConfigError",
    "CriticConfig",
    "CriticTrainer",
    "ReferenceConfig",
    "ReferenceTrainer",
    "Rho1Config",
    "Rho1Trainer",
    "VerifiableConfig",
    "VerifiableTrainer",
    "WeightedMTPTrainer",
    "WmtpTrainingConfig",
    "build_config",
]
