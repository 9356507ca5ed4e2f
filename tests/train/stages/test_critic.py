"""Critic and verifiable stages end to end: what trains, errors, accumulation, 2 processes, resume, learning."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import datasets
import pytest
import torch
from safetensors.torch import load_file
from test_train_run import KILL_AFTER_SAVE, assert_same_weights
from train_fixtures import log_losses, write_marker_dataset, write_tiny_model
from transformers import AutoModelForCausalLM

from wmtp_hf.data import WmtpDataCollator
from wmtp_hf.losses import mtp_target_mask
from wmtp_hf.train.cli import main
from wmtp_hf.weighting import response_token_mask, td_errors, value_positions

MARKER = 7


@pytest.fixture()
def setup(tmp_path, tiny_tokenizer):
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_marker_dataset(tmp_path / "marker", len(tiny_tokenizer), MARKER, n_problems=24,
                                eos=tiny_tokenizer.eos_token_id)  # fmt: skip
    return model, data


def stage_args(stage: str, model, data, out, **overrides) -> list[str]:
    options = {"model": model, "dataset": data, "output-dir": out, "max-steps": 3, "per_device_train_batch_size": 4,
               "report_to": "none", "logging_steps": 1, "save_steps": 100, "learning_rate": 1e-2,
               "warmup_steps": 0, **overrides}  # fmt: skip
    argv = ["--stage", stage]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    return argv


def critic_output(tmp_path, model, data) -> str:
    out = tmp_path / "critic"
    assert main(stage_args("critic", model, data, out, eval_strategy="no")) == 0
    return str(out / "final")


def log_history(out) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


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


def test_default_start_folders_name_the_command_that_makes_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--stage", "critic", "--report_to", "none"]) == 2
    assert "runs/baseline/final': no such folder, and not a Hub id; it is made by: python -m wmtp_hf.train " \
           "--stage baseline" in capsys.readouterr().err  # fmt: skip
    assert main(["--stage", "verifiable", "--report_to", "none"]) == 2
    assert "it is made by: python -m wmtp_hf.train --stage critic" in capsys.readouterr().err


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


@pytest.mark.parametrize("stage", ["critic", "verifiable"])
def test_gradient_accumulation_equals_large_batch(tmp_path, setup, stage):
    model, data = setup
    start = critic_output(tmp_path, model, data) if stage == "verifiable" else model
    common = {"max-steps": 2, "optim": "sgd", "learning_rate": 0.5, "lr_scheduler_type": "constant",
              "max_grad_norm": 0, "eval_strategy": "no"}  # fmt: skip
    if stage == "verifiable":
        common |= {"normalize": "ema", "n_samples": 16}
    big, acc = tmp_path / "big", tmp_path / "acc"
    assert main(stage_args(stage, start, data, big, per_device_train_batch_size=8, **common)) == 0
    assert main(stage_args(stage, start, data, acc, per_device_train_batch_size=2, gradient_accumulation_steps=4,
                           **common)) == 0  # fmt: skip
    assert log_losses(big) == pytest.approx(log_losses(acc), rel=1e-6, abs=1e-6)
    assert_same_weights(big, acc, atol=1e-5)


@pytest.mark.parametrize("stage", ["critic", "verifiable"])
def test_two_processes_equal_one_process(tmp_path, setup, stage):
    model, data = setup
    start = critic_output(tmp_path, model, data) if stage == "verifiable" else model
    options = {"max-steps": 2, "eval_strategy": "no"} | (
        {"normalize": "ema"} if stage == "verifiable" else {}
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(stage_args(stage, start, data, one, per_device_train_batch_size=4, **options)) == 0
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), "-m", "wmtp_hf.train",
         *stage_args(stage, start, data, two, per_device_train_batch_size=2, **options)],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]
    assert log_losses(two) == pytest.approx(log_losses(one), abs=1e-5)
    assert_same_weights(one, two, atol=1e-4)  # Adam turns reduction-order noise into ~lr-sized steps


@pytest.mark.parametrize("stage", ["critic", "verifiable"])
def test_resume_after_kill_is_exact(tmp_path, setup, stage):
    model, data = setup
    start = critic_output(tmp_path, model, data) if stage == "verifiable" else model
    options = {"max-steps": 4, "save_steps": 2, "eval_strategy": "no"}
    if stage == "verifiable":
        options |= {"normalize": "ema", "ema_warmup_steps": 1}
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(stage_args(stage, start, data, full, **options)) == 0
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, *stage_args(stage, start, data, killed, **options)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    if stage == "verifiable":
        saved = json.loads((killed / "checkpoint-2" / "wmtp_stage_state.json").read_text())
        assert saved["ema"]["updates"] == 2
    assert main([*stage_args(stage, start, data, killed, **options), "--resume"]) == 0
    assert log_losses(killed) == pytest.approx(log_losses(full), abs=1e-6)
    assert_same_weights(full, killed, atol=1e-6)


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
