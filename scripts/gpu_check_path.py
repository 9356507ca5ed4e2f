"""The real training path for scripts/gpu_check.py: rho1 with a reference through `python -m wmtp_hf.train`
as a team launches it, with a SHARDED checkpoint, a resume from it, and `final/` loaded with
`trust_remote_code` in a Python that cannot import `wmtp_hf`.

On GPUs: `accelerate launch --config_file accelerate_configs/fsdp_4xa100.yaml --num_processes <GPUs>` in
bf16 (accelerate's FSDP2 plugin). On CPU (`--tiny`): `torchrun --nproc_per_node 2` with
configs/fsdp_cpu.yaml in float32 (the project's own FSDP2; accelerate never gives FSDP on CPU).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARDED = "{version: 2, state_dict_type: SHARDED_STATE_DICT}"

LOAD_FINAL = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "wmtp_hf" or name.startswith("wmtp_hf."):
            raise ImportError("wmtp_hf is blocked: final/ must load with transformers alone")
sys.meta_path.insert(0, Block())
import torch
from transformers import AutoModelForCausalLM
folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
device = "cuda" if torch.cuda.is_available() else "cpu"
model = model.to(device).eval()
ids = torch.tensor([[1, 5, 9, 13]], device=device)
out = model.generate(ids, max_new_tokens=4, do_sample=False)
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__,
                  "dtype": str(model.dtype).removeprefix("torch."), "generated": out.shape[1] - ids.shape[1]}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_models(size: dict, root: Path) -> tuple[Path, Path]:
    """A WMTP policy and a smaller LLaMA reference from configs (no Hub), sharing the micro tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction
    from wmtp_hf.micro import build_micro_tokenizer

    tokenizer = build_micro_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    torch.manual_seed(0)
    policy = WmtpForMultiTokenPrediction(
        WmtpConfig(vocab_size=size["vocab"], hidden_size=size["hidden"], intermediate_size=size["intermediate"],
                   num_hidden_layers=size["trunk"] + size["heads"], n_future_tokens=size["heads"],
                   num_attention_heads=size["attention_heads"], num_key_value_heads=size["attention_heads"],
                   max_position_embeddings=2048, **ids)
    )  # fmt: skip
    reference = LlamaForCausalLM(
        LlamaConfig(vocab_size=size["vocab"], hidden_size=size["ref_hidden"], intermediate_size=size["ref_intermediate"],
                    num_hidden_layers=size["ref_layers"], num_attention_heads=size["attention_heads"],
                    max_position_embeddings=2048, **ids)
    )  # fmt: skip
    for model, name in ((policy, "policy"), (reference, "reference")):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "policy", root / "reference"


def launch_command(device: torch.device) -> tuple[list[str], str, int]:
    """(launcher argv up to the module's arguments, its name, processes)."""
    if device.type == "cuda":
        processes = torch.cuda.device_count()
        return ([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                 str(REPO / "accelerate_configs/fsdp_4xa100.yaml"), "--num_processes", str(processes),
                 "--main_process_port", str(free_port()), "-m", "wmtp_hf.train", "--bf16", "true"],
                "accelerate launch (accelerate_configs/fsdp_4xa100.yaml)", processes)  # fmt: skip
    return ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(free_port()), "-m", "wmtp_hf.train", "--config", str(REPO / "configs/fsdp_cpu.yaml"),
             "--fsdp_config", SHARDED], "torchrun --nproc_per_node 2 (configs/fsdp_cpu.yaml)", 2)  # fmt: skip


def train(launcher: list[str], options: dict[str, Any], env: dict[str, str], extra: list[str]) -> float:
    argv = [*launcher, "--stage", "rho1"]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    start = time.perf_counter()
    proc = subprocess.run([*argv, *extra], capture_output=True, text=True, env=env, check=False, timeout=420)
    if proc.returncode != 0:
        raise RuntimeError(f"training exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    return round(time.perf_counter() - start, 1)


def step_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def load_final(final: Path) -> dict[str, Any]:
    """`final/` loaded by transformers alone (`wmtp_hf` blocked, no PYTHONPATH), then 4 greedy tokens."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", LOAD_FINAL, str(final)], capture_output=True, text=True,
                          env=env, cwd=final.parent, check=False, timeout=300)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"final/ does not load with trust_remote_code: {proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_path(size: dict, device: torch.device, root: Path) -> dict[str, Any]:
    """Train, checkpoint (sharded), resume, and load `final/`; raises when any of it is not as it should be."""
    path = size["path"]
    policy, reference = write_models(path, root)
    launcher, name, processes = launch_command(device)
    steps, half = path["steps"], path["steps"] // 2
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "WMTP_HF_CACHE": str(root / "cache"), "TOKENIZERS_PARALLELISM": "false",
           **({} if device.type == "cuda" else {"OMP_NUM_THREADS": "1"})}  # fmt: skip
    options = {"model": policy, "reference_model": reference, "max-steps": steps, "save_steps": half,
               "per_device_train_batch_size": path["batch"], "max_length": path["max_length"], "report_to": "none",
               "logging_steps": 1, "learning_rate": 1e-4, "warmup_steps": 0, "seed": 0}  # fmt: skip
    out, resumed = root / "run", root / "resumed"
    result: dict[str, Any] = {"launcher": name, "processes": processes}
    result["train_s"] = train(launcher, {**options, "output-dir": out}, env, [])
    summary = json.loads((out / "run_summary.json").read_text())
    result["distributed"], result["tokens_per_second"] = summary["distributed"], summary["tokens_per_second"]
    expected = {"mode": "fsdp2", "world_size": processes, "sharded_parameters": True}
    if summary["distributed"] != expected:
        raise RuntimeError(f"ran as {summary['distributed']}, expected {expected}")
    checkpoint = out / f"checkpoint-{half}"
    result["sharded_checkpoint"] = (checkpoint / "pytorch_model_fsdp_0").is_dir() and not any(
        checkpoint.glob("*.safetensors")
    )
    if not result["sharded_checkpoint"]:
        raise RuntimeError(
            f"{checkpoint} is not a sharded checkpoint: {sorted(p.name for p in checkpoint.iterdir())}"
        )
    result["resume_s"] = train(
        launcher, {**options, "output-dir": resumed}, env, ["--resume", str(checkpoint)]
    )
    losses, again = step_losses(out), step_losses(resumed)  # the resumed log starts with the checkpoint's
    after = range(half + 1, steps + 1)
    if (
        not set(after) <= set(again)
        or json.loads((resumed / "run_summary.json").read_text())["steps"] != steps
    ):
        raise RuntimeError(f"the resumed run logged steps {sorted(again)}, expected {half + 1}..{steps}")
    result["losses"] = [round(losses[s], 4) for s in sorted(losses)]
    result["resume_max_loss_diff"] = max(abs(losses[s] - again[s]) for s in after)
    if result["resume_max_loss_diff"] > (2e-2 if device.type == "cuda" else 1e-4):
        raise RuntimeError(
            f"resumed losses differ by {result['resume_max_loss_diff']:.3g} from the uninterrupted run"
        )
    config = json.loads((out / "final" / "config.json").read_text())
    result["final"] = {"config_dtype": config.get("dtype"), **load_final(out / "final")}
    want = "bfloat16" if device.type == "cuda" else "float32"
    if (result["final"]["config_dtype"], result["final"]["dtype"]) != (want, want):
        raise RuntimeError(f"final/ is {result['final']}, expected {want} (the dtype the run trained in)")
    if result["final"]["class"] != "WmtpForMultiTokenPrediction" or "wmtp_hf" in result["final"]["module"]:
        raise RuntimeError(f"final/ loaded as {result['final']['module']}.{result['final']['class']}")
    return result
