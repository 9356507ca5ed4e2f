"""The stage tests' shared fixture: a tiny WMTP model and a marker dataset (incorrect responses carry MARKER)."""

from __future__ import annotations

import pytest
from stage_fixtures import MARKER
from train_fixtures import write_marker_dataset, write_tiny_model


@pytest.fixture()
def setup(tmp_path, tiny_tokenizer):
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_marker_dataset(tmp_path / "marker", len(tiny_tokenizer), MARKER, n_problems=24,
                                eos=tiny_tokenizer.eos_token_id)  # fmt: skip
    return model, data
