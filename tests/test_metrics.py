"""Metrics: the competition's log loss, accuracy, baselines, per-class/site tables, temperature."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import sklearn.metrics

from conserviz_utils import SPECIES, DataValidationError
from conserviz_utils.metrics import (
    EPS,
    accuracy,
    apply_temperature,
    fit_temperature,
    log_loss,
    majority_baseline,
    per_class_report,
    per_site_accuracy,
    uniform_baseline,
)

CLASSES = list(SPECIES)


def make_ids(n: int) -> pd.Index:
    """Competition-style image ids."""
    return pd.Index([f"ZJ{i:06d}" for i in range(n)], name="id")


def one_hot(species: pd.Series) -> pd.DataFrame:
    """The train_labels layout: one float column per species, in SPECIES order."""
    frame = pd.DataFrame(0.0, index=species.index, columns=CLASSES)
    for image_id, name in species.items():
        frame.loc[image_id, name] = 1.0
    return frame


def random_case(n: int = 60, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Random Dirichlet probabilities and random species labels, indexed by id."""
    rng = np.random.default_rng(seed)
    ids = make_ids(n)
    probs = pd.DataFrame(rng.dirichlet(np.full(len(CLASSES), 0.5), size=n), index=ids, columns=CLASSES)
    labels = pd.Series(rng.choice(CLASSES, size=n), index=ids, name="species")
    return probs, labels


def competition_reference(probs: np.ndarray, eps: float = EPS) -> np.ndarray:
    """The competition's preprocessing, written out: clip, then renormalise every row."""
    clipped = np.clip(probs, eps, 1 - eps)
    return clipped / clipped.sum(axis=1, keepdims=True)


def sklearn_log_loss(labels: pd.Series, probs: np.ndarray) -> float:
    """scikit-learn's log loss, told about all 8 classes even if some never occur."""
    y = labels.map(CLASSES.index).to_numpy()
    return sklearn.metrics.log_loss(y, probs, labels=list(range(len(CLASSES))))


@pytest.mark.parametrize("seed", range(5))
def test_log_loss_equals_sklearn_on_proper_probabilities(seed):
    probs, labels = random_case(seed=seed)
    assert log_loss(labels, probs) == pytest.approx(sklearn_log_loss(labels, probs.to_numpy()), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_log_loss_clips_and_renormalises_like_the_competition(seed):
    rng = np.random.default_rng(100 + seed)
    probs, labels = random_case(seed=seed)
    raw = probs.to_numpy() * rng.uniform(0.3, 1.0, size=(len(probs), 1))  # rows no longer sum to 1
    raw[rng.random(raw.shape) < 0.2] = 0.0  # certain "no"
    certain_yes = rng.random(len(raw)) < 0.2
    raw[certain_yes] = 0.0
    raw[certain_yes, rng.integers(0, len(CLASSES), certain_yes.sum())] = 1.0  # certain "yes", often wrong
    raw = pd.DataFrame(raw, index=probs.index, columns=CLASSES)

    ours = log_loss(labels, raw)
    assert math.isfinite(ours)
    assert ours == pytest.approx(sklearn_log_loss(labels, competition_reference(raw.to_numpy())), rel=1e-12)
    # A wrong certain answer costs about -log(1e-15), not infinity.
    wrong = raw.iloc[[0]].copy()
    wrong.iloc[0] = 0.0
    wrong.iloc[0, (CLASSES.index(labels.iloc[0]) + 1) % len(CLASSES)] = 1.0
    assert log_loss(labels.iloc[[0]], wrong) == pytest.approx(-math.log(EPS), rel=1e-6)


def test_log_loss_by_hand():
    probs = np.array([[0.5, 0.25, 0.25, 0, 0, 0, 0, 0], [0.1, 0.9, 0, 0, 0, 0, 0, 0]])
    assert log_loss(["antelope_duiker", "bird"], probs) == pytest.approx(-(math.log(0.5) + math.log(0.9)) / 2)
    assert log_loss([1, 1], probs) == pytest.approx(-(math.log(0.25) + math.log(0.9)) / 2)
    assert accuracy(["antelope_duiker", "bird"], probs) == 1.0
    assert accuracy(["bird", "bird"], probs) == 0.5


def test_labels_align_by_id_whatever_their_order_or_form():
    probs, labels = random_case()
    expected = log_loss(labels, probs)
    shuffled = labels.sample(frac=1.0, random_state=0)
    assert log_loss(shuffled, probs) == expected
    assert log_loss(one_hot(shuffled), probs) == expected
    assert log_loss(labels, probs.to_numpy()) == expected  # positional when probs are a plain array
    assert log_loss(labels.to_numpy(), probs) == expected
    assert accuracy(one_hot(shuffled), probs) == accuracy(labels, probs)
    # Reordered species columns are matched by name.
    assert log_loss(labels, probs[CLASSES[::-1]]) == pytest.approx(expected, rel=1e-15)


def test_mismatched_ids_are_refused_naming_them():
    probs, labels = random_case()
    with pytest.raises(DataValidationError, match="different images") as caught:
        log_loss(labels.drop(index=["ZJ000003", "ZJ000007"]), probs)
    assert caught.value.rows == ["ZJ000003", "ZJ000007"]
    assert "labels.loc[probs.index]" in str(caught.value)
    with pytest.raises(DataValidationError, match="60 rows of probabilities but 59 labels"):
        log_loss(labels.to_numpy()[:-1], probs.to_numpy())
    doubled = pd.concat([labels, labels.iloc[:1]])
    with pytest.raises(DataValidationError, match="duplicated ids"):
        accuracy(doubled, probs)


@pytest.mark.parametrize(
    ("mutate", "match", "row"),
    [
        (lambda p, y: (p.assign(bird=p["bird"] * 7), y), "look like logits", None),
        (lambda p, y: (p.assign(hog=p["hog"].mask(p.index == "ZJ000004")), y), "NaN", "ZJ000004"),
        (lambda p, y: (p, y.replace({y.iloc[5]: "zebra"})), "zebra", None),
        (lambda p, y: (p, one_hot(y).assign(bird=1.0)), "not one-hot", None),
        (lambda p, y: (p.drop(columns="hog"), y), "hog", None),
        (lambda p, y: (p.assign(bird="x"), y), "must be numbers", None),
    ],
)
def test_bad_inputs_get_a_clear_error(mutate, match, row):
    probs, labels = mutate(*random_case())
    with pytest.raises(DataValidationError, match=match) as caught:
        log_loss(labels, probs)
    if row is not None:
        assert caught.value.rows == [row]


def test_uniform_baseline_is_ln8():
    _, labels = random_case()
    assert uniform_baseline(labels) == {"accuracy": 1 / 8, "log_loss": pytest.approx(math.log(8), rel=1e-12)}
    assert uniform_baseline(one_hot(labels))["log_loss"] == pytest.approx(2.0794415, abs=1e-7)


def test_majority_baseline_predicts_the_training_shares():
    train = pd.Series(["bird"] * 6 + ["hog"] * 3 + ["rodent"], index=make_ids(10))
    evaluation = pd.Series(["bird", "hog", "hog", "rodent"], index=make_ids(4))
    scores = majority_baseline(one_hot(train), evaluation)
    assert scores["accuracy"] == 0.25
    expected = -(math.log(0.6) + 2 * math.log(0.3) + math.log(0.1)) / 4
    assert scores["log_loss"] == pytest.approx(expected, rel=1e-9)
    assert majority_baseline(train, one_hot(evaluation)) == scores


def test_per_class_report_by_hand():
    labels = ["bird", "bird", "hog", "rodent"]
    predicted = ["bird", "hog", "hog", "hog"]
    probs = np.zeros((4, 8))
    probs[np.arange(4), [CLASSES.index(s) for s in predicted]] = 1.0
    report = per_class_report(labels, probs)
    assert list(report.index) == CLASSES and list(report.columns) == ["precision", "recall", "f1", "support"]
    assert report.loc["bird"].tolist() == pytest.approx([1.0, 0.5, 2 / 3, 2])
    assert report.loc["hog"].tolist() == pytest.approx([1 / 3, 1.0, 0.5, 1])
    assert report.loc["rodent"].tolist() == [0.0, 0.0, 0.0, 1]
    assert report["support"].sum() == 4


def test_per_site_accuracy_scores_each_site_worst_first():
    ids = make_ids(5)
    labels = pd.Series(["bird", "bird", "hog", "hog", "hog"], index=ids)
    probs = pd.DataFrame(0.0, index=ids, columns=CLASSES)
    probs["bird"] = [0.8, 0.8, 0.8, 0.2, 0.2]
    probs["hog"] = 1 - probs["bird"]
    features = pd.DataFrame(
        {"site": ["S0002", "S0002", "S0001", "S0001", "S0003"], "filepath": "x"}, index=ids
    )
    extra = pd.DataFrame({"site": ["S0009"], "filepath": "x"}, index=["ZJ999999"])
    table = per_site_accuracy(labels, probs, pd.concat([features, extra]))
    assert list(table.columns) == ["site", "n", "accuracy", "log_loss"]
    assert table["site"].tolist() == ["S0001", "S0002", "S0003"]
    assert table["n"].tolist() == [2, 2, 1]
    assert table["accuracy"].tolist() == [0.5, 1.0, 1.0]
    assert table.loc[0, "log_loss"] == pytest.approx(-(math.log(0.2) + math.log(0.8)) / 2)

    with pytest.raises(DataValidationError, match="no site column"):
        per_site_accuracy(labels, probs, features.drop(columns="site"))
    with pytest.raises(DataValidationError, match="lack the site") as caught:
        per_site_accuracy(labels, probs, features.drop(index="ZJ000001"))
    assert caught.value.rows == ["ZJ000001"]


def calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, len(CLASSES)))
    probs = apply_temperature(logits, 1.0)
    labels = np.array([rng.choice(len(CLASSES), p=row) for row in probs])
    return logits, labels


def test_temperature_leaves_calibrated_logits_near_one():
    logits, labels = calibrated_logits(4000, seed=0)
    assert fit_temperature(labels, logits) == pytest.approx(1.0, abs=0.1)


def test_temperature_softens_over_confident_logits():
    logits, labels = calibrated_logits(4000, seed=1)
    over_confident = 4.0 * logits
    temperature = fit_temperature(labels, over_confident)
    assert temperature == pytest.approx(4.0, rel=0.1)
    before = log_loss(labels, apply_temperature(over_confident, 1.0))
    after = log_loss(labels, apply_temperature(over_confident, temperature))
    assert after < before - 0.5
    # Scaling never changes the ranking, so accuracy is untouched.
    calibrated = apply_temperature(over_confident, temperature)
    assert accuracy(labels, calibrated) == accuracy(labels, apply_temperature(logits, 1.0))
    # It is the minimum: nudging T either way does worse.
    for nudged in (temperature * 1.02, temperature / 1.02):
        assert log_loss(labels, apply_temperature(over_confident, nudged)) > after


def test_temperature_sharpens_under_confident_logits_and_is_deterministic():
    logits, labels = calibrated_logits(2000, seed=2)
    first = fit_temperature(labels, logits / 3.0)
    assert first == pytest.approx(1 / 3, rel=0.1)
    assert fit_temperature(labels, logits / 3.0) == first


def test_temperature_accepts_frames_aligned_by_id_and_tensors():
    logits, labels = calibrated_logits(300, seed=3)
    ids = make_ids(300)
    frame = pd.DataFrame(logits, index=ids, columns=CLASSES)
    names = pd.Series(np.array(CLASSES)[labels], index=ids)
    expected = fit_temperature(labels, logits)
    assert fit_temperature(names.iloc[::-1], frame) == expected
    torch = pytest.importorskip("torch")
    assert fit_temperature(torch.from_numpy(labels), torch.from_numpy(logits)) == expected


def test_apply_temperature_keeps_the_layout_and_is_stable():
    ids = make_ids(2)
    rows = [[1000.0, 0, 0, 0, 0, 0, 0, 0], [1.0, 2, 3, 4, 5, 6, 7, 8]]
    logits = pd.DataFrame(rows, index=ids, columns=CLASSES)
    probs = apply_temperature(logits, 2.0)
    assert probs.index.equals(ids) and list(probs.columns) == CLASSES
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs.iloc[0, 0] == 1.0
    expected = np.exp(np.arange(1, 9) / 2.0) / np.exp(np.arange(1, 9) / 2.0).sum()
    np.testing.assert_allclose(probs.iloc[1].to_numpy(), expected, rtol=1e-12)
    for bad in (0.0, -1.0, float("nan"), "warm"):
        with pytest.raises(ValueError, match="temperature"):
            apply_temperature(logits, bad)


def test_fit_temperature_clamps_to_its_bounds_when_everything_is_right():
    logits = np.eye(8) * 5.0
    assert fit_temperature(np.arange(8), logits, bounds=(0.05, 20.0)) == 0.05


# --- argument order -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    ["names", "one-hot frame", "class numbers", "one-hot array"],
)
def test_swapped_arguments_are_refused_saying_so(form):
    probs, labels = random_case()
    as_form = {
        "names": labels,
        "one-hot frame": one_hot(labels),
        "class numbers": labels.map(CLASSES.index).to_numpy(),
        "one-hot array": one_hot(labels).to_numpy(),
    }[form]
    logits = np.log(probs.to_numpy())
    calls = [
        lambda: log_loss(probs, as_form),
        lambda: accuracy(probs.to_numpy(), as_form),
        lambda: per_class_report(probs, as_form),
        lambda: per_site_accuracy(probs, as_form, pd.DataFrame({"site": "S1"}, index=probs.index)),
        lambda: fit_temperature(logits, as_form),
    ]
    for call in calls:
        with pytest.raises(DataValidationError, match="arguments look swapped") as caught:
            call()
        assert "(y_true, y_pred) like scikit-learn" in str(caught.value)
        assert "labels first" in caught.value.fix
    torch = pytest.importorskip("torch")
    with pytest.raises(DataValidationError, match="arguments look swapped"):
        fit_temperature(torch.tensor(logits), torch.tensor(labels.map(CLASSES.index).to_numpy()))


def test_swap_check_passes_the_right_order_and_confident_one_hot_predictions():
    probs, labels = random_case()
    assert log_loss(one_hot(labels), probs) == log_loss(labels, probs)
    # A model that is certain everywhere outputs one-hot rows: nothing to call swapped.
    certain = one_hot(labels.sample(frac=1.0, random_state=1).set_axis(labels.index))
    assert accuracy(one_hot(labels), certain) == accuracy(labels, certain)
    # Soft labels in the first place are refused by the label rule, not called swapped.
    with pytest.raises(DataValidationError, match="not one-hot") as caught:
        log_loss(probs, probs)
    assert "probabilities or soft labels" in caught.value.fix
    assert len(caught.value.rows) == len(probs)
