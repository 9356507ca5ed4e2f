"""Self-speculative greedy decoding, `generate(..., mtp_speculative=True)`: the same tokens as plain greedy
`generate` (the reference), fewer forwards when the heads are right; also through trust_remote_code and the
evaluation CLI."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from no_wmtp_hf import BLOCK_WMTP_HF
from train_fixtures import write_tiny_model
from transformers import LlamaConfig, LlamaForCausalLM, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction, evaluate
from wmtp_hf.cycle_model import build_cycle_model
from wmtp_hf.evaluation.generation import generate_completions
from wmtp_hf.micro import MICRO_CONFIG

pytestmark = pytest.mark.floor  # also run on the lowest supported transformers (.ci/run)

PAD, BOS, EOS = 0, 1, 2
CYCLE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  # the heads-agree model continues this cycle
CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\nfor i in range(10):\n    print(i)\n"
PROMPTS = ["def add(a, b):\n", "for i in", "x", "def sub(a, b):\n    return"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These models are tiny: a second thread only adds synchronisation, which on a busy 2-core machine
    made this file several times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_model(n_future: int, seed: int = 0) -> WmtpForMultiTokenPrediction:
    torch.manual_seed(seed)
    config = WmtpConfig(
        vocab_size=89, hidden_size=32, intermediate_size=64, num_hidden_layers=2 + n_future,
        num_attention_heads=4, num_key_value_heads=2, n_future_tokens=n_future,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    return WmtpForMultiTokenPrediction(config).eval()


def left_padded(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


def both(model, inputs: dict, **kwargs):
    """(plain greedy output, speculative output), both as dict outputs with scores."""
    kwargs = dict(do_sample=False, return_dict_in_generate=True, output_scores=True, **kwargs)
    plain = model.generate(**inputs, **kwargs)
    return plain, model.generate(**inputs, **kwargs, mtp_speculative=True)


def assert_same_as_plain(plain, spec, enders: tuple[int, ...] = (EOS,), idle_heads: int = 0) -> None:
    """Same tokens, same scores, cache cropped to the output; `enders` are the tokens that end a row,
    `idle_heads` the last extra heads that did not draft (`mtp_num_drafts`)."""
    assert spec.sequences.tolist() == plain.sequences.tolist()
    # Scores must agree wherever they chose a token; a row that has ended gets pad whatever its scores.
    new = plain.sequences[:, plain.sequences.shape[1] - len(plain.scores) :]
    ended = torch.zeros_like(new, dtype=torch.bool)
    ended[:, 1:] = torch.isin(new[:, :-1], torch.tensor(enders)).cumsum(dim=1) > 0
    live = ~ended.T  # [steps, batch]
    torch.testing.assert_close(
        torch.stack(spec.scores)[live], torch.stack(plain.scores)[live], atol=1e-4, rtol=1e-4
    )
    # The returned cache holds every position but the last, in every layer that ran (the trunk, head 0 and
    # the drafting heads); the heads that did not draft never ran.
    lengths = [layer.get_seq_length() for layer in spec.past_key_values.layers]
    ran = len(lengths) - idle_heads
    assert set(lengths[:ran]) == {spec.sequences.shape[1] - 1} and set(lengths[ran:]) <= {0}
    assert spec.new_tokens == len(plain.scores)


@pytest.fixture(scope="module")
def trained(tiny_tokenizer):
    """The micro preset's architecture (4 trunk blocks + 4 heads, hidden 128) with the tiny tokenizer, trained
    briefly (MTP loss, all heads) on code: its drafts are right only sometimes, so acceptance and rejection
    both happen."""
    torch.manual_seed(0)
    tok = copy.deepcopy(tiny_tokenizer)  # padded on the left below; the session fixture stays as it is
    special = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    config = WmtpConfig(**{**MICRO_CONFIG, "vocab_size": len(tok), **special})
    model = WmtpForMultiTokenPrediction(config)
    ids = tok(CODE, return_tensors="pt")["input_ids"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    tok.padding_side = "left"
    return model.eval(), tok


@pytest.mark.parametrize("n_future", [1, 2, 4])
def test_random_models_match_plain_greedy_single_and_left_padded(n_future):
    model = random_model(n_future)
    rows = [[BOS, 17, 33, 5, 71, 40, 8], [BOS, 60, 61], [BOS, 9, 9, 23, 45]]
    for inputs in (left_padded(rows[:1]), left_padded(rows)):
        plain, spec = both(model, inputs, max_new_tokens=24, eos_token_id=None)
        assert_same_as_plain(plain, spec, enders=())
        if n_future == 1:  # no drafts: plain greedy, one forward per token
            assert spec.forwards == spec.new_tokens == 24 and spec.draft_tokens == 0


def test_briefly_trained_model_matches_plain_greedy(trained):
    model, tok = trained
    inputs = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    assert inputs["attention_mask"].min() == 0  # the prompts really are left-padded
    totals = {"accepted": 0, "drafted": 0}
    for batch in (inputs, dict(tok(PROMPTS[:1], return_tensors="pt"))):
        plain, spec = both(model, batch, max_new_tokens=40, pad_token_id=tok.pad_token_id)
        assert_same_as_plain(plain, spec, enders=(tok.eos_token_id,))
        assert spec.forwards == spec.new_tokens - spec.accepted_draft_tokens
        totals["accepted"] += spec.accepted_draft_tokens
        totals["drafted"] += spec.draft_tokens
    assert 0 < totals["accepted"] < totals["drafted"]  # both accepted and rejected drafts were exercised


@pytest.mark.parametrize("n_future", [2, 4])
def test_heads_agree_model_needs_one_forward_per_n_tokens(n_future):
    model = build_cycle_model(CYCLE, n_future_tokens=n_future, pad_token_id=PAD, eos_token_id=EOS)
    inputs = left_padded([[3, 4, 5], [9, 10]])
    new = 41
    plain, spec = both(model, inputs, max_new_tokens=new)
    assert_same_as_plain(plain, spec)
    walk = [CYCLE[(CYCLE.index(5) + k) % len(CYCLE)] for k in range(1, new + 1)]
    assert spec.sequences[0, 3:].tolist() == walk  # it walks the cycle
    # The prompt's forward gives one token; each later forward gives the fed token's successor + n-1 drafts.
    assert spec.forwards == 1 + math.ceil((new - 1) / n_future)
    assert spec.accepted_draft_tokens == spec.draft_tokens == new - spec.forwards


@pytest.mark.parametrize("drafts", [1, 2])
def test_fewer_drafts_per_step_keep_the_output_and_feed_fewer_tokens(drafts, trained):
    """`mtp_num_drafts=k`: heads 1..k draft, so a forward yields at most k+1 tokens (the heads-agree model
    gets exactly that) and the output is plain greedy's (the trained model, which also rejects drafts)."""
    model = build_cycle_model(CYCLE, n_future_tokens=4, pad_token_id=PAD, eos_token_id=EOS)
    inputs, new = left_padded([[3, 4, 5], [9, 10]]), 31
    plain, spec = both(model, inputs, max_new_tokens=new, mtp_num_drafts=drafts)
    assert_same_as_plain(plain, spec, idle_heads=3 - drafts)
    assert spec.forwards == 1 + math.ceil((new - 1) / (drafts + 1))
    assert spec.accepted_draft_tokens == spec.draft_tokens == new - spec.forwards
    trained_model, tok = trained
    batch = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    plain, spec = both(
        trained_model, batch, max_new_tokens=30, pad_token_id=tok.pad_token_id, mtp_num_drafts=drafts
    )
    assert_same_as_plain(plain, spec, enders=(tok.eos_token_id,), idle_heads=3 - drafts)
    assert spec.draft_tokens <= drafts * (spec.forwards - 1)


@pytest.mark.parametrize("bad", [0, 4, 1.5, True])
def test_num_drafts_out_of_range_is_a_clear_error(bad):
    model = random_model(4)
    with pytest.raises(ValueError, match=r"mtp_num_drafts must be an integer in 1\.\.3, got"):
        model.generate(**left_padded([[BOS, 5, 6]]), max_new_tokens=3, do_sample=False, mtp_speculative=True,
                       mtp_num_drafts=bad)  # fmt: skip


def test_eos_inside_an_accepted_draft_ends_that_row():
    cycle = [3, 4, 5, 6, 7, EOS, 8, 9, 10, 11]
    model = build_cycle_model(cycle, n_future_tokens=4, pad_token_id=PAD, eos_token_id=EOS)
    # Row 0 reaches EOS as its 3rd new token (a draft of the 2nd forward), row 1 as its 5th.
    inputs = left_padded([[3, 4, 5], [8, 9, 10, 11, 3]])
    plain, spec = both(model, inputs, max_new_tokens=20)
    assert_same_as_plain(plain, spec)
    new_tokens = spec.sequences[:, inputs["input_ids"].shape[1] :].tolist()
    assert new_tokens[0][:3] == [6, 7, EOS] and set(new_tokens[0][3:]) == {PAD}
    assert new_tokens[1] == [4, 5, 6, 7, EOS]  # the batch stops when the last row ends
    single = model.generate(
        **left_padded([[3, 4, 5]]), max_new_tokens=9, do_sample=False, mtp_speculative=True
    )
    assert single[0, 3:].tolist() == [6, 7, EOS]


@pytest.mark.parametrize("new", [1, 2, 3, 4, 5, 6, 9])
def test_max_new_tokens_is_exact(new):
    model = build_cycle_model(CYCLE, n_future_tokens=4, pad_token_id=PAD, eos_token_id=EOS)
    inputs = left_padded([[3, 4, 5]])
    plain, spec = both(model, inputs, max_new_tokens=new)
    assert_same_as_plain(plain, spec)
    assert spec.sequences.shape[1] == 3 + new and spec.forwards == 1 + math.ceil((new - 1) / 4)


class StopAfterToken(StoppingCriteria):
    """A user criterion: a row is done once it has generated `token`."""

    def __init__(self, token: int, prompt_length: int) -> None:
        self.token, self.prompt_length = token, prompt_length

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return (input_ids[:, self.prompt_length :] == self.token).any(dim=1)


class StopFirstRowEarly(StoppingCriteria):
    """A user criterion: row 0 is done after `count` new tokens, the other rows never."""

    def __init__(self, count: int, prompt_length: int) -> None:
        self.count, self.prompt_length = count, prompt_length

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done[0] = input_ids.shape[1] - self.prompt_length >= self.count
        return done


def test_user_stopping_criteria_and_logits_processors_are_honoured(trained):
    model = build_cycle_model(CYCLE, n_future_tokens=4, pad_token_id=PAD, eos_token_id=EOS)
    inputs = left_padded([[3, 4], [6, 7]])
    stop = StoppingCriteriaList([StopAfterToken(10, inputs["input_ids"].shape[1])])
    plain, spec = both(model, inputs, max_new_tokens=30, stopping_criteria=stop)
    assert_same_as_plain(plain, spec, enders=(EOS, 10))
    assert spec.sequences.shape[1] == 2 + 6  # row 0 generates 5..10, row 1 8, 9, 10 and then pads
    # Suppressing a cycle token sends head 0 off the heads' drafts: processors apply at every position.
    plain, spec = both(model, inputs, max_new_tokens=16, suppress_tokens=[8])
    assert_same_as_plain(plain, spec)
    assert spec.accepted_draft_tokens < spec.draft_tokens
    trained_model, tok = trained
    batch = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    plain, spec = both(trained_model, batch, max_new_tokens=30, repetition_penalty=1.5, min_new_tokens=10)
    assert_same_as_plain(plain, spec, enders=(tok.eos_token_id,))
    # Without EOS, a row a criterion has stopped is not padded: generate keeps decoding it, so must this.
    stop = StoppingCriteriaList([StopFirstRowEarly(3, batch["input_ids"].shape[1])])
    plain, spec = both(trained_model, batch, max_new_tokens=30, eos_token_id=None, stopping_criteria=stop)
    assert_same_as_plain(plain, spec, enders=())


class Collect(BaseStreamer):
    """A streamer that records every `put` and whether `end` was called."""

    def __init__(self) -> None:
        self.puts, self.ended = [], False

    def put(self, value) -> None:
        self.puts.append(value.tolist())

    def end(self) -> None:
        self.ended = True


def test_streamer_gets_the_prompt_then_one_token_at_a_time():
    model = build_cycle_model(CYCLE, n_future_tokens=4, pad_token_id=PAD, eos_token_id=EOS)
    inputs = left_padded([[3, 4, 5]])
    plain, spec = Collect(), Collect()
    model.generate(**inputs, max_new_tokens=7, do_sample=False, streamer=plain)
    model.generate(**inputs, max_new_tokens=7, do_sample=False, streamer=spec, mtp_speculative=True)
    assert spec.puts == plain.puts and len(spec.puts) == 1 + 7 and spec.ended


def test_sampling_and_beams_are_clear_errors():
    model = random_model(2)
    inputs = left_padded([[BOS, 5, 6]])
    with pytest.raises(ValueError, match="mtp_speculative=True decodes greedily; got do_sample=True"):
        model.generate(**inputs, do_sample=True, max_new_tokens=3, mtp_speculative=True)
    with pytest.raises(ValueError, match="mtp_speculative=True needs num_beams=1"):
        model.generate(**inputs, num_beams=2, max_new_tokens=3, mtp_speculative=True)


def test_speculative_decoding_through_trust_remote_code_without_wmtp_hf(tmp_path, trained):
    trained[0].save_pretrained(tmp_path / "trained")
    build_cycle_model(CYCLE, n_future_tokens=4, pad_token_id=PAD, eos_token_id=EOS).save_pretrained(
        tmp_path / "cycle"
    )
    inputs = dict(trained[1](PROMPTS, return_tensors="pt", padding=True))
    script = BLOCK_WMTP_HF + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        result = {{}}
        for name, ids, mask in [
            ("trained", {inputs["input_ids"].tolist()}, {inputs["attention_mask"].tolist()}),
            ("cycle", [[3, 4, 5]], [[1, 1, 1]]),
        ]:
            model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True)
            kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=21,
                      do_sample=False, pad_token_id=0)
            plain = model.generate(**kw)
            spec = model.generate(**kw, mtp_speculative=True, return_dict_in_generate=True)
            result[name] = {{"module": type(model).__module__, "same": plain.tolist() == spec.sequences.tolist(),
                            "forwards": spec.forwards, "new": spec.new_tokens}}
        assert not any(m.startswith("wmtp_hf") for m in sys.modules)
        print(json.dumps(result))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf_home"),
             "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("trained", "cycle"):
        assert result[name]["module"].startswith("transformers_modules.") and result[name]["same"]
    assert result["cycle"]["forwards"] == 1 + math.ceil(20 / 4) and result["cycle"]["new"] == 21


def test_generate_completions_rejects_speculative_without_heads_or_with_sampling(tiny_tokenizer):
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1)
    )  # fmt: skip
    with pytest.raises(
        ValueError, match="--speculative: needs a WMTP model with MTP heads; got model_type 'llama'"
    ):
        generate_completions(llama, tiny_tokenizer, ["x"], max_new_tokens=2, speculative=True, progress=False)
    with pytest.raises(ValueError, match="--speculative: decodes greedily; expected --temperature 0"):
        generate_completions(
            llama, tiny_tokenizer, ["x"], temperature=0.5, max_new_tokens=2, speculative=True, progress=False
        )


def test_evaluate_cli_speculative_writes_tokens_per_forward(tmp_path, tiny_tokenizer, capsys):
    model_dir = write_tiny_model(tmp_path / "model", tiny_tokenizer, n_future=2)
    common = ["--model", str(model_dir), "--dataset", "humaneval", "--limit", "3", "--max-new-tokens", "12",
              "--batch-size", "2", "--timeout", "5"]  # fmt: skip
    assert evaluate.main([*common, "--output", str(tmp_path / "plain")]) == 0
    assert evaluate.main([*common, "--speculative", "--output", str(tmp_path / "spec")]) == 0
    rows = {}
    for name in ("plain", "spec"):
        lines = (tmp_path / name / "results.jsonl").read_text().splitlines()
        rows[name] = [json.loads(line)["completion"] for line in lines]
    assert rows["spec"] == rows["plain"]
    summary = json.loads((tmp_path / "spec" / "summary.json").read_text())
    stats = summary["speculative"]
    assert (
        stats["forwards"] <= stats["new_tokens"] and stats["draft_tokens"] >= stats["accepted_draft_tokens"]
    )
    assert summary["tokens_per_forward"] == pytest.approx(stats["new_tokens"] / stats["forwards"], abs=1e-4)
    assert "tokens_per_forward" not in json.loads((tmp_path / "plain" / "summary.json").read_text())
    capsys.readouterr()
    rc = evaluate.main([*common, "--speculative", "--temperature", "0.8", "--output", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "--speculative: decodes greedily" in err
    assert not (tmp_path / "bad").exists()
