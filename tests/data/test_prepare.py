"""`python -m wmtp_hf.data prepare`: Arrow splits + stats.json, drop counts, errors and atomic output."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from wmtp_hf.data.__main__ import main


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WMTP_HF_CACHE", str(tmp_path / "cache"))


def test_prepare_mbpp_with_tokenizer(shared_data, tmp_path, tiny_tokenizer, capsys):
    path = shared_data / "mbpp" / "mbpp.jsonl"
    if not path.exists():
        pytest.skip(f"{path} absent")
    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok_dir)
    out = tmp_path / "prepared"
    argv = ["prepare", "--source", "mbpp", "--path", str(path), "--tokenizer", str(tok_dir)]
    assert (
        main(
            [*argv, "--split", "validation", "--split", "prompt", "--max-length", "300", "--output", str(out)]
        )
        == 0
    )
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats["splits"]) == {"validation", "prompt"} and stats["max_length"] == 300
    val = stats["splits"]["validation"]
    ds = datasets.load_from_disk(str(out / "validation"))
    lengths = np.array(ds["length"])
    assert val["rows_loaded"] == 90 and val["rows"] == len(ds) == 90 - val["dropped"].get(
        "over_max_length_300", 0
    )
    assert val["dropped"]["over_max_length_300"] > 0 and lengths.max() <= 300
    assert val["token_length"]["max"] == lengths.max() and val["token_length"]["p50"] == round(
        float(np.median(lengths)), 1
    )
    assert val["is_correct"] == {"true": len(ds), "false": 0} and val["difficulty"] == {"-1": len(ds)}
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["prompt"]["rows"] + summary["prompt"]["dropped"]["over_max_length_300"] == 10
    # an existing folder is not overwritten without --overwrite
    assert main([*argv, "--split", "prompt", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--split", "prompt", "--output", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["prompt", "stats.json"]


def test_prepare_codecontests_untokenized(tmp_path):
    record = {
        "name": "P",
        "description": "d",
        "difficulty": 3,
        "solutions": {"language": [3, 2, 3], "solution": ["print(1)", "int main(){}", ""]},
        "incorrect_solutions": {"language": [1], "solution": ["print 2"]},
    }
    path = tmp_path / "cc.jsonl"
    path.write_text(json.dumps(record) + "\n")
    out = tmp_path / "out"
    assert main(["prepare", "--source", "codecontests", "--path", str(path), "--output", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    train = stats["splits"]["train"]
    assert (
        train["rows"] == 2
        and train["is_correct"] == {"true": 1, "false": 1}
        and train["difficulty"] == {"3": 2}
    )
    assert train["dropped"] == {"empty_solution": 1, "non_python_solution": 1}
    assert train["token_length"] is None and train["char_length"]["max"] > 0 and stats["notes"]
    assert datasets.load_from_disk(str(out / "train"))["task_id"] == ["P_correct_0", "P_incorrect_0"]


def test_prepare_bad_arguments(tmp_path, capsys):
    assert main(["prepare", "--source", "nope", "--output", str(tmp_path / "o")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: unknown source 'nope'; valid: codecontests, humaneval, mbpp, offline"
    )
    assert (
        main(
            [
                "prepare",
                "--source",
                "humaneval",
                "--tokenizer",
                str(tmp_path / "missing"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"error: --tokenizer {tmp_path / 'missing'}: could not load a tokenizer")
        and "\n" not in err
    )
    assert not (tmp_path / "o").exists()
