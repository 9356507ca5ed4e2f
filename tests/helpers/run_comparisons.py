"""Comparing training runs: their final weights equal within a tolerance, and a script that runs a stage and
kills it (SIGKILL) right after its step-2 checkpoint, for the exact-resume tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "final" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(
            wa[key], wb[key], atol=atol, rtol=0, msg=f"{key}: max diff {(wa[key] - wb[key]).abs().max()}"
        )


KILL_AFTER_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    from wmtp_hf.train.cli import resolve, run

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    args, config = resolve(sys.argv[1:])
    run(args.stage, config, callbacks=[KillAfterSave()])
    """
)
