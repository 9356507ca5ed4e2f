"""Packing with flash attention (varlen), checked on CPU: a packed batch hands transformers' flash path
what its varlen kernel needs (`cu_seq_lens_q/k` at the example boundaries, `max_length_q/k`, restarting
`position_ids`, no mask), through the model and through a stage's loss. The kernel itself needs a GPU
(scripts/gpu_check.py, section `packing`); here a stand-in registered as an attention backend records
the arguments and computes varlen attention from `cu_seq_lens` alone, example by example."""

from __future__ import annotations

import datasets
import pytest
import torch
from packing_fixtures import make_features
from train_fixtures import write_tiny_model
from transformers import AttentionInterface, AttentionMaskInterface, AutoModelForCausalLM
from transformers.masking_utils import flash_attention_mask
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from wmtp_hf.data import WmtpDataCollator
from wmtp_hf.train.run_stage import passes_flash_kwargs
from wmtp_hf.train.stages import STAGE_TRAINERS, build_config
from wmtp_hf.train.trainer import forward_inputs

PROBE = "wmtp_varlen_probe"
CALLS: list[dict] = []


def varlen_probe(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Flash's varlen contract: `[1, H, N, d]` in, `[1, N, H, d]` out, one causal block per
    `cu_seq_lens_q` segment (the kernel reads nothing else to keep examples apart)."""
    CALLS.append({"mask": attention_mask, **kwargs})
    bounds = kwargs["cu_seq_lens_q"].tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        q, k, v = (t[:, :, start:end] for t in (query, key, value))
        outs.append(
            torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scaling, enable_gqa=True
            )
        )
    return torch.cat(outs, dim=2).transpose(1, 2), None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    AttentionInterface.register(PROBE, varlen_probe)
    AttentionMaskInterface.register(PROBE, flash_attention_mask)  # as transformers masks flash_attention_2
    return write_tiny_model(tmp_path_factory.mktemp("flash") / "model", tiny_tokenizer, n_future=3)


def test_packed_batch_gives_the_flash_path_its_varlen_arguments(model_dir, tiny_tokenizer):
    tok = tiny_tokenizer
    features = make_features(len(tok), tok.eos_token_id)
    lengths = [len(f["input_ids"]) for f in features]
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    packed = WmtpDataCollator(tok, packing=True, flash_attn_kwargs=True)(features)
    probe = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=PROBE).eval()
    sdpa = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    CALLS.clear()
    out = probe(**forward_inputs(packed), return_all_heads=True)
    assert len(CALLS) == probe.config.num_hidden_layers  # every trunk block and every head
    for call in CALLS:
        assert call["mask"] is None
        assert call["cu_seq_lens_q"].tolist() == call["cu_seq_lens_k"].tolist() == bounds
        assert call["max_length_q"] == call["max_length_k"] == max(lengths)
        # transformers infers the same boundaries from the restarting positions (its path without them)
        (cu_q, _), (max_q, _) = prepare_fa_kwargs_from_position_ids(call["position_ids"])
        assert cu_q.tolist() == bounds and int(max_q) == max(lengths)
    start = 0
    for feature, n in zip(features, lengths, strict=True):  # each example alone, sdpa
        alone = sdpa(input_ids=torch.tensor([feature["input_ids"]]), return_all_heads=True)
        torch.testing.assert_close(
            out.mtp_logits[0, start : start + n], alone.mtp_logits[0], atol=1e-5, rtol=0
        )
        start += n


@pytest.mark.parametrize("stage", ["baseline", "rho1"])
def test_stage_loss_with_flash_varlen_equals_the_padded_sdpa_loss(model_dir, tiny_tokenizer, tmp_path, stage):
    tok = tiny_tokenizer
    features = make_features(len(tok), tok.eos_token_id, ref=True)
    config = build_config(stage, None, {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True,
                                        "packing": True, "attn_implementation": "flash_attention_2"})  # fmt: skip
    assert passes_flash_kwargs(config)  # the run's collator adds cu_seq_lens_* / max_length_*
    losses = {}
    for name, attn, collate in (
        ("packed", PROBE, WmtpDataCollator(tok, packing=True, flash_attn_kwargs=True)),
        ("padded", "sdpa", WmtpDataCollator(tok)),
    ):
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn)
        extra = {"reference": None} if stage == "rho1" else {}
        trainer = STAGE_TRAINERS[stage](
            model=model, args=config, train_dataset=datasets.Dataset.from_list(features[:2]), **extra
        )
        batch = trainer._prepare_inputs(collate(features))
        CALLS.clear()
        loss = trainer.compute_loss(
            model, batch, num_items_in_batch=trainer._get_num_items_in_batch([batch], "cpu")
        )
        loss.backward()
        assert (len(CALLS) > 0) == (name == "packed")
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        losses[name] = (loss.detach(), grads)
    torch.testing.assert_close(losses["packed"][0], losses["padded"][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(losses["packed"][1], losses["padded"][1], atol=1e-5, rtol=0)
