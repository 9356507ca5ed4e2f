"""The model under `fully_shard` on 2 CPU processes vs the same model in one (tests/train/test_fsdp.py).

`torchrun --nproc_per_node 2 tests/helpers/fsdp_model_worker.py OUT`: every process also trains an unsharded copy
on the whole batch (the 1-process reference); process r's sharded model sees rows [2r, 2r+2). Writes
`OUT/model_check.json` with the largest differences.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction
from wmtp_hf.train.fsdp import (
    full_model_state_dict,
    load_full_model,
    load_optimizer,
    load_sharded_model,
    save_pretrained_gathered,
    save_sharded,
    shard_model,
)

CONFIG = WmtpConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, n_future_tokens=2, loss_chunk_size=16)  # fmt: skip


def model(seed: int) -> WmtpForMultiTokenPrediction:
    torch.manual_seed(seed)
    return WmtpForMultiTokenPrediction(CONFIG)


def loss_sum(m, ids: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the summed token cross-entropies (normalised by the caller)."""
    out = m(input_ids=ids, labels=ids)
    return out.token_losses.sum()


def full(m) -> dict[str, torch.Tensor]:
    state = get_model_state_dict(m, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().clone() for k, v in state.items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batches = [torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(s)) for s in range(5)]
    reference, sharded = model(0), shard_model(model(0), {"WmtpDecoderLayer"})
    opt_ref = torch.optim.AdamW(reference.parameters(), lr=1e-3)
    opt = torch.optim.AdamW(sharded.parameters(), lr=1e-3)
    rows = slice(2 * rank, 2 * rank + 2)
    n_targets = float(batches[0].numel() * CONFIG.n_future_tokens)  # normaliser of the whole batch

    def step(i: int, m, o, ids: torch.Tensor, scale: float) -> None:
        o.zero_grad()
        (loss_sum(m, ids) / n_targets * scale).backward()  # FSDP2 averages gradients over processes
        o.step()

    result = {}
    for i in range(3):
        loss_sum(reference, batches[i]).div(n_targets).backward()
        (loss_sum(sharded, batches[i][rows]) / n_targets * world).backward()
        if i == 0:
            grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters()}
            result["grad_diff"] = max(
                (grads[n] - p.grad).abs().max().item() for n, p in reference.named_parameters()
            )
            result["grad_max"] = max(p.grad.abs().max().item() for p in reference.parameters())
        opt_ref.step(), opt.step(), opt_ref.zero_grad(), opt.zero_grad()
    result["weight_diff"] = max_diff(full(sharded), reference.state_dict())
    result["weight_change"] = max_diff(reference.state_dict(), model(0).state_dict())

    # Sharded save -> load into a differently initialised model -> 2 more steps on both: identical.
    folder = Path(tempfile.mkdtemp()) if rank == 0 else None
    box = [str(folder)]
    dist.broadcast_object_list(box, src=0)
    folder = Path(box[0])
    save_sharded(sharded, opt, folder, full=False, is_main=rank == 0)
    restored = shard_model(model(1), {"WmtpDecoderLayer"})
    opt2 = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    result["before_load_diff"] = max_diff(full(restored), full(sharded))
    load_sharded_model(restored, folder)
    load_optimizer(restored, opt2, folder)
    for i in (3, 4):
        step(i, sharded, opt, batches[i][rows], world)
        step(i, restored, opt2, batches[i][rows], world)
    result["resumed_diff"] = max_diff(full(restored), full(sharded))

    # The final-folder save: gathered in CPU memory on process 0 only; with a dtype, weights and config in it.
    gathered = full_model_state_dict(sharded)
    result[f"gathered_elements_rank{rank}"] = sum(v.numel() for v in gathered.values())
    result[f"gathered_devices_rank{rank}"] = sorted({v.device.type for v in gathered.values()})
    save_pretrained_gathered(sharded, folder / "bf16", is_main=rank == 0, dtype=torch.bfloat16)
    reference_state = full(sharded)  # a collective: every process
    if rank == 0:
        from safetensors.torch import load_file

        saved = load_file(str(folder / "bf16" / "model.safetensors"))
        result["bf16_dtypes"] = sorted({str(v.dtype) for v in saved.values()})
        result["bf16_config_dtype"] = json.loads((folder / "bf16" / "config.json").read_text())["dtype"]
        result["bf16_equal_cast"] = all(
            torch.equal(v, reference_state[k].to(torch.bfloat16)) for k, v in saved.items()
        )
        result["parameters"] = sum(p.numel() for p in reference.parameters())
    # A FULL checkpoint's weights into an already sharded model (accelerate's FSDP2 resume): read by
    # process 0, broadcast.
    save_pretrained_gathered(sharded, folder / "full", is_main=rank == 0)
    dist.barrier()
    loaded = shard_model(model(2), {"WmtpDecoderLayer"})
    result["full_before_load_diff"] = max_diff(full(loaded), reference_state)
    load_full_model(loaded, folder / "full")
    result["full_load_diff"] = max_diff(full(loaded), reference_state)
    # FSDP's own activation checkpointing (accelerate wraps each decoder layer in a CheckpointWrapper before
    # sharding): the gathered save has the model's own key names and loads back exactly.
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    checkpointed = model(0)
    apply_activation_checkpointing(checkpointed, check_fn=lambda m: type(m).__name__ == "WmtpDecoderLayer")
    checkpointed = shard_model(checkpointed, {"CheckpointWrapper"})
    opt3 = torch.optim.AdamW(checkpointed.parameters(), lr=1e-3)
    for i in range(3):
        step(i, checkpointed, opt3, batches[i][rows], world)
    save_pretrained_gathered(checkpointed, folder / "ac", is_main=rank == 0)
    dist.barrier()
    reloaded = shard_model(model(2), {"WmtpDecoderLayer"})
    load_full_model(reloaded, folder / "ac")
    result["ac_vs_plain_diff"] = max_diff(full(reloaded), reference.state_dict())  # both after 3 steps
    # Rank 1's numbers reach rank 0 for the report.
    box = [{k: v for k, v in result.items() if k.endswith("rank1")}]
    dist.broadcast_object_list(box, src=1)
    result.update(box[0])
    if rank == 0:
        (out / "model_check.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
