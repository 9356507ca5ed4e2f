"""The start-aware recipe (train/recipe.py), the head warm-up (train/head_warmup.py), head_init as a training
option and LoRA training new extra heads fully, on the tiny models (seconds)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from stage_fixtures import MARKER, stage_args
from train_fixtures import write_llama, write_marker_dataset, write_tiny_model

from wmtp_hf.train.cli import main
from wmtp_hf.train.config import ConfigError
from wmtp_hf.train.recipe import FINETUNE_RECIPE, MICRO_RECIPE
from wmtp_hf.train.stages import build_config


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("warmup")
    return {
        "root": root,
        "model": write_tiny_model(root / "model", tiny_tokenizer, n_future=3),
        "llama": write_llama(root / "llama", tiny_tokenizer, seed=0),
        "data": write_marker_dataset(
            root / "marker", len(tiny_tokenizer), MARKER, n_problems=12, eos=tiny_tokenizer.eos_token_id
        ),  # fmt: skip
    }


def test_recipe_follows_the_start_and_never_overrides_a_given_option(env, tmp_path):
    micro = build_config("baseline")
    assert micro.recipe == "micro" and micro.learning_rate == 2e-3 and micro.warmup_steps == 10
    assert micro.head_warmup_steps == 0 and micro.head_weights is None and micro.head_init == "copy_last"
    tuned = build_config("baseline", None, {"model_name_or_path": "smollm2-135m"})
    assert tuned.recipe == "finetune" and tuned.learning_rate == FINETUNE_RECIPE["learning_rate"]
    assert tuned.head_warmup_steps == FINETUNE_RECIPE["head_warmup_steps"]
    assert tuned.head_learning_rate == FINETUNE_RECIPE["head_learning_rate"] != tuned.learning_rate
    assert tuned.head_weights == pytest.approx([0.7, 0.1, 0.1, 0.1])
    # A folder no larger than the micro preset (here hidden 32) keeps the micro recipe; a larger one is
    # taken as pretrained.
    assert build_config("baseline", None, {"model_name_or_path": str(env["model"])}).recipe == "micro"
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_text('{"model_type": "wmtp", "hidden_size": 576}')
    assert build_config("baseline", None, {"model_name_or_path": str(big)}).recipe == "finetune"
    # Given options win, from a file or the command line; the rest still come from the recipe.
    (tmp_path / "c.yaml").write_text("learning_rate: 0.5\nhead_warmup_steps: 0\n")
    given = build_config(
        "baseline", tmp_path / "c.yaml", {"model_name_or_path": "smollm2-135m", "warmup_steps": 3}
    )
    assert (given.learning_rate, given.head_warmup_steps, given.warmup_steps) == (0.5, 0, 3)
    assert given.head_weights == pytest.approx([0.7, 0.1, 0.1, 0.1])
    assert (
        build_config(
            "baseline", None, {"model_name_or_path": "smollm2-135m", "recipe": "micro"}
        ).learning_rate
        == (MICRO_RECIPE["learning_rate"])
    )
    # Stages that continue a trained model do not warm heads up again.
    assert build_config("verifiable", None, {"model_name_or_path": "smollm2-135m"}).head_warmup_steps == 0
    for bad, message in (({"recipe": "big"}, "recipe: expected one of auto, micro, finetune"),
                         ({"head_warmup_steps": -1}, "head_warmup_steps: expected a non-negative"),
                         ({"head_init": "zeros"}, "head_init: expected one of copy_last, random")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            build_config("baseline", None, bad)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _changed(start: dict, final: dict) -> dict[str, bool]:
    return {k: not torch.equal(start[k], final[k]) for k in start}


def test_head_warmup_trains_only_the_extra_heads_then_everything(env):
    """Two warm-up steps (with weight decay, which AdamW would apply to any parameter it steps): every
    parameter outside the extra heads is bit-identical to the start, every extra-head tensor moved; a
    third step moves the trunk too."""
    start = _weights(env["model"])
    for steps, trunk_moves in ((2, False), (3, True)):
        out = env["root"] / f"warm{steps}"
        argv = stage_args("baseline", env["model"], env["data"], out, **{"max-steps": steps}, head_warmup_steps=2,
                          weight_decay=0.1)  # fmt: skip
        assert main(argv) == 0
        changed = _changed(start, _weights(out / "final"))
        heads = {k: v for k, v in changed.items() if ".extra_heads." in k}
        rest = {k: v for k, v in changed.items() if k not in heads}
        assert heads and all(heads.values()), heads
        assert any(rest.values()) is trunk_moves, [k for k, v in rest.items() if v]
        if trunk_moves:
            assert changed["model.layers.0.self_attn.q_proj.weight"] and changed["model.embed_tokens.weight"]


def test_a_run_that_is_all_warmup_freezes_up_front_and_trains_the_heads_alike(env, caplog):
    """max_steps == head_warmup_steps freezes everything outside the extra heads before training (the
    backward stops at the heads); its heads equal those of the first two steps of a longer run whose
    warm-up drops the other gradients instead (constant rates, so the two steps are the same steps)."""
    common = {"head_warmup_steps": 2, "lr_scheduler_type": "constant", "warmup_steps": 0}
    frozen_run, dropping_run = env["root"] / "all_warmup", env["root"] / "longer"
    with caplog.at_level("INFO", logger="wmtp_hf.train.head_warmup"):
        assert (
            main(stage_args("baseline", env["model"], env["data"], frozen_run, **{"max-steps": 2}, **common))
            == 0
        )
    assert "frozen up front" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="wmtp_hf.train.head_warmup"):
        assert main(stage_args("baseline", env["model"], env["data"], dropping_run, **{"max-steps": 3},
                               save_steps=2, **common)) == 0  # fmt: skip
    assert "frozen up front" not in caplog.text
    frozen, dropped = _weights(frozen_run / "final"), _weights(dropping_run / "checkpoint-2")
    start = _weights(env["model"])
    heads = [k for k in start if ".extra_heads." in k]
    assert heads and all(not torch.equal(frozen[k], start[k]) for k in heads)
    for key in start:
        torch.testing.assert_close(frozen[key], dropped[key], rtol=0, atol=1e-6, msg=key)
        if key not in heads:
            assert torch.equal(frozen[key], start[key]), key


def test_head_init_converts_a_llama_start_and_lora_trains_new_heads_fully(env):
    """A LLaMA start converted with head_init random under LoRA: the extra heads are saved whole in the
    adapter (modules_to_save), the trunk only through adapters."""
    from peft import AutoPeftModelForCausalLM

    out = env["root"] / "lora"
    argv = stage_args("baseline", env["llama"], env["data"], out, **{"max-steps": 2}, n_future_tokens=3,
                      head_init="random", use_peft="true", lora_r=2, lora_dropout=0.0)  # fmt: skip
    assert main(argv) == 0
    adapter = load_file(str(out / "final" / "adapter_model.safetensors"))
    saved_heads = [k for k in adapter if ".extra_heads." in k]
    assert saved_heads and not any("lora_" in k for k in saved_heads)
    assert any("model.layers.0" in k and "lora_A" in k for k in adapter)
    model = AutoPeftModelForCausalLM.from_pretrained(str(out / "final")).merge_and_unload()
    llama = load_file(str(env["llama"] / "model.safetensors"))
    last = "model.layers.1.mlp.down_proj.weight"  # a copy_last head would start from (near) this
    head = model.state_dict()["model.extra_heads.0.mlp.down_proj.weight"]
    assert (head - llama[last]).abs().max() > 0.05 and head.std() < 0.05  # random init, std 0.02


def test_head_learning_rate_scales_only_the_extra_heads_steps(env):
    """One plain SGD step (constant rate, no clipping): with head_learning_rate = 3 x learning_rate each
    extra-head update is 3 times the one at equal rates, every other update is the same."""
    start = _weights(env["model"])
    deltas = []
    for name, head_lr in (("equal", 0.05), ("triple", 0.15)):
        out = env["root"] / f"lr_{name}"
        argv = stage_args("baseline", env["model"], env["data"], out, **{"max-steps": 1}, optim="sgd",
                          learning_rate=0.05, head_learning_rate=head_lr, lr_scheduler_type="constant",
                          max_grad_norm=0, head_warmup_steps=0)  # fmt: skip
        assert main(argv) == 0
        final = _weights(out / "final")
        deltas.append({k: final[k] - start[k] for k in start})
    equal, triple = deltas
    for key in start:
        factor = 3.0 if ".extra_heads." in key else 1.0
        torch.testing.assert_close(triple[key], factor * equal[key], atol=1e-6, rtol=1e-4, msg=key)
    assert any(equal[k].abs().max() > 0 for k in start if ".extra_heads." in k)
