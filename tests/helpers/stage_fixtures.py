"""Critic and verifiable stage runs for tests: command lines, a trained critic to start from, and the checks
every stage must pass (accumulation equals a large batch, 2 processes equal 1, resume after a kill is exact),
each taking the stage's name."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from run_comparisons import KILL_AFTER_SAVE, assert_same_weights
from train_fixtures import log_losses

from wmtp_hf.train.cli import main

MARKER = 7  # the planted token in write_marker_dataset's incorrect responses


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


def check_gradient_accumulation_equals_large_batch(tmp_path, setup, stage):
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


def check_two_processes_equal_one_process(tmp_path, setup, stage):
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


def check_resume_after_kill_is_exact(tmp_path, setup, stage):
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
