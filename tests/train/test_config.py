"""Stage configuration: YAML files, validation errors, CLI errors and --dry-run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wmtp_hf.micro import MICRO_CONFIG
from wmtp_hf.train.cli import parse_overrides
from wmtp_hf.train.config import ConfigError, config_to_dict
from wmtp_hf.train.stages import build_config

REPO = Path(__file__).resolve().parents[2]


def test_built_in_defaults_equal_the_yaml_files():
    built_in = config_to_dict(build_config("baseline"))
    from_files = config_to_dict(build_config("baseline", REPO / "configs" / "baseline.yaml"))
    assert built_in == from_files
    assert built_in["model_name_or_path"] is None and built_in["dataset"] == "offline"
    assert built_in["report_to"] == ["mlflow"] and built_in["train_sampling_strategy"] == "sequential"


def test_micro_yaml_is_a_valid_model_config():
    from wmtp_hf import WmtpConfig

    config = WmtpConfig(**MICRO_CONFIG)
    assert config.n_future_tokens == 4 and config.num_hidden_layers == 8


def test_fsdp_example_config_is_valid():
    """The 7B config's own keys validate (its FSDP part needs GPUs: tests/train/test_accelerate_configs.py builds
    it with transformers' and accelerate's loaders); on CPU, one process, FSDP stops with one line."""
    config = build_config("baseline", REPO / "configs" / "fsdp_7b.yaml", {"bf16": False, "fsdp": ""})
    assert config.gradient_accumulation_steps == 8 and config.max_length == 2048
    with pytest.raises(
        ConfigError, match=r"^fsdp: FSDP on CPU needs several processes: launch with torchrun"
    ):
        build_config("baseline", REPO / "configs" / "fsdp_7b.yaml", {"bf16": False})


def test_precedence_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "inherit: " + str(REPO / "configs" / "baseline.yaml") + "\nlearning_rate: 0.5\nmax_steps: 7\n"
    )
    config = build_config("baseline", path, {"max_steps": 9})
    assert config.learning_rate == 0.5 and config.max_steps == 9 and config.output_dir == "runs/baseline"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "learnin_rate: 0.1\n",
            r"c\.yaml: unknown key 'learnin_rate' for stage 'baseline'; did you mean learning_rate, head_learning_rate\? allowed: model_name_or_path, .*TrainingArguments",
        ),
        ("max_steps: ten\n", r"c\.yaml: key 'max_steps' expects int, got str 'ten'"),
        ("head_weights: [0.5, x]\n", r"c\.yaml: key 'head_weights' expects list\[float\] \| None"),
        ("lr_scheduler_type: wobbly\n", r"c\.yaml: key 'lr_scheduler_type' expects one of linear, cosine"),
        ("max_steps: [1\n", r"c\.yaml: line 2 invalid YAML"),
        ("- a\n- b\n", r"c\.yaml: expected a mapping"),
        ("stage: rho1\n", r"c\.yaml: key 'stage' is 'rho1' but --stage is 'baseline'"),
        ("inherit: missing.yaml\n", r"missing\.yaml: config file not found"),
    ],
)
def test_bad_config_files(tmp_path, text, pattern):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        build_config("baseline", path)
    assert "\n" not in str(info.value)


def test_inherit_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ConfigError, match="'inherit' cycle"):
        build_config("baseline", tmp_path / "a.yaml")


def test_value_checks_of_stage_options():
    with pytest.raises(ConfigError, match="max_length: expected a positive integer"):
        build_config("baseline", overrides={"max_length": 0})
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        build_config("nope")


def test_parse_overrides():
    overrides = parse_overrides(["--learning_rate", "1e-4", "--head-weights=[0.5,0.5]", "--use_cpu", "true"])
    assert overrides == {"learning_rate": "1e-4", "head_weights": [0.5, 0.5], "use_cpu": True}
    config = build_config("baseline", overrides=overrides)  # YAML 1.1 reads 1e-4 as text; floats accept it
    assert config.learning_rate == 1e-4 and config.head_weights == [0.5, 0.5] and config.use_cpu is True
    with pytest.raises(ConfigError, match="option '--max_steps' needs a value"):
        parse_overrides(["--max_steps"])


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wmtp_hf.train", *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_cli_rejects_unknown_option_in_one_line(tmp_path):
    proc = run_cli("--stage", "baseline", "--learning_rat", "0.1", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: command line: unknown key 'learning_rat' for stage 'baseline'; did you mean learning_rate, "
        "head_learning_rate? "
        "allowed: model_name_or_path, n_future_tokens, dataset, dataset_path, dataset_split, prompt_format, "
        "max_length, n_samples, head_weights, recipe, head_warmup_steps, head_learning_rate, head_init, loss_chunk_size, "
        "attn_implementation, packing, use_peft, lora_r, lora_alpha, lora_dropout, lora_target_modules, merge_lora, train_rows, "
        "or any transformers.TrainingArguments field"
    )
    assert not (tmp_path / "runs").exists()


def test_cli_dry_run_checks_everything_and_trains_nothing(tmp_path, tiny_tokenizer):
    from train_fixtures import train_args, write_mbpp_fixture, write_tiny_model

    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl")
    proc = run_cli(*train_args(model, data, tmp_path / "out"), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dry run OK" in proc.stdout and "40 training rows selected of 40" in proc.stdout
    assert not (tmp_path / "out" / "final").exists()
    bad = run_cli(*train_args(model, tmp_path / "nope.jsonl", tmp_path / "out"), "--dry-run", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert (
        bad.stderr.strip().splitlines()[-1]
        == f"error: dataset 'mbpp': {tmp_path / 'nope.jsonl'}: file not found"
    )
