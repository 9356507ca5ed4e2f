"""Batched generation (left padding + KV cache) equals naive one-by-one greedy decoding; stops truncate."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from wmtp_hf import evaluate
from wmtp_hf.evaluation.generation import generate_completions, load_model, truncate_at_stops

pytestmark = pytest.mark.floor  # also run on the lowest supported transformers (.ci/run)

DOC = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n# done\n"
PROMPTS = ["def add(a, b):\n", "def sub(a, b):\n    return", "x"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A 2-layer LlamaForCausalLM (hidden 32) briefly fitted to DOC so it emits code-like text, saved to disk."""
    torch.manual_seed(0)
    tok = tiny_tokenizer
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    ids = tok(DOC, return_tensors="pt")["input_ids"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def naive_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Reference: unpadded, no KV cache, full forward pass per token, argmax, stop at EOS."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    new = []
    for _ in range(max_new_tokens):
        logits = model(torch.cat([ids, torch.tensor([new], dtype=torch.long)], dim=1), use_cache=False).logits
        token = int(logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_batched_left_padded_generation_equals_naive_greedy(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    batched = generate_completions(  # healing has its own tests (test_token_healing.py)
        model, tok, PROMPTS, max_new_tokens=24, batch_size=3, progress=False, token_healing=False
    )
    reference = [naive_greedy(model, tok, p, 24) for p in PROMPTS]
    assert [b[0] for b in batched] == reference
    assert len({len(tok(p)["input_ids"]) for p in PROMPTS}) == 3  # prompts really need padding


def test_stop_sequences_truncate_generation(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    free = generate_completions(model, tok, PROMPTS[:2], max_new_tokens=40, progress=False)
    n_free, calls[:] = len(calls), []
    stops = ("\ndef ", "\n#")
    stopped = generate_completions(
        model, tok, PROMPTS[:2], max_new_tokens=40, stop_sequences=stops, progress=False
    )
    assert len(calls) < n_free  # generation itself stopped early, not only the post-hoc cut
    assert any(s in f[0] for f in free for s in stops)  # the fitted model does emit a stop string
    for f, s in zip(free, stopped, strict=True):
        cut = min((f[0].find(x) for x in stops if x in f[0]), default=len(f[0]))
        assert s[0] == f[0][:cut]


def test_sampling_is_seeded_and_gives_n_samples(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    kw = dict(n_samples=3, temperature=1.5, top_p=1.0, max_new_tokens=12, batch_size=4, progress=False)
    a = generate_completions(model, tok, PROMPTS, seed=1, **kw)
    b = generate_completions(model, tok, PROMPTS, seed=1, **kw)
    assert a == b and [len(x) for x in a] == [3, 3, 3]
    assert any(len(set(x)) > 1 for x in a)  # sampling, not greedy


def test_truncate_at_stops_reference_cases():
    assert truncate_at_stops("    return 1\n\ndef g():\n", ("\ndef ", "\n#")) == "    return 1\n"
    assert truncate_at_stops("a\n#b\ndef c", ("\ndef ", "\n#")) == "a"
    assert truncate_at_stops("abc", ("\ndef ",)) == "abc"


def test_cli_with_a_model_writes_results(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    rc = evaluate.main(
        [
            "--model",
            str(tiny_model_dir),
            "--dataset",
            "humaneval",
            "--limit",
            "2",
            "--n-samples",
            "2",
            "--temperature",
            "0.8",
            "--k",
            "1,2",
            "--max-new-tokens",
            "8",
            "--batch-size",
            "4",
            "--timeout",
            "5",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["task_id"] for r in results] == ["HumanEval/0"] * 2 + ["HumanEval/1"] * 2
    assert summary["n_samples"] == 4 and "pass@2" in summary
    assert summary["pass@1"] == sum(r["passed"] for r in results) / 4
