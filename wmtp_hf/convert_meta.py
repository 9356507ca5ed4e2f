"""Convert Meta's multi-token-prediction checkpoints (`consolidated.pth` + `params.json`) to an HF folder.

Tensors are read from a memory-mapped checkpoint and written shard by shard, so converting the 7B
model never holds two full copies in memory. The output is written to a temporary folder and renamed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from .configuration_wmtp import WmtpConfig
from .errors import ConversionError  # noqa: F401  (also importable from here)
from .fileio import atomic_directory
from .modeling_wmtp import WmtpForMultiTokenPrediction
from .remote_code import PACKAGE_DIR, remote_code_files

REQUIRED_PARAMS = ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "norm_eps")
OPTIONAL_PARAMS = ("n_kv_heads", "ffn_dim_multiplier", "rope_theta", "n_future_tokens")
IGNORED_PARAMS = ("max_seq_len", "max_batch_size", "use_scaled_rope")
IGNORED_KEYS = ("rope.freqs",)  # precomputed RoPE table in some Meta checkpoints; recomputed by the model
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHARD_BYTES = 2 * 1024**3

_BLOCK_KEYS = {  # Meta block key -> HF block key
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def ffn_hidden_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's FFN width: 2/3 of 4*dim, optionally scaled, rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def read_params(path: Path) -> dict:
    """Load and check `params.json`; unknown keys are errors so silent mis-conversions cannot happen."""
    if not path.is_file():
        raise ConversionError(f"{path}: params.json not found (expected Meta's model hyper-parameters)")
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(params, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    for key in REQUIRED_PARAMS:
        if key not in params:
            raise ConversionError(f"{path}: missing key '{key}' (required: {', '.join(REQUIRED_PARAMS)})")
    known = set(REQUIRED_PARAMS) | set(OPTIONAL_PARAMS) | set(IGNORED_PARAMS)
    for key in params:
        if key not in known:
            raise ConversionError(f"{path}: unexpected key '{key}' (known: {', '.join(sorted(known))})")
    if params["vocab_size"] is None or params["vocab_size"] <= 0:
        raise ConversionError(
            f"{path}: key 'vocab_size' must be a positive integer, got {params['vocab_size']!r}"
        )
    return params


def config_from_params(params: dict, **extra) -> WmtpConfig:
    """WmtpConfig equivalent to Meta's `ModelArgs`."""
    return WmtpConfig(
        vocab_size=params["vocab_size"],
        hidden_size=params["dim"],
        intermediate_size=ffn_hidden_size(
            params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier")
        ),
        num_hidden_layers=params["n_layers"],
        num_attention_heads=params["n_heads"],
        num_key_value_heads=params.get("n_kv_heads") or params["n_heads"],
        rms_norm_eps=params["norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": float(params.get("rope_theta") or 10000.0)},
        n_future_tokens=params.get("n_future_tokens") or 1,
        **extra,
    )


def permute_rotary(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows from Meta's interleaved RoPE pairs to HF's rotate-half layout, per head."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.view(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def key_map(config: WmtpConfig) -> dict[str, str]:
    """Meta key -> HF key for every tensor of the model."""
    n_main = config.num_hidden_layers - config.n_future_tokens + 1
    mapping = {
        "tok_embeddings.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    blocks = [(f"layers.{i}", f"model.layers.{i}") for i in range(n_main)]
    blocks += [(f"extra_heads.{m}", f"model.extra_heads.{m}") for m in range(config.n_future_tokens - 1)]
    for meta_prefix, hf_prefix in blocks:
        for meta_key, hf_key in _BLOCK_KEYS.items():
            mapping[f"{meta_prefix}.{meta_key}"] = f"{hf_prefix}.{hf_key}"
    return mapping


def convert_tensors(
    state: dict[str, torch.Tensor], config: WmtpConfig, dtype: torch.dtype | None, source: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf_key, tensor)` one at a time, checking keys and shapes against the HF model."""
    mapping = key_map(config)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in WmtpForMultiTokenPrediction(config).state_dict().items()}
    for key in state:
        if key not in mapping and key not in IGNORED_KEYS:
            raise ConversionError(f"{source}: unexpected key '{key}' for params.json's architecture")
    for meta_key, hf_key in mapping.items():
        if meta_key not in state:
            raise ConversionError(f"{source}: missing key '{meta_key}'")
        tensor = state[meta_key]
        if tuple(tensor.shape) != tuple(expected[hf_key]):
            raise ConversionError(
                f"{source}: key '{meta_key}' has shape {tuple(tensor.shape)}, expected {tuple(expected[hf_key])}"
            )
        if meta_key.endswith("attention.wq.weight"):
            tensor = permute_rotary(tensor, config.num_attention_heads)
        elif meta_key.endswith("attention.wk.weight"):
            tensor = permute_rotary(tensor, config.num_key_value_heads)
        yield hf_key, tensor.to(dtype or tensor.dtype).contiguous()


def _write_shards(tensors: Iterator[tuple[str, torch.Tensor]], out: Path, shard_bytes: int) -> None:
    shards: list[dict[str, str]] = []
    current: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        nonlocal current, size
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(current, str(out / name), metadata={"format": "pt"})
        shards.append({k: name for k in current})
        current, size = {}, 0

    for key, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > shard_bytes:
            flush()
        current[key] = tensor
        size += nbytes
        total += nbytes
    if current:
        flush()
    if len(shards) == 1:
        (out / "model-00001.safetensors").rename(out / "model.safetensors")
        return
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (out / next(iter(shard.values()))).rename(out / final)
        weight_map.update({k: final for k in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _save_tokenizer(tokenizer_file: Path, out: Path, config: WmtpConfig) -> None:
    from transformers import LlamaTokenizer

    if not tokenizer_file.is_file():
        raise ConversionError(f"{tokenizer_file}: tokenizer file not found (expected Meta's tokenizer.model)")
    with tempfile.TemporaryDirectory() as staging:
        shutil.copyfile(tokenizer_file, Path(staging) / "tokenizer.model")
        try:
            tokenizer = LlamaTokenizer.from_pretrained(staging, legacy=False, add_bos_token=True)
        except Exception as err:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError variants
            raise ConversionError(
                f"{tokenizer_file}: not a sentencepiece model ({type(err).__name__})"
            ) from None
    if len(tokenizer) != config.vocab_size:
        raise ConversionError(
            f"{tokenizer_file}: tokenizer has {len(tokenizer)} tokens, params.json vocab_size is {config.vocab_size}"
        )
    tokenizer.save_pretrained(out)


def convert_meta_checkpoint(
    input_dir: str | Path,
    output_dir: str | Path,
    tokenizer_file: str | Path | None = None,
    dtype: str | None = None,
    shard_bytes: int = SHARD_BYTES,
) -> Path:
    """Convert `input_dir/{consolidated.pth,params.json}` into an HF folder at `output_dir`."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    params = read_params(input_dir / "params.json")
    checkpoint = input_dir / "consolidated.pth"
    if not checkpoint.is_file():
        raise ConversionError(f"{checkpoint}: checkpoint not found (expected Meta's consolidated.pth)")
    try:
        config = config_from_params(params)
    except ValueError as err:
        raise ConversionError(f"{input_dir / 'params.json'}: {err}") from None
    try:
        state = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for unreadable files
        raise ConversionError(
            f"{checkpoint}: cannot be read as a torch checkpoint ({type(err).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise ConversionError(f"{checkpoint}: expected a state dict, got {type(state).__name__}")
    torch_dtype = DTYPES[dtype] if dtype else next(iter(state.values())).dtype
    config.dtype = torch_dtype
    config.architectures = [WmtpForMultiTokenPrediction.__name__]
    config.auto_map = {
        "AutoConfig": "configuration_wmtp.WmtpConfig",
        "AutoModel": "modeling_wmtp.WmtpModel",
        "AutoModelForCausalLM": "modeling_wmtp.WmtpForMultiTokenPrediction",
    }

    if output_dir.exists():
        raise ConversionError(f"{output_dir}: output directory already exists; remove it or pick another")
    with atomic_directory(output_dir, replace=False) as tmp:
        _write_shards(convert_tensors(state, config, torch_dtype, str(checkpoint)), tmp, shard_bytes)
        del state
        config.save_pretrained(tmp)
        from transformers import GenerationConfig

        GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id).save_pretrained(
            tmp
        )
        for source in remote_code_files():
            shutil.copyfile(PACKAGE_DIR / source, tmp / source)
        if tokenizer_file is not None:
            _save_tokenizer(Path(tokenizer_file), tmp, config)
    return output_dir
