"""A stage's log states the size of every checkpoint and of its final folder (bytes and human-readable)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from train_fixtures import train_args, write_mbpp_fixture, write_tiny_model

from wmtp_hf.train.checkpoint_size import folder_bytes, human_bytes
from wmtp_hf.train.cli import main


def test_human_bytes_and_folder_bytes(tmp_path):
    assert [human_bytes(n) for n in (0, 999, 1000, 1_234_567, 2_050_000_000, 10**18)] == [
        "0 B", "999 B", "1.00 kB", "1.23 MB", "2.05 GB", "1000.00 PB",
    ]  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"x" * 300)
    (tmp_path / "y.json").write_bytes(b"{}")
    assert folder_bytes(tmp_path) == 302 and folder_bytes(tmp_path / "missing") == 0


def test_log_states_checkpoint_and_final_sizes(tmp_path, tiny_tokenizer, caplog):
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl")
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="wmtp_hf.train")
    assert main(train_args(model, data, out, **{"max-steps": 2, "save_steps": 1})) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("saved ")]
    expected = [
        ("checkpoint", out / "checkpoint-1"),
        ("checkpoint", out / "checkpoint-2"),
        ("final model", out / "final"),
    ]
    assert len(lines) == len(expected)
    for line, (what, folder) in zip(lines, expected, strict=True):
        n = int(re.search(r"\((\d+) bytes\)$", line).group(1))
        on_disk = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
        assert line.startswith(f"saved {what} {folder}: {human_bytes(n)} ") and n == on_disk > 0
    # a checkpoint holds the optimizer state: larger than the final model alone
    sizes = [int(re.search(r"\((\d+) bytes\)$", line).group(1)) for line in lines]
    assert sizes[1] > sizes[2]
