"""Tokenization fixtures: a few rows of every source's shape, a byte-level BPE tokenizer trained here (adds
BOS like LLaMA's), and a copy of a tokenizer with a chat template; used by the clean-tokenization and
token-healing tests."""

from __future__ import annotations

from wmtp_hf.data.schema import make_row

HUMANEVAL_TESTS = (
    '{"kind": "humaneval", "test": "def check(f):\\n    assert f(1) == 2\\n", "entry_point": "inc"}'
)


def _rows() -> list[dict]:
    base = dict(task_id="t", problem_id="p", is_correct=True, tests={})
    return [
        make_row(instruction="Add two numbers.", output="print(1 + 2)\n", source="mbpp", **base),
        make_row(
            instruction="Sum a list.",
            input="1 2 3",
            output="print(sum(map(int, input().split())))\n",
            source="codecontests",
            **base,
        ),  # fmt: skip
        {
            **make_row(
                instruction='def inc(x):\n    """Add one."""\n',
                output="    return x + 1\n",
                source="offline",
                **base,
            ),  # fmt: skip
            "tests": HUMANEVAL_TESTS,
        },
    ]


def _bpe_tokenizer():
    """A byte-level BPE trained on code, adding BOS like LLaMA tokenizers (merges "\\n" with indentation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "def inc(x):\n    return x + 1\n",
        "### Response:\n    return a\n",
        "for i in range(3):\n    print(i)\n",
    ] * 50
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _with_template(tokenizer, template: str):
    tokenizer = tokenizer.__class__.from_pretrained(_saved(tokenizer))
    tokenizer.chat_template = template
    return tokenizer


def _saved(tokenizer) -> str:
    import tempfile

    folder = tempfile.mkdtemp(prefix="tok-")
    tokenizer.save_pretrained(folder)
    return folder
