"""`scripts/bench_generate.py` in bfloat16: where speculative and plain greedy differ, the bench accepts
only a tie of the two tokens' logits (within one bfloat16 spacing) and calls anything else a bug."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("bench_generate", SCRIPTS / "bench_generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits are the same vector after any prefix."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


PROMPT_MASK = torch.ones(1, 2, dtype=torch.long)  # a 2-token prompt without padding


def test_bf16_spacing(bench):
    assert bench.bf16_ulp(31.0) == 0.125 and bench.bf16_ulp(1.0) == 2**-7 and bench.bf16_ulp(-3.0) == 2**-6


def test_divergence_at_a_tie_is_counted_and_anything_else_is_a_bug(bench):
    plain = torch.tensor([[1, 2, 3, 4, 4]])
    spec = torch.tensor([[1, 2, 3, 5, 4]])  # differs at new token 1 (prompt length 2)
    tie = FixedLogits([0.0, 0.0, 0.0, 0.0, 31.0, 31.0])
    assert bench.divergence_at_ties(tie, plain, spec, PROMPT_MASK) == [
        {"row": 0, "new_token": 1, "margin": 0.0}
    ]
    within_spacing = FixedLogits([0.0, 0.0, 0.0, 0.0, 31.0, 30.9])
    assert bench.divergence_at_ties(within_spacing, plain, spec, PROMPT_MASK)[0]["margin"] == pytest.approx(
        0.1, abs=1e-5
    )
    clear = FixedLogits([0.0, 0.0, 0.0, 0.0, 31.0, 30.0])
    with pytest.raises(AssertionError, match="changed token 1 .margin 1.0000, more than a bfloat16 tie"):
        bench.divergence_at_ties(clear, plain, spec, PROMPT_MASK)
    assert bench.divergence_at_ties(clear, plain, plain.clone(), PROMPT_MASK) == []
    with pytest.raises(AssertionError, match="one decoder stopped early"):
        bench.divergence_at_ties(tie, plain, plain[:, :4], PROMPT_MASK)


def test_left_padding_is_left_out_of_the_prefix(bench):
    """The margin is read after the row's own tokens only: a left-padded row's pads are dropped."""
    seen = []

    class Recording(FixedLogits):
        def forward(self, input_ids):
            seen.append(input_ids.tolist())
            return super().forward(input_ids)

    plain = torch.tensor([[0, 0, 7, 1, 4, 4]])  # two pads, prompt [7, 1], then new tokens
    spec = torch.tensor([[0, 0, 7, 1, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1]])
    tie = Recording([0.0, 0.0, 0.0, 0.0, 31.0, 31.0])
    assert bench.divergence_at_ties(tie, plain, spec, mask) == [{"row": 0, "new_token": 1, "margin": 0.0}]
    assert seen == [[[7, 1, 4]]]
