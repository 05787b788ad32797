"""Train/eval splits: the walkthrough's random stratified split and the honest site-grouped one.

Camera-trap images taken at one site share a background, a camera and a light, so a model can
learn the site instead of the animal. The competition's test sites are all unseen in train, so
only a split that keeps whole sites on one side estimates the test score honestly;
`split_summary` shows how many sites the random split leaks.

A split is a `Split` named tuple of two id indexes (the frames' index), ``split.train`` and
``split.eval``, deterministic for a seed; it travels between notebooks as a small ``id,split``
CSV (`save_splits` / `load_splits`). Labels are read by the one rule of `conserviz_utils.labels`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from conserviz_utils import SPECIES
from conserviz_utils.errors import DataValidationError, refuse_repeated_ids
from conserviz_utils.files.fileio import atomic_write_csv
from conserviz_utils.labels import species_names


class Split(NamedTuple):
    """A train/eval split: two id indexes, as ``split.train`` and ``split.eval``.

    It is a tuple, so ``train_ids, eval_ids = split_by_site(...)`` unpacks it too.
    """

    train: pd.Index
    eval: pd.Index


TRAIN, EVAL = "train", "eval"

# Swapping an eval site with a train site scores every pair at once. Past this many pairs
# (about 450 sites) that costs seconds per split while single-site moves alone already balance
# the many small sites to within 0.1 %, so the search keeps to moves.
_MAX_SWAP_PAIRS = 50_000
# A step must lower the imbalance by more than float rounding, or the search could cycle.
_IMPROVEMENT = 1e-12


def labels_to_species(labels: pd.DataFrame | pd.Series) -> pd.Series:
    """One species name per image id, read by the one label rule of `labels.species_names`.

    Any species names go (a field team's own species too); a one-hot frame's columns are its
    species. Kept public for callers that still use it; new code calls
    ``labels.species_names`` directly.

    Args:
        labels: the one-hot frame of ``train_labels.csv`` (index id, one column per species)
            or a Series id → species name.

    Returns:
        A Series named ``species`` indexed by id (empty labels and repeated ids are refused).
    """
    if not isinstance(labels, pd.DataFrame | pd.Series):
        raise DataValidationError(
            "labels must be a one-hot DataFrame or a Series of species names, not "
            f"{type(labels).__name__}",
            fix="pass data.train_labels or data.train_species",
        )
    if isinstance(labels, pd.DataFrame) and labels.shape[1] == 0:
        raise DataValidationError(
            "the label frame has no species columns",
            fix="pass the one-hot frame of train_labels.csv (one column per species)",
        )
    species = species_names(labels, species=None)
    if species.empty:
        raise DataValidationError("labels are empty", fix="pass at least one labelled image")
    refuse_repeated_ids(species.index, "labels", fix="keep one label row per image id")
    # rename_axis copies the index: the caller's frame keeps its own index name.
    return species.astype(str).rename_axis("id")


def species_order(species: pd.Series) -> list[str]:
    """The species present, in the competition's column order (then any others, sorted)."""
    present = set(species.unique())
    return [s for s in SPECIES if s in present] + sorted(present - set(SPECIES))


def split_stratified(
    labels: pd.DataFrame | pd.Series,
    test_size: float = 0.25,
    frac: float = 1.0,
    seed: int = 0,
) -> Split:
    """The walkthrough's split: sample ``frac`` of the images, then a random stratified split.

    Each species keeps its share on both sides, but sites are ignored: the same camera ends up
    in train and eval, so eval scores from this split are optimistic (see `split_by_site`).

    Args:
        labels: one-hot label frame or Series id → species name.
        test_size: share of the sampled images that go to eval, in (0, 1).
        frac: share of all images to sample first, in (0, 1]; the walkthrough used 0.5.
        seed: seeds both the sample and the split.

    Returns:
        A `Split` ``(train, eval)`` of two id indexes in the order of ``labels``.
    """
    _check_share(test_size, "test_size", upper_inclusive=False)
    _check_share(frac, "frac", upper_inclusive=True)
    species = labels_to_species(labels)
    subset = species.sample(frac=frac, random_state=seed) if frac < 1 else species

    counts = subset.value_counts()
    rare = counts[counts < 2]
    if len(rare):
        raise DataValidationError(
            "a stratified split needs at least 2 images of each species, and these have 1",
            column="species",
            rows=rare.index,
            fix="raise frac, or drop those species before splitting",
        )
    n_eval = math.ceil(test_size * len(subset))  # scikit-learn's rounding
    if min(n_eval, len(subset) - n_eval) < len(counts):
        raise DataValidationError(
            f"{len(subset)} images cannot be split {1 - test_size:.0%}/{test_size:.0%} with "
            f"each of the {len(counts)} species on both sides",
            fix="raise frac, or move test_size towards 0.5",
        )
    train_ids, _ = train_test_split(
        subset.index.to_numpy(), test_size=test_size, stratify=subset.to_numpy(), random_state=seed
    )
    in_train = subset.index.isin(train_ids)
    return _in_order(species.index, subset.index[in_train], subset.index[~in_train])


def split_by_site(
    features: pd.DataFrame,
    labels: pd.DataFrame | pd.Series,
    test_size: float = 0.25,
    seed: int = 0,
    n_trials: int = 32,
) -> Split:
    """Site-grouped split: whole sites go to eval, as close to stratified as whole sites allow.

    The search minimises one number: eval's share of all images and its share of each species
    should all equal ``test_size``, so it adds the error of the first to the root-mean-square
    error of the others (every species weighs the same, so a rare one is not stranded on one
    side). Each of ``n_trials`` seeded starts adds sites in random order while that helps, then
    moves or swaps single sites until nothing helps; the best start wins. With few sites or
    very local species even the best is far from stratified: `split_summary` shows how far.

    Args:
        features: frame indexed by id with a ``site`` column (``train_features.csv``).
        labels: one-hot label frame or Series id → species name, with the same ids.
        test_size: target share of images in eval, in (0, 1).
        seed: seeds the random starts.
        n_trials: number of random starts; more can only improve the balance.

    Returns:
        A `Split` ``(train, eval)`` of two id indexes in the order of ``labels``; no site is on
        both sides.
    """
    _check_share(test_size, "test_size", upper_inclusive=False)
    if not isinstance(n_trials, int | np.integer) or n_trials < 1:
        raise DataValidationError(
            f"n_trials must be a positive integer, got {n_trials!r}", fix="pass e.g. n_trials=32"
        )
    species, sites = species_and_sites(features, labels)
    counts = pd.crosstab(sites, species)  # sites × species, both sorted
    if len(counts) < 2:
        raise DataValidationError(
            f"a site-grouped split needs at least 2 sites, and these images come from "
            f"{len(counts)}",
            column="site",
            fix="use split_stratified for single-site data",
        )
    rng = np.random.default_rng(seed)
    in_eval = _search_sites(counts.to_numpy(dtype=np.int64), test_size, rng, n_trials)
    is_eval = sites.isin(counts.index[in_eval]).to_numpy()
    return _in_order(species.index, species.index[~is_eval], species.index[is_eval])


def species_and_sites(features: pd.DataFrame, labels) -> tuple[pd.Series, pd.Series]:
    """The species and the site of every labelled image; every image of ``features`` needs a label."""
    species = labels_to_species(labels)
    sites = _sites_of(features, species.index)
    unlabelled = features.index.difference(species.index)
    if len(unlabelled):
        raise DataValidationError(
            "these images of the features have no label",
            rows=unlabelled,
            fix="pass features and labels of the same images (e.g. data.train_features and "
            "data.train_labels)",
        )
    return species, sites


def _sites_of(features: pd.DataFrame, ids: pd.Index) -> pd.Series:
    """The ``site`` of each id, refusing ids that are not in ``features`` or have no site."""
    if not isinstance(features, pd.DataFrame) or "site" not in features.columns:
        raise DataValidationError(
            "features have no 'site' column",
            column="site",
            fix="pass the train_features frame (index id, columns filepath and site)",
        )
    refuse_repeated_ids(features.index, "features", fix="keep one row per image id")
    unknown = ids.difference(features.index)
    if len(unknown):
        raise DataValidationError(
            "these labelled ids are missing from the features",
            rows=unknown,
            fix="pass features and labels of the same images (e.g. data.train_features and "
            "data.train_labels)",
        )
    sites = features["site"].reindex(ids)
    no_site = ids[sites.isna().to_numpy()]
    if len(no_site):
        raise DataValidationError(
            "some images have no site", column="site", rows=no_site, fix="fill in their site"
        )
    return sites.astype(str)


def split_summary(
    splits: Mapping[str, Split],
    features: pd.DataFrame,
    labels: pd.DataFrame | pd.Series,
) -> pd.DataFrame:
    """Sizes, shared sites and species shares of each side of each split, one row per side.

    Args:
        splits: name → `Split` (or any ``(train_ids, eval_ids)`` pair), e.g.
            ``{"random": ..., "by site": ...}``.
        features: frame with a ``site`` column covering every split id.
        labels: one-hot label frame or Series id → species name covering every split id.

    Returns:
        A frame indexed by (split, side) with columns ``images``, ``sites``, ``sites_in_both``
        (sites with images on both sides of that split: the leak) and one share per species.
    """
    species = labels_to_species(labels)
    names = species_order(species)
    rows = {}
    for name, (train_ids, eval_ids) in splits.items():
        train_ids, eval_ids = pd.Index(train_ids), pd.Index(eval_ids)
        for ids in (train_ids, eval_ids):
            unknown = ids.difference(species.index)
            if len(unknown):
                raise DataValidationError(
                    f"split {name!r} holds ids that have no label",
                    rows=unknown,
                    fix="summarise a split with the labels it was made from",
                )
        train_sites = _sites_of(features, train_ids)
        eval_sites = _sites_of(features, eval_ids)
        in_both = len(set(train_sites) & set(eval_sites))
        for side, ids, sites in ((TRAIN, train_ids, train_sites), (EVAL, eval_ids, eval_sites)):
            shares = species.loc[ids].value_counts(normalize=True).reindex(names, fill_value=0.0)
            rows[(name, side)] = {
                "images": len(ids),
                "sites": sites.nunique(),
                "sites_in_both": in_both,
                **shares.to_dict(),
            }
    summary = pd.DataFrame.from_dict(rows, orient="index")
    summary.index = pd.MultiIndex.from_tuples(summary.index, names=["split", "side"])
    return summary


def save_splits(path: str | Path, train_ids: pd.Index, eval_ids: pd.Index) -> Path:
    """Write a split as an ``id,split`` CSV (train rows, then eval rows), atomically.

    Returns:
        The path written.
    """
    train_ids, eval_ids = pd.Index(train_ids), pd.Index(eval_ids)
    both = train_ids.intersection(eval_ids)
    if len(both):
        raise DataValidationError(
            "these ids are on both sides of the split",
            rows=both,
            fix="split with split_stratified or split_by_site",
        )
    for ids in (train_ids, eval_ids):
        if ids.has_duplicates:
            raise DataValidationError(
                "the split lists some ids twice",
                rows=ids[ids.duplicated()].unique(),
                fix="pass each id once",
            )
    frame = pd.DataFrame(
        {"split": [TRAIN] * len(train_ids) + [EVAL] * len(eval_ids)},
        index=pd.Index(list(train_ids) + list(eval_ids), name="id"),
    )
    return atomic_write_csv(Path(path), frame, what="split file", lineterminator="\n")


def load_splits(path: str | Path) -> Split:
    """Read a split written by `save_splits`.

    Returns:
        A `Split` ``(train, eval)`` in the order the ids were saved.
    """
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(
            "split file not found",
            path=path,
            fix="run notebook 02, or write one with save_splits(path, *split_by_site(...))",
        )
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataValidationError(
            f"not a readable split CSV ({exc})", path=path, fix="write it again with save_splits"
        ) from None
    missing = [c for c in ("id", "split") if c not in frame.columns]
    if missing:
        raise DataValidationError(
            "the split CSV needs the columns id and split",
            path=path,
            column=missing[0],
            fix="write it again with save_splits",
        )
    bad = ~frame["split"].isin([TRAIN, EVAL])
    if bad.any():
        raise DataValidationError(
            f"split values must be {TRAIN!r} or {EVAL!r}",
            path=path,
            column="split",
            rows=(frame.index[bad] + 2).tolist(),  # file line numbers: header is line 1
            fix=f"set each row to {TRAIN} or {EVAL}",
        )
    duplicated = frame["id"].duplicated()
    if duplicated.any():
        raise DataValidationError(
            "the split CSV lists some ids twice",
            path=path,
            column="id",
            rows=frame.loc[duplicated, "id"].unique(),
            fix="keep each id once",
        )
    ids = pd.Index(frame["id"], name="id")
    is_train = (frame["split"] == TRAIN).to_numpy()
    return Split(ids[is_train], ids[~is_train])


def _check_share(value: float, name: str, *, upper_inclusive: bool) -> None:
    """Refuse a share outside (0, 1) (or (0, 1] when ``upper_inclusive``)."""
    is_number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not (is_number and (0 < value <= 1 if upper_inclusive else 0 < value < 1)):
        interval = "(0, 1]" if upper_inclusive else "(0, 1)"
        raise DataValidationError(
            f"{name} must be a number in {interval}, got {value!r}",
            fix=f"pass e.g. {name}={'0.5' if upper_inclusive else '0.25'}",
        )


def _in_order(order: pd.Index, train_ids: pd.Index, eval_ids: pd.Index) -> Split:
    """Both sides as id indexes sorted by their position in ``order``."""
    return Split(order[order.isin(train_ids)].rename("id"), order[order.isin(eval_ids)].rename("id"))


def _search_sites(
    counts: np.ndarray, test_size: float, rng: np.random.Generator, n_trials: int
) -> np.ndarray:
    """Boolean mask of eval sites minimising `_imbalance` over ``n_trials`` random starts."""
    species_totals = counts.sum(axis=0)

    def imbalance(eval_counts: np.ndarray) -> np.ndarray:
        return _imbalance(eval_counts, species_totals, test_size)

    best_mask, best_score = None, np.inf
    for _ in range(n_trials):
        in_eval = np.zeros(len(counts), dtype=bool)
        current = np.zeros(counts.shape[1], dtype=np.int64)
        score = np.inf  # an empty eval: the first site always helps
        for site in rng.permutation(len(counts))[:-1]:  # one site at least stays in train
            candidate = imbalance(current + counts[site])
            if candidate < score:
                in_eval[site], current, score = True, current + counts[site], candidate
        in_eval, score = _improve(counts, in_eval, current, imbalance)
        if score < best_score:
            best_mask, best_score = in_eval, score
    return best_mask


def _imbalance(eval_counts: np.ndarray, species_totals: np.ndarray, test_size: float) -> np.ndarray:
    """How far eval is from a stratified ``test_size`` share of the images (0 = exactly there).

    The eval share of all images and the eval share of each species should all equal
    ``test_size``; this adds the error of the first to the root-mean-square error of the
    others, both relative to ``test_size``. Every species weighs the same, so a rare one is
    not left out of train, and the square makes one species stranded in eval cost more than
    several slightly off. An empty eval scores infinity.
    """
    sizes = eval_counts.sum(axis=-1)
    size_error = np.abs(sizes / species_totals.sum() - test_size)
    species_error = np.sqrt(((eval_counts / species_totals - test_size) ** 2).mean(axis=-1))
    return np.where(sizes > 0, (size_error + species_error) / test_size, np.inf)


def _improve(counts, in_eval, current, imbalance) -> tuple[np.ndarray, float]:
    """Local search: move single sites across, or swap pairs, until neither lowers the imbalance.

    Moves are tried first: they are cheap (one score per site). Swaps, one score per pair, are
    only needed once no move helps, typically to fix the shares after the size is right.
    """
    in_eval = in_eval.copy()
    score = float(imbalance(current))
    while True:
        n_eval = int(in_eval.sum())
        sign = np.where(in_eval, -1, 1)[:, None]  # -1 takes a site out of eval, +1 adds one
        move_scores = imbalance(current + sign * counts)
        if n_eval == 1:  # neither side may become empty
            move_scores[in_eval] = np.inf
        if n_eval == len(counts) - 1:
            move_scores[~in_eval] = np.inf
        site = int(np.argmin(move_scores))
        if move_scores[site] < score - _IMPROVEMENT:
            current = current + sign[site, 0] * counts[site]
            in_eval[site] = not in_eval[site]
            score = float(move_scores[site])
            continue

        eval_sites, train_sites = np.flatnonzero(in_eval), np.flatnonzero(~in_eval)
        if len(eval_sites) * len(train_sites) > _MAX_SWAP_PAIRS:
            return in_eval, score
        swapped = current - counts[eval_sites][:, None, :] + counts[train_sites][None, :, :]
        swap_scores = imbalance(swapped)
        i, j = np.unravel_index(int(np.argmin(swap_scores)), swap_scores.shape)
        if not swap_scores[i, j] < score - _IMPROVEMENT:
            return in_eval, score
        current = swapped[i, j]
        in_eval[eval_sites[i]], in_eval[train_sites[j]] = False, True
        score = float(swap_scores[i, j])
