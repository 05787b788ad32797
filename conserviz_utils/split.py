"""Train/eval splits (notebook 02): the walkthrough's random stratified one, the honest site-grouped one.

Camera-trap images taken at one site share a background, a camera and a light, so a model can
learn the site instead of the animal. The competition's test sites are all unseen in train, so
only a split that keeps whole sites on one side estimates the test score honestly;
`split_summary` shows how many sites the random split leaks.

A `Split` is two id indexes, ``split.train`` and ``split.eval``, deterministic for a seed; it
travels between notebooks as a small ``id,split`` CSV (`save_splits` / `load_splits`).
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
from conserviz_utils.site_search import split_sites

TRAIN, EVAL = "train", "eval"
_SAME = "pass features and labels of the same images (e.g. data.train_features and data.train_labels)"


class Split(NamedTuple):
    """A train/eval split: two id indexes; a tuple, so ``train_ids, eval_ids = split`` unpacks it."""

    train: pd.Index
    eval: pd.Index


def split_stratified(
    labels: pd.DataFrame | pd.Series, test_size: float = 0.25, frac: float = 1.0, seed: int = 0
) -> Split:
    """The walkthrough's split: sample ``frac`` of the images, then a random stratified split.

    Each species keeps its share on both sides, but sites are ignored: the same camera ends up
    in train and eval, so eval scores from this split are optimistic (see `split_by_site`).
    The walkthrough used ``frac=0.5``; ``seed`` seeds both the sample and the split.
    """
    _check_share(test_size, "test_size", upper_inclusive=False)
    _check_share(frac, "frac", upper_inclusive=True)
    species = labels_to_species(labels)
    subset = species.sample(frac=frac, random_state=seed) if frac < 1 else species

    counts = subset.value_counts()
    if (counts < 2).any():
        raise DataValidationError(
            "a stratified split needs at least 2 images of each species, and these have 1",
            column="species",
            rows=counts.index[counts < 2],
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

    Eval's share of all images and of each species should all equal ``test_size``; a search
    (`site_search.split_sites`) lowers the sum of the size error and the root-mean-square
    species error over ``n_trials`` random starts (more can only improve it) seeded by ``seed``.
    With few sites or very local species even the best is far from stratified:
    `split_summary` shows how far.

    Args:
        features: frame indexed by id with a ``site`` column (``train_features.csv``).
        labels: one-hot label frame or Series id → species name, with the same ids.
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
            f"a site-grouped split needs at least 2 sites, and these images come from {len(counts)}",
            column="site",
            fix="use split_stratified for single-site data",
        )
    in_eval = split_sites(counts.to_numpy(dtype=np.int64), test_size, np.random.default_rng(seed), n_trials)
    is_eval = sites.isin(counts.index[in_eval]).to_numpy()
    return _in_order(species.index, species.index[~is_eval], species.index[is_eval])


def split_summary(
    splits: Mapping[str, Split], features: pd.DataFrame, labels: pd.DataFrame | pd.Series
) -> pd.DataFrame:
    """Sizes, shared sites and species shares of each side of each split, one row per (split, side).

    ``splits`` maps a name to a `Split` or any ``(train_ids, eval_ids)`` pair. The column
    ``sites_in_both`` counts the sites with images on both sides of that split: the leak.
    """
    species = labels_to_species(labels)
    names = species_order(species)
    rows = {}
    for name, (train_ids, eval_ids) in splits.items():
        train_ids, eval_ids = pd.Index(train_ids), pd.Index(eval_ids)
        unknown = train_ids.append(eval_ids).difference(species.index)
        if len(unknown):
            raise DataValidationError(
                f"split {name!r} holds ids that have no label",
                rows=unknown,
                fix="summarise a split with the labels it was made from",
            )
        train_sites, eval_sites = _sites_of(features, train_ids), _sites_of(features, eval_ids)
        in_both = len(set(train_sites) & set(eval_sites))
        for side, ids, sites in ((TRAIN, train_ids, train_sites), (EVAL, eval_ids, eval_sites)):
            shares = species.loc[ids].value_counts(normalize=True).reindex(names, fill_value=0.0)
            counts = {"images": len(ids), "sites": sites.nunique(), "sites_in_both": in_both}
            rows[(name, side)] = {**counts, **shares}
    summary = pd.DataFrame.from_dict(rows, orient="index")
    summary.index = pd.MultiIndex.from_tuples(summary.index, names=["split", "side"])
    return summary


def save_splits(path: str | Path, train_ids: pd.Index, eval_ids: pd.Index) -> Path:
    """Write a split as an ``id,split`` CSV (train rows, then eval rows), atomically; returns the path."""
    train_ids, eval_ids = pd.Index(train_ids), pd.Index(eval_ids)
    both = train_ids.intersection(eval_ids)
    if len(both):
        raise DataValidationError(
            "these ids are on both sides of the split", rows=both,
            fix="split with split_stratified or split_by_site",
        )
    listed = train_ids.append(eval_ids)
    if listed.has_duplicates:
        raise DataValidationError(
            "the split lists some ids twice", rows=listed[listed.duplicated()].unique(), fix="pass each id once"
        )
    sides = [TRAIN] * len(train_ids) + [EVAL] * len(eval_ids)
    frame = pd.DataFrame({"split": sides}, index=listed.rename("id"))
    return atomic_write_csv(Path(path), frame, what="split file", lineterminator="\n")


def load_splits(path: str | Path) -> Split:
    """Read a split written by `save_splits`, the ids in the order they were saved."""
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


# --- reading labels and sites ---------------------------------------------------------------


def labels_to_species(labels: pd.DataFrame | pd.Series) -> pd.Series:
    """A Series ``species`` indexed by id, from a one-hot frame or a Series of any species names."""
    if not isinstance(labels, pd.DataFrame | pd.Series):
        raise DataValidationError(
            f"labels must be a one-hot DataFrame or a Series of species names, not {type(labels).__name__}",
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


def species_and_sites(features: pd.DataFrame, labels) -> tuple[pd.Series, pd.Series]:
    """The species and the site of every labelled image; every image of ``features`` needs a label."""
    species = labels_to_species(labels)
    sites = _sites_of(features, species.index)
    unlabelled = features.index.difference(species.index)
    if len(unlabelled):
        raise DataValidationError("these images of the features have no label", rows=unlabelled, fix=_SAME)
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
        raise DataValidationError("these labelled ids are missing from the features", rows=unknown, fix=_SAME)
    sites = features["site"].reindex(ids)
    no_site = ids[sites.isna().to_numpy()]
    if len(no_site):
        raise DataValidationError("some images have no site", column="site", rows=no_site,
                                  fix="fill in their site")
    return sites.astype(str)


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
