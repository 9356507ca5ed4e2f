"""Run transformers' own common model tests (`ModelTesterMixin`) against `WmtpModel` and
`WmtpForMultiTokenPrediction`, with a tiny WMTP config, and summarise the outcome.

    python scripts/check_transformers_common.py --tests-dir /work/tmp/tf_tests

`--tests-dir` is a folder holding transformers' `tests/` tree (for the installed transformers version: the
sdist `transformers-X.tar.gz` ships `tests/test_modeling_common.py`). The tree is not part of this
repository and CI does not have it, so this is a script, not a test. The script writes a small pytest
module into a temporary folder (the WMTP tester and `class WmtpModelTest(ModelTesterMixin, TestCase)`),
imports the tree as the package `hf_tests`, runs pytest in a subprocess and prints passed / failed /
skipped / errors with each failure's test and one-line reason; JSON goes to `--output`. `ConfigTester`
(`test_configuration_common.py`) runs as `test_config`.

Modules those files import but the sdist lacks (`exporters/test_export.py`, `generation/test_utils.py`,
`utils/test_configuration_utils.py`) are replaced by stand-ins (`OPTIONAL_MODULES`), so the export and
generate suites do not run then; with a full checkout of the tests tree `GenerationTesterMixin` is mixed in
as well. Tests that assume what WMTP legitimately does differently are skipped in the generated class, each
with its reason (`SKIPS`). Run it with the interpreter whose transformers the tree belongs to (the floor:
/tmp/wmtp-floor-venv/bin/python with the 5.13.1 sdist's tests).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import print_table, write_report  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Modules `test_modeling_common.py` / `test_configuration_common.py` import that the sdist lacks: stand-ins
# are an empty mixin, or an empty `config_common_kwargs` (ConfigTester's arguments-init check then checks nothing).
OPTIONAL_MODULES = {
    "exporters/test_export.py": "ExportTesterMixin",
    "generation/test_utils.py": "GenerationTesterMixin",
    "utils/test_configuration_utils.py": "config_common_kwargs",
}
NO_GENERATION = (
    "environment: the tests tree has no generation/test_utils.py (the sdist ships none), so "
    "GenerationTesterMixin cannot be mixed in; tests/test_generation_wmtp.py covers generate"
)

# test name -> why WMTP legitimately differs (docs/design.md, "transformers' common model tests").
SKIPS: dict[str, str] = {
    "test_num_layers_is_small": (
        "num_hidden_layers counts the trunk and every prediction head (Meta's n_layers): a tester with a "
        "trunk and more than one head has more than the 2 blocks this test allows"
    ),
}

CONFTEST = '''"""Stand-ins for modules of transformers' tests tree that this copy lacks (written by the script)."""
import os
import sys
import types

import transformers.utils

_direct_import = transformers.utils.direct_transformers_import


def direct_transformers_import(path, file="__init__.py"):
    """test_configuration_common runs tests/__init__.py as `transformers`, which the sdist lacks: the
    result is the installed transformers either way."""
    if not os.path.isfile(os.path.join(path, file)):
        return transformers
    return _direct_import(path, file)


transformers.utils.direct_transformers_import = direct_transformers_import

for name, mixin in {stubs!r}.items():
    parent = "hf_tests." + name.rsplit(".", 1)[0]
    sys.modules.setdefault(parent, types.ModuleType(parent))
    module = types.ModuleType("hf_tests." + name)
    setattr(module, mixin, type(mixin, (), {{}}) if mixin.endswith("Mixin") else {{}})
    sys.modules["hf_tests." + name] = module
'''

TEST_MODULE = '''"""transformers' ModelTesterMixin on a tiny WMTP model (written by check_transformers_common.py)."""
import unittest

import torch
from hf_tests.generation.test_utils import GenerationTesterMixin
from hf_tests.test_configuration_common import ConfigTester
from hf_tests.test_modeling_common import ModelTesterMixin
from transformers.models.auto import modeling_auto

from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction, WmtpModel

# The common tests classify classes by transformers' own name maps (base model, causal LM: which gets
# labels, which must return a loss); an in-library model is listed there, so list WMTP too.
modeling_auto.MODEL_MAPPING_NAMES.setdefault("wmtp", "WmtpModel")
modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault("wmtp", "WmtpForMultiTokenPrediction")


class WmtpModelTester:
    """Tiny WMTP: 2 trunk blocks + 2 prediction heads (num_hidden_layers counts all 4 blocks)."""

    def __init__(self, parent, batch_size=3, seq_length=7):
        self.parent, self.batch_size, self.seq_length = parent, batch_size, seq_length
        self.is_training, self.vocab_size, self.hidden_size = True, 99, 32
        self.num_hidden_layers, self.n_future_tokens, self.num_attention_heads = 4, 2, 4
        # hidden_states follow LLaMA's next-token path (trunk + head 0), plus the embeddings
        self.expected_num_hidden_layers = self.num_hidden_layers - self.n_future_tokens + 2

    def get_config(self):
        return WmtpConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=37,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=2, n_future_tokens=self.n_future_tokens, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, loss_chunk_size=4,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = torch.randint(3, self.vocab_size, (self.batch_size, self.seq_length))
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, :2] = 0  # one left-padded row
        return self.get_config(), {{"input_ids": input_ids, "attention_mask": attention_mask}}


class WmtpModelTest({bases}unittest.TestCase):
    all_model_classes = (WmtpModel, WmtpForMultiTokenPrediction)
    # the test dates a model by its config file's copyright line, which ours lacks (read as "before 2023")
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = WmtpModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=WmtpConfig, hidden_size=32, num_attention_heads=4, num_hidden_layers=4,
            n_future_tokens=2,
        )

    def test_config(self):
        self.config_tester.run_common_tests()
{skips}'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tests-dir", required=True, type=Path, help="a folder that contains transformers' tests/"
    )
    p.add_argument("--output", default="bench_results/check_transformers_common.json")
    p.add_argument("-k", dest="select", help="pytest -k expression (a subset of the tests)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds before pytest is stopped")
    return p.parse_args(argv)


def write_suite(folder: Path, tests: Path) -> list[str]:
    """Write conftest + test module into `folder`; return the stubbed optional modules."""
    (folder / "hf_tests").symlink_to(tests, target_is_directory=True)
    stubs = {p[:-3].replace("/", "."): m for p, m in OPTIONAL_MODULES.items() if not (tests / p).is_file()}
    (folder / "conftest.py").write_text(CONFTEST.format(stubs=stubs))
    stubbed = "generation.test_utils" in stubs
    (folder / "pytest.ini").write_text("[pytest]\n")
    skips = {**SKIPS, **({"test_generation_tester_mixin_inheritance": NO_GENERATION} if stubbed else {})}
    methods = "".join(
        f"\n    @unittest.skip(reason={reason!r})\n    def {name}(self):\n        pass\n"
        for name, reason in skips.items()
    )
    bases = "ModelTesterMixin, " + ("" if stubbed else "GenerationTesterMixin, ")
    (folder / "test_wmtp_common.py").write_text(TEST_MODULE.format(bases=bases, skips=methods))
    return sorted(stubs)


def parse_junit(path: Path) -> list[dict[str, str]]:
    """One record per test: name, outcome (passed/failed/error/skipped) and a one-line reason."""
    records = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, reason = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = node.get("message") or ""
                raised = [line for line in (node.text or "").splitlines() if line.startswith("E ")]
                if raised and (not message or message == "collection failure"):
                    message = raised[-1][1:]  # the exception pytest printed, not its bare label
                reason = " ".join(message.split())[:240]
                break
        records.append({"test": case.get("name", "?"), "outcome": outcome, "reason": reason})
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tests = args.tests_dir.resolve() / "tests"
    if not (tests / "test_modeling_common.py").is_file():
        print(
            f"error: --tests-dir {args.tests_dir}: expected tests/test_modeling_common.py there",
            file=sys.stderr,
        )
        return 2
    import transformers

    with tempfile.TemporaryDirectory(prefix="wmtp_common_") as tmp:
        folder = Path(tmp)
        stubs = write_suite(folder, tests)
        junit = folder / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        cmd += ["-k", args.select] if args.select else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)]), "HF_HUB_OFFLINE": "1"}
        try:
            proc = subprocess.run(cmd + ["test_wmtp_common.py"], cwd=folder, env=env, timeout=args.timeout,
                                  capture_output=True, text=True)  # fmt: skip
        except subprocess.TimeoutExpired:
            print(f"error: --timeout {args.timeout}: pytest did not finish", file=sys.stderr)
            return 1
        if not junit.is_file():
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            print("error: pytest wrote no report (the test module did not import)", file=sys.stderr)
            return 1
        records = parse_junit(junit)
    counts = {k: sum(r["outcome"] == k for r in records) for k in ("passed", "failed", "error", "skipped")}
    print_table([f"{k}:>9" for k in counts], [list(counts.values())])
    problems = [r for r in records if r["outcome"] in ("failed", "error")]
    for r in problems:
        print(f"{r['outcome'].upper()} {r['test']}: {r['reason']}")
    report = {"transformers": transformers.__version__, "tests_dir": str(args.tests_dir), "stubbed": stubs,
              "select": args.select, "counts": counts, "skips": SKIPS, "records": records}  # fmt: skip
    write_report(Path(args.output), report)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
