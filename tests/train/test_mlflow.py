"""MLflow tracking: a real `mlflow server` over HTTP, and the default local store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from train_fixtures import log_losses, train_args, write_mbpp_fixture, write_tiny_model

from wmtp_hf.train.cli import main

mlflow = pytest.importorskip("mlflow")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 with a SQLite backend in a temp dir; yields its URI."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.sqlite'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_training_logs_metrics_params_and_config_to_server(
    tmp_path, tiny_tokenizer, mlflow_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "wmtp-test")
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl")
    out = tmp_path / "out"
    assert main(train_args(model, data, out, report_to="mlflow", **{"max-steps": 3})) == 0

    client = mlflow.tracking.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("wmtp-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset"] == "mbpp" and run.data.params["max_length"] == "256"
    assert run.data.tags["wmtp.stage"] == "baseline"
    losses = log_losses(out)
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(losses, abs=1e-5)
    for name in ("ce_head_0", "ce_head_1", "tokens_per_second", "tokens_head_1"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 3, name
    local = Path(
        client.download_artifacts(run.info.run_id, "config/resolved_config.yaml", str(tmp_path / "dl"))
    )
    assert local.read_text() == (out / "resolved_config.yaml").read_text()


def test_default_store_is_sqlite_in_working_directory(tmp_path, tiny_tokenizer):
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-m", "wmtp_hf.train", *train_args(model, data, tmp_path / "out", report_to="mlflow",
                                                             **{"max-steps": 2})],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "mlflow.db").is_file()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("wmtp_hf").experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "ce_head_0")) == 2
