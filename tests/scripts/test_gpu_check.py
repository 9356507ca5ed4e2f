"""scripts/gpu_check.py at tiny size on CPU: every section runs (the training path through torchrun and
FSDP2, resume, final/ loading without wmtp_hf), and the JSON report says what it measured."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SECTIONS = {
    "train_path",
    "precision",
    "mfu",
    "heads_memory",
    "chunked_loss",
    "attention_parity",
    "speculative",
    "packing",
}


def load_gpu_check():
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", REPO / "scripts/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_tiny_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py"), "--tiny", "--output", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, check=False, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = json.loads(out.read_text())["sections"]
    assert set(sections) == SECTIONS
    path = sections["train_path"]
    assert path["distributed"] == {"mode": "fsdp2", "world_size": 2, "sharded_parameters": True}
    assert path["sharded_checkpoint"] is True and path["resume_max_loss_diff"] < 1e-4
    assert path["final"]["class"] == "WmtpForMultiTokenPrediction" and path["final"]["generated"] == 4
    assert path["final"]["dtype"] == path["final"]["config_dtype"] == "float32"  # CPU FSDP2 trains in fp32
    assert sections["precision"]["bf16"][-1] < sections["precision"]["bf16"][0]
    assert sections["mfu"]["tokens_per_s"] > 0 and sections["mfu"]["flops_vs_6N"] > 1
    assert sections["chunked_loss"]["loss_diff"] < 1e-4  # the chunked loss equals the plain [B,T,n,V] loss
    spec = sections["speculative"]
    assert spec["heads_agree"]["acceptance_rate"] == 1.0 and spec["heads_agree"]["same_tokens"] is True
    assert 0 < spec["heads_partly_agree"]["acceptance_rate"] < 1 and spec["heads_partly_agree"]["same_tokens"]
    packing = sections["packing"]
    assert packing["attn_implementation"] == "sdpa" and packing["no_flash"] == "flash attention needs a GPU"
    for case in ("baseline_b2", "baseline_b4", "rho1_b2", "rho1_b4"):  # same batches, padded vs packed
        assert packing[case]["padded_fraction"] > 0 and packing[case]["packed_fraction"] == 0
        assert packing[case]["loss_rel_diff"] < 1e-5 and packing[case]["packed_tok_s"] > 0
    assert "gpu_check on cpu" in proc.stdout and "speculative" in proc.stdout and "packing" in proc.stdout


def test_report_is_written_after_each_section(tmp_path, monkeypatch):
    """A run cut short (here: a section that reads the report, then fails) keeps the sections before it."""
    gpu_check = load_gpu_check()
    out, seen = tmp_path / "report.json", {}

    def failing(size, device, dtype):
        seen.update(json.loads(out.read_text())["sections"])
        raise RuntimeError("cut short")

    monkeypatch.setattr(gpu_check, "speculative", failing)
    assert gpu_check.main(["--tiny", "--only", "chunked_loss", "speculative", "--output", str(out)]) == 1
    assert set(seen) == {"chunked_loss"} and "loss_diff" in seen["chunked_loss"]
    assert json.loads(out.read_text())["sections"]["speculative"]["error"] == "RuntimeError: cut short"


def test_gpu_check_without_gpu_at_full_size_stops_with_one_line(tmp_path):
    if torch.cuda.is_available():
        return
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py"), "--output", str(tmp_path / "x.json")],
                          capture_output=True, text=True, env=env, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--tiny" in proc.stderr
