"""Every stage through the project's trainer, one after the other in this process (tests/train/test_fsdp.py).

`python tests/helpers/fsdp_stages_worker.py FIXTURES OUT` runs them in one process;
`torchrun --nproc_per_node 2 tests/helpers/fsdp_stages_worker.py FIXTURES OUT --fsdp` runs them under FSDP2 on CPU
(configs/fsdp_cpu.yaml) with half the per-process batch, so both see the same global batches (rho1, which
selects tokens per micro-batch and process, gets the same micro-batches through gradient accumulation).
Under FSDP2 one packed run per stage follows (`<job>_packed`, `packing: true`), to equal the padded job.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint.state_dict as dcp_state

import wmtp_hf.train.fsdp as fsdp_module
from wmtp_hf.train.cli import resolve, run
from wmtp_hf.train.fsdp import destroy_process_group

REPO = Path(__file__).resolve().parents[2]
SHARDED = "{version: 2, state_dict_type: SHARDED_STATE_DICT}"


def jobs(fx: Path, out: Path) -> list[tuple[str, str, dict, str | None]]:
    """(name, stage, options, resume checkpoint) in run order."""
    llama = fx / "llama"
    return [
        ("baseline_full", "baseline", {"max-steps": 4, "save_steps": 2}, None),
        ("baseline_sharded", "baseline", {"max-steps": 4, "save_steps": 2, "fsdp_config": SHARDED}, None),
        ("resume_full", "baseline", {"max-steps": 4, "save_steps": 2}, str(out / "baseline_full/checkpoint-2")),
        ("resume_sharded", "baseline", {"max-steps": 4, "save_steps": 2, "fsdp_config": SHARDED},
         str(out / "baseline_sharded/checkpoint-2")),
        ("lora", "baseline", {"use_peft": "true", "lora_r": 4, "lora_dropout": 0.0}, None),
        ("critic", "critic", {"unfreeze_last_n_layers": 1, "eval_strategy": "steps", "eval_steps": 3}, None),
        ("verifiable", "verifiable", {"model": out / "critic/final", "normalize": "ema"}, None),
        # MLflow on: the token-weight page (train/inspect_artifact.py) is computed under FSDP2 too.
        ("rho1_live", "rho1", {"reference_model": llama, "report_to": "mlflow"}, None),
        ("rho1_cached", "rho1", {"reference_model": llama, "precompute_reference": "true"}, None),
        ("reference", "reference", {"model": llama}, None),
        # Weight decay on: a frozen parameter that AdamW stepped would move even with a zero gradient.
        ("head_warmup", "baseline", {"max-steps": 2, "head_warmup_steps": 2, "weight_decay": 0.1,
                                     "head_learning_rate": 0.01}, None),
    ]  # fmt: skip


PACKED = ("baseline_full", "lora", "critic", "verifiable", "rho1_live", "reference")  # one per stage


def packed_jobs(fx: Path, out: Path) -> list[tuple[str, str, dict, str | None]]:
    """The `PACKED` jobs again with `packing: true` (no checkpoints, no MLflow)."""
    return [(f"{name}_packed", stage, {**options, "packing": "true", "save_steps": 100, "report_to": "none"}, None)
            for name, stage, options, _ in jobs(fx, out) if name in PACKED]  # fmt: skip


def argv(stage: str, options: dict, fx: Path, out: Path, fsdp: bool) -> list[str]:
    values = {"model": fx / "model", "dataset": fx / "marker", "output-dir": out, "max-steps": 3,
              "per_device_train_batch_size": 2 if fsdp else 4, "report_to": "none", "logging_steps": 1,
              "save_steps": 100, "learning_rate": 1e-3, "warmup_steps": 0, "seed": 0, **options}  # fmt: skip
    if not fsdp:
        values.pop("fsdp_config", None)
        if (
            stage == "rho1"
        ):  # rho1 selects per micro-batch and process: one process sees the same micro-batches
            values.update(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    args = ["--stage", stage] + (["--config", str(REPO / "configs/fsdp_cpu.yaml")] if fsdp else [])
    for key, value in values.items():
        args += [f"--{key}", str(value)]
    return args


# What each full-state-dict save left in this process: job, kind, elements, devices.
GATHERED: list[dict] = []


def record_gathers(job: list[str]) -> None:
    """Wrap the gathers of full-state-dict saves (model: final/ and FULL checkpoints; optimizer: FULL
    checkpoints) to record how many elements of the gathered state this process holds, and where."""

    def note(kind: str, state: dict) -> None:
        tensors = [v for v in _leaves(state) if isinstance(v, torch.Tensor)]
        GATHERED.append({"job": job[0], "kind": kind, "elements": sum(t.numel() for t in tensors),
                         "devices": sorted({t.device.type for t in tensors})})  # fmt: skip

    model_gather, optimizer_gather = fsdp_module.full_model_state_dict, dcp_state.get_optimizer_state_dict

    def full_model_state_dict(model):
        state = model_gather(model)
        note("model", state)
        return state

    def get_optimizer_state_dict(model, optimizers, *, submodules=None, options=None):
        state = optimizer_gather(model, optimizers, submodules=submodules, options=options)
        if options is not None and options.full_state_dict:
            note("optimizer", state)
        return state

    fsdp_module.full_model_state_dict = full_model_state_dict
    dcp_state.get_optimizer_state_dict = get_optimizer_state_dict


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def main() -> None:
    fx, out, fsdp = Path(sys.argv[1]), Path(sys.argv[2]), "--fsdp" in sys.argv
    results, job = {}, [""]
    record_gathers(job)
    for name, stage, options, resume in jobs(fx, out) + (packed_jobs(fx, out) if fsdp else []):
        job[0] = name
        args, config = resolve(argv(stage, options, fx, out / name, fsdp))
        results[name] = run(args.stage, config, resume=resume)
    if config.process_index == 0:
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / f"gathered_rank{config.process_index}.json").write_text(json.dumps(GATHERED))
    destroy_process_group()


if __name__ == "__main__":
    main()
