"""Evaluation of a WMTP checkpoint: generation equals its LLaMA export; the CLI runs end to end."""

from __future__ import annotations

import json

from train_fixtures import write_tiny_model
from transformers import AutoModelForCausalLM

from wmtp_hf import evaluate
from wmtp_hf.evaluation.generation import generate_completions, load_model


def test_wmtp_generation_equals_its_llama_export(tmp_path, tiny_tokenizer):
    model_dir = write_tiny_model(tmp_path / "model", tiny_tokenizer, n_future=3)
    model, tokenizer = load_model(str(model_dir), device="cpu")
    llama = AutoModelForCausalLM.from_pretrained(model_dir).to_llama().eval()
    prompts = ["def add(a, b):\n", "for i in range(10):\n    print(", "x"]
    kwargs = dict(n_samples=1, temperature=0.0, max_new_tokens=12, batch_size=2, progress=False)
    assert generate_completions(model, tokenizer, prompts, **kwargs) == generate_completions(
        llama, tokenizer, prompts, **kwargs
    )


def test_evaluate_cli_with_a_wmtp_model(tmp_path, tiny_tokenizer):
    model_dir = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    out = tmp_path / "eval"
    argv = ["--model", str(model_dir), "--dataset", "offline", "--limit", "2", "--n-samples", "2",
            "--temperature", "0", "--k", "1,2", "--max-new-tokens", "8", "--output", str(out)]  # fmt: skip
    assert evaluate.main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["task_id"] for r in rows} == {rows[0]["task_id"], rows[-1]["task_id"]}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_problems"] == 2 and summary["n_samples"] == 4
    assert summary["pass@1"] == sum(r["passed"] for r in rows) / 4
