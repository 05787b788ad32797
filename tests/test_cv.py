"""Cross-validation on cached embeddings: folds, held-out early stopping, OOF and test predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conserviz_utils import SPECIES, DataValidationError
from conserviz_utils.climb.cv import cross_validate, random_folds
from conserviz_utils.course.embeddings import Embeddings
from conserviz_utils.climb.ensemble import compare_blends
from conserviz_utils.metrics import log_loss
from conserviz_utils.course.recipe import Recipe
from conserviz_utils.climb.folds import site_folds

DIM = 8
RECIPE = Recipe(head_epochs=12, head_patience=3, head_batch_size=32, head_lr=1e-2, head_holdout=0.2)


def make_data(n_sites=12, per_site=25, seed=0, site_signal=3.0, class_signal=1.0):
    """Embeddings where each site has its own look and mostly one or two species.

    A head can learn a site's look as a shortcut to its species: that works on seen sites
    (random folds) and fails on unseen ones (site folds), the leak of camera-trap data.
    """
    rng = np.random.default_rng(seed)
    class_vectors = rng.normal(0, 1, (len(SPECIES), DIM))
    rows, values = [], []
    for site in range(n_sites):
        look = rng.normal(0, 1, DIM)
        favourites = (site % len(SPECIES), (site + 3) % len(SPECIES))  # each species at 2+ sites
        for _ in range(per_site):
            k = favourites[0] if rng.random() < 0.8 else favourites[1]
            rows.append((f"S{site:04d}", SPECIES[k]))
            values.append(site_signal * look + class_signal * class_vectors[k] + rng.normal(0, 0.5, DIM))
    ids = pd.Index([f"ZJ{i:06d}" for i in range(len(rows))], name="id")
    features = pd.DataFrame({"site": [r[0] for r in rows]}, index=ids)
    labels = pd.Series([r[1] for r in rows], index=ids, name="species")
    embeddings = Embeddings(ids=ids, values=np.asarray(values, dtype=np.float32))
    return features, labels, embeddings


def template():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, len(SPECIES)))


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def site_cv(data):
    features, labels, embeddings = data
    folds = site_folds(features, labels, n_folds=4, seed=0)
    return cross_validate(template(), embeddings, labels, folds, features=features, recipe=RECIPE, progress=False)


def test_every_image_is_predicted_out_of_fold_by_a_head_that_never_saw_its_site(data, site_cv):
    features, labels, embeddings = data
    assert len(site_cv.heads) == 4 and site_cv.heads_per_fold == 1
    for head in site_cv.heads:
        eval_ids = site_cv.folds.index[site_cv.folds == head.fold]
        training = site_cv.folds.index[site_cv.folds != head.fold]
        # Trained and stopped on the fold's training part only, split by whole sites.
        assert head.fit_ids.union(head.watch_ids).sort_values().equals(training.sort_values())
        assert not head.fit_ids.intersection(eval_ids).size and not head.watch_ids.intersection(eval_ids).size
        assert set(features.loc[head.fit_ids, "site"]).isdisjoint(features.loc[head.watch_ids, "site"])
        assert set(features.loc[head.fit_ids, "site"]).isdisjoint(features.loc[eval_ids, "site"])
        assert np.isfinite(head.val_log_loss) and head.best_epoch >= 1
    predictions = site_cv.predict(embeddings)
    assert predictions.oof.shape == (len(labels), 1, len(SPECIES))
    assert np.isfinite(predictions.oof).all()
    np.testing.assert_allclose(predictions.oof.sum(axis=2), 1.0)


def test_scores_per_fold_and_overall(data, site_cv):
    _, labels, embeddings = data
    scores = site_cv.scores
    assert list(scores.index) == [0, 1, 2, 3]
    assert scores["images"].sum() == len(labels)
    assert (scores["sites"] == 3).all()
    probs = site_cv.predict(embeddings).oof_probs()
    assert site_cv.log_loss == pytest.approx(log_loss(labels, probs))
    for fold in range(4):
        rows = site_cv.folds.to_numpy() == fold
        assert scores.loc[fold, "log_loss"] == pytest.approx(log_loss(labels[rows], probs[rows]))
    assert site_cv.fold_std == pytest.approx(scores["log_loss"].std())
    summary = site_cv.summary()
    assert summary["folds"] == 4 and summary["heads_per_fold"] == 1


def test_the_template_head_is_never_trained(data):
    features, labels, embeddings = data
    head = template()
    before = [p.detach().clone() for p in head.parameters()]
    folds = site_folds(features, labels, n_folds=3)
    cross_validate(head, embeddings, labels, folds, features=features, recipe=RECIPE, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, head.parameters()))


def test_deterministic(data, site_cv):
    features, labels, embeddings = data
    again = cross_validate(template(), embeddings, labels, site_cv.folds, features=features, recipe=RECIPE, progress=False)
    np.testing.assert_array_equal(again.predict(embeddings).oof, site_cv.predict(embeddings).oof)


def test_a_random_cv_flatters_the_score_on_site_structured_data(data, site_cv):
    features, labels, embeddings = data
    folds = random_folds(labels, n_folds=4, seed=0)
    assert (folds.groupby(features["site"]).nunique() > 1).any()  # sites straddle folds
    leaky = cross_validate(template(), embeddings, labels, folds, inner="random", recipe=RECIPE, progress=False)
    assert leaky.log_loss < site_cv.log_loss - 0.2


def test_several_heads_per_fold_stop_on_different_site_folds(data):
    features, labels, embeddings = data
    folds = site_folds(features, labels, n_folds=4, seed=0)
    cv = cross_validate(template(), embeddings, labels, folds, features=features, recipe=RECIPE,
                        heads_per_fold=3, progress=False)
    assert len(cv.heads) == 12 and cv.heads_per_fold == 3
    for fold in range(4):
        members = [h for h in cv.heads if h.fold == fold]
        watched = [set(h.watch_ids) for h in members]
        assert not (watched[0] & watched[1]) and not (watched[1] & watched[2])
        training = set(folds.index[folds != fold])
        assert set().union(*watched) == training  # each training image held out by one head
        for h in members:
            assert set(features.loc[list(h.watch_ids), "site"]).isdisjoint(features.loc[h.fit_ids, "site"])
    test = Embeddings(ids=pd.Index(["t0", "t1"], name="id"), values=embeddings.values[:2].copy())
    predictions = cv.predict(embeddings, test, names="whole")
    assert predictions.oof.shape == (len(labels), 3, len(SPECIES))
    assert predictions.test.shape == (2, 4, 3, len(SPECIES))
    assert predictions.names == ("whole 0", "whole 1", "whole 2")
    assert np.isfinite(predictions.val_loss).all()
    table = compare_blends(predictions, labels)
    assert table["log_loss"].notna().all()


def test_views_are_averaged_per_head(data, site_cv):
    embeddings = data[2]
    shifted = Embeddings(ids=embeddings.ids, values=embeddings.values + 0.3)
    both = site_cv.predict({"original": embeddings, "shifted": shifted})
    alone = [site_cv.predict(view).oof for view in (embeddings, shifted)]
    np.testing.assert_allclose(both.oof, (alone[0] + alone[1]) / 2)
    with pytest.raises(DataValidationError, match="2 views of the train images but 1"):
        site_cv.predict([embeddings, shifted], embeddings)


def test_bad_arguments(data):
    features, labels, embeddings = data
    folds = site_folds(features, labels, n_folds=3)
    with pytest.raises(ValueError, match="features="):
        cross_validate(template(), embeddings, labels, folds, recipe=RECIPE)
    with pytest.raises(DataValidationError, match="fold numbers"):
        cross_validate(template(), embeddings, labels, folds + 1, features=features, recipe=RECIPE)
    with pytest.raises(DataValidationError, match="without a label"):
        cross_validate(template(), embeddings, labels.iloc[5:], folds, features=features, recipe=RECIPE)
    with pytest.raises(ValueError, match="inner"):
        cross_validate(template(), embeddings, labels, folds, features=features, inner="sites")
    with pytest.raises(DataValidationError, match="n_folds"):
        random_folds(labels, n_folds=1)


def test_random_folds_are_stratified_and_deterministic(data):
    _, labels, _ = data
    folds = random_folds(labels, n_folds=5, seed=3)
    pd.testing.assert_series_equal(folds, random_folds(labels, n_folds=5, seed=3))
    counts = pd.crosstab(folds, labels)
    assert (counts.max() - counts.min() <= 1).all()
