"""Rho-1 and reference stages: exactness at k=1, selection, cached vs live, resume, reference safety, errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from test_train_run import KILL_AFTER_SAVE, assert_same_weights
from test_train_stages import MARKER, stage_args
from train_fixtures import log_losses, write_llama, write_marker_dataset, write_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from wmtp_hf.data import WmtpDataCollator
from wmtp_hf.data.__main__ import main as data_main
from wmtp_hf.losses import mtp_target_mask
from wmtp_hf.train.cli import main
from wmtp_hf.train.stages import Rho1Trainer, build_config
from wmtp_hf.weighting import rho1_keep_counts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def setup(tmp_path, tiny_tokenizer):
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    data = write_marker_dataset(tmp_path / "marker", len(tiny_tokenizer), MARKER, n_problems=24,
                                eos=tiny_tokenizer.eos_token_id)  # fmt: skip
    return model, data, write_llama(tmp_path / "ref", tiny_tokenizer)


def folder_hash(folder) -> str:
    return hashlib.sha256(
        b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())
    ).hexdigest()


def test_k_percent_one_equals_baseline(tmp_path, setup):
    model, data, ref = setup
    common = {"optim": "sgd", "learning_rate": 1.0, "lr_scheduler_type": "constant", "max_grad_norm": 0}
    assert main(stage_args("baseline", model, data, tmp_path / "b", **common)) == 0
    assert (
        main(stage_args("rho1", model, data, tmp_path / "r", k_percent=1.0, reference_model=ref, **common))
        == 0
    )
    assert log_losses(tmp_path / "r") == pytest.approx(log_losses(tmp_path / "b"), abs=1e-6)
    assert_same_weights(
        tmp_path / "b", tmp_path / "r", atol=1e-6
    )  # SGD lr 1: equal weights = equal gradients


def make_trainer(tmp_path, model, ref, k=0.6, dataset=None):
    config = build_config("rho1", None, {"model_name_or_path": str(model), "reference_model": str(ref), "k_percent": k,
                                         "report_to": "none", "output_dir": str(tmp_path / "out")})  # fmt: skip
    policy = AutoModelForCausalLM.from_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    return Rho1Trainer(model=policy, args=config, train_dataset=dataset, data_collator=WmtpDataCollator(tokenizer),
                       reference=str(ref)), policy  # fmt: skip


def test_only_kept_tokens_carry_gradient_and_the_reference_gets_none(tmp_path, setup):
    model, data, ref = setup
    rows = datasets.load_from_disk(str(data / "train")).select(range(8))
    trainer, policy = make_trainer(tmp_path, model, ref, dataset=rows)
    before = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    batch = trainer.data_collator(list(rows))
    counts = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    policy.train()
    loss, outputs = trainer.compute_loss(policy, batch, return_outputs=True, num_items_in_batch=counts)
    outputs.token_losses.retain_grad()
    loss.backward()
    mask = mtp_target_mask(batch["labels"], 2)
    kept = outputs.token_losses.grad != 0
    assert not (kept & ~mask).any()
    per_head = kept.sum(dim=(0, 1))
    assert per_head.tolist() == rho1_keep_counts(mask, 0.6).tolist()
    assert (per_head - 0.6 * mask.sum(dim=(0, 1))).abs().max() <= 1  # within one token per batch
    assert all(p.grad is None and not p.requires_grad for p in trainer.ref_model.parameters())
    assert not trainer.ref_model.training
    after = trainer.ref_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cached_run_equals_live_run_and_stale_cache_is_refused(tmp_path, setup, tiny_tokenizer, capsys):
    model, data, ref = setup
    live, cached = tmp_path / "live", tmp_path / "cached"
    assert main(stage_args("rho1", model, data, live, reference_model=ref)) == 0
    ref_hash = folder_hash(ref)
    assert data_main(["reference-losses", "--dataset", str(data), "--reference", str(ref)]) == 0
    assert main(stage_args("rho1", model, data, cached, reference_model=ref)) == 0
    assert log_losses(cached) == pytest.approx(log_losses(live), abs=1e-5)
    assert folder_hash(ref) == ref_hash  # the reference is never written
    other = write_llama(tmp_path / "other", tiny_tokenizer, seed=5)
    assert main(stage_args("rho1", model, data, tmp_path / "stale", reference_model=other)) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "ref_token_losses were computed with reference" in error[0]


def test_precompute_reference_equals_live(tmp_path, setup, monkeypatch):
    model, data, ref = setup
    monkeypatch.setenv("WMTP_HF_CACHE", str(tmp_path / "cache"))
    assert main(stage_args("rho1", model, data, tmp_path / "live", reference_model=ref)) == 0
    assert (
        main(
            stage_args("rho1", model, data, tmp_path / "pre", reference_model=ref, precompute_reference=True)
        )
        == 0
    )
    assert log_losses(tmp_path / "pre") == pytest.approx(log_losses(tmp_path / "live"), abs=1e-5)
    assert any((tmp_path / "cache" / "reference_losses").iterdir())


def test_resume_after_kill_is_exact(tmp_path, setup):
    model, data, ref = setup
    options = {"max-steps": 4, "save_steps": 2, "reference_model": ref}
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(stage_args("rho1", model, data, full, **options)) == 0
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, *stage_args("rho1", model, data, killed, **options)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert main([*stage_args("rho1", model, data, killed, **options), "--resume"]) == 0
    assert log_losses(killed) == pytest.approx(log_losses(full), abs=1e-6)
    assert_same_weights(full, killed, atol=1e-6)


def test_reference_errors_are_one_line(tmp_path, setup, capsys):
    from wmtp_hf.tokenizer import train_code_tokenizer

    model, data, _ = setup
    assert main(stage_args("rho1", model, data, tmp_path / "a")) == 2
    assert "reference_model: not set" in capsys.readouterr().err
    other_tok = train_code_tokenizer(["x = 1\n", "print('hello world')\n"] * 30, vocab_size=296)
    mismatched = write_llama(tmp_path / "mismatched", other_tok)
    assert main(stage_args("rho1", model, data, tmp_path / "b", reference_model=mismatched)) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert (
        len(error) == 1 and str(mismatched) in error[0] and str(model) in error[0] and "tokenizer" in error[0]
    )
    assert main(stage_args("rho1", model, data, tmp_path / "c", reference_model=tmp_path / "nope")) == 2
    assert "no such folder, and not a Hub id" in capsys.readouterr().err
    assert not any((tmp_path / d / "final").exists() for d in "abc")


def test_reference_stage_trains_a_plain_causal_lm(tmp_path, setup):
    _, data, ref = setup
    out = tmp_path / "reference"
    assert main(stage_args("reference", ref, data, out)) == 0
    trained = AutoModelForCausalLM.from_pretrained(out / "final")
    assert isinstance(trained, LlamaForCausalLM)
    losses = log_losses(out)
    assert losses[3] < losses[1]


def test_micro_reference_is_taken_from_the_cache(tmp_path, setup, monkeypatch, tiny_tokenizer):
    from wmtp_hf.train.stages.rho1 import micro_reference_key, resolve_reference

    monkeypatch.setenv("WMTP_HF_CACHE", str(tmp_path / "cache"))
    cached = write_llama(tmp_path / "cache" / "reference" / micro_reference_key(0), tiny_tokenizer)
    config = build_config("rho1", None, {"report_to": "none", "output_dir": str(tmp_path / "o")})
    assert resolve_reference(config) == str(cached)


@pytest.mark.parametrize("stage", ["critic", "verifiable", "rho1"])
def test_7b_fsdp_configs_pass_dry_run_on_tiny_stand_ins(tmp_path, setup, stage, capsys):
    import json

    from test_data_sources import RECORDS

    model, _, ref = setup
    path = tmp_path / "cc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    if stage == "verifiable":
        critic = AutoModelForCausalLM.from_pretrained(model, use_value_head=True)
        critic.config.value_head_stage = "critic"
        critic.save_pretrained(tmp_path / "critic")
        AutoTokenizer.from_pretrained(model).save_pretrained(tmp_path / "critic")
        model = tmp_path / "critic"
    argv = [
        "--stage",
        stage,
        "--config",
        str(REPO / "configs" / f"fsdp_7b_{stage}.yaml"),
        "--model",
        str(model),
        "--dry-run",
        "--dataset_path",
        str(path),
        "--bf16",
        "false",
        "--fsdp",
        "",  # the configs' FSDP part needs GPUs (tests/test_accelerate_configs.py builds it)
        "--output-dir",
        str(tmp_path / "out"),
        "--eval_split",
        "null",
    ]
    if stage == "rho1":
        argv += ["--reference_model", str(ref)]
    if stage != "critic":
        argv.remove("--eval_split"), argv.remove("null")
    assert main(argv) == 0, capsys.readouterr().err
    assert "dry run OK" in capsys.readouterr().out
