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


def test_push_to_hub_without_a_hub_is_one_line_before_training(tmp_path, tiny_tokenizer, capsys):
    from train_fixtures import train_args, write_mbpp_fixture, write_tiny_model

    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl")
    out = tmp_path / "out"
    args = train_args(model, data, out, push_to_hub="true", hub_model_id="org/name")
    code, err = run_cli(args, capsys)  # HF_HUB_OFFLINE=1 (conftest): the repo cannot be created
    assert code == 2
    errors = [line for line in err if line.startswith("error:")]  # the rest is progress bars
    assert errors == [err[-1]] and err[-1].startswith(
        "error: push_to_hub: cannot create the Hub repo 'org/name' ("
    )
    assert not (out / "final").exists() and not list(out.glob("checkpoint-*"))
