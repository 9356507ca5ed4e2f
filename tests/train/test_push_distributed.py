"""push_to_hub from a 2-process run: the upload may outlast the process group's timeout (ddp_timeout)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from train_fixtures import train_args, write_mbpp_fixture, write_tiny_model

TESTS = Path(__file__).resolve().parents[1] / "helpers"  # the subprocess workers and what they import
REPO = TESTS.parents[1]
SLOW_S, TIMEOUT_S = 8, 2


def test_slow_upload_outlasting_ddp_timeout_finishes_on_every_process(tmp_path, tiny_tokenizer):
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl")
    argv = train_args(model, data, tmp_path / "run", **{"max-steps": 1}, per_device_train_batch_size=2,
                      push_to_hub="true", hub_model_id="org/slow", ddp_timeout=TIMEOUT_S)  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(TESTS / "hub_push_worker.py"), str(tmp_path), str(SLOW_S), str(TIMEOUT_S), *argv]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    commit = json.loads((tmp_path / "commit.json").read_text())  # one upload, by process 0
    assert commit["repo_id"] == "org/slow" and "model.safetensors" in commit["files"]
    assert commit["end"] - commit["start"] >= SLOW_S > TIMEOUT_S
    ranks = [json.loads((tmp_path / f"push_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["code"] for r in ranks] == [0, 0]
    assert ranks[1]["finished"] >= commit["end"]  # process 1 waited for the upload, and was not killed
    # The control: a barrier with process 0 late by the upload's time does fail under this timeout.
    assert all(r["control"].startswith("failed") for r in ranks), ranks
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["pushed_to"] == "org/slow" and summary["distributed"]["world_size"] == 2
