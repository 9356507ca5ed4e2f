"""Token-weighting math of the weighted stages (docs/design.md §4.2–4.4), as plain functions over tensors,
one job per file: `options` (the stages' weight options), `masks` (value positions, response tokens),
`returns` (MC / lambda returns, TD errors, GAE), `normalize` (advantage normalisation), `td_weights` (the
verifiable stage's weights and their statistics), `rho1` (Rho-1 selection).

Loss math (reference CE, the critic's pairwise loss) lives in `wmtp_hf.losses`, statistics of a critic
(AUROC, explained variance) in `wmtp_hf.stats`.
"""

from .masks import response_token_mask, token_mask_from_value_mask, value_positions
from .normalize import EmaNormalizer, normalize_advantages
from .options import NORMALIZE_MODES, Rho1Weighting, VerifiableWeighting
from .returns import gae, lambda_returns, mc_returns, td_errors
from .rho1 import (
    EXCESS_RESOLUTION,
    excess_losses,
    ranked_excess,
    ref_losses_per_head,
    rho1_keep_counts,
    rho1_weights,
)
from .td_weights import td_token_weights, td_weights, tensor_stats, weight_stats

__all__ = [
    "NORMALIZE_MODES",
    "VerifiableWeighting",
    "Rho1Weighting",
    "td_token_weights",
    "value_positions",
    "response_token_mask",
    "token_mask_from_value_mask",
    "mc_returns",
    "lambda_returns",
    "td_errors",
    "gae",
    "EmaNormalizer",
    "normalize_advantages",
    "td_weights",
    "weight_stats",
    "tensor_stats",
    "ref_losses_per_head",
    "excess_losses",
    "EXCESS_RESOLUTION",
    "ranked_excess",
    "rho1_keep_counts",
    "rho1_weights",
]
