"""WMTP <-> LLaMA: head 0 is exactly transformers' LlamaForCausalLM, in logits and in generation."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TOKENS, tiny_llama
from transformers import LlamaForCausalLM

from wmtp_hf import WmtpForMultiTokenPrediction

pytestmark = pytest.mark.floor  # also run on the lowest supported transformers (.ci/run)


@pytest.mark.parametrize("n_future", [1, 2, 4])
@pytest.mark.parametrize("head_init", ["copy_last", "random"])
def test_from_llama_head0_equals_llama(n_future, head_init):
    llama = tiny_llama()
    model = WmtpForMultiTokenPrediction.from_llama(llama, n_future_tokens=n_future, head_init=head_init)
    assert len(model.model.layers) == 3 and len(model.model.extra_heads) == n_future - 1
    assert model.config.num_hidden_layers == 3 + n_future - 1
    with torch.no_grad():
        expected = llama(TOKENS).logits
        out = model(TOKENS, return_all_heads=True)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.mtp_logits[:, :, 0], expected, atol=1e-5, rtol=0)
    if head_init == "copy_last" and n_future > 1:  # copies of the last layer read the same trunk
        torch.testing.assert_close(out.mtp_logits[:, :, 1], expected, atol=1e-5, rtol=0)
    if head_init == "random" and n_future > 1:
        assert (out.mtp_logits[:, :, 1] - expected).abs().max() > 1e-2


def test_from_llama_with_tied_embeddings_and_from_path(tmp_path):
    llama = tiny_llama(tie_word_embeddings=True)
    llama.save_pretrained(tmp_path / "llama")
    model = WmtpForMultiTokenPrediction.from_llama(str(tmp_path / "llama"), n_future_tokens=2)
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS).logits, llama(TOKENS).logits, atol=1e-5, rtol=0)
    assert model.config.tie_word_embeddings  # the LLaMA's choice is kept (tests/test_convert_llama_tied.py)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_from_llama_rejects_bad_head_init():
    with pytest.raises(ValueError, match="head_init"):
        WmtpForMultiTokenPrediction.from_llama(tiny_llama(), head_init="zeros")


def test_to_llama_equals_head0():
    torch.manual_seed(0)
    wmtp = WmtpForMultiTokenPrediction.from_llama(tiny_llama(), n_future_tokens=4, head_init="random")
    llama = wmtp.to_llama()
    assert isinstance(llama, LlamaForCausalLM) and llama.config.num_hidden_layers == 3
    with torch.no_grad():
        torch.testing.assert_close(llama(TOKENS).logits, wmtp(TOKENS).logits, atol=1e-5, rtol=0)


def test_greedy_generation_cache_and_llama_agree():
    llama = tiny_llama()
    model = WmtpForMultiTokenPrediction.from_llama(llama, n_future_tokens=4, head_init="random")
    prompt = TOKENS[:1, :6]
    kwargs = dict(max_new_tokens=20, do_sample=False, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without_cache = model.generate(prompt, use_cache=False, **kwargs)
    reference = llama.generate(prompt, **kwargs)
    assert with_cache.shape[1] == 26
    assert with_cache.tolist() == without_cache.tolist() == reference.tolist()


def test_batched_left_padded_generation_matches_llama():
    llama = tiny_llama()
    model = WmtpForMultiTokenPrediction.from_llama(llama, n_future_tokens=2)
    ids = TOKENS[:, :8].clone()
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0  # left padding
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert model.generate(ids, **kwargs).tolist() == llama.generate(ids, **kwargs).tolist()
