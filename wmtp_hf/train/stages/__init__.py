"""The stage registry: each stage's typed config and `Trainer` subclass, one file per stage."""

from __future__ import annotations

from ..config import WmtpTrainingConfig
from .baseline import BaselineConfig, BaselineTrainer
from .critic import CriticConfig, CriticTrainer
from .reference import ReferenceConfig, ReferenceTrainer
from .rho1 import Rho1Config, Rho1Trainer
from .verifiable import VerifiableConfig, VerifiableTrainer

STAGE_CONFIGS: dict[str, type[WmtpTrainingConfig]] = {
    "baseline": BaselineConfig,
    "critic": CriticConfig,
    "verifiable": VerifiableConfig,
    "rho1": Rho1Config,
    "reference": ReferenceConfig,
}
STAGE_TRAINERS: dict[str, type] = {
    "baseline": BaselineTrainer,
    "critic": CriticTrainer,
    "verifiable": VerifiableTrainer,
    "rho1": Rho1Trainer,
    "reference": ReferenceTrainer,
}

__all__ = [
    "STAGE_CONFIGS",
    "STAGE_TRAINERS",
    "BaselineConfig",
    "BaselineTrainer",
    "CriticConfig",
    "CriticTrainer",
    "ReferenceConfig",
    "ReferenceTrainer",
    "Rho1Config",
    "Rho1Trainer",
    "VerifiableConfig",
    "VerifiableTrainer",
]
