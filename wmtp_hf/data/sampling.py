"""Row orders for training (docs/design.md §3.4) from metadata columns only, deterministic and resumable.

The orders are named by what they pick (`ORDERS`: correct, all, balanced, curriculum, plus same-problem
pairs); each stage's trainer says which one it trains on (`wmtp_hf.train.stages`).

Every function returns the full index order for `n_samples` positions as a pure function of the seed
and the metadata, so position `s` of a resumed run is the same row as in the original run. Only the
`is_correct` and `difficulty` columns are read (memory-mapped Arrow → NumPy); the text of unselected
rows is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from .schema import DataError

logger = logging.getLogger(__name__)

BUCKETS: dict[str, tuple[int, int]] = {"low": (1, 3), "medium": (4, 7), "high": (8, 11)}
# (end of phase as a fraction of training, bucket weights low/medium/high)
CURRICULUM: tuple[tuple[float, tuple[float, float, float]], ...] = (
    (0.3, (0.7, 0.3, 0.0)),
    (0.7, (0.3, 0.6, 0.1)),
    (1.0, (0.1, 0.5, 0.4)),
)


def read_metadata(dataset: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """`(is_correct: bool[N], difficulty: int64[N])` reading only those two columns."""
    missing = [c for c in ("is_correct", "difficulty") if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"sampling: dataset lacks column(s) {missing}; expected 'is_correct' and 'difficulty'"
        )
    # Read the two columns of the underlying memory-mapped table straight into NumPy (no Python
    # objects, no other column touched), then apply the dataset's select/filter view if it has one.
    table = dataset.data
    is_correct = table.column("is_correct").to_numpy().astype(bool, copy=False)
    difficulty = table.column("difficulty").to_numpy().astype(np.int64, copy=False)
    view = dataset._indices  # set by select()/filter()/shuffle() without flatten_indices()
    if view is not None:
        rows = view.column(0).to_numpy()
        is_correct, difficulty = is_correct[rows], difficulty[rows]
    return is_correct, difficulty


def _draw(group: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` members of `group`: without replacement, reshuffled each time the group is used up."""
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    reps = -(-count // len(group))
    return np.concatenate([rng.permutation(group) for _ in range(reps)])[:count]


def _split_counts(total: int, weights: Sequence[float]) -> list[int]:
    """Integer counts summing to `total`, proportional to `weights` (largest remainder)."""
    w = np.asarray(weights, dtype=float)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _balanced(groups: dict[bool, np.ndarray], count: int) -> dict[bool, int]:
    """Half correct, half incorrect; an empty label gives its share to the other."""
    if len(groups[True]) and len(groups[False]):
        return {True: count - count // 2, False: count // 2}
    return {True: count if len(groups[True]) else 0, False: count if len(groups[False]) else 0}


def critic_indices(is_correct: np.ndarray, n_samples: int, seed: int = 0) -> np.ndarray:
    """Balanced 50:50 is_correct over all difficulties, in a seeded random order."""
    rng = np.random.default_rng(seed)
    groups = {label: np.flatnonzero(is_correct == label) for label in (True, False)}
    if not len(is_correct):
        raise DataError("sampling: the dataset is empty")
    counts = _balanced(groups, n_samples)
    if not (len(groups[True]) and len(groups[False])):
        empty = "incorrect" if len(groups[True]) else "correct"
        logger.warning("critic sampling: no %s rows; sampling only the other label (not balanced)", empty)
    picked = np.concatenate([_draw(groups[label], counts[label], rng) for label in (True, False)])
    return picked[rng.permutation(len(picked))]


def correct_only_indices(is_correct: np.ndarray, n_samples: int | None = None, seed: int = 0) -> np.ndarray:
    """Correct rows, uniform, seeded order; `n_samples` defaults to one pass over them."""
    correct = np.flatnonzero(is_correct)
    if not len(correct):
        raise DataError("sampling: no row has is_correct=True (baseline/rho1 train on correct solutions)")
    return _draw(correct, len(correct) if n_samples is None else n_samples, np.random.default_rng(seed))


def curriculum_indices(
    is_correct: np.ndarray,
    difficulty: np.ndarray,
    n_samples: int,
    seed: int = 0,
    schedule: Sequence[tuple[float, Sequence[float]]] = CURRICULUM,
    buckets: dict[str, tuple[int, int]] = BUCKETS,
) -> np.ndarray:
    """Difficulty curriculum by training progress, correct/incorrect balanced within each bucket.

    Position `s` belongs to the phase containing `s / n_samples`; each phase holds its buckets' shares
    exactly (largest-remainder rounding) in a shuffled order. Fallbacks, announced in one warning:
    an empty bucket's share goes to the other buckets in proportion; a bucket lacking one label draws
    that share from its other label; with no bucketed rows at all, all rows are sampled label-balanced.
    Rows whose difficulty is outside every bucket (e.g. -1 unknown) are not sampled.
    """
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    names = list(buckets)
    groups = {
        name: {
            label: np.flatnonzero((difficulty >= lo) & (difficulty <= hi) & (is_correct == label))
            for label in (True, False)
        }
        for name, (lo, hi) in buckets.items()
    }
    sizes = {name: len(g[True]) + len(g[False]) for name, g in groups.items()}
    outside = len(difficulty) - sum(sizes.values())
    if outside and any(sizes.values()):
        notes.append(f"{outside} rows with difficulty outside {dict(buckets)} are not sampled")
    if not any(sizes.values()):
        notes.append("no row has a bucketed difficulty; sampling all rows label-balanced instead")
        names = ["all"]
        groups = {"all": {label: np.flatnonzero(is_correct == label) for label in (True, False)}}
        schedule = [(1.0, [1.0])]
        sizes = {"all": len(is_correct)}
        if not len(is_correct):
            raise DataError("sampling: the dataset is empty")
    for name in names:
        if sizes[name] == 0:
            notes.append(f"bucket '{name}' is empty; its share goes to the other buckets")
        elif not (len(groups[name][True]) and len(groups[name][False])):
            missing = "incorrect" if len(groups[name][True]) else "correct"
            notes.append(
                f"bucket '{name}' has no {missing} rows; its {missing} share comes from its other label"
            )
    plan: list[list[tuple[str, bool, int]]] = []  # per phase: (bucket, label, count)
    start = 0
    for end_fraction, weights in schedule:
        end = round(end_fraction * n_samples)
        usable = [w if sizes[name] else 0.0 for name, w in zip(names, weights, strict=True)]
        if not sum(usable):  # every weighted bucket is empty: fall back to the non-empty ones
            usable = [1.0 if sizes[name] else 0.0 for name in names]
        phase = []
        for name, count in zip(names, _split_counts(end - start, usable), strict=True):
            for label, c in _balanced(groups[name], count).items():
                phase.append((name, label, c))
        plan.append(phase)
        start = end
    pools: dict[tuple[str, bool], np.ndarray] = {}  # each group drawn once, then cut phase by phase
    for name in names:
        for label in (True, False):
            total = sum(c for phase in plan for b, lab, c in phase if (b, lab) == (name, label))
            pools[name, label] = _draw(groups[name][label], total, rng)
    offsets = dict.fromkeys(pools, 0)
    out = []
    for phase in plan:
        parts = []
        for name, label, count in phase:
            key = (name, label)
            parts.append(pools[key][offsets[key] : offsets[key] + count])
            offsets[key] += count
        merged = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        out.append(merged[rng.permutation(len(merged))])
    if notes:
        logger.warning("verifiable curriculum: %s", "; ".join(notes))
    return np.concatenate(out).astype(np.int64)


def read_problem_ids(dataset: datasets.Dataset) -> np.ndarray:
    """`problem_id` of every row (object array), reading only that column."""
    if "problem_id" not in dataset.column_names:
        raise DataError("sampling: dataset lacks column 'problem_id' (needed to pair correct/incorrect rows)")
    ids = dataset.data.column("problem_id").to_numpy(zero_copy_only=False)
    view = dataset._indices
    if view is not None:
        ids = ids[view.column(0).to_numpy()]
    return ids


def pair_indices(
    is_correct: np.ndarray, problem_ids: np.ndarray, n_pairs: int | None = None, seed: int = 0
) -> np.ndarray:
    """Correct/incorrect pairs of the same problem, interleaved `[c0, i0, c1, i1, ...]` (critic `pairwise`).

    Each pair picks a problem uniformly among those with both labels, then one correct and one incorrect
    row of it uniformly; `n_pairs` defaults to the number of incorrect rows of those problems. Consecutive
    rows 2p, 2p+1 form pair p, so an even batch size keeps pairs whole.
    """
    rng = np.random.default_rng(seed)
    _, codes = np.unique(problem_ids.astype(str), return_inverse=True)
    by_label = {}
    for label in (True, False):
        rows = np.flatnonzero(is_correct == label)
        order = np.argsort(codes[rows], kind="stable")
        by_label[label] = (rows[order], codes[rows][order])
    eligible = np.intersect1d(by_label[True][1], by_label[False][1])
    if not len(eligible):
        raise DataError("sampling: no problem has both a correct and an incorrect row; pairwise needs pairs")
    if n_pairs is None:
        n_pairs = int(np.isin(by_label[False][1], eligible).sum())
    picks = {}
    problems = eligible[rng.integers(0, len(eligible), n_pairs)]
    for label in (True, False):
        rows, sorted_codes = by_label[label]
        start = np.searchsorted(sorted_codes, problems, side="left")
        count = np.searchsorted(sorted_codes, problems, side="right") - start
        picks[label] = rows[start + (rng.random(n_pairs) * count).astype(np.int64)]
    return np.stack([picks[True], picks[False]], axis=1).reshape(-1).astype(np.int64)


def all_rows_indices(n_rows: int, n_samples: int | None = None, seed: int = 0) -> np.ndarray:
    """Every row, uniform, seeded order; `n_samples` defaults to one pass over them."""
    if not n_rows:
        raise DataError("sampling: the dataset has no rows")
    rows = np.arange(n_rows, dtype=np.int64)
    return _draw(rows, n_rows if n_samples is None else n_samples, np.random.default_rng(seed))


ORDERS: dict[str, Callable[..., np.ndarray]] = {
    "correct": lambda is_correct, difficulty, n, seed: correct_only_indices(is_correct, n, seed),
    "all": lambda is_correct, difficulty, n, seed: all_rows_indices(len(is_correct), n, seed),
    "balanced": lambda is_correct, difficulty, n, seed: critic_indices(is_correct, n, seed),
    "curriculum": lambda is_correct, difficulty, n, seed: curriculum_indices(is_correct, difficulty, n, seed),
}


def order_indices(
    order: str, dataset: datasets.Dataset, n_samples: int | None = None, seed: int = 0
) -> np.ndarray:
    """The row order `order` (a key of `ORDERS`) of `dataset`, `n_samples` positions (default: the
    dataset size; for `correct`, one pass over the correct rows)."""
    if order not in ORDERS:
        raise DataError(f"sampling: unknown order '{order}'; valid: {', '.join(ORDERS)}")
    is_correct, difficulty = read_metadata(dataset)
    n = n_samples if n_samples is not None or order == "correct" else len(is_correct)
    return ORDERS[order](is_correct, difficulty, n, seed)


class IndexSampler(torch.utils.data.Sampler[int]):
    """A `Sampler` over a precomputed row order; `start` skips already-consumed positions on resume."""

    def __init__(self, indices: np.ndarray, start: int = 0):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        for i in range(self.start, len(self.indices)):
            yield int(self.indices[i])

    def __len__(self) -> int:
        return len(self.indices) - self.start

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "n": len(self.indices)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n"] != len(self.indices):
            raise DataError(f"sampler state: expected n={len(self.indices)}, got {state['n']}")
        self.start = int(state["start"])
