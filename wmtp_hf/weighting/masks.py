"""Which positions carry a value and which tokens are response tokens (docs/design.md §4).

`labels` are `[B, T]` token ids with -100 where a token is not a response token (prompt, padding). A *value
position* t is one whose next token `x_{t+1}` is a response token; `V_t` is the value after reading `x_t`.
"""

from __future__ import annotations

import torch

from ..losses import IGNORE_INDEX


def value_positions(labels: torch.Tensor) -> torch.Tensor:
    """`[B, T]` bool: t is a value position iff `x_{t+1}` is a response token (`labels[b, t+1] != -100`).

    These are the positions whose value `V_t` the critic is trained on: from the last prompt token to the
    token before the last response token. `t = T-1` never is (it has no next token).
    """
    out = torch.zeros_like(labels, dtype=torch.bool)
    out[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return out


def response_token_mask(labels: torch.Tensor) -> torch.Tensor:
    """`[B, T]` bool: token j is a response token (`labels[b, j] != -100`)."""
    return labels != IGNORE_INDEX


def token_mask_from_value_mask(value_mask: torch.Tensor) -> torch.Tensor:
    """`[B, T]` bool token mask: token j is a response token iff `j-1` is a value position (never j = 0).

    Token-indexed quantities (TD errors, advantages) live where this is True; it equals
    `response_token_mask(labels)` whenever no response token sits at position 0.
    """
    value_mask = value_mask.bool()
    out = torch.zeros_like(value_mask)
    out[:, 1:] = value_mask[:, :-1]
    return out
