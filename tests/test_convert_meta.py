"""Meta checkpoint conversion: numerical equivalence with Meta's forward, tokenizer, and bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from meta_reference import meta_forward, random_meta_state
from transformers import AutoModelForCausalLM, AutoTokenizer

import wmtp_hf  # noqa: F401  (registers the Auto classes)
from wmtp_hf.convert_meta import ConversionError, convert_meta_checkpoint, ffn_hidden_size

pytestmark = pytest.mark.floor  # also run on the lowest supported transformers (.ci/run)

REPO = Path(__file__).resolve().parents[1]
BASE_PARAMS = {"dim": 64, "n_layers": 5, "n_heads": 4, "vocab_size": 211, "multiple_of": 32, "norm_eps": 1e-5}


def write_meta(tmp: Path, params: dict, state: dict | None = None) -> Path:
    folder = tmp / "meta"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(params))
    torch.save(state if state is not None else random_meta_state(params), folder / "consolidated.pth")
    return folder


def test_ffn_hidden_size_matches_meta_rule():
    assert ffn_hidden_size(4096, 256, None) == 11008
    # int(2*4*64/3) = 170 -> int(1.3 * 170) = 221 -> next multiple of 32 = 224
    assert ffn_hidden_size(64, 32, 1.3) == 224


@pytest.mark.parametrize(
    "extra",
    [
        {"n_future_tokens": 1},
        {"n_future_tokens": 2, "n_kv_heads": 2},
        {"n_future_tokens": 4, "n_kv_heads": 1, "ffn_dim_multiplier": 1.3, "rope_theta": 500.0},
        {"n_future_tokens": 4},
    ],
    ids=["n1", "n2-gqa", "n4-mqa-ffnmult-theta", "n4"],
)
def test_converted_model_equals_meta_forward(tmp_path, extra):
    params = {**BASE_PARAMS, **extra}
    state = random_meta_state(params, seed=len(extra))
    out = convert_meta_checkpoint(write_meta(tmp_path, params, state), tmp_path / "hf", dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = torch.randint(0, params["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(1))
    expected = meta_forward(state, params, tokens)
    with torch.no_grad():
        got = model(tokens, return_all_heads=True)
    assert got.mtp_logits.shape == expected.shape == (2, 13, params.get("n_future_tokens", 1), 211)
    torch.testing.assert_close(got.mtp_logits, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.logits, expected[:, :, 0], atol=1e-4, rtol=0)


def test_conversion_is_sharded_and_casts_dtype(tmp_path):
    params = {**BASE_PARAMS, "n_future_tokens": 2}
    state = random_meta_state(params)
    out = convert_meta_checkpoint(
        write_meta(tmp_path, params, state), tmp_path / "hf", dtype="bfloat16", shard_bytes=50_000
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.dtype == torch.bfloat16
    torch.testing.assert_close(
        model.lm_head.weight, state["output.weight"].to(torch.bfloat16), atol=0, rtol=0
    )


def test_converted_tokenizer(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    corpus = [f"def f{i}(x):\n    return x * {i} + {i * 7}\n" for i in range(300)]
    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model_file, vocab_size=299, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        # LLaMA's settings: no normalisation, whitespace kept, unknown characters fall back to bytes
        normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True,
    )  # fmt: skip
    tok_path = tmp_path / "tokenizer.model"
    tok_path.write_bytes(model_file.getvalue())
    params = {**BASE_PARAMS, "vocab_size": 299}
    out = convert_meta_checkpoint(write_meta(tmp_path, params), tmp_path / "hf", tokenizer_file=tok_path)
    tokenizer = AutoTokenizer.from_pretrained(out)
    reference = spm.SentencePieceProcessor(model_file=str(tok_path))
    text = "def f3(x):\n    return x * 3"
    assert tokenizer(text)["input_ids"] == [1, *reference.encode(text)]
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def _expect_error(tmp_path, params, state, match: str) -> None:
    folder = write_meta(tmp_path, params, state)
    with pytest.raises(ConversionError, match=match) as info:
        convert_meta_checkpoint(folder, tmp_path / "hf")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "hf").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["meta"], "temporary output left behind"


def test_missing_key_is_named(tmp_path):
    state = random_meta_state(BASE_PARAMS)
    del state["layers.2.feed_forward.w3.weight"]
    _expect_error(tmp_path, BASE_PARAMS, state, r"missing key 'layers\.2\.feed_forward\.w3\.weight'")


def test_unexpected_key_is_named(tmp_path):
    state = random_meta_state(BASE_PARAMS)
    state["extra_heads.0.attention.wq.weight"] = torch.zeros(64, 64)
    _expect_error(tmp_path, BASE_PARAMS, state, r"unexpected key 'extra_heads\.0\.attention\.wq\.weight'")


def test_misshaped_key_is_named(tmp_path):
    state = random_meta_state(BASE_PARAMS)
    state["layers.0.attention.wk.weight"] = torch.zeros(32, 64)
    _expect_error(
        tmp_path,
        BASE_PARAMS,
        state,
        r"key 'layers\.0\.attention\.wk\.weight' has shape \(32, 64\), expected \(64, 64\)",
    )


def test_missing_params_json(tmp_path):
    folder = write_meta(tmp_path, BASE_PARAMS)
    (folder / "params.json").unlink()
    with pytest.raises(ConversionError, match=r"params\.json: params\.json not found"):
        convert_meta_checkpoint(folder, tmp_path / "hf")


def test_bad_params_are_named(tmp_path):
    params = {k: v for k, v in BASE_PARAMS.items() if k != "n_heads"}
    with pytest.raises(ConversionError, match="missing key 'n_heads'"):
        convert_meta_checkpoint(write_meta(tmp_path, params, {}), tmp_path / "hf")
    bad = {**BASE_PARAMS, "n_future_tokens": 9}
    with pytest.raises(ConversionError, match="n_future_tokens"):
        convert_meta_checkpoint(write_meta(tmp_path / "b", bad, {}), tmp_path / "b" / "hf")


def test_cli_reports_one_line_error(tmp_path):
    folder = write_meta(tmp_path, BASE_PARAMS)
    (folder / "params.json").unlink()
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_meta_checkpoint.py"), "--input-dir", str(folder),
         "--output-dir", str(tmp_path / "hf")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "params.json not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_converts(tmp_path):
    folder = write_meta(tmp_path, {**BASE_PARAMS, "n_future_tokens": 2})
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_meta_checkpoint.py"), "--input-dir", str(folder),
         "--output-dir", str(tmp_path / "hf"), "--dtype", "float16"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.config.n_future_tokens == 2 and model.lm_head.weight.dtype == torch.float16
