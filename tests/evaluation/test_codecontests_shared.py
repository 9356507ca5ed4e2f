"""CodeContests evaluation on the real partial sample (problems whose records carry no solutions)."""

from __future__ import annotations

import json

import pytest

from wmtp_hf import evaluate
from wmtp_hf.evaluation.problems import load_problems


@pytest.fixture()
def sample30(shared_data):
    path = shared_data / "code_contests" / "train_sample30_partial.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} absent (see ../shared/data/README.md)")
    return path


def test_every_problem_is_evaluable_even_without_solutions(sample30):
    problems = {p.task_id: p for p in load_problems("codecontests", str(sample30), "train")}
    assert len(problems) == 30
    gravity = problems["405_A. Gravity Flip"]
    tests = json.loads(gravity.tests)
    assert tests["kind"] == "stdio" and tests["inputs"][0] == "3\n2 3 8\n" and tests["outputs"][0] == "2 3 8 "
    assert len(tests["inputs"]) == len(tests["outputs"]) >= 1
    assert gravity.prompt.startswith("### Instruction:\nLittle Chris is bored")
    assert "### Evaluation Notes:" in gravity.prompt and gravity.prompt.endswith("### Response:\n")


def test_samples_scored_against_public_tests(sample30, tmp_path):
    right = "n = int(input())\nprint(*sorted(map(int, input().split())))\n"
    wrong = "n = int(input())\nprint(input())\n"
    parity = "n = int(input())\nprint('Mahmoud' if n % 2 == 0 else 'Ehab')\n"
    rows = [
        {"task_id": "405_A. Gravity Flip", "completion": right},
        {"task_id": "405_A. Gravity Flip", "completion": wrong},
        {"task_id": "959_A. Mahmoud and Ehab and the even-odd game", "completion": parity},
        {"task_id": "959_A. Mahmoud and Ehab and the even-odd game", "completion": "print('Ehab')\n"},
    ]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["--samples", str(samples), "--dataset", "codecontests", "--path", str(sample30), "--split", "train",
            "--k", "1,2", "--output", str(out)]  # fmt: skip
    assert evaluate.main(argv) == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [True, False, True, False]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass@1"] == pytest.approx(0.5) and summary["pass@2"] == pytest.approx(1.0)
