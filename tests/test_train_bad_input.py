"""Bad input to `python -m wmtp_hf.train`, tried as a new user would: one line, exit 2, nothing written."""

from __future__ import annotations

import pytest

from wmtp_hf.train.cli import main


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-steps", "-3"], "error: max_steps: expected a positive number of optimizer steps, got -3"),
        (["--max-steps", "0"], "error: max_steps: expected a positive number of optimizer steps, got 0"),
        (
            ["--model", "/nonexistent"],
            "error: model_name_or_path '/nonexistent': no such folder, and not a Hub id",
        ),
        (["--dataset", "/nonexistent"], "error: dataset: '/nonexistent' is neither a source"),
    ],
)
def test_bad_option_fails_in_one_line_before_writing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["--stage", "baseline", *args], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(message), err
    assert list(tmp_path.iterdir()) == []


def test_data_error_is_reported_before_the_micro_model_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["--stage", "baseline", "--max_length", "5"], capsys)
    assert code == 2
    assert err[-1].startswith("error: dataset 'offline': no rows left of ") and "over_max_length_5" in err[-1]
    assert not (tmp_path / "runs").exists()  # no micro-init folder left behind
