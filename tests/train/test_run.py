"""Training runs end to end: outputs, gradient accumulation, exact resume, 2-process data parallelism."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_comparisons import KILL_AFTER_SAVE, assert_same_weights, weights
from safetensors.torch import load_file
from train_fixtures import log_losses, train_args, write_mbpp_fixture, write_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from wmtp_hf.train.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def fixtures(tmp_path, tiny_tokenizer):
    return write_tiny_model(tmp_path / "model", tiny_tokenizer), write_mbpp_fixture(tmp_path / "mbpp.jsonl")


def summary_of(output_dir: Path) -> dict:
    return json.loads((output_dir / "run_summary.json").read_text())


def test_run_writes_final_model_card_and_summary(tmp_path, fixtures, capsys):
    model_dir, data = fixtures
    out = tmp_path / "out"
    assert main(train_args(model_dir, data, out)) == 0
    printed = capsys.readouterr().out
    assert "trained stage 'baseline': 4 steps" in printed and str(out / "final") in printed
    final = out / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.n_future_tokens == 2 and len(tokenizer) == model.config.vocab_size
    card = (final / "README.md").read_text()
    assert "\nlibrary_name: transformers\n" in card and "\npipeline_tag: text-generation\n" in card
    assert "multi-token-prediction" in card and "custom_code" in card and "stage | `baseline`" in card
    assert (out / "resolved_config.yaml").is_file()
    losses = log_losses(out)
    assert sorted(losses) == [1, 2, 3, 4] and losses[4] < losses[1]
    initial = load_file(str(model_dir / "model.safetensors"))
    assert any(not torch.equal(initial[k], v) for k, v in weights(out).items())


def test_gradient_accumulation_equals_large_batch(tmp_path, fixtures):
    model_dir, data = fixtures
    common = {"max-steps": 1, "optim": "sgd", "learning_rate": 1.0, "lr_scheduler_type": "constant",
              "max_grad_norm": 0}  # fmt: skip
    big, accumulated = tmp_path / "big", tmp_path / "acc"
    assert main(train_args(model_dir, data, big, per_device_train_batch_size=8, **common)) == 0
    assert main(train_args(model_dir, data, accumulated, per_device_train_batch_size=2,
                           gradient_accumulation_steps=4, **common)) == 0  # fmt: skip
    assert log_losses(big)[1] == pytest.approx(log_losses(accumulated)[1], abs=1e-6)
    # SGD with lr 1: new weights = old weights - gradient, so equal weights mean equal gradients.
    assert_same_weights(big, accumulated, atol=1e-6)
    initial = load_file(str(model_dir / "model.safetensors"))
    assert not torch.equal(initial["lm_head.weight"], weights(big)["lm_head.weight"])


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, fixtures):
    model_dir, data = fixtures
    options = {"max-steps": 6, "save_steps": 2, "per_device_train_batch_size": 3}
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(train_args(model_dir, data, full, **options)) == 0
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_SAVE, *train_args(model_dir, data, killed, **options)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed / "checkpoint-2" / "trainer_state.json").is_file() and not (killed / "final").exists()
    assert main([*train_args(model_dir, data, killed, **options), "--resume"]) == 0
    expected, resumed = log_losses(full), log_losses(killed)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step
    assert_same_weights(full, killed, atol=1e-6)


def test_resume_errors(tmp_path, fixtures, capsys):
    model_dir, data = fixtures
    assert main([*train_args(model_dir, data, tmp_path / "fresh"), "--resume"]) == 2
    assert "--resume: no checkpoint-* folder in" in capsys.readouterr().err
    assert main([*train_args(model_dir, data, tmp_path / "x"), "--resume", str(tmp_path)]) == 2
    assert "is not a checkpoint folder" in capsys.readouterr().err


def test_two_processes_equal_one_process(tmp_path, fixtures):
    model_dir, data = fixtures
    one, two = tmp_path / "one", tmp_path / "two"
    options = {"max-steps": 3}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    single = subprocess.run(
        [sys.executable, "-m", "wmtp_hf.train", *train_args(model_dir, data, one, per_device_train_batch_size=4, **options)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    double = subprocess.run(  # torchrun; `accelerate launch --cpu --num_processes 2` would start one process
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
         "-m", "wmtp_hf.train", *train_args(model_dir, data, two, per_device_train_batch_size=2, **options)],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("trained stage") == 1  # only rank 0 prints the summary
    assert summary_of(two)["distributed"] == {"mode": "ddp", "world_size": 2, "sharded_parameters": False}
    assert summary_of(one)["distributed"]["mode"] == "single"
    losses_one, losses_two = log_losses(one), log_losses(two)
    assert sorted(losses_two) == [1, 2, 3]
    for step in (1, 2, 3):
        assert losses_two[step] == pytest.approx(losses_one[step], abs=1e-5), step
    assert_same_weights(one, two, atol=1e-5)


def test_accelerate_launch_equals_python_module(tmp_path, fixtures):
    model_dir, data = fixtures
    plain, launched = tmp_path / "plain", tmp_path / "launched"
    options = {"max-steps": 2}
    assert main(train_args(model_dir, data, plain, **options)) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "accelerate_configs" / "cpu.yaml"), "-m", "wmtp_hf.train",
         *train_args(model_dir, data, launched, **options)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary_of(launched)["distributed"] == {
        "mode": "single",
        "world_size": 1,
        "sharded_parameters": False,
    }
    assert log_losses(launched) == pytest.approx(log_losses(plain), abs=1e-6)
    assert_same_weights(plain, launched, atol=1e-6)


def test_baseline_leaves_the_value_head_untouched(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "model"
    write_tiny_model(model_dir, tiny_tokenizer)
    with_head = AutoModelForCausalLM.from_pretrained(model_dir, use_value_head=True)
    with_head.save_pretrained(tmp_path / "valued")
    tiny_tokenizer.save_pretrained(tmp_path / "valued")
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl")
    out = tmp_path / "out"
    assert main(train_args(tmp_path / "valued", data, out, weight_decay=0.1)) == 0
    before, after = load_file(str(tmp_path / "valued" / "model.safetensors")), weights(out)
    assert torch.equal(before["value_head.weight"], after["value_head.weight"])
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


def test_training_starts_from_a_plain_llama_checkpoint(tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2)
    )  # fmt: skip
    llama.save_pretrained(tmp_path / "llama")
    tiny_tokenizer.save_pretrained(tmp_path / "llama")
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl")
    out = tmp_path / "out"
    assert main(train_args(tmp_path / "llama", data, out, n_future_tokens=3, **{"max-steps": 2})) == 0
    trained = AutoModelForCausalLM.from_pretrained(out / "final")
    assert trained.config.model_type == "wmtp" and trained.config.n_future_tokens == 3
    assert len(trained.model.layers) == 3 and len(trained.model.extra_heads) == 2


def test_bf16_run_saves_its_final_model_in_bf16(tmp_path, fixtures):
    """final/ keeps the dtype the run computed in: the fp32 master weights (the last checkpoint) cast to
    bf16, and config.json says bfloat16, so `from_pretrained` loads it as bf16."""
    model_dir, data = fixtures
    out = tmp_path / "out"
    assert (
        main(train_args(model_dir, data, out, **{"max-steps": 2}, save_steps=2, bf16="true", use_cpu="true"))
        == 0
    )
    master = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    final = weights(out)
    assert {v.dtype for v in master.values()} == {torch.float32}
    assert final.keys() == master.keys() and {v.dtype for v in final.values()} == {torch.bfloat16}
    assert all(torch.equal(final[k], master[k].to(torch.bfloat16)) for k in final)
    assert json.loads((out / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out / "final").dtype == torch.bfloat16


def test_training_dtype_reads_the_training_arguments_and_the_accelerate_config():
    from types import SimpleNamespace

    from wmtp_hf.train.fsdp import training_dtype

    plain = SimpleNamespace(bf16=False, fp16=False)
    assert training_dtype(plain, "no") is None and training_dtype(plain) is None
    assert training_dtype(plain, "bf16") == torch.bfloat16  # `mixed_precision: bf16` in the accelerate config
    assert training_dtype(SimpleNamespace(bf16=True, fp16=False), "no") == torch.bfloat16
    assert training_dtype(SimpleNamespace(bf16=False, fp16=True), "no") == torch.float16
