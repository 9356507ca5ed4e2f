"""Publishing: the Trainer's push and `python -m wmtp_hf.publish` up to the commit call (intercepted), the
model card's metadata, and loading the pushed files back from a Hub cache, also without wmtp_hf."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hub_fixtures import FakeHub, use_hub_cache, write_hub_snapshot
from huggingface_hub import ModelCard
from no_wmtp_hf import BLOCK_WMTP_HF
from stage_fixtures import MARKER, stage_args
from train_fixtures import train_args, write_llama, write_marker_dataset, write_mbpp_fixture, write_tiny_model
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from wmtp_hf import WmtpForMultiTokenPrediction
from wmtp_hf.publish import main as publish_main
from wmtp_hf.remote_code import remote_code_files
from wmtp_hf.train.cli import main as train_main

pytestmark = pytest.mark.floor  # also run on the lowest supported transformers (.ci/run)

TOKENS = torch.randint(3, 200, (2, 11), generator=torch.Generator().manual_seed(0))
MODEL_FILES = {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "trained_problems.json", *remote_code_files()}  # fmt: skip


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, tiny_tokenizer):
    """A short baseline run from the Hub id `org/tiny-base` (a Hub cache) with push_to_hub, uploads intercepted."""
    root = tmp_path_factory.mktemp("publish")
    base = write_tiny_model(root / "base", tiny_tokenizer)
    data = write_mbpp_fixture(root / "mbpp.jsonl")
    hub = FakeHub()
    with pytest.MonkeyPatch.context() as mp:
        hub.install(mp)
        use_hub_cache(mp, root / "hub")
        write_hub_snapshot(root / "hub", "org/tiny-base", base)
        argv = train_args("org/tiny-base", data, root / "run", **{"max-steps": 2}, push_to_hub=True,
                          hub_model_id="org/wmtp-tiny", hub_private_repo=True, hub_revision="v1")  # fmt: skip
        assert train_main(argv) == 0
    return {"root": root, "base": base, "final": root / "run" / "final", "hub": hub}


def card_of(files: dict[str, bytes]) -> ModelCard:
    return ModelCard(files["README.md"].decode())


def test_trainer_push_uploads_the_final_folder_with_our_card(pushed):
    hub, final = pushed["hub"], pushed["final"]
    assert hub.repos[0] == {"repo_id": "org/wmtp-tiny", "private": True, "exist_ok": True}
    assert hub.branches == [{"repo_id": "org/wmtp-tiny", "branch": "v1", "exist_ok": True}]
    (commit,) = hub.commits  # hub_strategy end: one commit, after the final folder is complete
    assert commit["repo_id"] == "org/wmtp-tiny" and commit["revision"] == "v1"
    assert set(commit["files"]) == MODEL_FILES
    for name in MODEL_FILES:
        assert commit["files"][name] == (final / name).read_bytes(), name
    config = json.loads(commit["files"]["config.json"])
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_wmtp.WmtpForMultiTokenPrediction"
    assert config["auto_map"]["AutoModel"] == "modeling_wmtp.WmtpModel"
    card = card_of(commit["files"])
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert {"wmtp", "multi-token-prediction", "custom_code", "wmtp-baseline"} <= set(data.tags)
    assert data.base_model == "org/tiny-base" and data.datasets == ["mbpp"]
    assert data.eval_results is None and "model-index" not in card.content.split("\n---\n")[0]
    assert data.wmtp["stage"] == "baseline" and data.wmtp["n_future_tokens"] == 2
    assert data.wmtp["config"]["hub_model_id"] == "org/wmtp-tiny" and data.wmtp["steps"] == 2
    assert 'from_pretrained("org/wmtp-tiny", trust_remote_code=True)' in card.text
    assert "generated from_trainer" not in card.content.replace("-", " ") and "Trainer" not in card.text


def publish_random_adapter(final: Path, folder: Path, monkeypatch) -> tuple[dict[str, bytes], torch.Tensor]:
    """A LoRA adapter with random weights on `final`, published with base `org/wmtp-tiny` (intercepted):
    the uploaded files and the adapter's logits on TOKENS."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(final),
                           LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj", "down_proj"]))  # fmt: skip
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # lora_B starts at zero; make the adapter change the outputs
                param.normal_(std=0.5)
        logits = model.eval()(input_ids=TOKENS).logits
    model.save_pretrained(folder)
    hub = FakeHub().install(monkeypatch)
    assert (
        publish_main(["--model", str(folder), "--repo-id", "org/tiny-lora", "--base-model", "org/wmtp-tiny"])
        == 0
    )
    return hub.commits[0]["files"], logits


def test_pushed_model_loads_from_the_hub_cache_without_wmtp_hf(pushed, tmp_path, monkeypatch):
    (commit,) = pushed["hub"].commits
    write_hub_snapshot(tmp_path / "hub", "org/wmtp-tiny", commit["files"], revision="v1")
    write_hub_snapshot(tmp_path / "hub", "org/wmtp-tiny", commit["files"])  # main, the adapter's base
    adapter_files, adapter_logits = publish_random_adapter(pushed["final"], tmp_path / "adapter", monkeypatch)
    write_hub_snapshot(tmp_path / "hub", "org/tiny-lora", adapter_files)
    local = AutoModelForCausalLM.from_pretrained(pushed["final"]).eval()
    with torch.no_grad():
        expected = local(TOKENS, return_all_heads=True)
        hidden = local.model(TOKENS).last_hidden_state
    script = BLOCK_WMTP_HF + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
        tokens = torch.tensor({TOKENS.tolist()})
        kwargs = dict(revision="v1", trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained("org/wmtp-tiny", **kwargs).eval()
        base = AutoModel.from_pretrained("org/wmtp-tiny", **kwargs).eval()
        tokenizer = AutoTokenizer.from_pretrained("org/wmtp-tiny", **kwargs)
        from peft import AutoPeftModelForCausalLM
        adapter = AutoPeftModelForCausalLM.from_pretrained("org/tiny-lora", trust_remote_code=True).eval()
        with torch.no_grad():
            out = model(tokens, return_all_heads=True)
            hidden = base(tokens).last_hidden_state
            lora = adapter(input_ids=tokens).logits
        assert not any(m.startswith("wmtp_hf") for m in sys.modules)
        print("RESULT", json.dumps({{"cls": type(model).__module__, "base": type(base).__name__, "vocab": len(tokenizer),
                          "logits": out.logits.tolist(), "mtp": out.mtp_logits.tolist(), "hidden": hidden.tolist(),
                          "lora": lora.tolist()}}))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home"),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          check=False, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]  # load reports also print
    result = json.loads(line[len("RESULT ") :])
    assert result["cls"].startswith("transformers_modules.") and result["base"] == "WmtpModel"
    assert result["vocab"] == local.config.vocab_size
    torch.testing.assert_close(torch.tensor(result["logits"]), expected.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(result["mtp"]), expected.mtp_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(result["hidden"]), hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(result["lora"]), adapter_logits, atol=1e-5, rtol=0)
    assert not torch.allclose(adapter_logits, expected.logits, atol=1e-3)  # the adapter changes the model


def write_summary(path: Path, dataset: str, split: str = "test", **scores: float) -> Path:
    """A summary.json as `python -m wmtp_hf.evaluate` writes it."""
    summary = {"dataset": dataset, "split": split, "source": "m", **{k.replace("_", "@"): v for k, v in scores.items()},
               "k": [1], "skipped_k": [], "n_problems": 4, "n_samples": 4}  # fmt: skip
    path.write_text(json.dumps(summary))
    return path


def test_publish_cli_merges_eval_summaries_into_model_index(pushed, tmp_path, monkeypatch, capsys):
    hub = FakeHub().install(monkeypatch)
    final = pushed["final"]
    readme_before = (final / "README.md").read_bytes()
    humaneval = write_summary(tmp_path / "he.json", "humaneval", pass_1=0.25, pass_10=0.5)
    mbpp = write_summary(tmp_path / "mbpp.json", "mbpp", pass_1=0.125)
    argv = ["--model", str(final), "--repo-id", "me/wmtp-pub", "--eval", str(humaneval), str(mbpp),
            "--private", "--revision", "r2"]  # fmt: skip
    assert publish_main(argv) == 0
    assert "pushed the model" in capsys.readouterr().out
    assert hub.repos == [{"repo_id": "me/wmtp-pub", "private": True, "exist_ok": True}]
    assert hub.branches[0]["branch"] == "r2"
    (commit,) = hub.commits
    assert commit["revision"] == "r2" and set(commit["files"]) == MODEL_FILES
    card = card_of(commit["files"])
    scores = {
        (r.dataset_type, r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results
    }
    assert scores == {("openai_humaneval", "test", "pass@1"): 0.25, ("openai_humaneval", "test", "pass@10"): 0.5,
                      ("mbpp", "test", "pass@1"): 0.125}  # fmt: skip
    assert {r.task_type for r in card.data.eval_results} == {"text-generation"}
    index = card.data.to_dict()["model-index"][0]
    assert index["name"] == "wmtp-pub" and len(index["results"]) == 2
    # the training metadata and body survive; the usage names the new repo; the local card is untouched
    assert card.data.wmtp["stage"] == "baseline" and card.data.base_model == "org/tiny-base"
    assert 'from_pretrained("me/wmtp-pub", trust_remote_code=True)' in card.text
    assert "| HumanEval (`openai_humaneval`) | test | pass@10 | 0.5000 |" in card.text
    assert (final / "README.md").read_bytes() == readme_before
    # results already in the card are kept, and replaced by a newer summary of the same dataset and metric
    again = tmp_path / "again"
    again.mkdir()
    for name in MODEL_FILES:
        (again / name).write_bytes(commit["files"][name])
    newer = write_summary(tmp_path / "mbpp2.json", "mbpp", pass_1=0.5, pass_5=0.75)
    assert publish_main(["--model", str(again), "--repo-id", "me/wmtp-pub", "--eval", str(newer)]) == 0
    card = card_of(hub.commits[-1]["files"])
    scores = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert scores == {("openai_humaneval", "pass@1"): 0.25, ("openai_humaneval", "pass@10"): 0.5,
                      ("mbpp", "pass@1"): 0.5, ("mbpp", "pass@5"): 0.75}  # fmt: skip


def test_publish_bad_input_is_one_line_and_uploads_nothing(pushed, tmp_path, monkeypatch, capsys):
    hub = FakeHub().install(monkeypatch)
    final = str(pushed["final"])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    (tmp_path / "broken.json").write_text('{"dataset": "mbpp", "pass@1": ')

    def argv(model=final, repo="me/x", evals=()):
        return ["--model", str(model), "--repo-id", repo] + (["--eval", *map(str, evals)] if evals else [])

    cases = [
        (argv(model=tmp_path / "nope"), f"--model '{tmp_path / 'nope'}': no such folder"),
        (argv(model=tmp_path / "notes"), "not a model folder (expected config.json with model.safetensors"),
        (argv(evals=[tmp_path / "missing.json"]), f"--eval '{tmp_path / 'missing.json'}': no such file"),
        (argv(evals=[tmp_path / "broken.json"]), "broken.json': not a readable JSON file ("),
        (argv(evals=[write_summary(tmp_path / "d.json", "apps", pass_1=0.5)]),
         "field 'dataset' expected one of humaneval, mbpp, codecontests, offline, got 'apps'"),
        (argv(evals=[write_summary(tmp_path / "p.json", "mbpp", pass_1=1.5)]),
         "field 'pass@1' expected pass@<k> with a fraction in [0, 1], got 1.5"),
        (argv(evals=[write_summary(tmp_path / "n.json", "mbpp")]), "n.json': no pass@k field"),
        (argv(repo="not a repo"), "--repo-id: expected a Hub repository id ORG/NAME, got 'not a repo'"),
    ]  # fmt: skip
    for args, message in cases:
        assert publish_main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, (args, err)
    assert hub.calls() == 0


def test_llama_by_hub_id_converts_and_serves_as_rho1_reference(tmp_path, tiny_tokenizer, monkeypatch):
    from wmtp_hf.train.stages import rho1

    llama_dir = write_llama(tmp_path / "llama", tiny_tokenizer, seed=0)
    write_hub_snapshot(tmp_path / "hub", "org/tiny-llama", llama_dir)
    use_hub_cache(monkeypatch, tmp_path / "hub")
    llama = LlamaForCausalLM.from_pretrained(llama_dir).eval()
    wmtp = WmtpForMultiTokenPrediction.from_llama("org/tiny-llama", n_future_tokens=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(wmtp(TOKENS).logits, llama(TOKENS).logits, atol=1e-5, rtol=0)
    # rho1 with `reference_model: org/tiny-llama`, resolved from the cache; LoRA wraps the policy only
    loaded = []
    original = rho1.load_reference_model
    monkeypatch.setattr(
        rho1, "load_reference_model", lambda *a, **k: loaded.append(original(*a, **k)) or loaded[-1]
    )
    policy = write_tiny_model(tmp_path / "policy", tiny_tokenizer)
    data = write_marker_dataset(tmp_path / "marker", len(tiny_tokenizer), MARKER, n_problems=12,
                                eos=tiny_tokenizer.eos_token_id)  # fmt: skip
    argv = stage_args("rho1", policy, data, tmp_path / "rho1", reference_model="org/tiny-llama", use_peft=True,
                      **{"max-steps": 1})  # fmt: skip
    assert train_main(argv) == 0
    (reference, _), = loaded  # fmt: skip
    assert not any("lora" in name for name, _ in reference.named_modules())
    for name, value in llama.state_dict().items():
        assert torch.equal(reference.state_dict()[name], value), name
    assert (tmp_path / "rho1" / "final" / "adapter_config.json").is_file()
