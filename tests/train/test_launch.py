"""Launch forms that would silently train otherwise than asked stop at once with one line; the others
run what they say (run_summary.json). torchrun (DDP, FSDP2) and `accelerate launch` with cpu.yaml are run
in tests/train/test_run.py and tests/train/test_fsdp.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_fixtures import train_args, write_mbpp_fixture, write_tiny_model

from wmtp_hf.train.config import ConfigError
from wmtp_hf.train.launch import check_launch

REPO = Path(__file__).resolve().parents[2]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without GPUs does")


@pytest.fixture()
def fixtures(tmp_path, tiny_tokenizer):
    return write_tiny_model(tmp_path / "model", tiny_tokenizer), write_mbpp_fixture(tmp_path / "mbpp.jsonl")


def accelerate_launch(launch: list[str], argv: list[str]) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "wmtp_hf.train", *argv],
                          capture_output=True, text=True, env=env, check=False, timeout=300)  # fmt: skip


def error_lines(proc: subprocess.CompletedProcess) -> set[str]:
    """The distinct `error:` lines of all processes (each process says the same one line)."""
    return {line for line in proc.stderr.splitlines() if line.startswith("error:")}


@no_gpu
@pytest.mark.parametrize(
    ("launch", "words"),
    [
        (["--config_file", str(REPO / "accelerate_configs/fsdp_4xa100.yaml"), "--num_processes", "2"],
         "asks for FSDP but this machine has no GPU"),
        (["--cpu", "--num_processes", "2"], "asked for several CPU processes but started one"),
    ],
)  # fmt: skip
def test_launch_that_would_do_something_else_stops_at_once(tmp_path, fixtures, launch, words):
    model, data = fixtures
    proc = accelerate_launch(launch, train_args(model, data, tmp_path / "out", **{"max-steps": 1}))
    assert proc.returncode != 0
    assert len(error_lines(proc)) == 1, proc.stderr[-4000:]
    (line,) = error_lines(proc)
    assert words in line and "torchrun --nproc_per_node" in line, line
    assert not (tmp_path / "out").exists()  # stopped before any work: nothing written


@no_gpu
def test_mps_config_without_mps_runs_one_process(tmp_path, fixtures):
    """accelerate_configs/mps.yaml names one process and no distribution; here it trains on the CPU."""
    model, data = fixtures
    launch = ["--config_file", str(REPO / "accelerate_configs/mps.yaml")]
    proc = accelerate_launch(launch, train_args(model, data, tmp_path / "out", **{"max-steps": 1}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["distributed"] == {"mode": "single", "world_size": 1, "sharded_parameters": False}
    assert summary["device"] == ("mps" if torch.backends.mps.is_available() else "cpu")


def test_processes_that_would_train_alone_stop():
    """Any launcher: N processes started, each a world of 1 (N trainings into one folder) -> one line."""
    alone = SimpleNamespace(world_size=1)
    with pytest.raises(ConfigError, match="2 processes were started but each would train as world size 1"):
        check_launch(alone, env={"WORLD_SIZE": "2", "RANK": "1"}, has_gpu=True)
    check_launch(SimpleNamespace(world_size=2), env={"WORLD_SIZE": "2"}, has_gpu=False)  # torchrun: fine
    check_launch(alone, env={}, has_gpu=False)  # python -m: fine
    check_launch(alone, env={"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True"}, has_gpu=False)
    with pytest.raises(ConfigError, match="asks for FSDP"):
        check_launch(SimpleNamespace(world_size=2), env={"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"},
                     has_gpu=False)  # fmt: skip
    check_launch(
        SimpleNamespace(world_size=2), env={"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"}, has_gpu=True
    )
