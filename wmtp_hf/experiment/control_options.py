"""The `control:` options of an experiment (positive controls, built by `control.py`) and how they point
the stages at the control data. Read by `plan.py` when it builds the plan; kept apart from `control.py`
(the data building and its measurement) so the plan does not import back what imports it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..train.config import ConfigError

VERSION = 1  # bump when the construction changes, so the data (and every run on it) is rebuilt


@dataclass
class ControlOptions:
    """The `control:` mapping of the experiment config."""

    noise_fraction: float = 0.4  # rho1 control: share of response tokens replaced (baseline and rho1 rows)
    planted_fraction: float = 0.3  # verifiable control: share of an incorrect row's response tokens planted
    planted_per_correct: int = 2  # incorrect (planted) rows per correct training row
    seed: int = 0  # which tokens are replaced and by what
    dataset: str = "offline"  # filled from shared.dataset
    dataset_path: str | None = None
    max_length: int = 512  # filled from shared.max_length when set
    prompt_format: str = (
        "auto"  # filled from shared.prompt_format (resolved with the tokenizer at build time)
    )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str) -> ControlOptions:
        allowed = ("noise_fraction", "planted_fraction", "planted_per_correct", "seed")
        for key in values:
            if key not in allowed:
                raise ConfigError(f"{source}: control: unknown key '{key}'; allowed: {', '.join(allowed)}")
        options = cls(**values)
        for name in ("noise_fraction", "planted_fraction"):
            value = getattr(options, name)
            if not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(f"{source}: control.{name}: expected a number in (0, 1), got {value!r}")
        if type(options.planted_per_correct) is not int or options.planted_per_correct < 1:
            raise ConfigError(f"{source}: control.planted_per_correct: expected a positive integer")
        return options

    def folder(self, output_dir: Path, kind: str) -> Path:
        digest = hashlib.sha256(json.dumps([VERSION, kind, asdict(self)], sort_keys=True).encode())
        return output_dir / "data" / f"{kind}-{digest.hexdigest()[:10]}"


def control_overrides(
    options: ControlOptions,
    shared: dict[str, Any],
    overrides: dict[str, dict[str, Any]],
    model: str | None,
    output_dir: Path,
    source: str,
) -> dict[str, Any]:
    """Point the stages at the control data (edits `overrides`); returns baseline_matched's extra values."""
    from ..data import SOURCES
    from ..train.config import WmtpTrainingConfig

    options.dataset = shared.get("dataset", WmtpTrainingConfig.dataset)
    options.dataset_path = shared.get("dataset_path")
    options.max_length = shared.get("max_length", WmtpTrainingConfig.max_length)
    options.prompt_format = shared.get("prompt_format", WmtpTrainingConfig.prompt_format)
    if options.dataset not in SOURCES:
        raise ConfigError(f"{source}: control: shared.dataset must be a source ({', '.join(SOURCES)})")
    for name, own in overrides.items():
        if "dataset" in own or "dataset_path" in own:
            raise ConfigError(f"{source}: stages.{name}.dataset: set by the control; set shared.dataset")
    noisy, planted = options.folder(output_dir, "noisy"), options.folder(output_dir, "planted")
    for name in ("baseline", "rho1"):
        if name in overrides:
            overrides[name] = {**overrides[name], "dataset": str(noisy), "dataset_path": None}
    for name in ("critic", "verifiable"):
        if name in overrides:
            overrides[name] = {**overrides[name], "dataset": str(planted), "dataset_path": None}
    if "verifiable" in overrides:
        overrides["verifiable"]["policy_on"] = "all"
    return {"dataset": str(options.folder(output_dir, "planted_as_correct")), "dataset_path": None}
