"""PEFT LoRA for every stage: options, what trains, step-0 loss, adapter + merged outputs, resume, 2 processes,
publishing an adapter with its base model."""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from hub_fixtures import FakeHub, use_hub_cache, write_hub_snapshot
from huggingface_hub import ModelCard
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file
from stage_fixtures import MARKER, stage_args
from train_fixtures import log_losses, write_llama, write_marker_dataset, write_tiny_model
from transformers import AutoModelForCausalLM

from wmtp_hf.data import WmtpDataCollator
from wmtp_hf.publish import main as publish_main
from wmtp_hf.train.cli import main
from wmtp_hf.train.components import load_model, load_tokenizer
from wmtp_hf.train.config import ConfigError
from wmtp_hf.train.lora import wrap_with_lora
from wmtp_hf.train.stages import STAGE_TRAINERS, build_config

PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
TOKENS = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(1))
LORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}


def write_critic_output(folder, model_dir, tokenizer):
    """The tiny model with a (seeded) value head marked as critic-trained: a verifiable stage's start."""
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_value_head=True)
    model.config.value_head_stage = "critic"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("lora")
    model = write_tiny_model(root / "model", tiny_tokenizer)
    data = write_marker_dataset(root / "marker", len(tiny_tokenizer), MARKER, n_problems=12,
                                eos=tiny_tokenizer.eos_token_id)  # fmt: skip
    return {"root": root, "model": model, "data": data, "critic": write_critic_output(root / "critic", model, tiny_tokenizer),
            "llama": write_llama(root / "llama", tiny_tokenizer, seed=0)}  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(env):
    """One verifiable LoRA run (3 steps, a checkpoint at 2, merged model) shared by several tests."""
    out = env["root"] / "run"
    argv = stage_args("verifiable", env["critic"], env["data"], out, **{"max-steps": 3}, save_steps=2,
                      merge_lora=True, **LORA)  # fmt: skip
    assert main(argv) == 0
    return out


def test_lora_options_are_checked(env, capsys):
    bad = [({"lora_r": 0}, "lora_r: expected a positive integer, got 0"),
           ({"lora_dropout": 1.0}, "lora_dropout: expected a number in [0, 1), got 1.0"),
           ({"lora_target_modules": ["all-linear"]}, "lora_target_modules: 'all-linear' is not allowed"),
           ({"lora_target_modules": ["value_head"]}, "lora_target_modules: 'value_head' is not allowed"),
           ({"lora_target_modules": "q_proj"}, "key 'lora_target_modules' expects list[str], got str"),
           ({"merge_lora": True}, "merge_lora: needs use_peft: true")]  # fmt: skip
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_config("baseline", None, overrides)
    checks = [("critic", {}, "use_peft: the critic trains only the value head unless unfreeze_last_n_layers > 0"),
              ("baseline", {"lora_target_modules": "[q_proj,qkv]"},
               "lora_target_modules: no linear layer named 'qkv' in the blocks this stage trains; available: down_proj, "
               "gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj")]  # fmt: skip
    for stage, overrides, message in checks:
        argv = stage_args(stage, env["model"], env["data"], env["root"] / "dry", use_peft=True, **overrides)
        assert main([*argv, "--dry-run"]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), errors


def stage_setup(env, stage):
    start = {"verifiable": env["critic"], "reference": env["llama"]}.get(stage, env["model"])
    options = {"critic": {"unfreeze_last_n_layers": 1}, "rho1": {"reference_model": str(env["llama"])}}
    config = build_config(stage, None, {"model_name_or_path": str(start), "output_dir": str(env["root"] / stage),
                                        "report_to": "none", "eval_strategy": "no", **LORA,
                                        **options.get(stage, {})})  # fmt: skip
    return str(start), config


@pytest.mark.parametrize("stage", ["baseline", "critic", "verifiable", "rho1", "reference"])
def test_every_stage_starts_at_the_base_loss_and_trains_only_adapters(env, stage):
    start, config = stage_setup(env, stage)
    trainer_cls = STAGE_TRAINERS[stage]
    tokenizer = load_tokenizer(start)
    base = trainer_cls.load_model(config, start, tokenizer)
    # (the critic's base gains a value head, so its adapter base is written to lora-base: let it write)
    model = wrap_with_lora(
        copy.deepcopy(base), config, trainer_cls, start, tokenizer, dry_run=stage != "critic"
    )
    rows = datasets.load_from_disk(str(env["data"] / "train")).select(range(6))
    collator = WmtpDataCollator(tokenizer)
    extra = {"reference": config.reference_model} if stage == "rho1" else {}
    trainer = trainer_cls(model=model, args=config, train_dataset=rows, data_collator=collator, **extra)
    batch = collator(list(rows))
    counts = trainer._get_num_items_in_batch([batch], torch.device("cpu")) if stage != "reference" else None
    with torch.no_grad():
        base_loss = trainer.compute_loss(base, batch, num_items_in_batch=counts)
        lora_loss = trainer.compute_loss(model, batch, num_items_in_batch=counts)
    torch.testing.assert_close(lora_loss, base_loss, atol=1e-6, rtol=0)  # lora_B starts at zero
    # the adapter's base: the start folder, or (the critic adds a value head) the model saved as lora-base
    expected_base = env["root"] / stage / "lora-base" if stage == "critic" else Path(start)
    assert model.peft_config["default"].base_model_name_or_path == str(expected_base.resolve())
    if stage == "critic":
        saved = AutoModelForCausalLM.from_pretrained(expected_base)
        assert saved.value_head is not None and saved.config.value_head_stage == "critic"
        assert all(torch.equal(saved.state_dict()[k], v) for k, v in base.state_dict().items())
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_modules() if n.endswith(".lora_A")}
    blocks = ["base_model.model.model.layers.1."] if stage == "critic" else ["base_model.model.model.layers.",
                                                                               "base_model.model.model.extra_heads."]  # fmt: skip
    expected = {f"base_model.model.{n}" for n, m in base.named_modules()
                if n.rsplit(".", 1)[-1] in PROJECTIONS and any(f"base_model.model.{n}".startswith(b) for b in blocks)}  # fmt: skip
    assert adapted == expected and expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    value = {"base_model.model.value_head.modules_to_save.default.weight",
             "base_model.model.value_head.modules_to_save.default.bias"}  # fmt: skip
    assert value <= trainable if stage in ("critic", "verifiable") else not (value & trainable)
    assert all(".lora_" in n for n in trainable - value)
    if stage == "rho1":
        assert not any("lora" in n for n, _ in trainer.ref_model.named_modules())


def adapter_weights(out):
    return load_file(str(out / "final" / "adapter_model.safetensors"))


def test_lora_run_writes_the_adapter_and_the_merged_model(env, lora_run):
    final = lora_run / "final"
    assert sorted(p.name for p in final.iterdir()) == ["README.md", "adapter_config.json",
        "adapter_model.safetensors", "merged", "tokenizer.json", "tokenizer_config.json", "trained_problems.json",
        "training_args.bin"]  # fmt: skip
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(env["critic"].resolve())
    assert adapter_config["modules_to_save"] == ["value_head"] and adapter_config["task_type"] == "CAUSAL_LM"
    card = ModelCard.load(final / "README.md")
    assert (
        card.data.library_name == "peft"
        and "lora" in card.data.tags
        and "AutoPeftModelForCausalLM" in card.text
    )
    # Only the LoRA weights and the value head changed; the base weights under the adapter are the start's.
    start = load_file(str(env["critic"] / "model.safetensors"))
    adapter = AutoPeftModelForCausalLM.from_pretrained(str(final)).eval()
    state = adapter.state_dict()
    for name, value in start.items():
        module, leaf = name.rsplit(".", 1)
        key = f"base_model.model.{module}.base_layer.{leaf}"
        key = key if key in state else f"base_model.model.{name}"
        if name.startswith("value_head."):
            key = f"base_model.model.value_head.original_module.{leaf}"
        assert torch.equal(state[key], value), name
    trained_value = state["base_model.model.value_head.modules_to_save.default.weight"]
    assert not torch.equal(trained_value, start["value_head.weight"])
    assert all(v.abs().sum() > 0 for k, v in adapter_weights(lora_run).items() if "lora_B" in k)
    # The merged folder is a normal WMTP model whose outputs equal the adapter's.
    merged_dir = final / "merged"
    assert json.loads((merged_dir / "config.json").read_text())["auto_map"]
    assert {"modeling_wmtp.py", "configuration_wmtp.py", "model.safetensors"} <= {
        p.name for p in merged_dir.iterdir()
    }
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert merged.config.value_head_stage == "verifiable"
    with torch.no_grad():
        a, m = adapter(input_ids=TOKENS, return_all_heads=True), merged(TOKENS, return_all_heads=True)
    torch.testing.assert_close(m.mtp_logits, a.mtp_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(m.value, a.value, atol=1e-5, rtol=0)
    merged_state = load_file(str(merged_dir / "model.safetensors"))
    assert torch.equal(merged_state["value_head.weight"], trained_value)
    for name in ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(merged_state[name], start[name]), name
    assert not torch.equal(merged_state["model.layers.0.self_attn.q_proj.weight"],
                           start["model.layers.0.self_attn.q_proj.weight"])  # fmt: skip
    # The adapter folder as a later stage's model_name_or_path: loaded on its base and merged.
    config = build_config("baseline", None, {"model_name_or_path": str(final), "report_to": "none"})
    reloaded = load_model(config, str(final), load_tokenizer(str(final))).state_dict()
    for name, value in merged_state.items():
        torch.testing.assert_close(reloaded[name], value, atol=1e-6, rtol=0, msg=name)


def test_lora_resume_is_exact(env, lora_run, tmp_path):
    resumed = tmp_path / "resumed"
    argv = stage_args("verifiable", env["critic"], env["data"], resumed, **{"max-steps": 3}, save_steps=2,
                      **LORA)  # fmt: skip
    assert main([*argv, "--resume", str(lora_run / "checkpoint-2")]) == 0
    assert log_losses(resumed) == pytest.approx(log_losses(lora_run), abs=1e-6)
    full, again = adapter_weights(lora_run), adapter_weights(resumed)
    assert full.keys() == again.keys()
    for key in full:
        torch.testing.assert_close(again[key], full[key], atol=1e-6, rtol=0, msg=key)


def test_lora_two_processes_equal_one(env, lora_run, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = tmp_path / "two"
    argv = stage_args("verifiable", env["critic"], env["data"], two, **{"max-steps": 3}, save_steps=100,
                      per_device_train_batch_size=2, **LORA)  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), "-m", "wmtp_hf.train", *argv],
        capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert log_losses(two) == pytest.approx(log_losses(lora_run), abs=1e-5)
    one, double = adapter_weights(lora_run), adapter_weights(two)
    for key in one:
        torch.testing.assert_close(double[key], one[key], atol=1e-4, rtol=0, msg=key)


def test_adapter_publishes_with_its_base_model_and_loads_from_the_hub(
    env, lora_run, tmp_path, monkeypatch, capsys
):
    hub = FakeHub().install(monkeypatch)
    final = lora_run / "final"
    assert publish_main(["--model", str(final), "--repo-id", "org/wmtp-lora"]) == 2
    assert "the adapter's base model" in capsys.readouterr().err and hub.calls() == 0
    assert (
        publish_main(["--model", str(final), "--repo-id", "org/wmtp-lora", "--base-model", "org/critic"]) == 0
    )
    (commit,) = hub.commits
    files = commit["files"]
    assert set(files) == {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                          "tokenizer_config.json", "trained_problems.json"}  # fmt: skip
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "org/critic"
    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == "org/critic" and card.data.library_name == "peft"
    assert card.data.wmtp["stage"] == "verifiable" and card.data.wmtp["adapter"] is True
    assert 'AutoPeftModelForCausalLM.from_pretrained("org/wmtp-lora", trust_remote_code=True)' in card.text
    # The published adapter and its base, as a Hub cache, load by Hub id with peft.
    write_hub_snapshot(tmp_path / "hub", "org/critic", env["critic"])
    write_hub_snapshot(tmp_path / "hub", "org/wmtp-lora", files)
    use_hub_cache(monkeypatch, tmp_path / "hub")
    from_hub = AutoPeftModelForCausalLM.from_pretrained("org/wmtp-lora").eval()
    local = AutoPeftModelForCausalLM.from_pretrained(str(final)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            from_hub(input_ids=TOKENS).logits, local(input_ids=TOKENS).logits, atol=0, rtol=0
        )
