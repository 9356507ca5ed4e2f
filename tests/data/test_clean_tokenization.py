"""Clean tokenization (docs/data.md "Tokenization"): prompt + response tokenized together, the label mask
placed at the character boundary, EOS once; checked against an independent reference (re-tokenizing the
full text and locating the boundary by decoding prefixes) for the micro tokenizer, a BPE tokenizer trained
here with `tokenizers`, tiny chat templates, and SmolLM2's tokenizer when one is available."""

from __future__ import annotations

import datasets
import pytest
from tokenization_fixtures import _bpe_tokenizer, _rows, _with_template

from wmtp_hf.data import WmtpDataCollator, encode_example, tokenize_dataset
from wmtp_hf.data.prompt_formats import format_prompt, render_example
from wmtp_hf.data.schema import FEATURES
from wmtp_hf.micro import build_micro_tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# End of turn is not the EOS token, and the template writes BOS itself.
OTHER_TURN_END = (
    "<s>{% for m in messages %}[{{ m['role'] }}]\n{{ m['content'] }}[END]\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]\n{% endif %}"
)


def reference_encoding(row, tokenizer, prompt_format) -> tuple[list[int], int]:
    """Independent: tokens of the full text in one call; the first response token is the first whose
    decoded prefix reaches past the prompt's characters; EOS appended unless the text ends with it."""
    prompt, response, ends_with_eos = render_example(row, prompt_format, tokenizer)
    text = prompt + response
    special = not (tokenizer.bos_token and text.startswith(tokenizer.bos_token))
    ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    lead = tokenizer.bos_token if special and ids[0] == tokenizer.bos_token_id else ""
    plen = next(i for i in range(len(ids)) if len(tokenizer.decode(ids[: i + 1])) > len(lead + prompt))
    assert tokenizer.decode(ids) == lead + text  # decoding is exact for these tokenizers
    return (ids if ends_with_eos else ids + [tokenizer.eos_token_id]), plen


def _check(tokenizer, prompt_format: str) -> None:
    rows = _rows()
    tokenized, dropped = tokenize_dataset(
        datasets.Dataset.from_list(rows, features=FEATURES), tokenizer, 2048, prompt_format=prompt_format
    )
    assert dropped == {} and len(tokenized) == len(rows)
    batch = WmtpDataCollator(tokenizer)([dict(r) for r in tokenized])
    eos = tokenizer.eos_token_id
    for i, row in enumerate(rows):
        ids, plen = reference_encoding(row, tokenizer, prompt_format)
        got = tokenized[i]["input_ids"]
        assert got == ids and tokenized[i]["prompt_length"] == plen
        labels = batch["labels"][i, : len(ids)].tolist()
        assert labels == [-100] * plen + ids[plen:]
        assert labels[-1] == eos and labels.count(eos) == 1  # EOS once


@pytest.mark.parametrize("prompt_format", ["raw", "alpaca"])
def test_micro_tokenizer(prompt_format):
    _check(build_micro_tokenizer(), prompt_format)


@pytest.mark.parametrize("prompt_format", ["raw", "alpaca"])
def test_bpe_tokenizer(prompt_format):
    _check(_bpe_tokenizer(), prompt_format)


@pytest.mark.parametrize("template", [CHATML, OTHER_TURN_END], ids=["eos-ends-turn", "own-turn-end"])
def test_chat_templates(template):
    tokenizer = _with_template(_bpe_tokenizer(), template)
    _check(tokenizer, "chat")
    ids, plen = encode_example(_rows()[2], tokenizer, "chat")
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id  # BOS not doubled
    response = tokenizer.decode(ids[plen:])
    assert "```python\ndef inc(x):" in response and "return x + 1\n```" in response
    assert response.endswith("```</s>" if template == CHATML else "```[END]\n</s>")


def test_boundary_merge_is_kept_and_labelled_as_response():
    """The alpaca prompt ends with "\\n" and the body starts with indentation: one BPE token spans both.
    Tokenizing the parts separately (the old way) gives other tokens; the clean encoding keeps the merged
    token and counts it as a response token."""
    tokenizer = _bpe_tokenizer()
    row = _rows()[2]
    ids, plen = encode_example(row, tokenizer, "alpaca")
    separate = (
        tokenizer(format_prompt(row))["input_ids"]
        + tokenizer(row["output"], add_special_tokens=False)["input_ids"]
    )
    assert ids[:-1] != separate
    straddling = tokenizer.decode([ids[plen]])
    assert straddling.startswith("\n") and straddling.strip() == "" and len(straddling) > 1
    assert tokenizer.decode(ids[:plen]) == "<s>" + format_prompt(row)[:-1]


@pytest.mark.real_model
@pytest.mark.parametrize("prompt_format", ["raw", "alpaca", "chat"])
def test_smollm2_tokenizer(prompt_format, smollm2):
    """SmolLM2-135M-Instruct's own BPE tokenizer and chat template (fetched by `wmtp_hf.models`)."""
    from transformers import AutoTokenizer

    _check(AutoTokenizer.from_pretrained(smollm2.llama), prompt_format)
