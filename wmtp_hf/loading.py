"""Load a saved model and its tokenizer: from a folder, a Hub id, a LoRA adapter folder, a registered
model name (`smollm2-135m`) or a `.gguf` file, on a device.

Registered names and GGUF files become local folders through `resolve_model` (wmtp_hf.models: fetched or
converted once, cached), the one place a model name is turned into a path. One place for what evaluation,
the experiment, `inspect` and the Rho-1 reference all do before they use a model: parse `--device` /
`--dtype`, load the tokenizer (with the pad-token fallback), load the causal LM (a PEFT LoRA adapter folder
is loaded on its base model and merged), move it to the device. Every failure is one `LoadError` line
naming the option and the model (a `WmtpError`: every command reports it the same way).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import LoadError  # noqa: F401  (also importable from here)
from .messages import first_line

__all__ = [
    "DTYPES",
    "LoadError",
    "adapter_base",
    "default_device",
    "ensure_pad_token",
    "is_adapter",
    "load_causal_lm",
    "load_for_inference",
    "load_frozen_causal_lm",
    "load_merged_adapter",
    "load_tokenizer",
    "move_to_device",
    "pad_token_id",
    "parse_device",
    "parse_dtype",
    "read_model_type",
    "resolve_model",
]


DTYPES: dict[str, str | torch.dtype] = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


# ------------------------------------------------------------------------------------------ device, dtype


def default_device() -> torch.device:
    """The accelerator when there is one (CUDA, then MPS), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def parse_device(name: str | torch.device | None, *, option: str = "--device") -> torch.device:
    """`name` as a `torch.device`; None is `default_device()`."""
    if name is None:
        return default_device()
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise LoadError(f"{option}: not a torch device '{name}' ({first_line(err)})") from None


def parse_dtype(name: str | torch.dtype | None, *, option: str = "--dtype") -> str | torch.dtype | None:
    """`"auto"` (the checkpoint's own dtype), a `torch.dtype` from its name, or None (from_pretrained's default)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if isinstance(name, str) and name.lower() in DTYPES:
        return DTYPES[name.lower()]
    raise LoadError(f"{option}: expected one of {', '.join(DTYPES)}; got '{name}'")


def move_to_device(
    model: Any,
    device: str | torch.device,
    *,
    what: str = "the model",
    option: str = "--device",
) -> Any:
    """`model.to(device)`; a one-line error when the device cannot take it (e.g. cuda on a CPU-only build)."""
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as err:
        raise LoadError(f"{option} {device}: cannot move {what} there ({first_line(err)})") from None


# ---------------------------------------------------------------------------------------- model names


def resolve_model(
    name_or_path: str | Path,
    *,
    kind: str = "wmtp",
    n_future_tokens: int | None = None,
    label: str | None = None,
) -> str:
    """The folder or Hub id to load for `name_or_path`: a registered name (`smollm2-135m`) or a `.gguf`
    file becomes its local folder, fetched or converted on first use (a progress line on stderr); anything
    else is returned as it is. `kind="wmtp"` asks for the WMTP model (training, evaluation; the plain LLaMA
    folder when the WMTP one has another number of heads than `n_future_tokens`), `kind="llama"` for the
    plain causal LM (a reference model)."""
    from .models import ModelError, is_named_model
    from .models import resolve_model as resolve

    if not is_named_model(name_or_path):
        return str(name_or_path)
    try:
        return resolve(name_or_path, kind, n_future_tokens)
    except ModelError as err:
        raise LoadError(f"{label or repr(str(name_or_path))}: {err}") from None


# ------------------------------------------------------------------------------------------------ tokenizer


def ensure_pad_token(tokenizer: Any) -> Any:
    """Use EOS as the pad token when the tokenizer has none (padding is masked, so any token serves)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pad_token_id(tokenizer: Any) -> int:
    """An id to pad with: the pad token, else EOS, else 0 (padding sits right of every real token, masked)."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def load_tokenizer(
    name_or_path: str | Path,
    *,
    label: str | None = None,
    revision: str | None = None,
    pad: bool = True,
) -> Any:
    """`AutoTokenizer` of a folder, Hub id, registered name or `.gguf` file; `pad` adds EOS as the pad
    token when it has none.

    An adapter folder saved without a tokenizer uses its base model's. `label` starts the error message
    (default: the name in quotes)."""
    from transformers import AutoTokenizer

    kwargs = {"revision": revision} if revision else {}
    source = resolve_model(name_or_path, kind="llama", label=label)
    if is_adapter(source) and not (Path(source) / "tokenizer_config.json").is_file():
        source = adapter_base(source) or source
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as err:  # OSError, ValueError, and whatever a broken tokenizer file raises
        raise LoadError(
            f"{label or repr(str(name_or_path))}: cannot load its tokenizer ({first_line(err)})"
        ) from None
    return ensure_pad_token(tokenizer) if pad else tokenizer


# ---------------------------------------------------------------------------------------------------- model


def is_adapter(name_or_path: str | Path) -> bool:
    """Whether `name_or_path` is a local PEFT adapter folder (it has `adapter_config.json`)."""
    return (Path(name_or_path) / "adapter_config.json").is_file()


def adapter_base(path: str | Path) -> str | None:
    """`base_model_name_or_path` of an adapter folder's `adapter_config.json` (None when unreadable)."""
    try:
        base = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = base.get("base_model_name_or_path") if isinstance(base, dict) else None
    return value if isinstance(value, str) and value else None


def read_model_type(
    name_or_path: str | Path,
    *,
    kind: str = "wmtp",
    label: str | None = None,
) -> str:
    """`model_type` of a folder's or Hub id's config (a registered name or `.gguf` file: of its `kind`)."""
    from transformers import AutoConfig

    source = resolve_model(name_or_path, kind=kind, label=label)
    try:
        return AutoConfig.from_pretrained(source).model_type
    except (OSError, ValueError) as err:
        raise LoadError(
            f"{label or repr(str(name_or_path))}: cannot load its config ({first_line(err)})"
        ) from None


def load_merged_adapter(path: str | Path, *, label: str | None = None, **kwargs: Any) -> Any:
    """A LoRA adapter folder (e.g. a `use_peft` run's final folder) loaded on its base model and merged."""
    from peft import AutoPeftModelForCausalLM

    try:
        return AutoPeftModelForCausalLM.from_pretrained(str(path), **kwargs).merge_and_unload()
    except (OSError, ValueError) as err:
        raise LoadError(
            f"{label or repr(str(path))}: cannot load the adapter on its base model ({first_line(err)})"
        ) from None


def load_causal_lm(
    name_or_path: str | Path,
    *,
    kind: str = "wmtp",
    label: str | None = None,
    **kwargs: Any,
) -> Any:
    """Any causal LM via `AutoModelForCausalLM` (WMTP too: importing wmtp_hf registers it); an adapter
    folder is merged into its base; a registered name or `.gguf` file loads its `kind` folder (see
    `resolve_model`). `kwargs` go to `from_pretrained` (dtype, revision, attn_implementation)."""
    import wmtp_hf  # noqa: F401  - registers the `wmtp` model type with the Auto classes

    if is_adapter(name_or_path):
        return load_merged_adapter(name_or_path, label=label, **kwargs)
    from transformers import AutoModelForCausalLM

    source = resolve_model(name_or_path, kind=kind, label=label)
    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as err:  # a missing folder, an unknown Hub id, a broken checkpoint
        raise LoadError(
            f"{label or repr(str(name_or_path))}: cannot load a causal LM ({first_line(err)})"
        ) from None


def load_for_inference(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "auto",
    label: str | None = None,
) -> tuple[Any, Any]:
    """`(model in eval mode on `device`, tokenizer with a pad token)` of a folder, Hub id, adapter folder,
    registered name or `.gguf` file (its WMTP folder when it is a LLaMA).

    `device` None is `default_device()`; `dtype` as `parse_dtype` reads it (None: from_pretrained's
    default)."""
    target = parse_device(device)
    torch_dtype = parse_dtype(dtype)
    tokenizer = load_tokenizer(name_or_path, label=label)
    kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
    model = load_causal_lm(name_or_path, label=label, **kwargs)
    return move_to_device(model, target).eval(), tokenizer


def load_frozen_causal_lm(
    name_or_path: str | Path,
    *,
    kind: str = "llama",
    label: str | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    revision: str | None = None,
) -> tuple[Any, Any]:
    """`(model, tokenizer)` of a model that is only scored (a reference): any causal LM via `load_causal_lm`,
    frozen (eval mode, no grad), left where it loads (the caller places it), and its tokenizer as saved
    (no pad token added).

    `dtype` None loads the checkpoint's own dtype (`"auto"`); `revision` pins a Hub commit."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if revision:
        kwargs["revision"] = revision
    model = load_causal_lm(name_or_path, kind=kind, label=label, **kwargs)
    model.eval()
    model.requires_grad_(False)
    return model, load_tokenizer(name_or_path, label=label, revision=revision, pad=False)
