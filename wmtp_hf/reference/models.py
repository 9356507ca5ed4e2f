"""The reference model and its tokenizer, loaded through `wmtp_hf.loading`; a load failure is a one-line
`LoadError` naming the reference."""

from __future__ import annotations

from typing import Any

import torch

from ..loading import load_frozen_causal_lm, load_tokenizer


def load_reference_tokenizer(name_or_path: str, revision: str | None = None) -> Any:
    """The reference's tokenizer (`AutoTokenizer`, as saved: no pad token added); a load failure is a
    one-line LoadError."""
    return load_tokenizer(name_or_path, label=f"reference '{name_or_path}'", revision=revision, pad=False)


def load_reference_model(
    name_or_path: str,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    revision: str | None = None,
) -> tuple[Any, Any]:
    """`(model, tokenizer)`: any causal LM via `AutoModelForCausalLM`, frozen (eval mode, no grad), not
    placed (`loading.load_frozen_causal_lm`).

    `dtype` None loads the checkpoint's own dtype (`"auto"`). `revision` pins a Hub commit. Load failures
    are one-line LoadErrors naming the reference.
    """
    return load_frozen_causal_lm(
        name_or_path,
        kind="llama",
        label=f"reference '{name_or_path}'",
        dtype=dtype,
        attn_implementation=attn_implementation,
        revision=revision,
    )
