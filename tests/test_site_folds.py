"""Site-grouped cross-validation folds (`climb.folds.site_folds`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from conserviz_utils import SPECIES, DataValidationError
from conserviz_utils.climb.folds import FOLD_SIZE_TOLERANCE, site_folds

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "conservision_csvs"


def make_sites(n_sites: int = 30, seed: int = 0, species=SPECIES[:5]) -> tuple[pd.DataFrame, pd.Series]:
    """Features with a site column and species names: sites of very different sizes and mixes."""
    rng = np.random.default_rng(seed)
    rows = []
    for site in range(n_sites):
        n_images = int(rng.integers(3, 60))
        mix = rng.dirichlet(np.full(len(species), 0.7))
        rows += [(f"S{site:04d}", species[k]) for k in rng.choice(len(species), n_images, p=mix)]
    ids = pd.Index([f"ZJ{i:06d}" for i in range(len(rows))], name="id")
    features = pd.DataFrame({"site": [r[0] for r in rows]}, index=ids)
    return features, pd.Series([r[1] for r in rows], index=ids, name="species")


def worst_deviation(folds: pd.Series, species: pd.Series) -> float:
    """The balance site_folds documents, recomputed from the fold labels: max |fold share - share|."""
    shares_in_folds = pd.crosstab(folds, species, normalize="index")
    return float((shares_in_folds - species.value_counts(normalize=True)).abs().max().max())


def stratified_group_kfold(features, species, n_folds: int, seed: int) -> pd.Series:
    """scikit-learn's StratifiedGroupKFold alone, as a fold Series."""
    folds = pd.Series(0, index=species.index, name="fold")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # species with fewer images than folds
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, rows) in enumerate(splitter.split(features, species, features["site"])):
            folds.iloc[rows] = fold
    return folds


def assert_balanced_and_in_size(folds, features, species, n_folds: int) -> None:
    """No worse than StratifiedGroupKFold's best of seeds 0-9, every fold within N/k ± tolerance."""
    best = min(
        worst_deviation(stratified_group_kfold(features, species, n_folds, seed), species)
        for seed in range(10)
    )
    assert folds.attrs["imbalance"] == pytest.approx(worst_deviation(folds, species))
    assert folds.attrs["imbalance"] <= best + 1e-12
    target = len(species) / n_folds
    assert ((folds.value_counts() - target).abs() <= FOLD_SIZE_TOLERANCE * target).all()


def test_every_image_in_one_fold_and_every_site_in_one_fold():
    features, species = make_sites()
    folds = site_folds(features, species, n_folds=5, seed=0)
    assert folds.index.equals(species.index)
    assert folds.name == "fold"
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    folds_per_site = folds.groupby(features["site"]).nunique()
    assert (folds_per_site == 1).all()


def test_accepts_the_one_hot_frame_and_keeps_the_label_order():
    features, species = make_sites(seed=3)
    shuffled = species.sample(frac=1.0, random_state=1)
    one_hot = pd.get_dummies(shuffled).astype(float)
    folds = site_folds(features, one_hot, n_folds=4)
    assert list(folds.index) == list(shuffled.index)
    assert (folds.groupby(features["site"].loc[folds.index]).nunique() == 1).all()


def test_deterministic_for_a_seed():
    features, species = make_sites(seed=1)
    first = site_folds(features, species, n_folds=5, seed=7)
    again = site_folds(features, species, n_folds=5, seed=7)
    pd.testing.assert_series_equal(first, again)


def test_at_least_as_balanced_as_stratified_group_kfold():
    features, species = make_sites(n_sites=40, seed=2)
    folds = site_folds(features, species, n_folds=5, seed=0)
    start = stratified_group_kfold(features, species, n_folds=5, seed=0)
    assert worst_deviation(start, species) == pytest.approx(folds.attrs["start_imbalance"])
    assert folds.attrs["imbalance"] < folds.attrs["start_imbalance"]
    assert_balanced_and_in_size(folds, features, species, n_folds=5)


@pytest.mark.parametrize(
    ("n_sites", "n_folds", "n_species", "seed"), [(60, 5, 8, 1), (30, 4, 5, 4), (20, 3, 4, 5)]
)
def test_balance_and_sizes_hold_on_other_site_mixes(n_sites, n_folds, n_species, seed):
    features, species = make_sites(n_sites=n_sites, seed=seed, species=SPECIES[:n_species])
    folds = site_folds(features, species, n_folds=n_folds, seed=seed)
    assert_balanced_and_in_size(folds, features, species, n_folds)


def test_a_site_too_big_for_the_tolerance_gets_a_fold_of_its_own():
    features, species = make_sites(n_sites=20, seed=6)
    big = pd.Index([f"ZB{i:06d}" for i in range(400)], name="id")
    features = pd.concat([features, pd.DataFrame({"site": "S9999"}, index=big)])
    species = pd.concat([species, pd.Series(SPECIES[0], index=big, name="species")])
    folds = site_folds(features, species, n_folds=4, seed=0)
    big_fold = folds.loc[big[0]]
    assert (folds == big_fold).sum() == 400  # adding any site would only make that fold larger
    assert (folds.groupby(features["site"]).nunique() == 1).all()


def test_fewer_sites_than_folds_is_a_clear_error():
    features, species = make_sites(n_sites=3)
    with pytest.raises(DataValidationError, match="at least 5 sites") as caught:
        site_folds(features, species, n_folds=5)
    assert caught.value.column == "site"
    assert "n_folds=3" in caught.value.fix


@pytest.mark.parametrize("n_folds", [1, 0, 2.5, True])
def test_refuses_a_bad_number_of_folds(n_folds):
    features, species = make_sites()
    with pytest.raises(DataValidationError, match="n_folds"):
        site_folds(features, species, n_folds=n_folds)


def test_a_species_at_a_single_site_is_reported_not_a_crash():
    features, species = make_sites(n_sites=12, seed=4)
    lonely = species.index[features["site"] == "S0003"][:2]
    species = species.copy()
    species.loc[lonely] = "leopard"  # leopard appears nowhere else
    with pytest.warns(UserWarning, match="leopard .only at S0003"):
        folds = site_folds(features, species, n_folds=4)
    assert folds.attrs["single_site_species"] == {"leopard": "S0003"}
    assert (folds.groupby(features["site"]).nunique() == 1).all()


def test_labels_and_features_must_match():
    features, species = make_sites()
    with pytest.raises(DataValidationError, match="no label"):
        site_folds(features, species.iloc[:-3], n_folds=5)
    with pytest.raises(DataValidationError, match="site"):
        site_folds(features.drop(columns="site"), species, n_folds=5)


@pytest.mark.skipif(not (REFERENCE / "train_labels.csv").is_file(), reason="needs ../shared/reference")
def test_real_competition_csvs():
    features = pd.read_csv(REFERENCE / "train_features.csv", index_col="id")
    labels = pd.read_csv(REFERENCE / "train_labels.csv", index_col="id")
    folds = site_folds(features, labels, n_folds=5, seed=0)
    assert features["site"].nunique() == 148
    assert len(folds) == len(labels) and folds.index.is_unique
    assert (folds.groupby(features["site"]).nunique() == 1).all()
    sizes = folds.value_counts(normalize=True)
    assert sizes.between(0.18, 0.22).all()
    assert folds.attrs["imbalance"] < folds.attrs["start_imbalance"]
    assert folds.attrs["single_site_species"] == {}
    assert_balanced_and_in_size(folds, features, labels.idxmax(axis=1), n_folds=5)
