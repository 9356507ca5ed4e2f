"""Small models and datasets the training tests write (no network, seconds to train)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from wmtp_hf import WmtpConfig, WmtpForMultiTokenPrediction


def write_llama(folder: Path, tokenizer, seed: int = 1, extra_vocab: int = 0) -> Path:
    """A 2-block LLaMA (hidden 32) sharing `tokenizer`, its embedding padded `extra_vocab` rows past it:
    a reference model for rho1 and reference-loss tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer) + extra_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_model(folder: Path, tokenizer, n_future: int = 2, seed: int = 0) -> Path:
    """A 4-block WMTP model (hidden 32) plus `tokenizer`, saved as an HF folder."""
    config = WmtpConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, n_future_tokens=n_future, loss_chunk_size=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    WmtpForMultiTokenPrediction(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_mbpp_fixture(path: Path, n: int = 40) -> Path:
    """MBPP-format JSONL with `n` short train-split problems (task ids 601...)."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            row = {
                "text": f"Write a function that adds {i} to x.",
                "code": f"def add_{i}(x):\n    return x + {i}\n" + ("    # done\n" if i % 3 == 0 else ""),
                "task_id": 601 + i,
                "test_setup_code": "",
                "test_list": [f"assert add_{i}(1) == {1 + i}"],
                "challenge_test_list": [],
            }
            f.write(json.dumps(row) + "\n")
    return path


def train_args(model: Path, data: Path, out: Path, **overrides) -> list[str]:
    """CLI arguments for a few fast baseline steps on the fixtures."""
    options = {
        "model": model, "dataset": "mbpp", "dataset_path": data, "output-dir": out, "max-steps": 4,
        "per_device_train_batch_size": 4, "report_to": "none", "logging_steps": 1, "save_steps": 100,
        "max_length": 256, "learning_rate": 1e-2, "warmup_steps": 0, "dataloader_num_workers": 0,
        **overrides,
    }  # fmt: skip
    argv = ["--stage", "baseline"]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    return argv


def log_losses(output_dir: Path) -> dict[int, float]:
    """Step -> logged training loss from `<output_dir>/trainer_state.json`."""
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def write_marker_dataset(
    folder: Path, vocab_size: int, marker: int, n_problems: int = 48, seed: int = 0, eos: int | None = None
) -> Path:
    """A tokenized dataset (`train/`, `eval/`, as `python -m wmtp_hf.data prepare` writes) where every
    incorrect response contains `marker` once at a random position and correct responses never do.

    Each problem has one correct and one incorrect row sharing a prompt; difficulties cover 1..11.
    Returns the folder; the planted positions are in the `marker_position` column (-1 for correct rows).
    """
    import datasets

    rng = torch.Generator().manual_seed(seed)
    normal = [t for t in range(4, vocab_size) if t != marker]

    def draw(n: int) -> list[int]:
        return [normal[i] for i in torch.randint(0, len(normal), (n,), generator=rng).tolist()]

    stats = {"source": "marker", "tokenizer": None, "max_length": None, "splits": {}}
    for split, count in (("train", n_problems), ("eval", max(8, n_problems // 3))):
        rows = []
        for p in range(count):
            prompt = draw(int(torch.randint(4, 9, (1,), generator=rng)))
            for correct in (True, False):
                response = draw(int(torch.randint(6, 14, (1,), generator=rng)))
                position = -1
                if not correct:
                    at = int(torch.randint(1, len(response) - 1, (1,), generator=rng))
                    response[at] = marker
                    position = len(prompt) + at
                ids = prompt + response + ([eos] if eos is not None else [])
                rows.append({
                    "input_ids": ids, "prompt_length": len(prompt), "length": len(ids),
                    "problem_id": f"{split}-{p}", "task_id": f"{split}-{p}-{int(correct)}", "source": "marker",
                    "is_correct": correct, "difficulty": 1 + (p % 11), "marker_position": position,
                })  # fmt: skip
        datasets.Dataset.from_list(rows).save_to_disk(str(folder / split))
        stats["splits"][split] = {"rows": len(rows)}
    (folder / "stats.json").write_text(json.dumps(stats))
    return folder
