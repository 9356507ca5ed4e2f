"""Bad input gives one clear line naming the file, line, field and expectation (DataError)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from wmtp_hf.data import DataError, load_source


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WMTP_HF_CACHE", str(tmp_path / "cache"))


MBPP_OK = {
    "text": "Add.",
    "code": "def add(a, b):\n    return a + b",
    "task_id": 601,
    "test_list": ["assert add(1, 2) == 3"],
}
CC_OK = {"name": "P", "description": "d", "solutions": {"language": [3], "solution": ["print(1)"]}}


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _error(match, *args, **kwargs):
    with pytest.raises(DataError) as info:
        load_source(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for part in match:
        assert part in message, message
    return message


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = _write_lines(tmp_path / "m.jsonl", [json.dumps(MBPP_OK), "{not json", json.dumps(MBPP_OK)])
    _error([f"{path}:2", "invalid JSON"], "mbpp", path=path)
    path = _write_lines(tmp_path / "c.jsonl", [json.dumps(CC_OK), json.dumps(CC_OK)[:-3]])
    _error([f"{path}:2", "invalid JSON"], "codecontests", path=path)


def test_missing_required_field_is_named(tmp_path):
    record = {k: v for k, v in MBPP_OK.items() if k != "test_list"}
    path = _write_lines(tmp_path / "m.jsonl", [json.dumps(MBPP_OK), json.dumps(record)])
    _error([f"{path}:2", "missing required field 'test_list'"], "mbpp", path=path)
    record = {k: v for k, v in CC_OK.items() if k != "description"}
    path = _write_lines(tmp_path / "c.jsonl", [json.dumps(record)])
    _error([f"{path}:1", "missing required field 'description'"], "codecontests", path=path)


def test_wrong_type_names_field_and_expected_type(tmp_path):
    path = _write_lines(tmp_path / "m.jsonl", [json.dumps(dict(MBPP_OK, task_id="601"))])
    _error([f"{path}:1", "field 'task_id': expected int, got str"], "mbpp", path=path)
    bad = dict(CC_OK, difficulty="hard")
    path = _write_lines(tmp_path / "c.jsonl", [json.dumps(bad)])
    _error([f"{path}:1", "field 'difficulty': expected int, got str"], "codecontests", path=path)
    bad = dict(CC_OK, solutions={"language": [3], "solution": [42]})
    path = _write_lines(tmp_path / "c2.jsonl", [json.dumps(bad)])
    _error([f"{path}:1", "field 'solutions.solution[0]': expected str, got int"], "codecontests", path=path)


def test_empty_solution_is_dropped_and_counted(tmp_path):
    path = _write_lines(
        tmp_path / "m.jsonl", [json.dumps(MBPP_OK), json.dumps(dict(MBPP_OK, task_id=602, code="  \n"))]
    )
    dropped = Counter()
    ds = load_source("mbpp", path=path, dropped=dropped)
    assert ds["task_id"] == ["mbpp/601"] and dropped == {"empty_solution": 1}
    record = dict(CC_OK, solutions={"language": [3, 3, 1], "solution": ["print(1)", "", "\n"]})
    path = _write_lines(tmp_path / "c.jsonl", [json.dumps(record)])
    dropped = Counter()
    ds = load_source("codecontests", path=path, dropped=dropped)
    assert ds["task_id"] == ["P_correct_0"] and dropped["empty_solution"] == 2
    # counts survive a cache hit
    again = Counter()
    load_source("codecontests", path=path, dropped=again)
    assert again == dropped


def test_non_utf8_names_the_file(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(json.dumps(MBPP_OK).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    _error([f"{path}:2", "not valid UTF-8 (byte 0xe9"], "mbpp", path=path)
    path = tmp_path / "s.json"
    path.write_bytes(b'[{"prompt": "\xff"}]')
    _error([str(path), "not valid UTF-8"], "mbpp", path=path)


def test_unknown_source_and_split_list_valid_ones(tmp_path):
    message = _error(["unknown source 'codeforces'"], "codeforces")
    assert "codecontests, humaneval, mbpp, offline" in message
    _error(
        ["unknown split 'dev'", "train, validation, test, prompt"], "mbpp", path=tmp_path / "x", split="dev"
    )
    _error(["unknown split 'train'", "valid: test"], "humaneval", split="train")
    _error(["unknown split 'test'", "train, eval"], "offline", split="test")


def test_missing_file(tmp_path):
    _error([str(tmp_path / "nope.jsonl"), "file not found"], "codecontests", path=tmp_path / "nope.jsonl")


def test_cli_error_is_one_line_and_nonzero(tmp_path):
    path = _write_lines(tmp_path / "m.jsonl", ["{oops"])
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wmtp_hf.data",
            "prepare",
            "--source",
            "mbpp",
            "--path",
            str(path),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "WMTP_HF_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {path}:1: invalid JSON (Expecting property name enclosed in double quotes at column 2)"
    ]
    assert not out.exists() and list(tmp_path.glob(".out-*")) == []
