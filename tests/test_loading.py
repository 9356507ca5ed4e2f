"""wmtp_hf.loading: a model + tokenizer from a folder, a Hub id (offline cache) or a LoRA adapter folder,
checked against transformers/peft loading the same files directly; device/dtype parsing; pad fallback."""

from __future__ import annotations

import copy

import pytest
import torch
from hub_fixtures import use_hub_cache, write_hub_snapshot
from train_fixtures import write_llama, write_tiny_model
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from wmtp_hf import WmtpForMultiTokenPrediction
from wmtp_hf.loading import (
    LoadError,
    ensure_pad_token,
    load_causal_lm,
    load_for_inference,
    load_frozen_causal_lm,
    load_tokenizer,
    move_to_device,
    pad_token_id,
    parse_device,
    parse_dtype,
    read_model_type,
)

TOKENS = torch.tensor([[5, 17, 42, 99, 3, 61]])


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("loading")
    return {
        "wmtp": write_tiny_model(root / "wmtp", tiny_tokenizer),
        "llama": write_llama(root / "llama", tiny_tokenizer),
    }


def test_folder_loads_the_saved_weights_in_eval_mode_on_the_device(folders):
    model, tokenizer = load_for_inference(folders["wmtp"], device="cpu")
    direct = WmtpForMultiTokenPrediction.from_pretrained(folders["wmtp"]).eval()
    assert isinstance(model, WmtpForMultiTokenPrediction) and not model.training
    assert next(model.parameters()).device == torch.device("cpu")
    with torch.no_grad():
        assert torch.equal(model(TOKENS).logits, direct(TOKENS).logits)
    assert tokenizer.pad_token_id is not None and len(tokenizer) == direct.config.vocab_size
    assert read_model_type(folders["wmtp"]) == "wmtp" and read_model_type(folders["llama"]) == "llama"


def test_dtype_is_applied(folders):
    model, _ = load_for_inference(folders["llama"], device="cpu", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    model, _ = load_for_inference(folders["llama"], device="cpu", dtype="auto")
    assert next(model.parameters()).dtype == torch.float32  # the checkpoint's own dtype


def test_lora_adapter_folder_is_merged_into_its_base(folders, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folders["llama"]),
        LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj", "down_proj"]),
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # lora_B starts at zero: make the adapter change the outputs
                param.normal_(std=0.5)
        expected = peft_model.eval()(input_ids=TOKENS).logits
        base = LlamaForCausalLM.from_pretrained(folders["llama"]).eval()(input_ids=TOKENS).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    model, _ = load_for_inference(tmp_path / "adapter", device="cpu")
    assert "Peft" not in type(model).__name__  # merged: a plain transformers model
    with torch.no_grad():
        logits = model(input_ids=TOKENS).logits
    assert not torch.allclose(logits, base, atol=1e-3)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_hub_id_loads_from_the_offline_cache(folders, tmp_path, monkeypatch):
    write_hub_snapshot(tmp_path / "hub", "org/tiny-wmtp", folders["wmtp"])
    use_hub_cache(monkeypatch, tmp_path / "hub")
    model, tokenizer = load_for_inference("org/tiny-wmtp", device="cpu")
    direct = WmtpForMultiTokenPrediction.from_pretrained(folders["wmtp"]).eval()
    with torch.no_grad():
        assert torch.equal(model(TOKENS).logits, direct(TOKENS).logits)
    with pytest.raises(LoadError, match=r"^'org/absent': cannot load its tokenizer \("):
        load_for_inference("org/absent", device="cpu")


def test_pad_token_falls_back_to_eos(folders, tmp_path, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    assert load_tokenizer(tmp_path / "nopad", pad=False).pad_token_id is None
    loaded = load_tokenizer(tmp_path / "nopad")
    assert loaded.pad_token_id == loaded.eos_token_id == tiny_tokenizer.eos_token_id
    assert pad_token_id(load_tokenizer(tmp_path / "nopad", pad=False)) == tiny_tokenizer.eos_token_id
    kept = ensure_pad_token(copy.deepcopy(tiny_tokenizer))
    assert kept.pad_token_id == tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id


def test_frozen_model_is_in_eval_mode_without_grad_and_its_tokenizer_as_saved(
    folders, tmp_path, tiny_tokenizer
):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    folder = write_llama(tmp_path / "ref", tok)
    model, tokenizer = load_frozen_causal_lm(folder, dtype=torch.bfloat16)
    direct = LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(model(TOKENS).logits, direct(TOKENS).logits)
    assert tokenizer.pad_token_id is None  # no pad token added: the tokenizer is fingerprinted as saved
    with pytest.raises(LoadError, match=r"^ref 'missing': cannot load a causal LM"):
        load_frozen_causal_lm(tmp_path / "missing", label="ref 'missing'")


def test_device_and_dtype_parsing():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("cuda:1") == torch.device("cuda", 1)
    assert parse_dtype("auto") == "auto" and parse_dtype(None) is None
    assert parse_dtype("BF16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    with pytest.raises(LoadError, match=r"^--device: not a torch device 'gpu0' \("):
        parse_device("gpu0")
    with pytest.raises(ValueError, match=r"^--dtype: expected one of auto, float32, .*; got 'float8'$"):
        parse_dtype("float8")
    with pytest.raises(LoadError, match=r"^--ref-device: not a torch device"):
        parse_device("nope", option="--ref-device")


def test_bad_locations_and_devices_are_one_line_errors(folders, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match=r"^--model 'x': cannot load its tokenizer \(") as info:
        load_for_inference(tmp_path / "empty", device="cpu", label="--model 'x'")
    assert "\n" not in str(info.value)
    with pytest.raises(LoadError, match=r"cannot load a causal LM \("):
        load_causal_lm(tmp_path / "empty")
    with pytest.raises(LoadError, match=r"cannot load its config \("):
        read_model_type(tmp_path / "empty")

    class Unmovable(torch.nn.Module):
        def to(self, *args, **kwargs):
            raise RuntimeError("Torch not compiled with CUDA enabled\nmore")

    with pytest.raises(
        LoadError,
        match=r"^--device cuda: cannot move the reference there \(Torch not compiled with CUDA enabled\)$",
    ):
        move_to_device(Unmovable(), "cuda", what="the reference")
