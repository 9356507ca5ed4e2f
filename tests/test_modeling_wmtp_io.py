"""Config validation, Auto registration, save/load, trust_remote_code loading, value head, micro preset."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from no_wmtp_hf import BLOCK_WMTP_HF
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction, WmtpModel
from wmtp_hf.remote_code import remote_code_files

pytestmark = pytest.mark.floor  # also run on the lowest supported transformers (.ci/run)

TINY = dict(
    vocab_size=89, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, n_future_tokens=2,
)  # fmt: skip
TOKENS = torch.randint(0, 89, (2, 9), generator=torch.Generator().manual_seed(0))


def tiny(**overrides) -> WmtpForMultiTokenPrediction:
    torch.manual_seed(0)
    return WmtpForMultiTokenPrediction(WmtpConfig(**{**TINY, **overrides})).eval()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_future_tokens": 5}, "n_future_tokens"),
        ({"n_future_tokens": 0}, "n_future_tokens"),
        ({"num_attention_heads": 5}, "num_attention_heads"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"hidden_size": -32}, "hidden_size"),
        ({"vocab_size": 89.5}, "vocab_size"),
        ({"use_value_head": "yes"}, "use_value_head"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
        ({"hidden_act": "swishy"}, "hidden_act"),
        ({"rope_theta": -1.0}, "rope_parameters"),
        ({"attention_dropout": 1.5}, "attention_dropout"),
        ({"head_dim": 7}, "head_dim"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^WmtpConfig\.{field}: expected") as info:
        WmtpConfig(**{**TINY, **overrides})
    assert "\n" not in str(info.value)


def test_auto_classes_are_registered(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), WmtpConfig)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is WmtpForMultiTokenPrediction
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is WmtpModel
    with torch.no_grad():
        torch.testing.assert_close(base(TOKENS).last_hidden_state, model.model(TOKENS).last_hidden_state)
    assert WmtpForMultiTokenPrediction._no_split_modules == ["WmtpDecoderLayer"]


def test_save_load_round_trip_with_value_head(tmp_path):
    model = tiny(use_value_head=True)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_wmtp.WmtpConfig",
        "AutoModel": "modeling_wmtp.WmtpModel",
        "AutoModelForCausalLM": "modeling_wmtp.WmtpForMultiTokenPrediction",
    }
    assert (tmp_path / "modeling_wmtp.py").is_file() and (tmp_path / "configuration_wmtp.py").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a, b = model(TOKENS, return_all_heads=True), loaded(TOKENS, return_all_heads=True)
    torch.testing.assert_close(a.mtp_logits, b.mtp_logits, atol=0, rtol=0)
    torch.testing.assert_close(a.value, b.value, atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.value_head.weight, model.value_head.weight, atol=0, rtol=0)


def test_forward_contract_shapes():
    model = tiny()
    with torch.no_grad():
        plain = model(TOKENS)
        full = model(TOKENS, return_all_heads=True)
    assert plain.logits.shape == (2, 9, 89)
    assert plain.mtp_logits is None and plain.value is None and plain.loss is None
    assert full.mtp_logits.shape == (2, 9, 2, 89)
    assert len(full.head_hidden_states) == 2 and full.head_hidden_states[0].shape == (2, 9, 32)


def test_value_head_override_adds_fresh_head(tmp_path):
    tiny().save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert plain.value_head is None
    with_head = AutoModelForCausalLM.from_pretrained(tmp_path, use_value_head=True).eval()
    assert with_head.config.use_value_head is True
    with torch.no_grad():
        out = with_head(TOKENS)
        expected = with_head.value_head(trunk_state_by_hand(with_head, TOKENS)).squeeze(-1)
    assert out.value.shape == (2, 9)
    torch.testing.assert_close(out.value, expected)
    torch.testing.assert_close(out.logits, plain.eval()(TOKENS).logits)


def trunk_state_by_hand(model, tokens):
    """`norm(h_trunk)` walked block by block: embeddings, the trunk blocks (no head), the final norm."""
    base = model.model
    positions = torch.arange(tokens.shape[1])[None]
    cos_sin = base.rotary_emb(base.embed_tokens.weight, positions)
    mask = torch.full((tokens.shape[1], tokens.shape[1]), float("-inf")).triu(1)[None, None]
    hidden = base.embed_tokens(tokens)
    for block in base.layers[:-1]:
        hidden = block(hidden, attention_mask=mask, position_embeddings=cos_sin)
    return base.norm(hidden)


def test_value_head_reads_the_trunk_and_value_only_runs_no_head():
    model = tiny(use_value_head=True).eval()
    calls = []
    for head in model.model.prediction_heads:
        head.register_forward_hook(lambda *args: calls.append(1))
    model.lm_head.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        value_only = model(TOKENS, value_only=True)
        assert calls == [], "value_only must not run a head block or the unembedding"
        full = model(TOKENS)
        expected = model.value_head(trunk_state_by_hand(model, TOKENS)).squeeze(-1)
    torch.testing.assert_close(value_only.value, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(full.value, expected, atol=1e-6, rtol=0)
    assert value_only.logits is None and value_only.loss is None and value_only.token_losses is None
    with pytest.raises(ValueError, match="value_only=True needs a value head"):
        tiny()(TOKENS, value_only=True)


def test_trust_remote_code_without_wmtp_hf(tmp_path):
    model = tiny(use_value_head=True)
    model.save_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        expected = model(TOKENS, return_all_heads=True)
    script = BLOCK_WMTP_HF + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel, AutoModelForCausalLM
        try:
            import wmtp_hf  # noqa
            raise SystemExit("wmtp_hf importable")
        except ImportError:
            pass
        tokens = torch.tensor({TOKENS.tolist()})
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        with torch.no_grad():
            out = model(tokens, return_all_heads=True)
            gen = model.generate(tokens[:1], max_new_tokens=5, do_sample=False, pad_token_id=0)
            spec = model.generate(tokens[:1], max_new_tokens=8, do_sample=False, pad_token_id=0,
                                  mtp_speculative=True)
            torch.manual_seed(11)
            sampled = model.generate(tokens[:1], max_new_tokens=5, do_sample=True, top_k=10, pad_token_id=0)
        assert not any(m.startswith("wmtp_hf") for m in sys.modules)
        print(json.dumps({{"cls": type(model).__module__, "base": type(base).__name__,
                          "mtp": out.mtp_logits.tolist(), "value": out.value.tolist(), "gen": gen.tolist(),
                          "spec": spec.tolist(), "sampled": sampled.tolist()}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf_home")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cls"].startswith("transformers_modules.")
    assert result["base"] == "WmtpModel"
    torch.testing.assert_close(torch.tensor(result["mtp"]), expected.mtp_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(result["value"]), expected.value, atol=1e-6, rtol=0)
    assert (
        result["gen"]
        == model.generate(TOKENS[:1], max_new_tokens=5, do_sample=False, pad_token_id=0).tolist()
    )
    greedy8 = model.generate(TOKENS[:1], max_new_tokens=8, do_sample=False, pad_token_id=0, use_cache=False)
    assert result["spec"] == greedy8.tolist()
    torch.manual_seed(11)
    sampled = model.generate(TOKENS[:1], max_new_tokens=5, do_sample=True, top_k=10, pad_token_id=0)
    assert result["sampled"] == sampled.tolist()
    shipped = sorted(p.name for p in (tmp_path / "ckpt").glob("*.py"))
    assert shipped == list(remote_code_files()) and "losses.py" in shipped


def test_micro_preset_builds_loads_and_generates(tmp_path):
    from wmtp_hf.micro import MICRO_CONFIG, build_micro, main

    out = build_micro(tmp_path / "micro")
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1e6 < n_params < 5e6
    assert model.config.n_future_tokens == MICRO_CONFIG["n_future_tokens"]
    assert len(tokenizer) == model.config.vocab_size == MICRO_CONFIG["vocab_size"]
    assert model.config.eos_token_id == tokenizer.eos_token_id
    code = "def add(a, b):\n    return a + b\n"
    ids = tokenizer(code)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) < len(code) / 2, "trained BPE compresses code"
    assert tokenizer.decode(ids, skip_special_tokens=True) == code
    # Same seed, same weights: the build is deterministic.
    again = AutoModelForCausalLM.from_pretrained(build_micro(tmp_path / "again"))
    torch.testing.assert_close(again.lm_head.weight, model.lm_head.weight, atol=0, rtol=0)
    assert main(["--output-dir", str(out), "--max-new-tokens", "4"]) == 0
