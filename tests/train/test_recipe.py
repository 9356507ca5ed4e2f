"""Do no harm: the default fine-tuning recipe on SmolLM2-135M-Instruct (marker real_model, about a minute).

The baseline stage started from the real model with the recipe's options (only the step count, the batch
and the row length cut to fit a test) must leave held-out head-0 CE no worse
than the start's (the paired 95% interval of the per-row change includes 0 or lies below it) while heads
1-3, new copies of the last block, improve clearly. docs/training.md "Fine-tuning a pretrained model"
has the full-size run.
"""

from __future__ import annotations

import numpy as np
import pytest

from wmtp_hf.data import WmtpDataCollator
from wmtp_hf.experiment.measure import heldout_ce_rows
from wmtp_hf.loading import load_for_inference
from wmtp_hf.stats import crossed_bootstrap
from wmtp_hf.train.cli import main
from wmtp_hf.train.components import tokenized_rows
from wmtp_hf.train.stages import build_config

pytestmark = pytest.mark.real_model

SHORT = {"prompt_format": "alpaca", "max_length": 160}  # alpaca keeps more short rows than the chat template


def per_row_ce(folder, rows, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    model, _ = load_for_inference(folder, device="cpu", dtype="float32")
    sums, counts = heldout_ce_rows(model, rows, WmtpDataCollator(tokenizer), batch_size=8)
    return np.asarray(sums), np.asarray(counts, dtype=np.float64)


def test_default_recipe_keeps_head0_and_trains_the_extra_heads(smollm2, tmp_path):
    out = tmp_path / "run"
    argv = ["--stage", "baseline", "--model", "smollm2-135m", "--output-dir", str(out), "--max-steps", "5",
            "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
            "--threads", "1"]  # fmt: skip
    for key, value in SHORT.items():
        argv += [f"--{key}", str(value)]
    assert main(argv) == 0
    config = build_config("baseline", None, {"model_name_or_path": "smollm2-135m", **SHORT})
    assert config.recipe == "finetune"  # everything not named above came from the recipe
    start, tokenizer = load_for_inference(smollm2.wmtp, device="cpu", dtype="float32")
    del start
    rows, _, _ = tokenized_rows(config, tokenizer, "eval")
    rows = rows.filter(lambda r: bool(r["is_correct"]))
    assert len(rows) >= 8
    s0, n = per_row_ce(smollm2.wmtp, rows, tokenizer)
    s1, _ = per_row_ce(out / "final", rows, tokenizer)
    changes = []
    for k in range(n.shape[1]):
        keep = n[:, k] > 0
        changes.append(crossed_bootstrap((s1[keep, k] - s0[keep, k]) / n[keep, k], n[keep, k]))
    assert changes[0]["low"] <= 0, changes[0]  # head 0: not significantly worse than the start
    for k in (1, 2, 3):
        assert changes[k]["high"] < 0 and changes[k]["estimate"] < -1.0, (k, changes[k])


def test_head_init_of_a_registered_name_converts_its_llama_folder(smollm2):
    """`smollm2-135m` resolves to its converted WMTP folder (copy_last heads) unless another head_init is
    asked for: then its plain LLaMA folder, converted at load with that head_init."""
    from pathlib import Path

    from wmtp_hf.train.components import resolve_model_path

    default = build_config("baseline", None, {"model_name_or_path": "smollm2-135m"})
    assert Path(resolve_model_path(default)) == Path(smollm2.wmtp)
    random = build_config("baseline", None, {"model_name_or_path": "smollm2-135m", "head_init": "random"})
    assert Path(resolve_model_path(random)) == Path(smollm2.llama)
