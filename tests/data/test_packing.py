"""Packing (padding-free batches, docs/training.md "Packing"): the packed layout, targets that never cross
an example, and every stage's loss and gradients equal to the padded batch of the same examples and to a
naive loop that runs each example alone."""

from __future__ import annotations

import json
import math

import datasets
import pytest
import torch
from packing_fixtures import LENGTHS, make_features
from train_fixtures import write_llama, write_tiny_model

from wmtp_hf.data import WmtpDataCollator
from wmtp_hf.data.packing import padded_view, unpack
from wmtp_hf.losses import head_targets, packed_segment_ids, reference_token_losses, resolve_head_weights
from wmtp_hf.train.cli import main, resolve
from wmtp_hf.train.components import load_tokenizer
from wmtp_hf.train.lora import wrap_with_lora
from wmtp_hf.train.stages import STAGE_TRAINERS, build_config
from wmtp_hf.weighting import lambda_returns, mc_returns, td_token_weights, value_positions


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("packing")
    model = write_tiny_model(root / "model", tiny_tokenizer, n_future=3)
    critic = write_tiny_model(root / "critic", tiny_tokenizer, n_future=3, seed=1)
    from transformers import AutoModelForCausalLM

    with_head = AutoModelForCausalLM.from_pretrained(critic)
    torch.manual_seed(2)
    with_head.add_value_head()
    torch.nn.init.normal_(with_head.value_head.weight, std=0.5)
    with_head.config.value_head_stage = "critic"
    with_head.save_pretrained(critic)
    llama = write_llama(root / "llama", tiny_tokenizer)
    return {"root": root, "model": model, "critic": critic, "llama": llama, "tokenizer": tiny_tokenizer}


# ------------------------------------------------------------------------------------------ the layout


def test_packed_collator_layout_and_its_padded_view(tiny_tokenizer):
    features = make_features(len(tiny_tokenizer), tiny_tokenizer.eos_token_id, ref=True)
    padded = WmtpDataCollator(tiny_tokenizer)(features)
    packed = WmtpDataCollator(tiny_tokenizer, packing=True, flash_attn_kwargs=True)(features)
    lengths = [len(f["input_ids"]) for f in features]
    assert packed["input_ids"].tolist() == [[t for f in features for t in f["input_ids"]]]
    assert packed["position_ids"].tolist() == [[p for n in lengths for p in range(n)]]
    assert "attention_mask" not in packed and packed["example_lengths"].tolist() == lengths
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert all(packed["labels"][0, s] == -100 for s in starts)  # no next-token target crosses into an example
    bounds = [0, *[sum(lengths[: i + 1]) for i in range(len(lengths))]]
    assert packed["cu_seq_lens_q"].tolist() == bounds and packed["cu_seq_lens_q"].dtype == torch.int32
    assert packed["max_length_q"] == packed["max_length_k"] == max(lengths)
    view = padded_view(packed)
    for key in ("labels", "attention_mask", "ref_token_losses", "reward", "difficulty"):
        assert torch.equal(view[key], padded[key]), key
    assert packed["input_ids"].numel() == int(padded["attention_mask"].sum())


def test_unpack_is_the_padded_layout_and_passes_gradients():
    lengths = torch.tensor([3, 1, 4])
    flat = torch.arange(8.0, requires_grad=True)
    rows = unpack(flat[None], lengths, fill=-1.0)
    assert rows.tolist() == [[0, 1, 2, -1], [3, -1, -1, -1], [4, 5, 6, 7]]
    (rows * torch.arange(12.0).view(3, 4)).sum().backward()
    assert flat.grad.tolist() == [0, 1, 2, 4, 8, 9, 10, 11]


def test_head_targets_never_come_from_another_example():
    lengths = [4, 2, 5]
    labels = torch.tensor([[-100, 11, 12, 13, -100, 21, -100, -100, 31, 32, 33]])
    positions = torch.tensor([[p for n in lengths for p in range(n)]])
    segments = packed_segment_ids(positions)
    assert segments.tolist() == [[0] * 4 + [1] * 2 + [2] * 5]
    got = head_targets(labels, 3, segment_ids=segments)
    example = [i for i, n in enumerate(lengths) for _ in range(n)]
    for t in range(labels.shape[1]):  # the naive loop: head k at t reads t+1+k only inside t's example
        for k in range(3):
            j = t + 1 + k
            want = int(labels[0, j]) if j < labels.shape[1] and example[j] == example[t] else -100
            assert int(got[0, t, k]) == want, (t, k)


# ------------------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("attn", ["sdpa", "eager", "sdpa-block-mask"])
def test_model_packed_equals_each_example_alone_and_the_padded_batch(env, attn, monkeypatch):
    from transformers import AutoModelForCausalLM

    import wmtp_hf.modeling_wmtp as modeling

    if attn == "sdpa-block-mask":  # transformers' own packed path: one row, a block-diagonal mask
        monkeypatch.setattr(modeling, "PER_EXAMPLE_ATTENTION", ())
        attn = "sdpa"
    tok = env["tokenizer"]
    model = AutoModelForCausalLM.from_pretrained(env["critic"], attn_implementation=attn).eval()
    features = make_features(len(tok), tok.eos_token_id)
    padded = WmtpDataCollator(tok)(features)
    packed = WmtpDataCollator(tok, packing=True)(features)
    out = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], labels=packed["labels"])
    lengths = packed["example_lengths"]
    losses, values = unpack(out.token_losses, lengths), unpack(out.value, lengths)
    for i, feature in enumerate(features):  # each example alone: no padding, no neighbour
        alone = WmtpDataCollator(tok)([feature])
        own = model(input_ids=alone["input_ids"], labels=alone["labels"])
        n = len(feature["input_ids"])
        torch.testing.assert_close(losses[i, :n], own.token_losses[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(values[i, :n], own.value[0], atol=1e-5, rtol=0)
        assert not losses[i, n:].any()
    ref = model(
        input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], labels=padded["labels"]
    )
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-6, rtol=0)
    model.zero_grad()
    out.loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model(
        input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], labels=padded["labels"]
    ).loss.backward()
    for name, grad in packed_grads.items():
        torch.testing.assert_close(
            grad, dict(model.named_parameters())[name].grad, atol=1e-5, rtol=0, msg=name
        )


def test_reference_losses_of_a_packed_row_equal_each_example_alone(env):
    from transformers import AutoModelForCausalLM

    tok = env["tokenizer"]
    llama = AutoModelForCausalLM.from_pretrained(env["llama"]).eval()
    features = make_features(len(tok), tok.eos_token_id)
    packed = WmtpDataCollator(tok, packing=True)(features)
    got = reference_token_losses(
        llama, packed["input_ids"], None, packed["labels"], position_ids=packed["position_ids"]
    )
    rows = unpack(got, packed["example_lengths"])
    for i, feature in enumerate(features):
        alone = WmtpDataCollator(tok)([feature])
        want = reference_token_losses(llama, alone["input_ids"], alone["attention_mask"], alone["labels"])[0]
        torch.testing.assert_close(rows[i, : len(want)], want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ every stage


STAGES = {  # name: (stage, start model, options)
    "baseline": ("baseline", "model", {}),
    "baseline_accumulated": ("baseline", "model", {"head_weights": [0.5, 0.3, 0.2]}),
    "lora": ("baseline", "model", {"use_peft": True, "lora_r": 4, "lora_dropout": 0.0}),
    "critic_lambda": ("critic", "model", {"lam": 0.8, "gamma": 0.95, "unfreeze_last_n_layers": 1}),
    "critic_pairwise": ("critic", "model", {"critic_loss": "pairwise", "unfreeze_last_n_layers": 1}),
    "verifiable_gae": ("verifiable", "critic", {"advantage": "gae", "lam": 0.9, "gamma": 0.97}),
    "verifiable_zscore_all": ("verifiable", "critic", {"normalize": "zscore", "policy_on": "all"}),
    "rho1_cached": ("rho1", "model", {"k_percent": 0.5}),
    "rho1_live": ("rho1", "model", {"k_percent": 0.5}),
    "reference": ("reference", "llama", {}),
}


def stage_trainer(env, name: str, packing: bool):
    stage, start, options = STAGES[name]
    tok = env["tokenizer"]
    path = str(env[start])
    overrides = {"model_name_or_path": path, "output_dir": str(env["root"] / f"{name}-{packing}"),
                 "report_to": "none", "eval_strategy": "no", "packing": packing, **options}  # fmt: skip
    if stage == "rho1":
        overrides["reference_model"] = str(env["llama"])
    config = build_config(stage, None, overrides)
    trainer_cls = STAGE_TRAINERS[stage]
    torch.manual_seed(0)
    model = trainer_cls.load_model(config, path, load_tokenizer(path))
    if config.use_peft:
        model = wrap_with_lora(model, config, trainer_cls, path, tok, dry_run=True)
        for n, p in model.named_parameters():  # lora_B starts at 0: move it so every adapter matters
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
    features = make_features(len(tok), tok.eos_token_id, ref=name == "rho1_cached")
    rows = datasets.Dataset.from_list(features)
    extra = {"reference": None if name == "rho1_cached" else str(env["llama"])} if stage == "rho1" else {}
    collator = WmtpDataCollator(tok, packing=packing)
    trainer = trainer_cls(model=model, args=config, train_dataset=rows, data_collator=collator, **extra)
    return trainer, features, collator


def loss_and_grads(trainer, features, collator, micro_batches: int = 1):
    """The stage's loss and gradients of one optimizer step over `features` in `micro_batches` parts."""
    model = trainer.model
    model.train()
    size = len(features) // micro_batches
    batches = [collator(features[i * size : (i + 1) * size]) for i in range(micro_batches)]
    counts = None
    if hasattr(trainer, "window_counts"):
        counts = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    total = 0.0
    weights = []
    if hasattr(trainer, "token_weights"):  # record the token weights the stage computes
        original = trainer.token_weights

        def recording(*args, **kwargs):
            w = original(*args, **kwargs)
            weights.append(w)
            return w

        trainer.token_weights = recording
    for batch in batches:
        loss = trainer.compute_loss(model, batch, num_items_in_batch=counts)
        loss.backward()
        total += float(loss.detach())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return total, grads, weights


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_loss_and_gradients_with_packing_equal_the_padded_batch(env, name):
    micro = 2 if name == "baseline_accumulated" else 1
    results = {}
    for packing in (False, True):
        trainer, features, collator = stage_trainer(env, name, packing)
        results[packing] = loss_and_grads(trainer, features, collator, micro)
    (loss_pad, grads_pad, weights_pad), (loss_pk, grads_pk, weights_pk) = results[False], results[True]
    assert math.isfinite(loss_pad) and loss_pad > 0
    assert abs(loss_pk - loss_pad) <= 1e-5, (loss_pk, loss_pad)
    assert grads_pad.keys() == grads_pk.keys() and grads_pad
    assert max(g.abs().max().item() for g in grads_pad.values()) > 1e-4
    for key, grad in grads_pad.items():
        torch.testing.assert_close(grads_pk[key], grad, atol=1e-5, rtol=0, msg=key)
    for a, b in zip(weights_pad, weights_pk, strict=True):
        if name.startswith("rho1"):  # the top-k picks the same tokens
            assert torch.equal(a > 0, b > 0)
        elif a is not None:
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_critic_evaluation_with_packing_equals_the_padded_one(env):
    per_row = {}
    for packing in (False, True):
        trainer, features, _ = stage_trainer(env, "critic_lambda", packing)
        per_row[packing] = trainer._per_row_eval(datasets.Dataset.from_list(features))
    assert per_row[False].shape == (len(LENGTHS), 10)
    torch.testing.assert_close(per_row[True], per_row[False], atol=1e-5, rtol=0)


def per_example_outputs(model, tok, features, **kwargs):
    """Each example run alone (no padding, no neighbour): its labels and the model outputs."""
    outs = []
    for feature in features:
        batch = WmtpDataCollator(tok)([feature])
        outs.append((batch, model(input_ids=batch["input_ids"], labels=batch["labels"], **kwargs)))
    return outs


@pytest.mark.parametrize("name", ["baseline", "verifiable_gae", "critic_lambda"])
def test_packed_stage_loss_equals_a_naive_per_example_loop(env, name):
    trainer, features, collator = stage_trainer(env, name, packing=True)
    loss, _, _ = loss_and_grads(trainer, features, collator)
    model, tok, args = trainer.model, env["tokenizer"], trainer.args
    n = model.config.n_future_tokens
    alpha = resolve_head_weights(args.head_weights, n)
    sums, counts = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    value_sum, value_count = 0.0, 0
    with torch.no_grad():
        for batch, out in per_example_outputs(model, tok, features):
            labels, reward = batch["labels"], batch["reward"]
            mask = head_targets(labels, n) != -100
            vmask = value_positions(labels)
            if name == "critic_lambda":
                targets = lambda_returns(out.value, reward, vmask, args.gamma, args.lam)
                value_sum += float(((out.value - targets) ** 2 * vmask).sum())
                value_count += int(vmask.sum())
                continue
            weight = torch.ones_like(out.token_losses)
            if name == "verifiable_gae":
                _, w = td_token_weights(out.value, labels, reward, args)
                weight = torch.stack([torch.cat([w[0, 1 + k :], w.new_zeros(1 + k)]) for k in range(n)], -1)[
                    None
                ]
                targets = mc_returns(reward, vmask, args.gamma)
                value_sum += float(((out.value - targets) ** 2 * vmask).sum())
                value_count += int(vmask.sum())
                if reward.item() < 0.5:  # policy_on: correct
                    mask = mask & False
            sums += (out.token_losses * weight * mask).sum(dim=(0, 1)).double()
            counts += mask.sum(dim=(0, 1)).double()
    if name == "critic_lambda":
        want = value_sum / value_count
    else:
        want = float((alpha.double() * sums / counts).sum())
        if name == "verifiable_gae":
            want += args.value_coef * value_sum / value_count
    assert abs(loss - want) <= 1e-5, (loss, want)


# ------------------------------------------------------------------------------------------ a whole run


def test_packed_run_equals_the_padded_run_and_counts_its_tokens(env, tmp_path):
    data = tmp_path / "data"
    tok = env["tokenizer"]
    rows = make_features(len(tok), tok.eos_token_id) * 2
    for row in rows:
        row["length"] = len(row["input_ids"])
    datasets.Dataset.from_list(rows).save_to_disk(str(data / "train"))
    runs = {}
    for packing in ([], ["--packing"]):
        out = tmp_path / ("packed" if packing else "padded")
        argv = ["--stage", "baseline", "--model", str(env["model"]), "--dataset", str(data), "--output-dir",
                str(out), "--max-steps", "3", "--per_device_train_batch_size", "2", "--report_to", "none",
                "--logging_steps", "1", "--save_steps", "2", "--learning_rate", "1e-2", "--warmup_steps", "0",
                *packing]  # fmt: skip
        assert main(argv) == 0
        runs[bool(packing)] = out
    state = {k: json.loads((v / "trainer_state.json").read_text())["log_history"] for k, v in runs.items()}
    losses = {k: [h["loss"] for h in v if "loss" in h] for k, v in state.items()}
    assert len(losses[True]) == 3 and losses[True] == pytest.approx(losses[False], abs=1e-5)
    summaries = {k: json.loads((v / "run_summary.json").read_text()) for k, v in runs.items()}
    # the rows trained, in the baseline's order (correct rows), 2 per batch, 3 batches
    order = [r for r in rows if r["is_correct"]][:6]
    real = sum(len(r["input_ids"]) for r in order)
    padding = sum(
        2 * max(len(a["input_ids"]), len(b["input_ids"]))
        for a, b in zip(order[::2], order[1::2], strict=True)
    )
    assert summaries[False]["tokens"] == {"non_padding": real, "padding": padding - real}
    assert summaries[True]["tokens"] == {"non_padding": real, "padding": 0}
    assert summaries[True]["packing"] is True and summaries[False]["packing"] is False
    # a resumed run continues the counts from its checkpoint
    resumed = tmp_path / "resumed"
    argv = ["--stage", "baseline", "--model", str(env["model"]), "--dataset", str(data), "--output-dir", str(resumed),
            "--max-steps", "3", "--per_device_train_batch_size", "2", "--report_to", "none", "--save_steps", "100",
            "--resume", str(runs[False] / "checkpoint-2")]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((resumed / "run_summary.json").read_text())["tokens"] == summaries[False]["tokens"]


def test_packing_option_on_the_command_line_and_in_a_config():
    assert resolve(["--stage", "rho1", "--packing"])[1].packing is True
    assert resolve(["--stage", "critic", "--packing", "false"])[1].packing is False
    assert resolve(["--stage", "reference", "--packing", "true"])[1].packing is True
    assert build_config("verifiable", None, {"packing": True}).packing is True
    assert build_config("baseline").packing is False


def test_experiment_shared_options_pass_packing_to_every_stage():
    from wmtp_hf.experiment.plan import build_plan, default_config_dict

    data = default_config_dict()
    data["shared"] = {**data.get("shared", {}), "packing": True}
    plan = build_plan(data, "test", "runs/experiment")
    assert plan.stages and all(run.config.packing for run in plan.stages)
    assert not any(run.config.packing for run in build_plan(default_config_dict(), "t", "runs/x").stages)
