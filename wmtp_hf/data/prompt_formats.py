"""Prompt formats (docs/data.md "Prompt formats"): how a row becomes prompt text + response text.

- `raw`: the bare problem text. For function-completion rows (HumanEval-style tests: `instruction` is the
  function's signature and docstring) the prompt is that text and the response continues it with the body.
- `alpaca`: `### Instruction:` / `### Input:` / `### Response:` sections (`format_prompt`); the response is
  the row's `output` (for function-completion rows: the body, continuing the instruction's code).
- `chat`: the model's own chat template (`tokenizer.apply_chat_template`) with one user message
  (`user_message`) and the generation prompt; the response is the assistant turn: the code in a fenced
  ```python block (for function-completion rows: the whole function), closed by the template's end of turn.

`auto` (the default everywhere) is `chat` when the tokenizer has a chat template, else the source's
default: `raw` for HumanEval, `alpaca` otherwise. A trained model records the format it was trained with,
and evaluation's `auto` takes that one first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .schema import DataError

PROMPT_FORMATS = ("raw", "alpaca", "chat")
PROMPT_FORMAT_CHOICES = ("auto", *PROMPT_FORMATS)
LEGACY_PROMPT_FORMAT = "alpaca"  # what training used before formats existed (prepared folders without one)
EVALUATION_NOTES = (
    "### Evaluation Notes:\n"
    "- Return Python source code that prints the required answer.\n"
    "- Hidden tests are present; rely on the stated constraints rather than memorising samples.\n\n"
)
# The chat user message of a function-completion problem: evalplus's request to instruct models (on the
# first 20 HumanEval problems it did as well as or better than "Complete the following Python function:"
# and the bare prompt with SmolLM2-135M-Instruct; docs/evaluation.md).
FUNCTION_REQUEST = (
    "Please provide a self-contained Python script that solves the following problem in a markdown code "
    "block:\n```python\n{prompt}```"
)


def format_prompt(example: Mapping[str, Any]) -> str:
    """The Alpaca prompt up to and including "### Response:\\n".

    `### Input:` is omitted when `input` is empty; the Evaluation Notes appear only for CodeContests
    (stdin/stdout problems).
    """
    parts = [f"### Instruction:\n{example['instruction']}\n\n"]
    if example.get("input"):
        parts.append(f"### Input:\n{example['input']}\n\n")
    if example.get("source") == "codecontests":
        parts.append(EVALUATION_NOTES)
    parts.append("### Response:\n")
    return "".join(parts)


def is_function_completion(example: Mapping[str, Any]) -> bool:
    """Whether the row's tests are HumanEval-style: `instruction` is code the response completes."""
    tests = example.get("tests")
    if isinstance(tests, str) and tests:
        if "humaneval" not in tests:  # cheap: CodeContests tests can be megabytes of JSON
            return False
        try:
            return json.loads(tests).get("kind") == "humaneval"
        except (ValueError, AttributeError):
            return False
    return example.get("source") in ("humaneval", "offline")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def source_default(source: str | None) -> str:
    """The format a source uses when the tokenizer has no chat template: raw for HumanEval, else alpaca."""
    return "raw" if source == "humaneval" else "alpaca"


def check_prompt_format(value: str, option: str = "--prompt-format") -> str:
    if value not in PROMPT_FORMAT_CHOICES:
        raise DataError(f"{option}: expected one of {', '.join(PROMPT_FORMAT_CHOICES)}, got {value!r}")
    return value


def resolve_prompt_format(
    requested: str,
    tokenizer: Any,
    source: str | None,
    recorded: str | None = None,
    option: str = "--prompt-format",
) -> str:
    """The concrete format: `requested` unless "auto"; then `recorded` (the trained model's), `chat` when the
    tokenizer has a chat template, else `source_default(source)`. `chat` without a template is an error."""
    check_prompt_format(requested, option)
    fmt = requested
    if fmt == "auto":
        if recorded in PROMPT_FORMATS:
            fmt = recorded
        elif tokenizer is not None and has_chat_template(tokenizer):
            fmt = "chat"
        else:
            fmt = source_default(source)
    if fmt == "chat" and tokenizer is not None and not has_chat_template(tokenizer):
        raise DataError(f"{option} chat: the tokenizer has no chat template; use raw or alpaca")
    return fmt


def recorded_prompt_format(model_dir: str | Path) -> str | None:
    """The prompt format a wmtp_hf-trained model folder was trained with (its model card's `wmtp.config`).

    None for a folder not trained by wmtp_hf, a Hub id, or a card written before formats were recorded.
    """
    card = Path(model_dir) / "README.md"
    if not card.is_file():
        return None
    import yaml

    text = card.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except (yaml.YAMLError, IndexError):
        return None
    value = ((meta.get("wmtp") or {}).get("config") or {}).get("prompt_format")
    return value if value in PROMPT_FORMATS else None


def user_message(example: Mapping[str, Any]) -> str:
    """The problem as one chat user message (also the `raw` prompt of a non-function-completion row)."""
    if is_function_completion(example):
        return FUNCTION_REQUEST.format(prompt=_with_newline(example["instruction"]))
    parts = [example["instruction"].strip()]
    if example.get("input"):
        parts.append(example["input"].strip())
    if example.get("source") == "codecontests":
        parts.append(EVALUATION_NOTES.strip())
    return "\n\n".join(parts)


def chat_response(example: Mapping[str, Any]) -> str:
    """The assistant message: the solution in a fenced block (a function-completion row: prompt + body)."""
    code = example["output"]
    if is_function_completion(example):
        code = _with_newline(example["instruction"]) + code
    return f"```python\n{code.rstrip()}\n```"


def render_prompt(example: Mapping[str, Any], prompt_format: str, tokenizer: Any = None) -> str:
    """The prompt text the model sees (for chat: the template with the generation prompt)."""
    if prompt_format == "alpaca":
        return format_prompt(example)
    if prompt_format == "raw":
        return example["instruction"] if is_function_completion(example) else user_message(example) + "\n\n"
    if prompt_format == "chat":
        messages = [{"role": "user", "content": user_message(example)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise DataError(f"prompt format: expected one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")


def render_example(example: Mapping[str, Any], prompt_format: str, tokenizer: Any) -> tuple[str, str, bool]:
    """`(prompt text, response text, response ends with EOS)`.

    raw / alpaca: the response is `output` (EOS is appended by the tokenization). chat: the template applied
    to the user and assistant messages; the response is what follows the prompt, cut right after the last
    EOS token when the template closes the turn with it (so it is not doubled), else kept whole.
    """
    prompt = render_prompt(example, prompt_format, tokenizer)
    if prompt_format != "chat":
        return prompt, example["output"], False
    messages = [
        {"role": "user", "content": user_message(example)},
        {"role": "assistant", "content": chat_response(example)},
    ]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise DataError(
            "chat template: the rendered conversation does not start with the rendered prompt "
            "(add_generation_prompt=True); the response cannot be located"
        )
    response = full[len(prompt) :]
    eos = tokenizer.eos_token
    if eos and eos in response:
        return prompt, response[: response.rindex(eos) + len(eos)], True
    return prompt, response, False


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"
