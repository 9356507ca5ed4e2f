"""Positive controls: training data where, by construction, the weighting must help (`control:` key).

- **rho1 control**: baseline and rho1 train on the source's training rows with `noise_fraction` of every
  response's tokens replaced by random tokens; the reference trains on the clean rows and every run is
  measured on the clean held-out rows (the Rho-1 setting: a clean reference, a noisy corpus). Rho-1 drops
  the tokens the reference predicts far better than the model, i.e. the random ones.
- **verifiable control**: the incorrect rows are the correct solutions with `planted_fraction` of their
  response tokens replaced by random tokens (`planted_per_correct` copies per correct row; the source's own
  incorrect rows are left out), so an incorrect row goes wrong exactly at its planted tokens, which the
  critic can learn to see. Verifiable trains with `policy_on: all`; `baseline_matched` trains on the same
  rows, all labelled correct (the baseline stage reads only correct rows), so both see the same tokens.

The data is built once into `<output_dir>/data/<kind>-<hash>/` (a prepared, tokenized folder with the
clean held-out split) and reused; the hash covers the options, source and tokenizer settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from ..train.config import ConfigError
from .control_options import ControlOptions
from .plan import ExperimentPlan

KINDS = ("noisy", "planted", "planted_as_correct")


def replace_tokens(
    ids: list[int], start: int, fraction: float, rng: np.random.Generator, vocab: np.ndarray
) -> tuple[list[int], list[int]]:
    """`ids` with `round(fraction * n)` of its n response tokens (positions start .. len-2; the final EOS
    stays) replaced by tokens drawn uniformly from `vocab`; returns (new ids, replaced positions)."""
    positions = np.arange(start, len(ids) - 1)
    n = int(round(fraction * len(positions)))
    chosen = np.sort(rng.choice(positions, size=n, replace=False)) if n else np.zeros(0, dtype=np.int64)
    out = list(ids)
    for p in chosen:
        out[int(p)] = int(rng.choice(vocab))
    return out, [int(p) for p in chosen]


def _plain_vocab(tokenizer: Any) -> np.ndarray:
    special = set(tokenizer.all_special_ids)
    return np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)


def noisy_rows(rows: datasets.Dataset, options: ControlOptions, vocab: np.ndarray) -> list[dict[str, Any]]:
    rng = np.random.default_rng([options.seed, 1])
    out = []
    for row in rows:
        ids, _ = replace_tokens(row["input_ids"], row["prompt_length"], options.noise_fraction, rng, vocab)
        out.append({**row, "input_ids": ids})
    return out


def planted_rows(
    rows: datasets.Dataset, options: ControlOptions, vocab: np.ndarray, split_seed: int
) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """The correct rows, clean, and `planted_per_correct` planted copies of each; `{task_id: positions}`."""
    rng = np.random.default_rng([options.seed, 2, split_seed])
    out, planted = [], {}
    for row in rows:
        if not row["is_correct"]:
            continue
        out.append(row)
        for j in range(options.planted_per_correct):
            ids, positions = replace_tokens(
                row["input_ids"], row["prompt_length"], options.planted_fraction, rng, vocab
            )
            task_id = f"{row['problem_id']}_planted_{j}"
            out.append({**row, "input_ids": ids, "is_correct": False, "task_id": task_id})
            planted[task_id] = positions
    return out, planted


def build_control_data(plan: ExperimentPlan, say: Any = print) -> None:
    """Write the control's prepared folders (once) from the clean source rows."""
    from ..data import load_source, resolve_prompt_format, tokenize_dataset
    from ..data.registry import HELD_OUT_SPLITS
    from ..fileio import atomic_directory
    from ..train.components import resolve_model_path, start_tokenizer

    options: ControlOptions = plan.control
    folders = {kind: options.folder(plan.output_dir, kind) for kind in KINDS}
    if all((f / "control.json").is_file() for f in folders.values()):
        return
    first = plan.stages[0].config
    tokenizer = start_tokenizer(first, resolve_model_path(first))
    vocab = _plain_vocab(tokenizer)
    fmt = resolve_prompt_format(options.prompt_format, tokenizer, options.dataset, option="prompt_format")
    held_out = HELD_OUT_SPLITS.get(options.dataset)
    if held_out is None:
        raise ConfigError(f"control: dataset '{options.dataset}' has no held-out split")
    say(f"control data: building {', '.join(KINDS)} from {options.dataset} in {plan.output_dir / 'data'}")
    tokenized = {}
    for split in ("train", held_out):
        rows = load_source(options.dataset, path=options.dataset_path, split=split)
        tokenized[split], _ = tokenize_dataset(
            rows, tokenizer, max_length=options.max_length, prompt_format=fmt
        )
    features = tokenized["train"].features
    built = {
        "noisy": {"train": noisy_rows(tokenized["train"], options, vocab), held_out: tokenized[held_out]},
        "planted": {},
        "planted_as_correct": {},
    }
    planted_positions = {}
    for i, split in enumerate(("train", held_out)):
        rows, planted_positions[split] = planted_rows(tokenized[split], options, vocab, i)
        built["planted"][split] = rows
        built["planted_as_correct"][split] = (
            [{**r, "is_correct": True} for r in rows] if split == "train" else rows
        )
    for kind, splits in built.items():
        if (folders[kind] / "control.json").is_file():
            continue
        folders[kind].parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(folders[kind]) as tmp:
            for split, rows in splits.items():
                ds = (
                    rows if isinstance(rows, datasets.Dataset) else datasets.Dataset.from_list(rows, features)
                )
                ds.save_to_disk(str(tmp / split))
            info = {"kind": kind, "options": asdict(options), "prompt_format": fmt,
                    "rows": {s: len(r) for s, r in splits.items()}}  # fmt: skip
            if kind != "noisy":
                info["planted_positions"] = planted_positions
            (tmp / "control.json").write_text(json.dumps(info) + "\n", encoding="utf-8")


@torch.no_grad()
def planted_weight_means(plan: ExperimentPlan, run: Any, batch_size: int = 8) -> dict[str, float] | None:
    """Verifiable's mean token weight on the planted tokens and on the other response tokens of the
    held-out planted rows (why the control did or did not help: did the critic down-weight the errors?)."""
    from ..data import WmtpDataCollator
    from ..train.components import held_out_split
    from ..weighting import td_token_weights
    from .measure import load_final

    folder = Path(run.config.dataset)
    info_path = folder / "control.json"
    split = held_out_split(run.config)
    if not info_path.is_file() or split is None:
        return None
    positions = json.loads(info_path.read_text(encoding="utf-8"))["planted_positions"].get(split, {})
    rows = datasets.load_from_disk(str(folder / split)).filter(lambda r: r["task_id"] in positions)
    model, tokenizer = load_final(run.final_dir)
    collator = WmtpDataCollator(tokenizer)
    sums, counts = {True: 0.0, False: 0.0}, {True: 0, False: 0}
    for start in range(0, len(rows), batch_size):
        feats = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        batch = collator(feats)
        values = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], value_only=True
        ).value
        _, weights = td_token_weights(values, batch["labels"], batch["reward"], run.config)
        response = batch["labels"] != -100
        planted = torch.zeros_like(response)
        for b, feat in enumerate(feats):
            planted[b, positions[feat["task_id"]]] = True
        for flag, mask in ((True, response & planted), (False, response & ~planted)):
            sums[flag] += float(weights[mask].sum())
            counts[flag] += int(mask.sum())
    if not counts[True] or not counts[False]:
        return None
    return {
        "planted_mean_weight": sums[True] / counts[True],
        "other_mean_weight": sums[False] / counts[False],
        "planted_tokens": counts[True],
        "other_tokens": counts[False],
    }
