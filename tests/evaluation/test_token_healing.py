"""Token healing at generation (docs/evaluation.md "Token healing"): the healed prompt is a prefix of the
tokens training gave the model (prompt + response tokenized together), and the tokens training put after it
are allowed by the constraint, step by step; generation then equals transformers' own `generate`
constrained by `prefix_allowed_tokens_fn` (an independent mechanism), greedy and self-speculative."""

from __future__ import annotations

import pytest
import torch
from tokenization_fixtures import _bpe_tokenizer, _rows, _with_template
from transformers import LlamaConfig, LlamaForCausalLM

from wmtp_hf.data import encode_example
from wmtp_hf.data.formatting import adds_special_tokens
from wmtp_hf.data.prompt_formats import render_example
from wmtp_hf.evaluation.generation import generate_completions
from wmtp_hf.evaluation.token_healing import PrefixConstraint, compatible_tokens, heal_prompt
from wmtp_hf.micro import build_micro_tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _check_training_context(tokenizer, prompt_format: str) -> int:
    """For every row: the healed prompt-only tokens are a prefix of the training tokens that ends at or
    before the response; when healed, each training token after it is allowed (compatible with what is
    left of the removed text, checked on decoded text) until the removed text is produced; when not, the
    prompt-only tokens are training's prompt tokens. Returns how many prompts were healed."""
    healed_count = 0
    for row in _rows():
        ids, plen = encode_example(row, tokenizer, prompt_format)
        prompt = render_example(row, prompt_format, tokenizer)[0]
        prompt_ids = tokenizer(prompt, add_special_tokens=adds_special_tokens(tokenizer, prompt))["input_ids"]
        healed = heal_prompt(tokenizer, prompt_ids)
        n = len(healed.input_ids)
        assert ids[:n] == healed.input_ids and n <= plen
        if healed.prefix:
            healed_count += 1
            j = n
            while len(tokenizer.decode(ids[n:j])) < len(healed.prefix):
                rest = healed.prefix[len(tokenizer.decode(ids[n:j])) :]
                assert ids[j] in compatible_tokens(tokenizer, rest)
                text = tokenizer.decode([ids[j]])
                assert text.startswith(rest) or rest.startswith(text)
                j += 1
            assert tokenizer.decode(ids[n:j]).startswith(healed.prefix)
        else:
            assert n == plen  # nothing to heal: the prompt-only tokens are training's prompt tokens
    return healed_count


@pytest.mark.parametrize("prompt_format", ["raw", "alpaca"])
def test_micro_tokenizer_context(prompt_format):
    _check_training_context(build_micro_tokenizer(), prompt_format)


@pytest.mark.parametrize("prompt_format", ["raw", "alpaca", "chat"])
def test_bpe_tokenizer_context(prompt_format):
    tokenizer = _bpe_tokenizer() if prompt_format != "chat" else _with_template(_bpe_tokenizer(), CHATML)
    assert _check_training_context(tokenizer, prompt_format) >= 1


def test_straddling_token_is_restored():
    """The defect healing fixes: the alpaca prompt alone ends with a lone "\\n" token that training never
    showed before a response (the merged "\\n    " is a response token); healed, the prompt ends where
    training's prompt tokens end and the merged token is allowed first."""
    tokenizer = _bpe_tokenizer()
    row = _rows()[2]
    ids, plen = encode_example(row, tokenizer, "alpaca")
    prompt_ids = tokenizer(render_example(row, "alpaca", tokenizer)[0])["input_ids"]
    assert prompt_ids != ids[:plen]  # unhealed: not the training context
    healed = heal_prompt(tokenizer, prompt_ids)
    assert healed.input_ids == ids[:plen] and healed.prefix == "\n"
    assert ids[plen] in compatible_tokens(tokenizer, "\n")


def test_special_and_unmergeable_last_tokens_are_kept():
    tokenizer = _bpe_tokenizer()
    ids = tokenizer("x")["input_ids"] + [tokenizer.eos_token_id]
    assert heal_prompt(tokenizer, ids).input_ids == ids  # a special token is never removed
    one = [tokenizer.bos_token_id]
    assert heal_prompt(tokenizer, one).input_ids == one


@pytest.mark.real_model
@pytest.mark.parametrize("prompt_format", ["raw", "alpaca", "chat"])
def test_smollm2_tokenizer_context(prompt_format, smollm2):
    from transformers import AutoTokenizer

    _check_training_context(AutoTokenizer.from_pretrained(smollm2.llama), prompt_format)


def test_prefix_constraint_matches_naive_mask():
    """Rows mid-prefix allow exactly the tokens whose text starts with, or starts, the rest (naive loop over
    the decoded vocabulary); covered prefixes and empty ones leave the scores alone."""
    tokenizer = _bpe_tokenizer()
    nl = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert len(nl) == 1
    prompt = [tokenizer.bos_token_id, 5]
    rows = torch.tensor([prompt + nl, prompt + nl, prompt + nl])
    prefixes = ["\n\n    ", "\n", ""]
    scores = torch.randn(3, len(tokenizer))
    got = PrefixConstraint(tokenizer, prompt_length=2, prefixes=prefixes)(rows, scores.clone())
    specials = set(tokenizer.all_special_ids)
    for token in range(len(tokenizer)):
        text = tokenizer.decode([token])
        ok = token not in specials and text != "" and ("\n    ".startswith(text) or text.startswith("\n    "))
        assert got[0, token] == (scores[0, token] if ok else float("-inf"))
    assert torch.equal(got[1:], scores[1:])


@pytest.fixture(scope="module")
def tiny_llama():
    """A random 2-layer LLaMA on the BPE tokenizer (random weights: every token is a plausible pick)."""
    tokenizer = _bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval(), tokenizer


PROMPTS = ["### Response:\n", "def inc(x):\n", "for i in range(3):", "x = 1\n\n"]


def _reference(model, tokenizer, prompts, max_new_tokens):
    """transformers' `generate`, one prompt at a time, on the healed ids with `prefix_allowed_tokens_fn`
    (allowed tokens found by decoding, not by wmtp_hf's tables)."""
    every = list(range(len(tokenizer)))
    texts = [tokenizer.decode([i]) for i in every]
    specials = set(tokenizer.all_special_ids)
    out = []
    for prompt in prompts:
        healed = heal_prompt(tokenizer, tokenizer(prompt)["input_ids"])
        ids = torch.tensor([healed.input_ids])

        def allowed_fn(_batch, seq, n=ids.shape[1], prefix=healed.prefix):
            done = tokenizer.decode(seq[n:].tolist())
            rest = prefix[len(done) :] if len(done) < len(prefix) else ""
            if not rest:
                return every
            return [i for i, t in enumerate(texts) if t and (t.startswith(rest) or rest.startswith(t))
                    and i not in specials]  # fmt: skip

        gen = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            prefix_allowed_tokens_fn=allowed_fn,
        )[0, ids.shape[1] :].tolist()  # fmt: skip
        while gen and gen[-1] == tokenizer.pad_token_id:
            gen.pop()
        text = tokenizer.decode(gen, skip_special_tokens=True)
        out.append((gen, text[len(healed.prefix) :] if healed.prefix else text, healed.prefix))
    return out


def test_healed_generation_equals_transformers_constrained_generate(tiny_llama):
    model, tokenizer = tiny_llama
    assert sum(bool(heal_prompt(tokenizer, tokenizer(p)["input_ids"]).prefix) for p in PROMPTS) >= 2
    ids: list = []
    got = generate_completions(
        model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=3, progress=False, token_ids=ids
    )
    reference = _reference(model, tokenizer, PROMPTS, 6)
    for (ref_ids, ref_text, prefix), texts, rows in zip(reference, got, ids, strict=True):
        assert rows[0] == ref_ids and texts[0] == ref_text
        if prefix:
            assert tokenizer.decode(rows[0]).startswith(prefix)


def test_speculative_healed_generation_equals_greedy(tiny_llama):
    from wmtp_hf import WmtpForMultiTokenPrediction

    llama, tokenizer = tiny_llama
    model = WmtpForMultiTokenPrediction.from_llama(llama, n_future_tokens=3).eval()
    plain_ids: list = []
    spec_ids: list = []
    plain = generate_completions(
        model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2, progress=False, token_ids=plain_ids
    )
    spec = generate_completions(
        model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2, progress=False, token_ids=spec_ids,
        speculative=True,
    )  # fmt: skip
    assert spec == plain and spec_ids == plain_ids
    assert [r[0] for r in plain_ids] == [r for r, _, _ in _reference(llama, tokenizer, PROMPTS, 6)]


def test_without_healing_generation_is_plain_generate(tiny_llama):
    model, tokenizer = tiny_llama
    ids: list = []
    generate_completions(
        model, tokenizer, PROMPTS[:2], max_new_tokens=5, batch_size=1, progress=False, token_ids=ids,
        token_healing=False,
    )  # fmt: skip
    for prompt, rows in zip(PROMPTS[:2], ids, strict=True):
        enc = tokenizer(prompt, return_tensors="pt")
        ref = model.generate(
            **enc, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )[0, enc["input_ids"].shape[1] :].tolist()  # fmt: skip
        assert rows[0] == ref[: len(rows[0])]


def test_check_token_healing_script(tiny_llama, tmp_path):
    """scripts/check_token_healing.py counts the healed prompts and the first tokens that stay the same,
    here checked against a direct computation on the offline problems."""
    import json
    import sys
    from pathlib import Path

    from wmtp_hf.evaluation.problems import load_problems

    model, tokenizer = tiny_llama
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import check_token_healing

    out = tmp_path / "r.json"
    args = [
        "--model",
        str(tmp_path / "m"),
        "--dataset",
        "offline",
        "--limit",
        "4",
        "--prompt-format",
        "alpaca",
    ]
    assert check_token_healing.main([*args, "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    problems = load_problems("offline", None, None, "alpaca", tokenizer)[:4]
    healed = [p for p in problems if heal_prompt(tokenizer, tokenizer(p.prompt)["input_ids"]).prefix]
    assert report["problems"] == 4 and report["healed"] == len(healed) >= 1
    assert report["same_first_token"] + len(report["differing"]) == report["healed"]
