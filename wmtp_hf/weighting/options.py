"""The weighted stages' token-weight options (docs/design.md §4.3, §4.4), shared by the stage configs and the
inspection so both read and check the same values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

NORMALIZE_MODES = ("none", "zscore", "ema")


class _Options:
    """`of(source)`: the options read from any object that has them (a stage config, a namespace), the
    defaults for the rest; checked by `__post_init__`."""

    @classmethod
    def of(cls, source: Any = None) -> Any:
        return cls(
            **{f.name: getattr(source, f.name) for f in dataclasses.fields(cls) if hasattr(source, f.name)}
        )


@dataclass
class VerifiableWeighting(_Options):
    """The verifiable stage's token-weight options (docs/design.md §4.3) and their defaults.

    `VerifiableConfig` takes its defaults from here and checks its values here; `wmtp_hf.inspection`
    reads the same options, so an inspect page shows the weights training uses."""

    advantage: str = "td"  # td (A = delta) or gae
    gamma: float = 1.0
    lam: float = 0.95
    normalize: str = "none"  # none, zscore or ema
    ema_momentum: float = 0.1
    ema_warmup_steps: int = 10
    beta: float = 0.9
    weight_min: float = 0.1
    weight_max: float = 5.0
    policy_on: str = "correct"  # rows the MTP loss imitates: correct or all

    def __post_init__(self) -> None:
        choices = {"advantage": ("td", "gae"), "normalize": NORMALIZE_MODES, "policy_on": ("correct", "all")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma: expected a number in (0, 1], got {self.gamma}")
        if not 0 <= self.lam <= 1:
            raise ValueError(f"lam: expected a number in [0, 1], got {self.lam}")
        if self.beta <= 0:
            raise ValueError(f"beta: expected a positive number, got {self.beta}")
        if not 0 <= self.weight_min <= self.weight_max:
            raise ValueError(
                f"weight_min, weight_max: expected 0 <= weight_min <= weight_max, got {self.weight_min}, {self.weight_max}"
            )
        if not 0 < self.ema_momentum <= 1:
            raise ValueError(f"ema_momentum: expected a number in (0, 1], got {self.ema_momentum}")


@dataclass
class Rho1Weighting(_Options):
    """The Rho-1 stage's token-selection option (docs/design.md §4.4) and its default; shared like
    `VerifiableWeighting` by `Rho1Config` and the inspection."""

    k_percent: float = 0.6  # fraction of each head's valid targets kept per batch

    def __post_init__(self) -> None:
        if not 0 < self.k_percent <= 1:
            raise ValueError(f"k_percent: expected a number in (0, 1], got {self.k_percent}")
