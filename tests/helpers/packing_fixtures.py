"""Examples of mixed lengths for the packing tests (tests/data/test_packing.py, test_packing_flash.py)."""

from __future__ import annotations

import torch

LENGTHS = [(3, 9), (2, 5), (5, 13), (4, 4), (2, 10), (6, 7)]  # (prompt, response) of each example


def make_features(vocab: int, eos: int, seed: int = 0, ref: bool = False) -> list[dict]:
    """(correct, incorrect) pairs of examples of mixed lengths; per-token reference losses when `ref`."""
    rng = torch.Generator().manual_seed(seed)
    rows = []
    for i, (prompt, response) in enumerate(LENGTHS):
        ids = torch.randint(4, vocab, (prompt + response,), generator=rng).tolist() + [eos]
        row = {"input_ids": ids, "prompt_length": prompt, "is_correct": i % 2 == 0, "difficulty": 1 + i,
               "problem_id": f"p{i // 2}"}  # fmt: skip
        if ref:
            losses = torch.rand(len(ids), generator=rng) * 4
            losses[:prompt] = 0
            row["ref_token_losses"] = losses.tolist()
        rows.append(row)
    return rows
