"""Splits: deterministic for a seed, stratified, and site-disjoint where they promise it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GroupShuffleSplit

from conserviz_utils import SPECIES, DataValidationError
from conserviz_utils.split import (
    Split,
    labels_to_species,
    load_splits,
    save_splits,
    split_by_site,
    split_stratified,
    split_summary,
)


def camera_trap_frames(n_sites: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features and one-hot labels: skewed site sizes, each site favouring a few species."""
    rng = np.random.default_rng(seed)
    ids, sites, species = [], [], []
    for s in range(n_sites):
        n_images = int(rng.integers(3, 60))
        local = rng.dirichlet(np.full(len(SPECIES), 0.5))  # species are local to sites
        for name in rng.choice(SPECIES, size=n_images, p=local):
            ids.append(f"ZJ{len(ids):06d}")
            sites.append(f"S{s:04d}")
            species.append(name)
    index = pd.Index(ids, name="id")
    filepaths = [f"train_features/{i}.jpg" for i in ids]
    features = pd.DataFrame({"filepath": filepaths, "site": sites}, index=index)
    labels = pd.get_dummies(pd.Series(species, index=index))
    return features, labels.reindex(columns=list(SPECIES), fill_value=False).astype(float)


def stratification_error(species: pd.Series, eval_ids: pd.Index, test_size: float) -> float:
    """Error of eval's share of the images plus RMS error of its share of each species, relative."""
    totals = species.value_counts()
    eval_counts = species.loc[eval_ids].value_counts().reindex(totals.index, fill_value=0)
    return float(count_error(eval_counts.to_numpy(), totals.to_numpy(), test_size))


def count_error(eval_counts: np.ndarray, totals: np.ndarray, test_size: float) -> np.ndarray:
    """`stratification_error` from eval counts per species (any leading axes)."""
    size_error = np.abs(eval_counts.sum(axis=-1) / totals.sum() - test_size)
    species_error = np.sqrt(((eval_counts / totals - test_size) ** 2).mean(axis=-1))
    return (size_error + species_error) / test_size


@pytest.fixture(scope="module")
def frames():
    return camera_trap_frames()


# --- labels ---------------------------------------------------------------------------------


def test_labels_to_species_reads_one_hot_and_series_alike(frames):
    _, labels = frames
    from_one_hot = labels_to_species(labels)
    assert from_one_hot.name == "species"
    assert from_one_hot.index.equals(labels.index)
    assert (from_one_hot == labels.idxmax(axis=1)).all()
    pd.testing.assert_series_equal(labels_to_species(from_one_hot), from_one_hot)


def test_labels_to_species_leaves_the_callers_frame_alone():
    index = pd.Index(["a", "b"], name="image")
    labels = pd.DataFrame({"bird": [1.0, 0.0], "hog": [0.0, 1.0]}, index=index)
    assert labels_to_species(labels).index.name == "id"
    assert labels.index.name == "image"


@pytest.mark.parametrize(
    "row",
    [[0.0] * 8, [1.0, 1.0] + [0.0] * 6, [np.nan] + [0.0] * 7],
    ids=["no species", "two species", "NaN"],
)
def test_labels_to_species_names_the_bad_row(row):
    index = pd.Index(["ok", "bad"], name="id")
    labels = pd.DataFrame([[1.0] + [0.0] * 7, row], columns=list(SPECIES), index=index)
    with pytest.raises(DataValidationError, match="exactly one species") as err:
        labels_to_species(labels)
    assert err.value.rows == ["bad"]


def test_labels_to_species_refuses_text_columns_and_duplicate_ids():
    with pytest.raises(DataValidationError, match="numeric"):
        labels_to_species(pd.DataFrame({"bird": ["yes"]}))
    with pytest.raises(DataValidationError, match="more than once") as err:
        labels_to_species(pd.Series(["bird", "hog"], index=["a", "a"]))
    assert err.value.rows == ["a"]


def test_labels_to_species_follows_the_one_label_rule():
    index = pd.Index(["a", "b"], name="id")
    soft = pd.DataFrame({"bird": [1.0, 0.6], "hog": [0.0, 0.4]}, index=index)
    with pytest.raises(DataValidationError, match="not one-hot") as err:
        labels_to_species(soft)  # soft rows were once argmaxed here; the one rule refuses them
    assert err.value.rows == ["b"]
    # Any species names go: splits work for a field team's own species too.
    assert labels_to_species(pd.Series(["okapi", "aardvark"], index=index)).tolist() == ["okapi", "aardvark"]


# --- the Split type -------------------------------------------------------------------------


def test_every_split_has_named_fields_and_still_unpacks(frames, tmp_path):
    features, labels = frames
    splits = {
        "stratified": split_stratified(labels, seed=0),
        "by site": split_by_site(features, labels, seed=0),
    }
    splits["loaded"] = load_splits(save_splits(tmp_path / "s.csv", *splits["by site"]))
    for name, split in splits.items():
        assert isinstance(split, Split), name
        train_ids, eval_ids = split
        assert split.train is train_ids and split.eval is eval_ids, name
        assert split[0] is split.train and split[1] is split.eval, name
        assert len(split.train) + len(split.eval) == len(labels), name
    assert splits["loaded"].train.equals(splits["by site"].train)
    assert splits["loaded"].eval.equals(splits["by site"].eval)
    # The named tuple is a plain pair to the summary.
    summary = split_summary(splits, features, labels)
    assert summary.loc[("by site", "eval"), "sites_in_both"] == 0


# --- split_stratified -----------------------------------------------------------------------


def test_stratified_split_sizes_shares_and_order(frames):
    _, labels = frames
    species = labels_to_species(labels)
    train_ids, eval_ids = split_stratified(labels, test_size=0.25, seed=0)
    assert len(train_ids) + len(eval_ids) == len(labels)
    assert train_ids.intersection(eval_ids).empty
    assert len(eval_ids) == int(np.ceil(0.25 * len(labels)))
    # Stratified: every species is split 75/25 up to rounding (one image per species).
    eval_counts = species.loc[eval_ids].value_counts()
    expected = 0.25 * species.value_counts()
    assert ((eval_counts.reindex(expected.index, fill_value=0) - expected).abs() <= 1).all()
    # Ids come back in the order of the labels, named like the frames' index.
    assert train_ids.equals(labels.index[labels.index.isin(train_ids)])
    assert train_ids.name == eval_ids.name == "id"


def test_stratified_split_samples_frac_first(frames):
    _, labels = frames
    train_ids, eval_ids = split_stratified(labels, frac=0.5, seed=3)
    assert len(train_ids) + len(eval_ids) == round(0.5 * len(labels))
    assert train_ids.union(eval_ids).isin(labels.index).all()


def test_stratified_split_is_deterministic_for_a_seed(frames):
    _, labels = frames
    first = split_stratified(labels, frac=0.5, seed=1)
    again = split_stratified(labels.idxmax(axis=1), frac=0.5, seed=1)  # names instead of one-hot
    other = split_stratified(labels, frac=0.5, seed=2)
    assert first[0].equals(again[0]) and first[1].equals(again[1])
    assert not first[1].equals(other[1])


def test_stratified_split_refuses_a_species_with_one_image():
    labels = pd.Series(["bird"] * 6 + ["hog"], index=[f"i{k}" for k in range(7)])
    with pytest.raises(DataValidationError, match="at least 2 images of each species") as err:
        split_stratified(labels)
    assert err.value.rows == ["hog"]
    assert "frac" in str(err.value)


def test_stratified_split_refuses_too_few_images_for_every_species_on_both_sides():
    labels = pd.Series(list(SPECIES) * 2, index=[f"i{k}" for k in range(16)])
    with pytest.raises(DataValidationError, match="cannot be split"):
        split_stratified(labels, test_size=0.25)


@pytest.mark.parametrize("test_size", [0, 1, -0.1, 1.5, "0.25", True, None])
def test_splits_refuse_a_test_size_outside_0_1(frames, test_size):
    features, labels = frames
    with pytest.raises(DataValidationError, match="test_size"):
        split_stratified(labels, test_size=test_size)
    with pytest.raises(DataValidationError, match="test_size"):
        split_by_site(features, labels, test_size=test_size)


@pytest.mark.parametrize("frac", [0, -1, 1.01])
def test_stratified_split_refuses_a_frac_outside_0_1(frames, frac):
    _, labels = frames
    with pytest.raises(DataValidationError, match="frac"):
        split_stratified(labels, frac=frac)


# --- split_by_site --------------------------------------------------------------------------


def test_site_split_keeps_every_site_on_one_side(frames):
    features, labels = frames
    train_ids, eval_ids = split_by_site(features, labels, seed=0)
    assert train_ids.intersection(eval_ids).empty
    assert train_ids.union(eval_ids).sort_values().equals(labels.index.sort_values())
    train_sites = set(features.loc[train_ids, "site"])
    eval_sites = set(features.loc[eval_ids, "site"])
    assert train_sites.isdisjoint(eval_sites)
    assert train_sites | eval_sites == set(features["site"])


def test_site_split_is_deterministic_and_varies_with_the_seed(frames):
    features, labels = frames
    first = split_by_site(features, labels, seed=7)
    again = split_by_site(features, labels, seed=7)
    assert first[0].equals(again[0]) and first[1].equals(again[1])
    others = {tuple(split_by_site(features, labels, seed=s)[1]) for s in range(4)}
    assert len(others) > 1, "the seed should choose among equally good site assignments"


def test_site_split_is_far_more_stratified_than_a_random_grouped_split(frames):
    features, labels = frames
    species = labels_to_species(labels)
    _, eval_ids = split_by_site(features, labels, test_size=0.25, seed=0)
    ours = stratification_error(species, eval_ids, 0.25)

    shuffler = GroupShuffleSplit(n_splits=20, test_size=0.25, random_state=0)
    random_grouped = [
        stratification_error(species, labels.index[eval_rows], 0.25)
        for _, eval_rows in shuffler.split(labels, groups=features["site"])
    ]
    # Whole sites cannot match the shares exactly; the search gets ~15× closer than chance here
    # (its greedy start alone only 2–4×).
    assert ours < 0.15 * np.mean(random_grouped)
    assert abs(len(eval_ids) / len(labels) - 0.25) < 0.03


def test_site_split_finds_the_exact_answer_when_there_is_one():
    # Sites A and C hold 30 images of one species each, B and D 10: only {B, D} gives eval
    # 25 % of the images with both species at their overall 50 % share.
    sizes = {"A": ("bird", 30), "B": ("bird", 10), "C": ("hog", 30), "D": ("hog", 10)}
    sites, species = [], []
    for site, (name, n) in sizes.items():
        sites += [site] * n
        species += [name] * n
    index = pd.Index([f"i{k:03d}" for k in range(len(sites))], name="id")
    features = pd.DataFrame({"site": sites}, index=index)
    for seed in range(3):
        _, eval_ids = split_by_site(features, pd.Series(species, index=index), seed=seed)
        assert set(features.loc[eval_ids, "site"]) == {"B", "D"}


def test_site_split_finds_the_best_assignment_of_a_few_sites():
    features, labels = camera_trap_frames(n_sites=10, seed=1)
    species = labels_to_species(labels)
    per_site = pd.crosstab(features["site"], species)
    # Every way to put some (not all, not none) of the 10 sites in eval.
    masks = (np.arange(1, 2 ** len(per_site) - 1)[:, None] >> np.arange(len(per_site))) & 1
    errors = count_error(masks @ per_site.to_numpy(), per_site.sum().to_numpy(), 0.25)
    _, eval_ids = split_by_site(features, labels, test_size=0.25, seed=0)
    assert stratification_error(species, eval_ids, 0.25) == pytest.approx(errors.min())


def test_more_trials_never_give_a_worse_split(frames):
    features, labels = frames
    species = labels_to_species(labels)
    one = stratification_error(species, split_by_site(features, labels, n_trials=1)[1], 0.25)
    many = stratification_error(species, split_by_site(features, labels, n_trials=16)[1], 0.25)
    assert many <= one


def test_site_split_with_two_sites_puts_one_on_each_side():
    index = pd.Index(["a", "b", "c", "d"], name="id")
    features = pd.DataFrame({"site": ["S1", "S1", "S1", "S2"]}, index=index)
    train_ids, eval_ids = split_by_site(features, pd.Series(["bird"] * 4, index=index))
    assert list(eval_ids) == ["d"] and list(train_ids) == ["a", "b", "c"]


def test_site_split_refuses_a_single_site():
    index = pd.Index(["a", "b"], name="id")
    features = pd.DataFrame({"site": ["S1", "S1"]}, index=index)
    with pytest.raises(DataValidationError, match="at least 2 sites"):
        split_by_site(features, pd.Series(["bird", "hog"], index=index))


def test_site_split_refuses_labels_of_images_missing_from_features(frames):
    features, labels = frames
    with pytest.raises(DataValidationError, match="missing from the features") as err:
        split_by_site(features.drop(index=["ZJ000003"]), labels)
    assert err.value.rows == ["ZJ000003"]


def test_site_split_refuses_features_with_more_images_than_labels(frames):
    features, labels = frames
    with pytest.raises(DataValidationError, match="no label") as err:
        split_by_site(features, labels.drop(index=["ZJ000005"]))
    assert err.value.rows == ["ZJ000005"]


def test_site_split_refuses_missing_or_empty_sites(frames):
    features, labels = frames
    with pytest.raises(DataValidationError, match="no 'site' column"):
        split_by_site(features.drop(columns="site"), labels)
    holes = features.copy()
    holes.loc["ZJ000002", "site"] = None
    with pytest.raises(DataValidationError, match="no site") as err:
        split_by_site(holes, labels)
    assert err.value.rows == ["ZJ000002"]


def test_site_split_refuses_a_bad_n_trials(frames):
    features, labels = frames
    with pytest.raises(DataValidationError, match="n_trials"):
        split_by_site(features, labels, n_trials=0)


# --- split_summary --------------------------------------------------------------------------


def test_split_summary_shows_the_site_leak_of_the_random_split(frames):
    features, labels = frames
    splits = {
        "random": split_stratified(labels, seed=0),
        "by site": split_by_site(features, labels, seed=0),
    }
    summary = split_summary(splits, features, labels)
    assert list(summary.index) == [
        ("random", "train"), ("random", "eval"), ("by site", "train"), ("by site", "eval")
    ]
    assert list(summary.columns) == ["images", "sites", "sites_in_both", *SPECIES]
    assert (summary.loc["by site", "sites_in_both"] == 0).all()
    assert (summary.loc["random", "sites_in_both"] > 20).all()  # almost every site leaks
    assert np.allclose(summary[list(SPECIES)].sum(axis=1), 1.0)
    assert summary.loc[("by site", "eval"), "images"] == len(splits["by site"][1])
    n_sites = features["site"].nunique()
    assert summary.loc["by site", "sites"].sum() == n_sites


def test_split_summary_refuses_ids_without_labels(frames):
    features, labels = frames
    train_ids, eval_ids = split_stratified(labels, seed=0)
    with pytest.raises(DataValidationError, match="no label"):
        split_summary({"random": (train_ids, eval_ids)}, features, labels.drop(index=eval_ids[:2]))


# --- save_splits / load_splits --------------------------------------------------------------


def test_split_files_round_trip_and_are_byte_identical(frames, tmp_path):
    features, labels = frames
    first = save_splits(tmp_path / "a.csv", *split_by_site(features, labels, seed=0))
    second = save_splits(tmp_path / "b.csv", *split_by_site(features, labels, seed=0))
    assert first.read_bytes() == second.read_bytes()
    assert first.read_text().splitlines()[0] == "id,split"
    train_ids, eval_ids = load_splits(first)
    expected_train, expected_eval = split_by_site(features, labels, seed=0)
    assert train_ids.equals(expected_train) and eval_ids.equals(expected_eval)
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file may be left behind"


def test_save_splits_refuses_an_id_on_both_sides(tmp_path):
    with pytest.raises(DataValidationError, match="both sides") as err:
        save_splits(tmp_path / "s.csv", pd.Index(["a", "b"]), pd.Index(["b"]))
    assert err.value.rows == ["b"]
    assert not (tmp_path / "s.csv").exists()


def test_load_splits_explains_a_missing_or_broken_file(tmp_path):
    with pytest.raises(DataValidationError, match="not found") as err:
        load_splits(tmp_path / "none.csv")
    assert "save_splits" in str(err.value)

    (tmp_path / "cols.csv").write_text("id,side\na,train\n")
    with pytest.raises(DataValidationError, match="columns id and split"):
        load_splits(tmp_path / "cols.csv")

    (tmp_path / "values.csv").write_text("id,split\na,train\nb,test\nc,eval\n")
    with pytest.raises(DataValidationError, match="'train' or 'eval'") as err:
        load_splits(tmp_path / "values.csv")
    assert err.value.rows == [3]  # line 3 of the file
    assert err.value.path == tmp_path / "values.csv"

    (tmp_path / "twice.csv").write_text("id,split\na,train\na,eval\n")
    with pytest.raises(DataValidationError, match="twice"):
        load_splits(tmp_path / "twice.csv")


# --- real layouts -----------------------------------------------------------------------------


def test_site_split_of_the_generated_sample_is_reproducible(request, tmp_path):
    if importlib.util.find_spec("conserviz_utils.tools.sample") is None:
        pytest.skip("conserviz_utils.tools.sample is not written yet: no sample dataset to split")
    sample_dir = request.getfixturevalue("sample_dir")
    features = pd.read_csv(sample_dir / "train_features.csv", index_col="id")
    labels = pd.read_csv(sample_dir / "train_labels.csv", index_col="id")
    train_ids, eval_ids = split_by_site(features, labels, seed=0)
    assert set(features.loc[train_ids, "site"]).isdisjoint(features.loc[eval_ids, "site"])
    assert len(train_ids) + len(eval_ids) == len(labels)
    first = save_splits(tmp_path / "one.csv", train_ids, eval_ids)
    second = save_splits(tmp_path / "two.csv", *split_by_site(features, labels, seed=0))
    assert first.read_bytes() == second.read_bytes()


def test_site_split_of_the_real_competition_csvs(shared_dir):
    csvs = shared_dir / "reference" / "conservision_csvs"
    features = pd.read_csv(csvs / "train_features.csv", index_col="id")
    labels = pd.read_csv(csvs / "train_labels.csv", index_col="id")
    train_ids, eval_ids = split_by_site(features, labels, test_size=0.25, seed=0)
    summary = split_summary({"by site": (train_ids, eval_ids)}, features, labels)
    assert summary.loc["by site", "sites"].sum() == 148
    assert (summary["sites_in_both"] == 0).all()
    assert abs(len(eval_ids) / len(labels) - 0.25) < 0.01
    overall = labels.mean()
    assert (summary.loc[("by site", "eval"), list(SPECIES)] - overall).abs().max() < 0.01
