"""Model card rendering: Hub metadata (tags, base model, pass@k as model-index) and body."""

from __future__ import annotations

import yaml
from huggingface_hub import ModelCard

from wmtp_hf.model_card import pass_at_k_results, render_model_card, rerender_card


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_card_metadata_and_results():
    text = render_model_card(
        stage="rho1",
        config={"stage": "rho1", "learning_rate": 1e-5},
        n_heads=4,
        base_model="facebook/multi-token-prediction",
        datasets=["codecontests"],
        steps=1000,
        final_loss=1.23456,
        eval_results=pass_at_k_results(
            {"humaneval": {"pass@1": 0.125, "pass@10": 0.3}}, {"humaneval": "test"}
        ),
        model_name="wmtp-rho1",
        repo_id="me/wmtp-rho1",
    )
    meta, body = split_card(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"wmtp", "multi-token-prediction", "custom_code", "wmtp-rho1"} <= set(meta["tags"])
    assert meta["base_model"] == "facebook/multi-token-prediction"
    assert meta["datasets"] == ["deepmind/code_contests"]
    assert meta["wmtp"]["stage"] == "rho1" and meta["wmtp"]["config"]["learning_rate"] == 1e-5
    (index,) = meta["model-index"]
    (result,) = index["results"]
    assert index["name"] == "wmtp-rho1" and result["task"]["type"] == "text-generation"
    assert result["dataset"] == {"type": "openai_humaneval", "name": "HumanEval", "split": "test"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"pass@1": 0.125, "pass@10": 0.3}
    assert 'from_pretrained("me/wmtp-rho1", trust_remote_code=True)' in body
    assert "| final training loss | 1.2346 |" in body and "learning_rate: 1.0e-05" in body
    assert "| HumanEval (`openai_humaneval`) | test | pass@1 | 0.1250 |" in body
    assert "$" not in body.replace("$ ", ""), "unfilled template placeholder"


def test_card_without_results_or_hub_base_model(tmp_path):
    meta, body = split_card(render_model_card(stage="baseline", config={}, n_heads=2))
    assert "model-index" not in meta and "base_model" not in meta
    assert "Not evaluated yet" in body and "micro preset" in body
    meta, body = split_card(
        render_model_card(stage="baseline", config={}, n_heads=2, base_model=str(tmp_path))
    )
    assert "base_model" not in meta, "a local folder is not a Hub base model"
    assert f"| base model | {tmp_path} |" in body


def test_adapter_card_and_rerender_merges_results():
    text = render_model_card(stage="critic", config={"lora_r": 8}, n_heads=2, base_model="org/base", adapter=True,
                             eval_results=pass_at_k_results({"mbpp": {"pass@1": 0.1}}))  # fmt: skip
    meta, body = split_card(text)
    assert meta["library_name"] == "peft" and meta["base_model"] == "org/base" and "lora" in meta["tags"]
    assert "AutoPeftModelForCausalLM" in body and "adapter" in body
    new = pass_at_k_results({"mbpp": {"pass@1": 0.2}, "humaneval": {"pass@1": 0.3}})
    again = ModelCard(
        rerender_card(
            ModelCard(text), eval_results=new, model_name="x", repo_id="me/x", adapter=True, n_heads=1
        )
    )
    scores = {(r.dataset_type, r.metric_type): r.metric_value for r in again.data.eval_results}
    assert scores == {("mbpp", "pass@1"): 0.2, ("openai_humaneval", "pass@1"): 0.3}
    assert again.data.wmtp["config"] == {"lora_r": 8} and again.data.wmtp["n_future_tokens"] == 2
    assert again.data.base_model == "org/base" and 'from_pretrained("me/x"' in again.text


def test_registered_model_name_is_credited_by_its_hub_id(tmp_path):
    from wmtp_hf.model_card import card_data

    data = card_data(stage="baseline", config={}, n_heads=4, base_model="smollm2-135m")
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.wmtp["base_model"] == "smollm2-135m"  # what the run was given
    assert (
        card_data(stage="baseline", config={}, n_heads=4, base_model=str(tmp_path / "m.gguf")).base_model
        is None
    )
