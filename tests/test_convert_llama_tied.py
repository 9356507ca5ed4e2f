"""Tied embeddings (`tie_word_embeddings`): `from_llama` keeps a tied LLaMA tied, through save/load,
`trust_remote_code` without wmtp_hf, `push_to_hub` and back through `to_llama`; untied stays untied."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from hub_fixtures import FakeHub, write_hub_snapshot
from no_wmtp_hf import BLOCK_WMTP_HF
from safetensors import safe_open
from tiny_models import TOKENS, tiny_llama
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from wmtp_hf import WmtpForMultiTokenPrediction

pytestmark = pytest.mark.floor  # also run on the lowest supported transformers (.ci/run)


def is_tied(model) -> bool:
    return model.lm_head.weight is model.get_input_embeddings().weight


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts a shared tensor once


def block_params(llama: LlamaForCausalLM) -> int:
    return sum(p.numel() for p in llama.model.layers[-1].parameters())


def test_tied_llama_converts_tied_with_one_unembedding():
    llama = tiny_llama(tie_word_embeddings=True)
    assert is_tied(llama)
    model = WmtpForMultiTokenPrediction.from_llama(llama, n_future_tokens=4)
    assert model.config.tie_word_embeddings and is_tied(model)
    # trunk + 4 heads = the LLaMA's parameters plus 3 head blocks; no second vocab x hidden matrix
    assert n_params(model) == n_params(llama) + 3 * block_params(llama)
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS).logits, llama(TOKENS).logits, atol=1e-5, rtol=0)
    with torch.no_grad():  # one matrix: a change through the embedding shows in the unembedding
        model.model.embed_tokens.weight[5].add_(1.0)
    assert torch.equal(model.lm_head.weight[5], model.model.embed_tokens.weight[5])


def test_untied_llama_stays_untied():
    llama = tiny_llama(tie_word_embeddings=False)
    model = WmtpForMultiTokenPrediction.from_llama(llama, n_future_tokens=2)
    assert not model.config.tie_word_embeddings and not is_tied(model)
    vocab_matrix = llama.lm_head.weight.numel()
    assert n_params(model) == n_params(llama) + block_params(llama)
    assert n_params(llama) - vocab_matrix == n_params(tiny_llama(tie_word_embeddings=True))


def test_tied_save_load_round_trip_and_to_llama(tmp_path):
    llama = tiny_llama(tie_word_embeddings=True)
    model = WmtpForMultiTokenPrediction.from_llama(llama, n_future_tokens=3, head_init="random")
    model.save_pretrained(tmp_path / "wmtp")
    with safe_open(str(tmp_path / "wmtp" / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert "model.embed_tokens.weight" in saved and "lm_head.weight" not in saved  # stored once
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "wmtp").eval()
    assert type(loaded) is WmtpForMultiTokenPrediction and is_tied(loaded)
    with torch.no_grad():
        expected = model(TOKENS, return_all_heads=True).mtp_logits
        torch.testing.assert_close(loaded(TOKENS, return_all_heads=True).mtp_logits, expected, atol=0, rtol=0)
    back = loaded.to_llama()
    assert back.config.tie_word_embeddings and is_tied(back)
    with torch.no_grad():
        torch.testing.assert_close(back(TOKENS).logits, llama(TOKENS).logits, atol=1e-5, rtol=0)


def test_tied_model_pushed_loads_with_trust_remote_code_without_wmtp_hf(tmp_path, monkeypatch):
    model = WmtpForMultiTokenPrediction.from_llama(tiny_llama(tie_word_embeddings=True), n_future_tokens=2)
    hub = FakeHub().install(monkeypatch)
    model.push_to_hub("org/tied-tiny")
    (commit,) = hub.commits
    assert "model.safetensors" in commit["files"] and "modeling_wmtp.py" in commit["files"]
    write_hub_snapshot(tmp_path / "hub", "org/tied-tiny", commit["files"])
    with torch.no_grad():
        expected = model(TOKENS, return_all_heads=True).mtp_logits
    script = BLOCK_WMTP_HF + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("org/tied-tiny", trust_remote_code=True).eval()
        with torch.no_grad():
            mtp = model(torch.tensor({TOKENS.tolist()}), return_all_heads=True).mtp_logits
        assert not any(m.startswith("wmtp_hf") for m in sys.modules)
        tied = model.lm_head.weight is model.model.embed_tokens.weight
        print("RESULT", json.dumps({{"cls": type(model).__module__, "tied": tied, "mtp": mtp.tolist()}}))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home"),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          check=False, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT ") :])
    assert result["cls"].startswith("transformers_modules.") and result["tied"] is True
    torch.testing.assert_close(torch.tensor(result["mtp"]), expected, atol=1e-6, rtol=0)
