"""transformers' model contract, checked against `LlamaForCausalLM` on the same inputs: the cache under
both names, `return_dict=False`, `output_attentions` / `output_hidden_states`, `shift_labels`, and no
deprecation warning from the model's own calls on the installed transformers."""

from __future__ import annotations

import inspect
import logging
import warnings

import pytest
import torch
from tiny_models import TOKENS, tiny_llama
from transformers.cache_utils import DynamicCache

from wmtp_hf import WmtpForMultiTokenPrediction
from wmtp_hf.modeling_wmtp import CACHE_NAME

pytestmark = pytest.mark.floor  # also run on the lowest supported transformers (.ci/run)


def pair(n_future: int = 4, attn: str = "eager"):
    """A LLaMA and the WMTP model whose trunk + head 0 is that LLaMA (random extra heads)."""
    llama = tiny_llama(attn_implementation=attn)
    model = WmtpForMultiTokenPrediction.from_llama(llama, n_future_tokens=n_future, head_init="random")
    model.config._attn_implementation = attn
    return llama, model.eval()


def cached_steps(model, name: str, steps: int = 4) -> tuple[torch.Tensor, DynamicCache]:
    """Prompt then `steps` single-token forwards, the cache passed back under `name`; all logits."""
    with torch.no_grad():
        out = model(TOKENS[:, :6], use_cache=True)
        logits = [out.logits]
        cache = getattr(out, CACHE_NAME)
        for t in range(6, 6 + steps):
            out = model(TOKENS[:, t : t + 1], use_cache=True, **{name: cache})
            cache = getattr(out, CACHE_NAME)
            logits.append(out.logits)
    return torch.cat(logits, dim=1), cache


def test_cache_under_old_and_new_name_gives_the_same_result_as_llama():
    llama, model = pair()
    by_new, cache_new = cached_steps(model, "cache")
    by_old, cache_old = cached_steps(model, "past_key_values")
    with torch.no_grad():
        full = model(TOKENS[:, :10], use_cache=False).logits
        reference = llama(TOKENS[:, :10], use_cache=False).logits
    torch.testing.assert_close(by_new, by_old, rtol=0, atol=0)
    torch.testing.assert_close(by_new, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, reference, rtol=1e-5, atol=1e-5)
    assert cache_new.get_seq_length() == cache_old.get_seq_length() == 10
    for a, b in zip(cache_new.layers, cache_old.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, rtol=0, atol=0)


def test_cache_under_both_names_at_once_is_an_error():
    _, model = pair(2)
    cache = DynamicCache(config=model.config)
    with pytest.raises(ValueError, match="Both `past_key_values` and `cache` are set"):
        model(TOKENS[:, :4], cache=cache, past_key_values=cache)


@pytest.mark.skipif(CACHE_NAME != "cache", reason="transformers < 5.25 still passes `past_key_values` itself")
@pytest.mark.parametrize("base", [False, True])
def test_old_cache_name_warns_as_llamas_does(base):
    """From 5.25 passing `past_key_values` gives transformers' FutureWarning, as LLaMA's forwards do."""
    llama, model = pair(2)
    ours, theirs = (model.model, llama.model) if base else (model, llama)
    for net in (ours, theirs):
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
            net(TOKENS[:, :4], past_key_values=DynamicCache(config=net.config))


def test_output_field_is_the_one_generate_reads():
    _, model = pair(2)
    out = model(TOKENS[:, :4], use_cache=True)
    assert CACHE_NAME in out and isinstance(out[CACHE_NAME], DynamicCache)


@pytest.mark.parametrize("use_cache", [True, False])
def test_return_dict_false_gives_llamas_tuple(use_cache):
    llama, model = pair()
    with torch.no_grad():
        ours = model(TOKENS, use_cache=use_cache, return_dict=False)
        theirs = llama(TOKENS, use_cache=use_cache, return_dict=False)
        ours_base = model.model(TOKENS, use_cache=use_cache, return_dict=False)
        theirs_base = llama.model(TOKENS, use_cache=use_cache, return_dict=False)
    for got, want in ((ours, theirs), (ours_base, theirs_base)):
        assert isinstance(got, tuple) and len(got) == len(want)
        assert [type(v) for v in got] == [type(v) for v in want]
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_return_dict_false_keeps_transformers_order_with_loss_and_value():
    _, model = pair(2)
    model.add_value_head()
    labels = TOKENS.clone()
    with torch.no_grad():
        as_dict = model(TOKENS, labels=labels, use_cache=False)
        as_tuple = model(TOKENS, labels=labels, use_cache=False, return_dict=False)
    assert len(as_tuple) == len(as_dict.to_tuple())
    loss, logits = as_tuple[:2]
    torch.testing.assert_close(loss, as_dict.loss)
    torch.testing.assert_close(logits, as_dict.logits)


def test_config_return_dict_false_gives_a_tuple():
    _, model = pair(2)
    model.config.return_dict = False
    with torch.no_grad():
        assert isinstance(model(TOKENS, use_cache=False), tuple)


def test_attentions_and_hidden_states_equal_llamas():
    """One attention map per block (`num_hidden_layers`, as transformers' tools count them): LLaMA's for
    trunk + head 0, then each extra head's; hidden states are LLaMA's next-token path."""
    llama, model = pair()
    with torch.no_grad():
        ours = model(TOKENS, output_attentions=True, output_hidden_states=True, use_cache=False)
        theirs = llama(TOKENS, output_attentions=True, output_hidden_states=True, use_cache=False)
    assert len(theirs.attentions) == 3  # two trunk blocks + head 0
    assert len(ours.attentions) == model.config.num_hidden_layers == 6  # ... + heads 1..3
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 4  # embeddings + 3 blocks
    for got, want in zip(ours.attentions, theirs.attentions, strict=False):  # LLaMA's first
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # An extra head's map is its own block's attention over the trunk output (independent eager reference).
    trunk_output, attn = ours.hidden_states[-2], model.model.extra_heads[0].self_attn
    x = model.model.extra_heads[0].input_layernorm(trunk_output)
    n, d = TOKENS.shape[1], attn.head_dim
    with torch.no_grad():
        q = attn.q_proj(x).view(2, n, -1, d).transpose(1, 2)
        k = attn.k_proj(x).view(2, n, -1, d).transpose(1, 2)
        cos, sin = (t[:, None] for t in model.model.rotary_emb(x, torch.arange(n)[None]))
        q, k = q * cos + rotate(q) * sin, k * cos + rotate(k) * sin
        k = k.repeat_interleave(attn.num_key_value_groups, dim=1)
        scores = (q @ k.transpose(2, 3)) * d**-0.5 + torch.full((n, n), float("-inf")).triu(1)
    torch.testing.assert_close(ours.attentions[3], scores.softmax(-1), rtol=1e-5, atol=1e-5)


def rotate(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def test_hidden_states_selected_by_index_are_llamas():
    """transformers 5.25 selects hidden states by (negative) index, counted on the next-token path."""
    from transformers.utils.output_capturing import OutputRecorder

    if "num_hidden_layers_key" not in OutputRecorder.__dataclass_fields__:
        pytest.skip("transformers < 5.25 has no selection of hidden states by index")
    llama, model = pair(4)
    with torch.no_grad():
        ours = model(TOKENS, output_hidden_states=[-1, 0], use_cache=False).hidden_states
        theirs = llama(TOKENS, output_hidden_states=[-1, 0], use_cache=False).hidden_states
    assert [h is None for h in ours] == [h is None for h in theirs] == [False, True, True, False]
    for got, want in zip(ours, theirs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_attentions_with_all_heads_cover_every_block():
    _, model = pair(4)
    with torch.no_grad():
        out = model(TOKENS, output_attentions=True, return_all_heads=True, use_cache=False)
        plain = model(TOKENS, output_attentions=True, use_cache=False)
    assert len(out.attentions) == len(plain.attentions) == model.config.num_hidden_layers
    assert len(out.head_hidden_states) == 4 and plain.head_hidden_states is None


def test_no_attentions_or_hidden_states_unless_asked():
    _, model = pair(2)
    with torch.no_grad():
        out = model(TOKENS, use_cache=False)
    assert out.attentions is None and out.hidden_states is None


def test_output_attentions_is_declared_and_defaults_to_the_config():
    """Signature readers (transformers' common tests) see it, as in LLaMA's typed kwargs; left out, the
    config's `output_attentions` decides, as for LLaMA."""
    llama, model = pair(2)
    assert "output_attentions" in inspect.signature(model.forward).parameters
    model.config.output_attentions = llama.config.output_attentions = True
    with torch.no_grad():
        out, reference = model(TOKENS, use_cache=False), llama(TOKENS, use_cache=False)
    assert len(out.attentions) == model.config.num_hidden_layers == len(reference.attentions) + 1
    for got, want in zip(out.attentions[:-1], reference.attentions, strict=True):  # LLaMA's blocks first
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def shifted_by_one(labels: torch.Tensor) -> torch.Tensor:
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)


@pytest.mark.parametrize("n_future", [1, 4])
def test_shift_labels_give_the_loss_of_labels(n_future):
    _, model = pair(n_future)
    labels = TOKENS.clone()
    labels[:, :5] = -100  # a prompt without targets
    with torch.no_grad():
        from_labels = model(TOKENS, labels=labels)
        from_shifted = model(TOKENS, shift_labels=shifted_by_one(labels))
        from_both = model(TOKENS, labels=torch.full_like(labels, 7), shift_labels=shifted_by_one(labels))
    for out in (from_shifted, from_both):  # shift_labels win over labels when both are given
        torch.testing.assert_close(out.loss, from_labels.loss, rtol=0, atol=0)
        torch.testing.assert_close(out.token_losses, from_labels.token_losses, rtol=0, atol=0)


def test_shift_labels_loss_equals_llamas_for_one_head():
    llama, model = pair(1)
    labels = TOKENS.clone()
    labels[0, :4] = -100
    shifted = shifted_by_one(labels)
    shifted[1, 3] = -100  # differs from labels: proves shift_labels are the ones used
    with torch.no_grad():
        ours = model(TOKENS, labels=labels, shift_labels=shifted).loss
        theirs = llama(TOKENS, labels=labels, shift_labels=shifted).loss
        plain = model(TOKENS, labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.isclose(ours, plain)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_generation_emits_no_cache_deprecation_warning():
    """The model's own calls use the installed version's cache name (nothing deprecated)."""
    _, model = pair(4)
    logging.Logger.warning_once.cache_clear()  # transformers warns once per process; start afresh
    handler = _Records()
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kwargs = dict(max_new_tokens=6, pad_token_id=0)
            model.generate(TOKENS[:1, :5], do_sample=False, **kwargs)
            model.generate(TOKENS[:1, :5], do_sample=True, top_k=5, **kwargs)
            model.generate(TOKENS[:1, :5], do_sample=False, mtp_speculative=True, **kwargs)
            model(TOKENS[:, :5], use_cache=True)
    finally:
        root.removeHandler(handler)
    messages = handler.messages + [str(w.message) for w in caught]
    assert not [m for m in messages if "past_key_values" in m or "deprecat" in m.lower()], messages


def test_trainer_prediction_step_returns_logits_without_the_cache(tmp_path):
    """`keys_to_ignore_at_inference` names the cache as the installed version returns it, so an eval forward
    (with the cache on) gives `Trainer` the logits alone, as LLaMA's does."""
    from transformers import Trainer, TrainingArguments

    _, model = pair(2)
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, use_cache=True, label_names=["labels"]
    )
    trainer = Trainer(model=model, args=args)
    assert model(TOKENS).get(CACHE_NAME) is not None  # the forward does return a cache
    with torch.no_grad():
        want = model(TOKENS, use_cache=False).logits
    _, logits, _ = trainer.prediction_step(model, {"input_ids": TOKENS}, prediction_loss_only=False)
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(logits, want, rtol=1e-6, atol=1e-6)
    loss, logits, labels = trainer.prediction_step(
        model, {"input_ids": TOKENS, "labels": TOKENS}, prediction_loss_only=False
    )
    assert loss is not None and labels is not None
    assert not any(isinstance(v, DynamicCache) for v in logits)  # logits and token_losses, no cache
