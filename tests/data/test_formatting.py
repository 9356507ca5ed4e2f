"""Prompt template (exact text), tokenization boundaries, dropping, and collator masking to the token."""

from __future__ import annotations

import datasets
import torch

from wmtp_hf.data import WmtpDataCollator, encode_example, format_prompt, tokenize_dataset
from wmtp_hf.data.schema import FEATURES, make_row


def _row(**kw):
    base = dict(
        instruction="Add two numbers.",
        output="print(1 + 2)\n",
        task_id="t",
        problem_id="p",
        source="mbpp",
        is_correct=True,
        tests={},
    )
    return make_row(**{**base, **kw})


def test_prompt_template_exact():
    assert format_prompt(_row()) == "### Instruction:\nAdd two numbers.\n\n### Response:\n"
    assert (
        format_prompt(_row(input="1 2"))
        == "### Instruction:\nAdd two numbers.\n\n### Input:\n1 2\n\n### Response:\n"
    )
    assert format_prompt(_row(input="1 2", source="codecontests")) == (
        "### Instruction:\nAdd two numbers.\n\n"
        "### Input:\n1 2\n\n"
        "### Evaluation Notes:\n"
        "- Return Python source code that prints the required answer.\n"
        "- Hidden tests are present; rely on the stated constraints rather than memorising samples.\n\n"
        "### Response:\n"
    )
    assert format_prompt(_row(source="codecontests")).count("### Input:") == 0


def test_encode_example_boundary_and_eos(tiny_tokenizer):
    row = _row(input="1 2")
    ids, plen = encode_example(row, tiny_tokenizer)
    assert ids[:plen] == tiny_tokenizer(format_prompt(row))["input_ids"]
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(ids[:plen]) == "<s>" + format_prompt(row)
    assert tiny_tokenizer.decode(ids[plen:]) == row["output"] + "</s>"


def test_collator_literal_batch():
    features = [
        {
            "input_ids": [1, 5, 6, 7, 2],
            "prompt_length": 2,
            "is_correct": True,
            "difficulty": 3,
            "task_id": "a",
        },
        {"input_ids": [1, 8, 2], "prompt_length": 1, "is_correct": False, "difficulty": -1},
        {"input_ids": [1, 9, 9, 2], "labels": [-100, -100, 9, 2], "is_correct": True, "difficulty": 11},
    ]
    batch = WmtpDataCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 9, 9, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert batch["labels"].tolist() == [
        [-100, -100, 6, 7, 2],
        [-100, 8, 2, -100, -100],
        [-100, -100, 9, 2, -100],
    ]
    assert batch["reward"].tolist() == [1.0, 0.0, 1.0] and batch["reward"].dtype == torch.float32
    assert batch["difficulty"].tolist() == [3, -1, 11] and batch["difficulty"].dtype == torch.long
    padded = WmtpDataCollator(pad_token_id=0, pad_to_multiple_of=4)(features)
    assert padded["input_ids"].shape == (3, 8) and padded["labels"][:, 5:].eq(-100).all()


def test_collator_on_tokenized_rows_matches_hand_masking(tiny_tokenizer):
    rows = [
        _row(output="x = 1\n", is_correct=False, difficulty=5),
        _row(instruction="Loop.", output="for i in range(3):\n    print(i)\n"),
    ]
    ds = datasets.Dataset.from_list(rows, features=FEATURES)
    tokenized, dropped = tokenize_dataset(ds, tiny_tokenizer, max_length=512)
    assert dropped == {} and set(tokenized.column_names) >= {
        "input_ids",
        "prompt_length",
        "is_correct",
        "difficulty",
    }
    batch = WmtpDataCollator(tiny_tokenizer)(list(tokenized))
    pad = tiny_tokenizer.pad_token_id
    width = batch["input_ids"].shape[1]
    for i, row in enumerate(rows):
        prompt = tiny_tokenizer(format_prompt(row))["input_ids"]  # independent: re-encode each part
        response = tiny_tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [
            tiny_tokenizer.eos_token_id
        ]
        n = len(prompt) + len(response)
        assert batch["input_ids"][i].tolist() == prompt + response + [pad] * (width - n)
        assert batch["labels"][i].tolist() == [-100] * len(prompt) + response + [-100] * (width - n)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
    assert batch["reward"].tolist() == [0.0, 1.0] and batch["difficulty"].tolist() == [5, -1]


def test_tokenize_drops_and_counts_long_and_empty(tiny_tokenizer):
    rows = [_row(output="a = 1\n"), _row(output="b = 2\n" * 80), _row(output="   \n"), _row(output="c = 3\n")]
    ds = datasets.Dataset.from_list(rows, features=FEATURES)
    short = len(encode_example(rows[0], tiny_tokenizer)[0])
    tokenized, dropped = tokenize_dataset(ds, tiny_tokenizer, max_length=short + 2)
    assert dropped == {f"over_max_length_{short + 2}": 1, "empty_solution": 1}
    assert len(tokenized) == 2
    assert [tiny_tokenizer.decode(r["input_ids"][r["prompt_length"] :]) for r in tokenized] == [
        "a = 1\n</s>",
        "c = 3\n</s>",
    ]
    assert all(r["length"] == len(r["input_ids"]) <= short + 2 for r in tokenized)
