"""Model card rendering: Hub metadata (tags, base model, pass@k as model-index) and body."""

from __future__ import annotations

import yaml

from wmtp_hf.model_card import render_model_card


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
        datasets=["deepmind/code_contests"],
        steps=1000,
        final_loss=1.23456,
        results={"humaneval": {"pass@1": 0.125, "pass@10": 0.3}},
        model_name="wmtp-rho1",
        repo_id="me/wmtp-rho1",
    )
    meta, body = split_card(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"wmtp", "multi-token-prediction", "custom_code"} <= set(meta["tags"])
    assert meta["base_model"] == "facebook/multi-token-prediction"
    assert meta["datasets"] == ["deepmind/code_contests"]
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["name"] == "humaneval"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"pass@1": 0.125, "pass@10": 0.3}
    assert 'from_pretrained("me/wmtp-rho1", trust_remote_code=True)' in body
    assert "| final training loss | 1.2346 |" in body and "learning_rate: 1.0e-05" in body
    assert "$" not in body.replace("$ ", ""), "unfilled template placeholder"


def test_card_without_results_or_base_model():
    meta, body = split_card(render_model_card(stage="baseline", config={}, n_heads=2))
    assert "model-index" not in meta and "base_model" not in meta
    assert "Not evaluated yet" in body and "micro preset" in body
