"""scripts/check_transformers_common.py end to end on a stand-in for transformers' tests tree (CI has no
real one): one mixin test that builds both WMTP classes and runs them, one that fails on purpose, and the
test the script skips, so the counts, the failure's reason, the stand-ins and the bad --tests-dir error are
all checked without the real tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "check_transformers_common.py"

FAKE_MIXIN = """
class ModelTesterMixin:
    def test_runs_every_class(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            out = model_class(config).eval()(**inputs)
            assert out[0].shape[:2] == inputs["input_ids"].shape

    def test_fails_on_purpose(self):
        raise AssertionError("the fake mixin fails here")

    def test_num_layers_is_small(self):
        raise AssertionError("the script skips this one")
"""
FAKE_CONFIG_TESTER = """
class ConfigTester:
    def __init__(self, parent, config_class, **kwargs):
        self.config_class, self.kwargs = config_class, kwargs

    def run_common_tests(self):
        assert self.config_class(**self.kwargs).n_future_tokens == 2
"""


def run(tests_dir: Path, output: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--tests-dir", str(tests_dir), "--output", str(output)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_counts_failures_and_skips_on_a_fake_tree(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_modeling_common.py").write_text(FAKE_MIXIN)
    (tmp_path / "tests" / "test_configuration_common.py").write_text(FAKE_CONFIG_TESTER)
    proc = run(tmp_path, tmp_path / "out.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one test failed
    report = json.loads((tmp_path / "out.json").read_text())
    outcomes = {r["test"]: r["outcome"] for r in report["records"]}
    assert outcomes == {
        "test_runs_every_class": "passed",
        "test_config": "passed",
        "test_fails_on_purpose": "failed",
        "test_num_layers_is_small": "skipped",
        "test_generation_tester_mixin_inheritance": "skipped",  # no generation/test_utils.py here
    }
    assert report["counts"] == {"passed": 2, "failed": 1, "error": 0, "skipped": 2}
    assert "generation.test_utils" in report["stubbed"]
    assert "FAILED test_fails_on_purpose: AssertionError: the fake mixin fails here" in proc.stdout


def test_a_folder_without_the_tests_tree_is_one_line_error(tmp_path):
    proc = run(tmp_path, tmp_path / "out.json")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --tests-dir {tmp_path}: expected tests/test_modeling_common.py there"
    ]
    assert not (tmp_path / "out.json").exists()
