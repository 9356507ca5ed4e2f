"""Every file in accelerate_configs/ and configs/fsdp_*.yaml, read by accelerate's and transformers' own
loaders, builds an FSDP plugin that wraps each model's own decoder blocks (WMTP and LLaMA alike)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import prepare_multi_gpu_env
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction
from wmtp_hf.train.config import read_yaml

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = {
    "cpu.yaml": (DistributedType.NO, 1, True),
    "mps.yaml": (DistributedType.NO, 1, False),
    "fsdp_4xa100.yaml": (DistributedType.FSDP, 4, False),
}
TRAINING_FSDP = sorted(p.name for p in (REPO / "configs").glob("fsdp_*.yaml"))


def models() -> dict[str, torch.nn.Module]:
    wmtp = WmtpForMultiTokenPrediction(
        WmtpConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                   num_attention_heads=4, n_future_tokens=3)
    )  # fmt: skip
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4)
    )  # fmt: skip
    return {"WmtpDecoderLayer": wmtp, "LlamaDecoderLayer": llama}


def assert_wraps_decoder_blocks(plugin: FullyShardedDataParallelPlugin) -> None:
    """accelerate's FSDP2 wrap policy for each model selects exactly its decoder blocks (trunk and heads)."""
    for block, model in models().items():
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        wrapped = {type(m).__name__ for m in model.modules() if policy(m)}
        assert wrapped == {block}, (block, wrapped)
        n_blocks = sum(type(m).__name__ == block for m in model.modules())
        assert n_blocks == model.config.num_hidden_layers


def test_accelerate_configs_are_the_known_ones():
    assert sorted(p.name for p in (REPO / "accelerate_configs").glob("*.yaml")) == sorted(ACCELERATE)


@pytest.mark.parametrize("name", sorted(ACCELERATE))
def test_accelerate_config_parses(name):
    config = load_config_from_file(str(REPO / "accelerate_configs" / name))
    assert (config.distributed_type, config.num_processes, config.use_cpu) == ACCELERATE[name]


def test_fsdp_accelerate_config_builds_the_plugin(monkeypatch):
    """What `accelerate launch --config_file accelerate_configs/fsdp_4xa100.yaml` puts in each process's
    environment (accelerate's own launcher code) builds a plugin with no hard-coded wrap class, FSDP's own
    activation checkpointing, sharded checkpoints, and bf16 compute AND gradient reduction."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(REPO / "accelerate_configs/fsdp_4xa100.yaml"), "train.py"]
    )
    _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap is None
    assert plugin.activation_checkpointing is True and "SHARDED" in str(plugin.state_dict_type)
    assert plugin.cpu_ram_efficient_loading is False
    plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])
    policy = plugin.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.bfloat16)
    assert_wraps_decoder_blocks(plugin)


@pytest.mark.parametrize("name", TRAINING_FSDP)
def test_training_fsdp_config_builds_the_plugin(name):
    """transformers' own `TrainingArguments` of each configs/fsdp_*.yaml (its TrainingArguments keys; the
    `inherit` chain resolved) builds the FSDP2 plugin; the 7B ones agree with the accelerate config."""
    values = read_yaml(REPO / "configs" / name)
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    # use_cpu: this CI machine has no GPU, and transformers refuses bf16 without one.
    args = TrainingArguments(**{**{k: v for k, v in values.items() if k in fields}, "use_cpu": True})
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap is None
    assert_wraps_decoder_blocks(plugin)
    if name.startswith("fsdp_7b"):
        assert args.bf16 and not args.activation_checkpointing  # FSDP's own, never the Trainer's as well
        assert plugin.activation_checkpointing is True and "SHARDED" in str(plugin.state_dict_type)
        accelerate = load_config_from_file(str(REPO / "accelerate_configs/fsdp_4xa100.yaml")).fsdp_config
        ours = {k: values["fsdp_config"][k] for k in ("activation_checkpointing", "reshard_after_forward",
                                                       "state_dict_type", "cpu_ram_efficient_loading")}  # fmt: skip
        assert ours == {k: accelerate[f"fsdp_{k}"] for k in ours}
