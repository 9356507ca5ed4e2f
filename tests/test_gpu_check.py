"""scripts/gpu_check.py at tiny size on CPU: every section runs, the JSON report says what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py"), "--tiny", "--output", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert set(sections) == {"fsdp2_train", "heads_memory", "chunked_loss", "attention_parity", "speculative"}
    assert sections["fsdp2_train"]["tokens_per_s"] > 0 and sections["fsdp2_train"]["parameters"] > 0
    assert sections["chunked_loss"]["loss_diff"] < 1e-4  # the chunked loss equals the plain [B,T,n,V] loss
    assert sections["speculative"]["same_tokens"] is True  # speculative decoding = greedy decoding
    assert "gpu_check on cpu" in proc.stdout and "speculative" in proc.stdout


def test_gpu_check_without_gpu_at_full_size_stops_with_one_line(tmp_path):
    if __import__("torch").cuda.is_available():
        return
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py"), "--output", str(tmp_path / "x.json")],
                          capture_output=True, text=True, env=env, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--tiny" in proc.stderr
