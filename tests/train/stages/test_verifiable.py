"""The verifiable stage end to end: refusals, its loss against a naive loop, accumulation, 2 processes, resume."""

from __future__ import annotations

import math

import datasets
import torch
from stage_fixtures import (
    check_gradient_accumulation_equals_large_batch,
    check_resume_after_kill_is_exact,
    check_two_processes_equal_one_process,
    critic_output,
    stage_args,
)
from transformers import AutoModelForCausalLM

from wmtp_hf.data import WmtpDataCollator
from wmtp_hf.losses import mtp_target_mask
from wmtp_hf.train.cli import main
from wmtp_hf.weighting import response_token_mask, td_errors, value_positions


def test_verifiable_refuses_a_model_without_a_critic_trained_head(tmp_path, setup, capsys):
    model, data = setup
    assert main(stage_args("verifiable", model, data, tmp_path / "v")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has no value head" in errors[0] and "--stage critic" in errors[0]
    fresh = AutoModelForCausalLM.from_pretrained(model, use_value_head=True)
    fresh.save_pretrained(tmp_path / "fresh")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model).save_pretrained(tmp_path / "fresh")
    assert main(stage_args("verifiable", tmp_path / "fresh", data, tmp_path / "v2")) == 2
    assert "was not trained by a critic stage" in capsys.readouterr().err
    assert not (tmp_path / "v" / "final").exists() and not (tmp_path / "v2" / "final").exists()


def naive_verifiable_loss(model, batch, n_heads, value_coef=0.5, beta=0.9, w_min=0.1, w_max=5.0):
    """Per-token Python loop over docs/design.md §4.3 with gamma 1, td advantages, no normalisation, policy = correct."""
    out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
    values, labels = out.value.detach(), batch["labels"]
    B, T = labels.shape
    weight = torch.zeros(B, T)
    for b in range(B):
        response = [j for j in range(1, T) if labels[b, j] != -100]
        for j in response:
            delta = (batch["reward"][b] if j == response[-1] else values[b, j]) - values[b, j - 1]
            weight[b, j] = min(max(math.exp(float(delta) / beta), w_min), w_max)
    mtp = 0.0
    for k in range(n_heads):
        num, count = 0.0, 0
        for b in range(B):
            if batch["reward"][b] < 0.5:
                continue
            for t in range(T - k - 1):
                if labels[b, t + 1 + k] != -100:
                    num = num + weight[b, t + 1 + k] * out.token_losses[b, t, k]
                    count += 1
        mtp = mtp + num / max(count, 1) / n_heads
    sq, n = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            if labels[b, t + 1] != -100:
                sq = sq + (out.value[b, t] - batch["reward"][b]) ** 2
                n += 1
    return mtp + value_coef * sq / n


def test_verifiable_loss_equals_a_naive_loop(tmp_path, setup):
    from wmtp_hf.train.stages import VerifiableTrainer, build_config

    model, data = setup
    critic = critic_output(tmp_path, model, data)
    config = build_config("verifiable", None, {"model_name_or_path": critic, "output_dir": str(tmp_path / "v"),
                                                "report_to": "none", "dataset": str(data)})  # fmt: skip
    policy = AutoModelForCausalLM.from_pretrained(critic)
    rows = datasets.load_from_disk(str(data / "train")).select(range(6))
    collator = WmtpDataCollator(pad_token_id=0)
    trainer = VerifiableTrainer(model=policy, args=config, train_dataset=rows, data_collator=collator)
    batch = collator(list(rows))
    counts = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    loss = trainer.compute_loss(policy, batch, num_items_in_batch=counts)
    expected = naive_verifiable_loss(policy, batch, n_heads=2)
    torch.testing.assert_close(loss, torch.as_tensor(expected, dtype=loss.dtype), atol=1e-5, rtol=1e-5)
    # Weights follow the TD errors token by token (head k at t gets token t+1+k's weight).
    out = policy(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
    weights = trainer.token_weights(policy, batch, out, mtp_target_mask(batch["labels"], 2))
    deltas = td_errors(out.value.detach(), batch["reward"], value_positions(batch["labels"]), 1.0)
    token_w = torch.exp(deltas / 0.9).clamp(0.1, 5.0) * response_token_mask(batch["labels"])
    torch.testing.assert_close(weights[:, :-2, 1], token_w[:, 2:])


def test_gradient_accumulation_equals_large_batch(tmp_path, setup):
    check_gradient_accumulation_equals_large_batch(tmp_path, setup, "verifiable")


def test_two_processes_equal_one_process(tmp_path, setup):
    check_two_processes_equal_one_process(tmp_path, setup, "verifiable")


def test_resume_after_kill_is_exact(tmp_path, setup):
    check_resume_after_kill_is_exact(tmp_path, setup, "verifiable")
