"""The accelerate configs parse, and the FSDP one wraps exactly the model's decoder blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction
from wmtp_hf.modeling_wmtp import WmtpDecoderLayer

CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"


@pytest.mark.parametrize(
    ("name", "kind", "processes", "cpu"),
    [
        ("cpu.yaml", DistributedType.NO, 1, True),
        ("mps.yaml", DistributedType.NO, 1, False),
        ("cpu_2proc_gloo.yaml", DistributedType.MULTI_CPU, 2, True),
        ("fsdp_4xa100.yaml", DistributedType.FSDP, 4, False),
    ],
)
def test_configs_parse(name, kind, processes, cpu):
    config = load_config_from_file(str(CONFIGS / name))
    assert (config.distributed_type, config.num_processes, config.use_cpu) == (kind, processes, cpu)


def test_fsdp_config_wraps_every_decoder_block():
    fsdp = load_config_from_file(str(CONFIGS / "fsdp_4xa100.yaml"))
    assert fsdp.mixed_precision == "bf16"
    options = fsdp.fsdp_config
    assert options["fsdp_version"] == 2 and options["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert options["fsdp_transformer_layer_cls_to_wrap"] == WmtpForMultiTokenPrediction._no_split_modules[0]
    model = WmtpForMultiTokenPrediction(
        WmtpConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                   num_attention_heads=4, n_future_tokens=3)
    )  # fmt: skip
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy=options["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=[options["fsdp_transformer_layer_cls_to_wrap"]],
        state_dict_type=options["fsdp_state_dict_type"],
    )
    plugin.set_auto_wrap_policy(model)
    assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {WmtpDecoderLayer}
    wrapped = [m for m in model.modules() if isinstance(m, WmtpDecoderLayer)]
    assert len(wrapped) == 4, "trunk blocks, head 0 and the extra heads are all wrap units"
