"""Whole sites into groups: the search behind `split.split_by_site` and `climb.folds.site_folds`.

Both describe an assignment by each group's species counts and lower a key of those counts:
move one site to another group, else swap two sites, while that lowers the key. A learner
need not read this; notebook 02 shows what the split it finds looks like.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Past this many site pairs, scoring every swap costs seconds per step, while single-site moves
# alone already balance so many (small) sites well.
MAX_SWAP_PAIRS = 50_000
# A step must lower the key by more than float rounding, or the search could cycle.
IMPROVEMENT = 1e-12

#: Per-group counts (..., groups, species) → one array (...) per criterion, compared in order.
Key = Callable[[np.ndarray], tuple[np.ndarray, ...]]


def group_counts(counts: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Images per group and species, from sites × species ``counts`` and each site's group."""
    return np.eye(n_groups, dtype=np.int64)[group].T @ counts


def improve(counts: np.ndarray, group: np.ndarray, n_groups: int, key: Key) -> np.ndarray:
    """Each site's group after the best move of a site, else swap of two, stops lowering ``key``."""
    eye, group = np.eye(n_groups, dtype=np.int64), group.copy()
    while True:
        per_group = group_counts(counts, group, n_groups)
        current = tuple(float(k) for k in key(per_group))
        # change[s, g]: what moving site s into group g adds to each group's counts.
        change = (eye - eye[group][:, None, :])[..., None] * counts[:, None, None, :]
        moved = per_group + change
        step = _best_lower(key(moved), current)
        if step is not None:
            group[step // n_groups] = step % n_groups
            continue
        sizes = np.bincount(group, minlength=n_groups)
        if (len(group) ** 2 - (sizes**2).sum()) // 2 > MAX_SWAP_PAIRS:
            return group
        a, b = np.nonzero(group[:, None] > group[None, :])  # each pair across groups once
        swapped = moved[a, group[b]] + change[b, group[a]]  # a swap is two moves
        step = _best_lower(key(swapped), current)
        if step is None:
            return group
        group[a[step]], group[b[step]] = group[b[step]], group[a[step]]


def _best_lower(keys: tuple[np.ndarray, ...], current: tuple[float, ...]) -> int | None:
    """The (flat) position of the lowest key, first among equals, if it beats ``current``."""
    best = int(np.argmin(keys[0]) if len(keys) == 1 else np.lexsort([k.ravel() for k in keys[::-1]])[0])
    for new, old in zip((float(k.flat[best]) for k in keys), current):
        if new != old and abs(new - old) > IMPROVEMENT:
            return best if new < old else None
    return None


def split_imbalance(eval_counts: np.ndarray, totals: np.ndarray, test_size: float) -> np.ndarray:
    """How far eval is from a stratified ``test_size`` share of the images (0 = exactly there).

    Eval's share of all images and of each species should all equal ``test_size``: this adds
    the error of the first to the root-mean-square error of the others, relative to
    ``test_size``. Every species weighs the same, so a rare one is not stranded on one side, and
    the square makes one species far off cost more than several slightly off. A side without
    images scores infinity.
    """
    sizes = eval_counts.sum(axis=-1)
    size_error = np.abs(sizes / totals.sum() - test_size)
    species_error = np.sqrt(((eval_counts / totals - test_size) ** 2).mean(axis=-1))
    return np.where((sizes > 0) & (sizes < totals.sum()), (size_error + species_error) / test_size, np.inf)


def split_sites(counts: np.ndarray, test_size: float, rng: np.random.Generator, n_trials: int) -> np.ndarray:
    """Which sites go to eval (a mask): the lowest `split_imbalance` of ``n_trials`` random starts.

    Each start adds sites in random order while that helps, then `improve` moves and swaps.
    """
    totals = counts.sum(axis=0)

    def key(per_group: np.ndarray) -> tuple[np.ndarray]:
        return (split_imbalance(per_group[..., 1, :], totals, test_size),)

    best, best_score = None, np.inf
    for _ in range(n_trials):
        side = np.zeros(len(counts), dtype=np.int64)  # 1 = eval
        current, score = np.zeros(counts.shape[1], dtype=np.int64), np.inf
        for site in rng.permutation(len(counts))[:-1]:  # one site at least stays in train
            candidate = split_imbalance(current + counts[site], totals, test_size)
            if candidate < score:
                side[site], current, score = 1, current + counts[site], candidate
        side = improve(counts, side, 2, key)
        score = float(key(group_counts(counts, side, 2))[0])
        if score < best_score:
            best, best_score = side == 1, score
    return best
