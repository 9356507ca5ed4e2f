"""`python -m wmtp_hf.data self-distill` (evaluation/self_distill.py): a model's own greedy answers, labelled by
their tests, as a folder the stages train on."""

import json

import datasets
import pytest
import torch
from train_fixtures import write_mbpp_fixture, write_tiny_model

from wmtp_hf.data.__main__ import main
from wmtp_hf.evaluation import generation
from wmtp_hf.evaluation.samples import Sample
from wmtp_hf.evaluation.self_distill import self_distill


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("distill")
    return {
        "root": root,
        "model": write_tiny_model(root / "model", tiny_tokenizer),
        "mbpp": write_mbpp_fixture(root / "mbpp.jsonl", n=4),
    }


def naive_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Argmax of a full forward pass per new token (no cache, no generate), stopping at EOS."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_rows_hold_the_models_greedy_answers(env):
    """Each problem once, its `output` the model's greedy answer (a naive argmax loop's text, cut at the
    alpaca stop), in the folder layout training reads, with the format recorded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wmtp_hf.data.prompt_formats import render_prompt

    out = env["root"] / "greedy"
    stats = self_distill(str(env["model"]), "mbpp", out, path=str(env["mbpp"]), prompt_format="alpaca",
                         max_new_tokens=12, batch_size=3, token_healing=False, isolation="guard")  # fmt: skip
    rows = datasets.load_from_disk(str(out / "train"))
    assert len(rows) == 4 and stats["self_distill"]["problems"] == 4
    assert json.loads((out / "stats.json").read_text())["prompt_format"] == "alpaca"
    model = AutoModelForCausalLM.from_pretrained(env["model"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(env["model"])
    for row in rows:
        expected = naive_greedy(model, tokenizer, render_prompt(row, "alpaca"), 12)
        cut = expected.find("\n### ", generation.code_start(expected))
        assert row["output"] == (expected if cut == -1 else expected[:cut]), row["task_id"]
        assert row["task_id"].endswith("/greedy") and row["source"] == "mbpp"


def test_answers_are_labelled_by_their_tests(env, monkeypatch):
    """`is_correct` is the sandbox's verdict on each answer: a right and a wrong planted answer, each on its
    own problem's row however the samples are ordered."""
    answers = {"mbpp/601": "def add_0(x):\n    return x + 0\n", "mbpp/602": "def add_1(x):\n    return x\n"}

    def planted(model, tokenizer, problems, **options):  # in reverse: samples need not follow problems
        return [Sample(p.task_id, answers.get(p.task_id, "pass\n"), ()) for p in reversed(problems)]

    monkeypatch.setattr(generation, "sample_problems", planted)
    out = env["root"] / "planted"
    stats = self_distill(str(env["model"]), "mbpp", out, path=str(env["mbpp"]), prompt_format="alpaca",
                         limit=2, isolation="guard")  # fmt: skip
    rows = datasets.load_from_disk(str(out / "train"))
    assert [(r["problem_id"], r["output"], r["is_correct"]) for r in rows] == [
        ("mbpp/601", answers["mbpp/601"], True), ("mbpp/602", answers["mbpp/602"], False)
    ]  # fmt: skip
    assert stats["self_distill"]["passed"] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--limit", "0"], "--limit: expected a positive integer, got 0"),
        (["--source", "nope"], "unknown source 'nope'"),
    ],
)
def test_bad_options_are_one_line_errors(env, capsys, extra, message):
    argv = ["self-distill", "--model", str(env["model"]), "--source", "mbpp", "--path", str(env["mbpp"]),
            "--output", str(env["root"] / "bad"), *extra]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (env["root"] / "bad").exists()


def test_existing_folder_needs_overwrite(env, capsys):
    taken = env["root"] / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    argv = ["self-distill", "--model", str(env["model"]), "--source", "mbpp", "--path", str(env["mbpp"]),
            "--output", str(taken)]  # fmt: skip
    assert main(argv) != 0
    assert "already exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (taken / "keep.txt").read_text() == "x"
