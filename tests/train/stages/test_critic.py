"""The critic stage end to end: what trains, errors, start folders, accumulation, 2 processes, resume,
learning a planted marker."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from safetensors.torch import load_file
from stage_fixtures import (
    MARKER,
    check_gradient_accumulation_equals_large_batch,
    check_resume_after_kill_is_exact,
    check_two_processes_equal_one_process,
    log_history,
    stage_args,
)
from train_fixtures import write_marker_dataset, write_tiny_model
from transformers import AutoModelForCausalLM

from wmtp_hf.data import WmtpDataCollator
from wmtp_hf.losses import mtp_target_mask
from wmtp_hf.train.cli import main
from wmtp_hf.weighting import response_token_mask, td_errors, value_positions


def test_critic_trains_only_the_value_head_and_reloads_with_it(tmp_path, setup):
    model, data = setup
    out = tmp_path / "critic"
    assert main(stage_args("critic", model, data, out, eval_steps=3)) == 0
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert final.value_head is not None
    assert final.config.use_value_head is True and final.config.value_head_stage == "critic"
    before, after = (
        load_file(str(model / "model.safetensors")),
        load_file(str(out / "final" / "model.safetensors")),
    )
    assert set(after) - set(before) == {"value_head.weight", "value_head.bias"}
    for key in before:
        assert torch.equal(before[key], after[key]), key
    logs = log_history(out)
    train_logs = [h for h in logs if "loss" in h]
    assert all("value_loss" in h and "ce_head_0" not in h for h in train_logs)
    evals = [h for h in logs if "eval_auroc" in h]
    assert len(evals) == 1 and {"eval_value_loss", "eval_explained_variance"} <= set(evals[0])
    # eval_auroc equals a brute-force pair count over the last value of each held-out response.
    rows = datasets.load_from_disk(str(data / "eval"))
    batch = WmtpDataCollator(pad_token_id=0)(list(rows))
    with torch.no_grad():
        values = final.eval()(
            batch["input_ids"], attention_mask=batch["attention_mask"], value_only=True
        ).value
    mask = value_positions(batch["labels"])
    last = torch.stack([values[b][mask[b]][-1] for b in range(len(rows))])
    pos, neg = last[batch["reward"] > 0.5], last[batch["reward"] < 0.5]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in pos for n in neg]
    assert evals[0]["eval_auroc"] == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)


def test_critic_unfreezes_the_top_trunk_blocks(tmp_path, setup):
    model, data = setup
    out = tmp_path / "critic"
    assert main(stage_args("critic", model, data, out, unfreeze_last_n_layers=1, eval_strategy="no")) == 0
    before, after = (
        load_file(str(model / "model.safetensors")),
        load_file(str(out / "final" / "model.safetensors")),
    )
    changed = {
        k.split(".")[2]
        for k in before
        if k.startswith("model.layers.") and not torch.equal(before[k], after[k])
    }
    assert changed == {"1"}  # 4 blocks, n=2: trunk = layers 0-1, head 0 = layer 2; top trunk block = 1
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("model.layers.1."))


def test_critic_pairwise_runs_on_same_problem_pairs(tmp_path, setup):
    model, data = setup
    out = tmp_path / "pairwise"
    assert main(stage_args("critic", model, data, out, critic_loss="pairwise", eval_steps=3)) == 0
    evals = [h for h in log_history(out) if "eval_value_loss" in h]
    assert evals and math.isfinite(evals[0]["eval_value_loss"])
    assert (
        main(stage_args("critic", model, data, out, critic_loss="pairwise", per_device_train_batch_size=3))
        == 2
    )


def test_default_start_folders_name_the_command_that_makes_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--stage", "critic", "--report_to", "none"]) == 2
    assert "runs/baseline/final': no such folder, and not a Hub id; it is made by: python -m wmtp_hf.train " \
           "--stage baseline" in capsys.readouterr().err  # fmt: skip
    assert main(["--stage", "verifiable", "--report_to", "none"]) == 2
    assert "it is made by: python -m wmtp_hf.train --stage critic" in capsys.readouterr().err


def test_gradient_accumulation_equals_large_batch(tmp_path, setup):
    check_gradient_accumulation_equals_large_batch(tmp_path, setup, "critic")


def test_two_processes_equal_one_process(tmp_path, setup):
    check_two_processes_equal_one_process(tmp_path, setup, "critic")


def test_resume_after_kill_is_exact(tmp_path, setup):
    check_resume_after_kill_is_exact(tmp_path, setup, "critic")


def test_critic_finds_the_planted_marker(tmp_path, tiny_tokenizer):
    """Incorrect responses carry a marker token at a random position; correct ones never do."""
    from wmtp_hf.train.stages import VerifiableTrainer, build_config

    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_marker_dataset(tmp_path / "marker", len(tiny_tokenizer), MARKER, n_problems=300,
                                eos=tiny_tokenizer.eos_token_id)  # fmt: skip
    out = tmp_path / "critic"
    assert main(stage_args("critic", model, data, out, **{"max-steps": 150}, per_device_train_batch_size=16,
                           learning_rate=3e-3, unfreeze_last_n_layers=2, eval_steps=150, logging_steps=50)) == 0  # fmt: skip
    auroc = [h["eval_auroc"] for h in log_history(out) if "eval_auroc" in h][-1]
    assert auroc >= 0.95
    critic = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    config = build_config("verifiable", None, {"model_name_or_path": str(out / "final"), "report_to": "none",
                                                "output_dir": str(tmp_path / "v")})  # fmt: skip
    rows = [r for r in datasets.load_from_disk(str(data / "eval")) if not r["is_correct"]]
    trainer = VerifiableTrainer(model=critic, args=config, data_collator=WmtpDataCollator(tiny_tokenizer))
    on_marker = lowest_weight = 0
    for row in rows:
        batch = WmtpDataCollator(tiny_tokenizer)([row])
        with torch.no_grad():
            outputs = critic(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
        tokens = response_token_mask(batch["labels"])[0]
        deltas = td_errors(outputs.value, batch["reward"], value_positions(batch["labels"]), 1.0)[0]
        worst = int(deltas.masked_fill(~tokens, math.inf).argmin())
        on_marker += worst in (row["marker_position"], row["marker_position"] + 1)
        weights = trainer.token_weights(critic, batch, outputs, mtp_target_mask(batch["labels"], 2))[0, :, 0]
        token_weights = torch.cat([weights.new_zeros(1), weights[:-1]])  # head 0 at t weighs token t+1
        lowest = int(token_weights.masked_fill(~tokens, math.inf).argmin())
        lowest_weight += lowest in (row["marker_position"], row["marker_position"] + 1)
    assert on_marker / len(rows) >= 0.8, (on_marker, len(rows))
    assert lowest_weight / len(rows) >= 0.8, (lowest_weight, len(rows))
