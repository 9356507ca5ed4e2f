"""FSDP2 on 2 CPU processes (gloo): the model under `fully_shard` and every stage through the trainer
equal one process; complete, portable `final/` folders with FULL and SHARDED state dicts; exact resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fsdp_stages_worker import PACKED
from no_wmtp_hf import BLOCK_WMTP_HF
from safetensors.torch import load_file
from train_fixtures import train_args, write_llama, write_marker_dataset, write_mbpp_fixture, write_tiny_model

from wmtp_hf.train.cli import main
from wmtp_hf.train.config import ConfigError
from wmtp_hf.train.stages import build_config

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1] / "helpers"  # the subprocess workers and what they import
MARKER = 7
STAGE_JOBS = ["baseline_full", "baseline_sharded", "lora", "critic", "verifiable", "rho1_live", "rho1_cached",
              "reference"]  # fmt: skip


def env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def torchrun(
    script: Path, *args: str, timeout: int = 300, cwd: Path | None = None, **extra_env: str
) -> subprocess.CompletedProcess:
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env={**env(), **extra_env}, timeout=timeout,
                          cwd=cwd, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory, tiny_tokenizer):
    """Every stage in one process and under FSDP2 on two (tests/helpers/fsdp_stages_worker.py): (one, two)."""
    root = tmp_path_factory.mktemp("fsdp")
    fx = root / "fx"
    write_tiny_model(fx / "model", tiny_tokenizer)
    write_llama(fx / "llama", tiny_tokenizer)
    write_marker_dataset(
        fx / "marker", len(tiny_tokenizer), MARKER, n_problems=24, eos=tiny_tokenizer.eos_token_id
    )
    one, two = root / "one", root / "two"
    one.mkdir(), two.mkdir()
    run_env = {**env(), "WMTP_HF_CACHE": str(root / "cache")}
    single = subprocess.run([sys.executable, str(TESTS / "fsdp_stages_worker.py"), str(fx), str(one)],
                            capture_output=True, text=True, env={**run_env, "MLFLOW_TRACKING_URI": f"sqlite:///{one}/mlflow.db"},
                            cwd=one, timeout=300, check=False)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    double = torchrun(
        TESTS / "fsdp_stages_worker.py", str(fx), str(two), "--fsdp", WMTP_HF_CACHE=str(root / "cache"),
        cwd=two, MLFLOW_TRACKING_URI=f"sqlite:///{two}/mlflow.db",
    )  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]
    assert "token-weight page not logged" not in double.stderr, double.stderr[-3000:]
    return one, two, fx


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    final = run / "final"
    name = (
        "adapter_model.safetensors"
        if (final / "adapter_model.safetensors").is_file()
        else "model.safetensors"
    )
    return load_file(str(final / name))


def assert_close_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0, msg=key)


def test_fully_shard_model_equals_one_process(tmp_path):
    proc = torchrun(TESTS / "fsdp_model_worker.py", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads((tmp_path / "model_check.json").read_text())
    assert check["grad_max"] > 1e-2 and check["grad_diff"] < 1e-5  # step-1 full gradients
    assert check["weight_change"] > 1e-3 and check["weight_diff"] < 1e-5  # after 3 AdamW steps
    assert check["before_load_diff"] > 1e-2  # the restored model started elsewhere ...
    assert check["resumed_diff"] < 1e-7  # ... and is identical after the sharded load and 2 more steps
    # A full-state-dict save gathers into CPU memory on process 0; process 1 holds none of the gathered model.
    assert check["gathered_elements_rank0"] == check["parameters"]
    assert check["gathered_devices_rank0"] == ["cpu"]
    assert check["gathered_elements_rank1"] == 0
    # With a dtype (a bf16 run's final/), the weights are the fp32 master cast, and config.json says so.
    assert check["bf16_dtypes"] == ["torch.bfloat16"] and check["bf16_config_dtype"] == "bfloat16"
    assert check["bf16_equal_cast"] is True
    # A FULL checkpoint loaded into an already sharded model (accelerate's FSDP2 resume) is exact.
    assert check["full_before_load_diff"] > 1e-2 and check["full_load_diff"] == 0
    # Under FSDP's activation checkpointing the save has the plain names and the same training.
    assert check["ac_vs_plain_diff"] < 1e-5


@pytest.mark.parametrize("job", STAGE_JOBS)
def test_stage_under_fsdp2_equals_one_process(stage_runs, job):
    one, two, fx = stage_runs
    summary = json.loads((two / job / "run_summary.json").read_text())
    assert summary["distributed"] == {"mode": "fsdp2", "world_size": 2, "sharded_parameters": True}
    assert json.loads((one / job / "run_summary.json").read_text())["distributed"]["mode"] == "single"
    assert summary["stage"] == (
        "baseline" if job in ("baseline_full", "baseline_sharded", "lora") else job.split("_")[0]
    )
    assert summary["steps"] > 0 and summary["final_loss"] > 0
    assert_close_weights(one / job, two / job, atol=1e-5)
    if job != "lora":  # the weights moved, so equal weights are equal training, not an untouched start
        start = load_file(str(fx / ("llama" if job == "reference" else "model") / "model.safetensors"))
        trained = final_weights(two / job)
        assert max((trained[k] - start[k]).abs().max().item() for k in start if k in trained) > 1e-3


def test_head_warmup_under_fsdp2_freezes_all_but_the_extra_heads(stage_runs):
    """Two warm-up steps (heads at their own head_learning_rate), one process and FSDP2 on two: everything
    outside the extra heads is bit-identical to the start (sharded parameters without a gradient are not
    stepped), the extra heads moved alike."""
    one, two, fx = stage_runs
    start = load_file(str(fx / "model" / "model.safetensors"))
    for run in (one, two):
        trained = final_weights(run / "head_warmup")
        heads = [k for k in start if ".extra_heads." in k]
        assert heads and all(not torch.equal(trained[k], start[k]) for k in heads), run
        assert all(torch.equal(trained[k], start[k]) for k in start if k not in heads), run
    # The heads ran at head_learning_rate 0.01, ten times the other jobs' rate: Adam's steps on near-zero
    # gradients scale the last-bit differences of the reduced gradients accordingly (measured 3e-5).
    assert_close_weights(one / "head_warmup", two / "head_warmup", atol=1e-4)


@pytest.mark.parametrize("job", PACKED)
def test_packed_stage_under_fsdp2_equals_the_padded_one_process_run(stage_runs, job):
    one, two, _ = stage_runs
    packed = json.loads((two / f"{job}_packed" / "run_summary.json").read_text())
    padded = json.loads((one / job / "run_summary.json").read_text())
    assert packed["distributed"]["mode"] == "fsdp2" and packed["packing"] and not padded["packing"]
    assert packed["tokens"] == {"non_padding": padded["tokens"]["non_padding"], "padding": 0}
    assert padded["tokens"]["padding"] > 0
    assert_close_weights(one / job, two / f"{job}_packed", atol=1e-5)


@pytest.mark.parametrize("kind", ["full", "sharded"])
def test_resume_under_fsdp2_is_exact(stage_runs, kind):
    _, two, _ = stage_runs
    checkpoint = two / f"baseline_{kind}" / "checkpoint-2"
    sharded_files = (
        (checkpoint / "pytorch_model_fsdp_0").is_dir(),
        (checkpoint / "model.safetensors").is_file(),
    )
    assert sharded_files == ((True, False) if kind == "sharded" else (False, True))
    assert_close_weights(two / f"baseline_{kind}", two / f"resume_{kind}", atol=1e-7)


def test_full_saves_gather_on_process_0_only(stage_runs):
    """Every full-state-dict gather of the trainer's saves (final/, FULL checkpoints' model and optimizer)
    leaves the whole state in CPU memory on process 0 and nothing on process 1."""
    _, two, _ = stage_runs
    ranks = [json.loads((two / f"gathered_rank{r}.json").read_text()) for r in (0, 1)]
    assert [(g["job"], g["kind"]) for g in ranks[0]] == [(g["job"], g["kind"]) for g in ranks[1]]
    full_job = [(g0, g1) for g0, g1 in zip(*ranks, strict=True) if g0["job"] == "baseline_full"]
    kinds = [g0["kind"] for g0, _ in full_job]
    assert kinds.count("model") == 3 and kinds.count("optimizer") == 2  # checkpoint-2, checkpoint-4, final/
    parameters = json.loads((two / "baseline_full" / "run_summary.json").read_text())["parameters"]
    for g0, g1 in full_job:
        assert g1["elements"] == 0, g1
        assert g0["devices"] == ["cpu"] and g0["elements"] >= parameters  # AdamW: two moments per weight
    assert all(g["elements"] == 0 for g in ranks[1])  # every stage's final/ too


LOAD_SCRIPT = (
    BLOCK_WMTP_HF
    + """
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
saved = load_file(folder + "/model.safetensors")
state = model.state_dict()
assert all(torch.equal(state[k], v) for k, v in saved.items()), "weights differ from the file"
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__}))
"""
)


@pytest.mark.parametrize("job", ["baseline_full", "baseline_sharded", "verifiable"])
def test_final_folder_under_fsdp2_loads_without_wmtp_hf(stage_runs, job, tmp_path):
    _, two, _ = stage_runs
    final = two / job / "final"
    config = json.loads((final / "config.json").read_text())
    assert all(
        v.split(".")[0] in ("modeling_wmtp", "configuration_wmtp") for v in config["auto_map"].values()
    )
    assert not [p.name for p in final.glob("*.py") if "fsdp" in p.name.lower()]
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), str(final)], capture_output=True, text=True,
                          cwd=tmp_path, env=clean_env, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["class"] == "WmtpForMultiTokenPrediction" and "wmtp_hf" not in loaded["module"]


def test_fsdp_cpu_config_holds_only_distributed_settings():
    values = yaml.safe_load((REPO / "configs" / "fsdp_cpu.yaml").read_text())
    assert set(values) == {"use_cpu", "fsdp", "fsdp_config"}
    assert values["fsdp_config"]["version"] == 2
    assert "transformer_layer_cls_to_wrap" not in values["fsdp_config"]  # each model's _no_split_modules


def test_fsdp_where_it_cannot_run_stops_with_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["--stage", "critic", "--config", str(REPO / "configs/critic.yaml"), "--config",
            str(REPO / "configs/fsdp_cpu.yaml"), "--output-dir", str(tmp_path), "--dry-run"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torchrun --nproc_per_node 2" in err, err
    monkeypatch.setenv("WORLD_SIZE", "2")
    fsdp = {"fsdp": "full_shard auto_wrap", "use_cpu": True, "output_dir": str(tmp_path)}
    for extra, words in (({"fsdp_config": {"version": 1}}, "only FSDP2"), ({"bf16": True}, "float32"),
                         ({"fsdp_config": {"state_dict_type": "LOCAL"}}, "state_dict_type"),
                         ({"fsdp_config": {"sync_module_states": True}}, "sync_module_states")):  # fmt: skip
        with pytest.raises(ConfigError, match=words):
            build_config("baseline", None, {**fsdp, **extra})


def test_critic_with_an_empty_held_out_split_is_one_line(tmp_path, tiny_tokenizer, capsys):
    from train_fixtures import write_mbpp_fixture

    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl")  # train rows only: the 'validation' split is empty
    argv = ["--stage", "critic", "--model", str(model), "--dataset", "mbpp", "--dataset_path", str(data),
            "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--report_to", "none"]  # fmt: skip
    capsys.readouterr()  # the fixtures' progress bars
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "split 'validation' has no rows" in errors[0] and "eval_split" in errors[0], (
        errors
    )


def test_token_weight_page_is_computed_under_fsdp2(stage_runs):
    """rho1 with MLflow on logs its token-weight page (a direct forward of the sharded model) in both runs."""
    one, two, _ = stage_runs
    for run in (one, two):
        pages = list(run.rglob("inspect/*.html"))  # MLflow's artifact store, in the run's working folder
        assert pages, f"no token-weight page logged by the rho1 run under {run}"


DISTRIBUTED_STATE_SCRIPT = """
from wmtp_hf.train.stages import build_config
from wmtp_hf.train.stages.rho1 import micro_reference_key
config = build_config("rho1", [{config!r}], {{"output_dir": {out!r}}})
before = (config.world_size, str(config.distributed_state.distributed_type))
micro_reference_key(0)  # the default reference's cache key, computed before the micro reference is found
after = (config.world_size, str(config.distributed_state.distributed_type))
assert before == after == (2, "DistributedType.MULTI_CPU"), (before, after)
"""


def test_default_reference_lookup_keeps_two_processes(tmp_path):
    """Looking up rho1's default micro reference must not reset accelerate's state to one process (it did:
    the key built a second `TrainingArguments`, so rho1 under FSDP2 reported and ran as world size 1)."""
    script = tmp_path / "state.py"
    script.write_text(
        DISTRIBUTED_STATE_SCRIPT.format(config=str(REPO / "configs/fsdp_cpu.yaml"), out=str(tmp_path / "out"))
    )
    proc = torchrun(script, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_gguf_model_converts_once_and_saves_tied(tmp_path):
    """Both processes name the same GGUF file (a tied LLaMA): one converts it (the other waits on the
    lock); the trained model's tied matrix is saved once and loads tied."""
    from gguf_fixtures import write_tiny_gguf
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    write_tiny_gguf(tmp_path / "tiny.gguf")
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl", n=8)
    argv = train_args(tmp_path / "tiny.gguf", data, tmp_path / "run", **{"max-steps": 1},
                      per_device_train_batch_size=2, max_length=1024)  # fmt: skip
    cli = [*argv, "--config", str(REPO / "configs/fsdp_cpu.yaml")]
    proc = torchrun(Path("-m"), "wmtp_hf.train", *cli, cwd=tmp_path, WMTP_HF_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("wmtp_hf: converting tiny.gguf") == 1
    with safe_open(str(tmp_path / "run" / "final" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert model.lm_head.weight is model.model.embed_tokens.weight
