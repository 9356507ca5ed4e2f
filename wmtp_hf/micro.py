"""The micro preset: a few-MB WMTP model and a code tokenizer, built offline, trained on 2 CPU cores.

`python -m wmtp_hf.micro --output-dir DIR` builds it (randomly initialised, seeded) as an HF folder
that `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load, then
greedily generates from a prompt to show the whole path works.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from transformers import PreTrainedTokenizerFast

from .configuration_wmtp import WmtpConfig
from .data.sources.humaneval import package_file as humaneval_package_file
from .fileio import atomic_directory
from .modeling_wmtp import WmtpForMultiTokenPrediction
from .tokenizer import train_code_tokenizer

# The preset lives in configs/micro.yaml (shipped in the package): 8 blocks = 4 trunk + 4 heads, ~2.0M params.
MICRO_CONFIG: dict = yaml.safe_load(
    (Path(__file__).parent / "configs" / "micro.yaml").read_text(encoding="utf-8")
)
TOKENIZER_CORPUS_BYTES = 3_000_000


def local_code_corpus(max_bytes: int = TOKENIZER_CORPUS_BYTES) -> Iterator[str]:
    """Code text available on any machine: HumanEval prompts and solutions, then the Python stdlib."""
    with gzip.open(humaneval_package_file(), "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield row["prompt"] + row["canonical_solution"]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    used = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        used += len(text)
        if used > max_bytes:
            break
        yield text


def build_micro_tokenizer(vocab_size: int = MICRO_CONFIG["vocab_size"]) -> PreTrainedTokenizerFast:
    """Byte-level BPE with `vocab_size` entries trained on `local_code_corpus()`."""
    tokenizer = train_code_tokenizer(local_code_corpus(), vocab_size=vocab_size)
    tokenizer.model_max_length = MICRO_CONFIG["max_position_embeddings"]
    return tokenizer


def build_micro(
    output_dir: str | os.PathLike,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    **config_overrides,
) -> Path:
    """Build the micro tokenizer (unless given one from `build_micro_tokenizer`) and a seeded, randomly
    initialised micro model; save both to `output_dir`.

    The folder is written under a temporary name and renamed, so a crash never leaves half a model.
    """
    output_dir = Path(output_dir)
    tokenizer = tokenizer if tokenizer is not None else build_micro_tokenizer()
    special_ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = WmtpConfig(**{**MICRO_CONFIG, **config_overrides, **special_ids})
    torch.manual_seed(seed)
    model = WmtpForMultiTokenPrediction(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return output_dir


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmtp_hf.micro", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/micro-init", help="where to save the micro model")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even if the folder holds a model")
    parser.add_argument("--prompt", default="def fibonacci(n):\n", help="prompt to generate from")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (0: none)")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(args.output_dir)
    if args.rebuild or not is_model_dir(out):
        build_micro(out, seed=args.seed)
        print(f"built micro model in {out}")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{type(model).__name__}: {n_params / 1e6:.2f}M parameters, n_future_tokens={model.config.n_future_tokens}"
    )
    if args.max_new_tokens > 0:
        inputs = tokenizer(args.prompt, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        completion = tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        print(f"greedy completion of {args.prompt!r} (untrained weights):\n{completion!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
