"""Rho-1 and reference stages: exactness at k=1, selection, cached vs live, resume, reference safety, errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from run_comparisons import KILL_AFTER_SAVE, assert_same_weights
from stage_fixtures import MARKER, stage_args
from train_fixtures import log_losses, write_llama, write_marker_dataset, write_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from wmtp_hf.data import WmtpDataCollator
from wmtp_hf.data.__main__ import main as data_main
from wmtp_hf.losses import mtp_target_mask
from wmtp_hf.train.cli import main
from wmtp_hf.train.stages import Rho1Trainer, build_config
from wmtp_hf.weighting import rho1_keep_counts

REPO = Path(__file__).resolve().parents[3]


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

    from codecontests_records import RECORDS

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
        "",  # the configs' FSDP part needs GPUs (tests/train/test_accelerate_configs.py builds it)
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


def test_cached_and_live_reference_losses_keep_the_same_tokens_even_all_tied(tmp_path, setup, caplog):
    """A row's reference losses used to change in the last bits with the rows batched beside it (about
    4e-6 nats on SmolLM2), so the cached column (scored `reference_batch_size` rows at a time) and the
    live training batch kept different tokens where excess losses tie. Each row is now scored alone: the
    column at any batch size, the live batch in any order and a packed batch are bit-identical, and with
    the start model as the reference (head-0 excess 0 up to float noise) head 0 keeps its first valid
    targets by position, as a naive loop over (excess on the 2^-10 grid, position) says."""
    from wmtp_hf import WmtpForMultiTokenPrediction
    from wmtp_hf.data.packing import padded_view
    from wmtp_hf.reference import compute_reference_column
    from wmtp_hf.weighting import EXCESS_RESOLUTION, rho1_weights

    _, data, ref = setup
    start = tmp_path / "start"  # the reference itself as a 2-head WMTP model: same head-0 predictions
    WmtpForMultiTokenPrediction.from_llama(str(ref), n_future_tokens=2).save_pretrained(start)
    AutoTokenizer.from_pretrained(ref).save_pretrained(start)
    rows = datasets.load_from_disk(str(data / "train")).select(range(8))
    trainer, policy = make_trainer(tmp_path, start, ref, dataset=rows)
    pad = trainer.data_collator.pad_token_id
    cached = {n: compute_reference_column(rows, trainer.ref_model, pad, batch_size=n) for n in (1, 3, 8)}
    assert cached[1] == cached[3] == cached[8]
    order = [5, 2, 7, 0, 1, 6, 3, 4]
    batch = trainer.data_collator([rows[i] for i in order])
    live = trainer.reference_losses(batch)
    for j, i in enumerate(order):
        assert live[j, : len(cached[8][i])].tolist() == cached[8][i]  # bit-identical
    packed = WmtpDataCollator(pad_token_id=pad, packing=True)([rows[i] for i in order])
    assert torch.equal(trainer.reference_losses(padded_view(packed)), live[:, : live.shape[1]])

    cached_batch = {**batch, "ref_token_losses": torch.zeros_like(live)}
    for j, i in enumerate(order):
        cached_batch["ref_token_losses"][j, : len(cached[8][i])] = torch.tensor(cached[8][i])
    with torch.no_grad():
        out = policy(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
    mask = mtp_target_mask(batch["labels"], 2)
    with caplog.at_level("WARNING", logger="wmtp_hf.train.stages.rho1"):
        kept_live = trainer.token_weights(policy, batch, out, mask)
        kept_cached = trainer.token_weights(policy, cached_batch, out, mask)
    assert torch.equal(kept_live, kept_cached)
    excess0 = out.token_losses[..., 0] - torch.cat([live[:, 1:], torch.zeros_like(live[:, :1])], dim=1)
    assert excess0[mask[..., 0]].abs().max() < EXCESS_RESOLUTION / 2  # all tied on the grid
    valid = [i for i, m in enumerate(mask[..., 0].flatten().tolist()) if m]  # naive: first by position
    keep = sorted(valid)[: rho1_keep_counts(mask, 0.6)[0]]
    assert torch.nonzero(kept_live[..., 0].flatten()).flatten().tolist() == keep
    warnings = [r.getMessage() for r in caplog.records if "is the start model" in r.getMessage()]
    assert (
        len(warnings) == 1 and f"reference '{ref}'" in warnings[0] and f"start model '{start}'" in warnings[0]
    )
    # Noise below the grid is a tie, a difference of one grid step is not.
    noise = torch.full_like(live, 1e-5)
    assert torch.equal(rho1_weights(out.token_losses, live + noise, mask, 0.6), kept_live)
    bumped = out.token_losses.clone()
    last = valid[-1]
    bumped.view(-1, 2)[last, 0] += EXCESS_RESOLUTION
    assert rho1_weights(bumped, live, mask, 0.6)[..., 0].flatten()[last] == 1


def test_reference_that_differs_from_the_start_gives_no_warning(tmp_path, setup, caplog):
    model, data, ref = setup
    rows = datasets.load_from_disk(str(data / "train")).select(range(4))
    trainer, policy = make_trainer(tmp_path, model, ref, dataset=rows)
    batch = trainer.data_collator(list(rows))
    with torch.no_grad():
        out = policy(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
    with caplog.at_level("WARNING", logger="wmtp_hf.train.stages.rho1"):
        trainer.token_weights(policy, batch, out, mtp_target_mask(batch["labels"], 2))
    assert not [r for r in caplog.records if "is the start model" in r.getMessage()]
