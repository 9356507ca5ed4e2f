"""The stage registry, the one place that names the stages: each stage's typed config and `Trainer`
subclass (one file per stage; the trainer also owns the stage's sample order)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ConfigError, WmtpTrainingConfig, build_stage_config
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

STAGES: tuple[str, ...] = tuple(STAGE_CONFIGS)


def stage_config_class(stage: str) -> type[WmtpTrainingConfig]:
    """The config dataclass of `stage`."""
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"--stage: unknown stage '{stage}'; available: {', '.join(STAGE_CONFIGS)}")
    return STAGE_CONFIGS[stage]


def build_config(
    stage: str,
    config_file: str | Path | list[str | Path] | None = None,
    overrides: dict[str, Any] | None = None,
) -> WmtpTrainingConfig:
    """The stage's config from defaults, optional YAML files (later ones win) and overrides, validated."""
    return build_stage_config(stage_config_class(stage), config_file, overrides)


__all__ = [
    "STAGES",
    "STAGE_CONFIGS",
    "STAGE_TRAINERS",
    "build_config",
    "stage_config_class",
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
