"""How a token is coloured: one quantity ("colour by") of one head, mapped to a background colour.

The page's script (`html_page.SCRIPT`) repeats these rules in JavaScript for the head and colour selectors;
Python uses them for the page's initial colours (so it reads without JavaScript) and for the PNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError
from .records import Inspection, TokenRecord

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
NEGATIVE: RGB = (215, 48, 39)  # red: down-weighted, dropped side, below the reference
POSITIVE: RGB = (69, 117, 180)  # blue: up-weighted, above
SEQUENTIAL: RGB = (252, 141, 89)  # orange: high CE
KEPT: RGB = (145, 207, 96)  # green: kept by Rho-1
DROPPED: RGB = (210, 210, 210)  # grey: dropped by Rho-1

MODE_TITLES = {
    "weight": "verifiable weight",
    "td": "TD error",
    "value": "value",
    "kept": "rho1 kept / dropped",
    "excess": "rho1 excess loss",
    "ce": "CE",
}
PER_HEAD_MODES = ("kept", "excess", "ce")


@dataclass(frozen=True)
class Scales:
    """The page-wide ranges the colours are relative to."""

    ce_max: float
    excess_max: float
    td_max: float
    weight_log_max: float  # the largest |log w| of the page: its most up- or down-weighted token is darkest
    weight_min: float  # the stage's clip range, for the legend
    weight_max: float


def available_modes(inspection: Inspection) -> list[str]:
    """The colour-by choices this inspection has data for, the default first."""
    modes = []
    if inspection.has_value:
        modes += ["weight", "td", "value"]
    if inspection.has_reference:
        modes += ["kept", "excess"]
    return [*modes, "ce"]


def _largest(values: list[float | None]) -> float:
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite and max(finite) > 0 else 1.0


def page_scales(inspection: Inspection) -> Scales:
    tokens = [t for ex in inspection.examples for t in ex.tokens]
    options = inspection.settings.get("verifiable", {})
    return Scales(
        ce_max=_largest([c for t in tokens for c in t.ce]),
        excess_max=_largest([e for t in tokens for e in (t.excess or [])]),
        td_max=_largest([t.td_error for t in tokens]),
        weight_log_max=_largest(
            [math.log(t.weight) for t in tokens if t.weight is not None and t.weight > 0]
        ),
        weight_min=float(options.get("weight_min", 0.1)),
        weight_max=float(options.get("weight_max", 5.0)),
    )


def mix(colour: RGB, t: float) -> RGB:
    """`colour` at strength `t` in [0, 1] over white."""
    t = min(max(t, 0.0), 1.0)
    return tuple(math.floor(255 + (c - 255) * t + 0.5) for c in colour)  # type: ignore[return-value]  # as JS Math.round


def diverging(t: float) -> RGB:
    """Red for t < 0, blue for t > 0, white at 0 (t clipped to [-1, 1])."""
    return mix(NEGATIVE, -t) if t < 0 else mix(POSITIVE, t)


def _head(values: list | None, head: int):
    return values[head] if values is not None and head < len(values) else None


def token_colour(token: TokenRecord, mode: str, head: int, scales: Scales) -> RGB:
    """Background of `token` when colouring by `mode` for `head` (white when it has no such number)."""
    if mode == "weight":
        w = token.weight
        return WHITE if w is None or w <= 0 else diverging(math.log(w) / scales.weight_log_max)
    if mode == "td":
        return WHITE if token.td_error is None else diverging(token.td_error / scales.td_max)
    if mode == "value":
        return WHITE if token.value is None else diverging((token.value - 0.5) / 0.5)
    if mode == "kept":
        kept = _head(token.kept, head)
        return WHITE if kept is None else (KEPT if kept else DROPPED)
    if mode == "excess":
        excess = _head(token.excess, head)
        return WHITE if excess is None else diverging(excess / scales.excess_max)
    if mode == "ce":
        ce = _head(token.ce, head)
        return WHITE if ce is None else mix(SEQUENTIAL, ce / scales.ce_max)
    raise UsageError(f"colour by: expected one of {', '.join(MODE_TITLES)}, got {mode!r}")


def legend(mode: str, scales: Scales) -> str:
    """One line saying what the colours of `mode` mean."""
    texts = {
        "weight": f"blue: up-weighted (w > 1), red: down-weighted (w < 1), white: w = 1, on a log scale darkest "
        f"at the page's largest |log w| (w = {math.exp(scales.weight_log_max):.3g} or "
        f"{math.exp(-scales.weight_log_max):.3g}); the stage clips w to [{scales.weight_min:g}, "
        f"{scales.weight_max:g}]. Every head's target x_j gets token j's weight.",
        "td": f"TD error of the token: blue > 0 (it raised the value), red < 0 (it lowered it); darkest at "
        f"±{scales.td_max:.3g}. The same for every head.",
        "value": "value after reading the token: blue near 1 (predicted correct), red near 0, white 0.5.",
        "kept": "green: kept by Rho-1 for this head (top k_percent by excess loss); grey: dropped.",
        "excess": f"excess loss CE_k − CE_ref of this head: blue > 0 (harder than for the reference), red < 0; "
        f"darkest at ±{scales.excess_max:.3g}.",
        "ce": f"this head's cross-entropy on the token: darker is higher, darkest at {scales.ce_max:.3g} nats.",
    }
    return texts[mode]
