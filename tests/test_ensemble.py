"""Blends of fold predictions, their OOF comparison and the cross-fitted temperature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conserviz_utils import DataValidationError
from conserviz_utils.climb.ensemble import (
    BLENDS,
    FoldPredictions,
    blend_members,
    calibrate_out_of_fold,
    compare_blends,
    member_weights,
    out_of_fold_scores,
    probabilities_to_logits,
    score_table,
)
from conserviz_utils.metrics import apply_temperature, fit_temperature, log_loss

SPECIES = ("a", "b", "c")


def softmax(z):
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def make_predictions(n=60, members=3, folds=3, seed=0, with_test=True):
    rng = np.random.default_rng(seed)
    labels = pd.Series(rng.choice(SPECIES, n), index=pd.Index([f"i{k}" for k in range(n)], name="id"))
    truth = np.eye(3)[[SPECIES.index(s) for s in labels]]
    oof = softmax(2.0 * truth[:, None, :] + rng.normal(0, 1.5, (n, members, 3)))
    test_ids = pd.Index([f"t{k}" for k in range(10)], name="id")
    test = softmax(rng.normal(0, 1, (10, folds, members, 3))) if with_test else None
    predictions = FoldPredictions(
        ids=labels.index,
        folds=np.arange(n) % folds,
        oof=oof,
        val_loss=rng.uniform(0.5, 1.5, (folds, members)),
        species=SPECIES,
        test_ids=test_ids if with_test else None,
        test=test,
    )
    return predictions, labels


# --- weights and blends ------------------------------------------------------------------------


def test_member_weights_are_inverse_squared_losses_with_a_cutoff():
    np.testing.assert_allclose(member_weights([1.0, 2.0]), [0.8, 0.2])
    np.testing.assert_allclose(member_weights([1.0, 2.0], power=1), [2 / 3, 1 / 3])
    np.testing.assert_allclose(member_weights([0.8, 0.9, 1.2], cutoff=0.95), [0.8**-2, 0.9**-2, 0] / np.sum([0.8**-2, 0.9**-2]))
    with pytest.raises(DataValidationError, match="above the cutoff 0.5"):
        member_weights([0.8, 0.9], cutoff=0.5)
    with pytest.raises(DataValidationError, match="positive numbers"):
        member_weights([0.8, np.nan])


def test_arithmetic_and_geometric_means():
    first = np.array([[0.7, 0.2, 0.1]])
    second = np.array([[0.1, 0.6, 0.3]])
    stacked = np.stack([first, second], axis=1)
    np.testing.assert_allclose(blend_members(stacked, "arithmetic"), (first + second) / 2)
    geometric = np.sqrt(first * second)
    np.testing.assert_allclose(blend_members(stacked, "geometric"), geometric / geometric.sum())
    np.testing.assert_allclose(blend_members(stacked[:, :1], "geometric"), first)


def test_weighted_geometric_follows_the_losses_and_drops_members_above_the_cutoff():
    rng = np.random.default_rng(1)
    stacked = softmax(rng.normal(0, 1, (5, 2, 3)))
    equal = blend_members(stacked, "weighted geometric", val_losses=[0.9, 0.9])
    np.testing.assert_allclose(equal, blend_members(stacked, "geometric"))
    dropped = blend_members(stacked, "weighted geometric", val_losses=[0.9, 1.1], cutoff=1.0)
    np.testing.assert_allclose(dropped, stacked[:, 0])
    leaning = blend_members(stacked, "weighted geometric", val_losses=[0.5, 2.0])
    closer_to_first = np.abs(leaning - stacked[:, 0]).sum() < np.abs(leaning - stacked[:, 1]).sum()
    assert closer_to_first
    with pytest.raises(ValueError, match="val_losses"):
        blend_members(stacked, "weighted geometric")


def test_a_zero_probability_does_not_break_the_geometric_mean():
    stacked = np.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]])
    blended = blend_members(stacked, "geometric")
    assert np.isfinite(blended).all()
    assert blended.sum() == pytest.approx(1.0)
    assert blended[0, 0] > 0.99


def test_unknown_blend_and_bad_shapes():
    with pytest.raises(ValueError, match="unknown blend"):
        blend_members(np.ones((2, 1, 3)) / 3, "median")
    with pytest.raises(DataValidationError, match="images, members, classes"):
        blend_members(np.ones((2, 3)) / 3)


def test_logits_from_probabilities_give_the_probabilities_back():
    probs = pd.DataFrame(softmax(np.random.default_rng(2).normal(0, 2, (4, 3))), columns=list(SPECIES))
    np.testing.assert_allclose(apply_temperature(probabilities_to_logits(probs), 1.0), probs)


# --- fold predictions --------------------------------------------------------------------------


def test_oof_blends_use_each_folds_own_member_losses():
    predictions, _ = make_predictions()
    val_loss = np.array([[0.9, 2.0, 2.0], [0.9, 0.9, 0.9], [2.0, 2.0, 0.9]])
    predictions = FoldPredictions(**{**predictions.__dict__, "val_loss": val_loss})
    blended = predictions.oof_probs("weighted geometric", cutoff=1.0)
    fold_0, fold_2 = predictions.folds == 0, predictions.folds == 2
    np.testing.assert_allclose(blended.to_numpy()[fold_0], predictions.oof[fold_0, 0])
    np.testing.assert_allclose(blended.to_numpy()[fold_2], predictions.oof[fold_2, 2])
    assert list(blended.index) == list(predictions.ids) and list(blended.columns) == list(SPECIES)


def test_test_blends_use_every_head_of_every_fold():
    predictions, _ = make_predictions()
    heads = predictions.test.reshape(10, -1, 3)
    np.testing.assert_allclose(predictions.test_probs("arithmetic").to_numpy(), heads.mean(axis=1))
    weighted = predictions.test_probs("weighted geometric")
    np.testing.assert_allclose(
        weighted.to_numpy(), blend_members(heads, "weighted geometric", predictions.val_loss.reshape(-1))
    )
    assert list(weighted.index) == list(predictions.test_ids)


def test_member_and_concat():
    predictions, _ = make_predictions()
    single = predictions.member(1)
    assert single.n_members == 1 and single.names == ("member 1",)
    np.testing.assert_allclose(single.oof[:, 0], predictions.oof[:, 1])
    both = FoldPredictions.concat([single, predictions])
    assert both.n_members == 4 and both.test.shape == (10, 3, 4, 3)
    np.testing.assert_allclose(both.val_loss[:, 1:], predictions.val_loss)
    other, _ = make_predictions(folds=2)
    with pytest.raises(DataValidationError, match="same folds"):
        FoldPredictions.concat([predictions, other])


def test_no_test_predictions_is_a_clear_error():
    predictions, _ = make_predictions(with_test=False)
    with pytest.raises(ValueError, match="no test predictions"):
        predictions.test_probs()


# --- scores, comparison, calibration -----------------------------------------------------------


def test_out_of_fold_scores_and_spread():
    predictions, labels = make_predictions()
    probs = predictions.oof_probs("arithmetic")
    scores = out_of_fold_scores(labels, probs, predictions.folds)
    assert scores["log_loss"] == pytest.approx(log_loss(labels, probs))
    for fold in range(3):
        rows = predictions.folds == fold
        assert scores["per_fold"][fold] == pytest.approx(log_loss(labels[rows], probs[rows]))
    assert scores["fold_std"] == pytest.approx(scores["per_fold"].std(ddof=1))
    by_series = out_of_fold_scores(labels, probs, pd.Series(predictions.folds, index=probs.index)[::-1])
    assert by_series["per_fold"].equals(scores["per_fold"])


def test_compare_blends_scores_every_blend_best_first():
    predictions, labels = make_predictions()
    table = compare_blends(predictions, labels)
    assert set(table.index) == set(BLENDS)
    assert table["log_loss"].is_monotonic_increasing
    for method in BLENDS:
        expected = log_loss(labels, predictions.oof_probs(method))
        assert table.loc[method, "log_loss"] == pytest.approx(expected)
    # Averaging three noisy members beats one of them.
    single = compare_blends(predictions.member(0), labels)
    assert table["log_loss"].min() < single["log_loss"].min()


def test_temperature_is_cross_fitted_by_fold():
    # Labels drawn from softmax(z): the calibrated probabilities. The model says softmax(z / 0.3).
    rng = np.random.default_rng(3)
    z = rng.normal(0, 1, (300, 3))
    ids = pd.Index([f"i{k}" for k in range(300)], name="id")
    labels = pd.Series([rng.choice(SPECIES, p=p) for p in softmax(z)], index=ids)
    overconfident = pd.DataFrame(softmax(z / 0.3), index=ids, columns=list(SPECIES))
    folds = np.arange(300) % 3
    calibration = calibrate_out_of_fold(labels, overconfident, folds)
    assert 2.0 < calibration.temperature < 5.0
    assert log_loss(labels, calibration.oof_probs) < log_loss(labels, overconfident)
    logits = probabilities_to_logits(overconfident)
    others = folds != 1
    assert calibration.fold_temperatures[1] == pytest.approx(fit_temperature(labels[others], logits[others]))
    rows = folds == 1
    np.testing.assert_allclose(
        calibration.oof_probs[rows], apply_temperature(logits[rows], calibration.fold_temperatures[1])
    )
    assert calibration.temperature == pytest.approx(fit_temperature(labels, logits))
    recalibrated = calibration.apply(overconfident)
    np.testing.assert_allclose(recalibrated, apply_temperature(logits, calibration.temperature))


def test_compare_candidates_and_the_step_table():
    predictions, labels = make_predictions()
    table = compare_blends({"three": predictions, "one": predictions.member(2)}, labels, max_ratio=1.2)
    assert table.index.names == ["candidate", "blend"] and len(table) == 6
    assert table["log_loss"].is_monotonic_increasing
    expected = log_loss(labels, predictions.oof_probs("weighted geometric", max_ratio=1.2))
    assert table.loc[("three", "weighted geometric"), "log_loss"] == pytest.approx(expected)
    steps = score_table({"one": predictions.member(0).oof_probs(), "three": predictions.oof_probs()},
                        labels, predictions.folds)
    assert list(steps.index) == ["one", "three"]
    assert list(steps.columns) == ["log_loss", "fold_std", "accuracy"]


def test_max_ratio_drops_members_relative_to_the_best():
    np.testing.assert_allclose(member_weights([1.0, 1.1, 1.5], max_ratio=1.2),
                               np.array([1.0, 1.1**-2, 0]) / (1 + 1.1**-2))
    np.testing.assert_allclose(member_weights([3.0, 9.0], max_ratio=1.2), [1.0, 0.0])  # the best stays
    with pytest.raises(ValueError, match="max_ratio"):
        member_weights([1.0], max_ratio=0.5)
