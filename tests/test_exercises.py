"""The exercise checkers: right answers pass, each usual wrong answer gets its own hint."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from conserviz_utils import SPECIES
from conserviz_utils.teaching.exercises import (
    CORRECT,
    NOT_ANSWERED,
    NOT_YET,
    CheckResult,
    check_best_epoch,
    check_best_learning_rate,
    check_broken_submission,
    check_busiest_site,
    check_confidently_wrong,
    check_frozen_trainable,
    check_most_common_confusion,
    check_one_log_loss,
    check_share_shift,
    check_site_holdout,
    check_site_species_shares,
    check_softmax,
    check_worst_case_cost,
)
from conserviz_utils.metrics import log_loss

# Site A: 6 images (4 hog, 2 bird), site B: 3 (bird, bird, rodent), site C: 1 (rodent).
LAYOUT = [("A", "hog")] * 4 + [("A", "bird")] * 2 + [("B", "bird")] * 2 + [("B", "rodent"), ("C", "rodent")]


@pytest.fixture()
def data():
    ids = pd.Index([f"ZJ{k:06d}" for k in range(len(LAYOUT))], name="id")
    features = pd.DataFrame({"site": [site for site, _ in LAYOUT]}, index=ids)
    names = pd.Series([species for _, species in LAYOUT], index=ids)
    labels = pd.get_dummies(names).reindex(columns=list(SPECIES), fill_value=0).astype(float)
    test_features = pd.DataFrame({"site": ["T1", "T1"]}, index=pd.Index(["ZJ900000", "ZJ900001"]))
    return features, labels, test_features


def hint(result: CheckResult) -> str:
    assert result.status == NOT_YET, result
    return result.message


def test_result_shows_its_status_in_text_and_html():
    result = CheckResult("Exercise 1 · x", CORRECT, "because <reasons>")
    assert result.passed and bool(result)
    assert str(result) == repr(result) == "✓ Exercise 1 · x: correct — because <reasons>"
    assert "&lt;reasons&gt;" in result._repr_html_() and "#2e7d32" in result._repr_html_()
    waiting = CheckResult("Exercise 1 · x", NOT_ANSWERED, "replace None")
    assert not waiting.passed and str(waiting).startswith("… ")


def test_placeholders_are_not_answered_yet(data):
    features, labels, _ = data
    for result in (
        check_busiest_site(None, features),
        check_site_species_shares(None, features, labels),
        check_site_holdout(None, features),
        check_share_shift(None, None, (features.index, features.index), labels),
        check_one_log_loss(None, labels, None, "ZJ000000"),
        check_confidently_wrong(None, labels),
        check_broken_submission(None, None),
        check_worst_case_cost(None, None),
        check_softmax(None, None),
        check_best_learning_rate(None, {}),
        check_best_epoch(None, None),
        check_most_common_confusion(None, labels, None, "hog"),
        check_frozen_trainable(None),
    ):
        assert result.status == NOT_ANSWERED and "replace None" in result.message


# --- 01 ---------------------------------------------------------------------------------------


def test_busiest_site(data):
    features, _, test_features = data
    right = check_busiest_site("A", features)
    assert right.passed and "6 of the 10" in right.message
    assert "fewest" in hint(check_busiest_site("C", features))
    assert "1 site(s) have more" in hint(check_busiest_site("B", features))
    assert "how many images" in hint(check_busiest_site(6, features))
    assert "whole table" in hint(check_busiest_site(features["site"].value_counts(), features))
    assert "test site" in hint(check_busiest_site("T1", features, test_features))
    assert "spelling" in hint(check_busiest_site("S9", features))
    assert "A" not in hint(check_busiest_site("S9", features)).split("like")[1]


def test_site_species_shares(data):
    features, labels, _ = data
    site_a = pd.Series({"hog": 4 / 6, "bird": 2 / 6})
    right = check_site_species_shares(site_a, features, labels)
    assert right.passed and "hog makes up 67%" in right.message
    assert check_site_species_shares(site_a.round(2).to_dict(), features, labels).passed
    assert "counts" in hint(check_site_species_shares(site_a * 6, features, labels))
    assert "percentages" in hint(check_site_species_shares(site_a * 100, features, labels))
    overall = labels.sum().div(len(labels))
    assert "all training images" in hint(check_site_species_shares(overall, features, labels))
    per_species = pd.Series({"hog": 1.0, "bird": 0.5})  # the share of each species' images at A
    assert "normalised per species" in hint(check_site_species_shares(per_species, features, labels))
    site_b = pd.Series({"bird": 2 / 3, "rodent": 1 / 3})
    assert "site B" in hint(check_site_species_shares(site_b, features, labels))
    assert "add up to 1" in hint(check_site_species_shares(pd.Series({"hog": 0.5}), features, labels))
    assert "not a species" in hint(check_site_species_shares(pd.Series({"hogg": 1.0}), features, labels))
    assert "Series of shares" in hint(check_site_species_shares("hog", features, labels))


# --- 02 ---------------------------------------------------------------------------------------


def test_site_holdout(data):
    features, _, _ = data
    at_a = features.index[features["site"] == "A"]
    rest = features.index[features["site"] != "A"]
    right = check_site_holdout((rest, at_a), features)
    assert right.passed and "site A's 6 images are held out" in right.message
    assert check_site_holdout((list(rest), list(at_a)), features).passed
    assert "swapped" in hint(check_site_holdout((at_a, rest), features))
    at_b = features.index[features["site"] == "B"]
    assert "site B (3 images)" in hint(check_site_holdout((features.index.difference(at_b), at_b), features))
    assert "both sides" in hint(check_site_holdout((rest.append(at_a[:1]), at_a), features))
    assert "mixes 2 sites" in hint(check_site_holdout((rest[1:], at_a.append(rest[:1])), features))
    assert "neither side" in hint(check_site_holdout((rest[1:], at_a), features))
    assert "only 5 of site A's 6" in hint(check_site_holdout((rest, at_a[1:]), features))
    assert "not training images" in hint(check_site_holdout((rest, at_a.append(pd.Index(["X"]))), features))
    assert "pair" in hint(check_site_holdout(at_a, features))


def test_share_shift(data):
    features, labels, _ = data
    at_a = features.index[features["site"] == "A"]
    split = (features.index.difference(at_a), at_a)
    # eval (site A): hog 4/6, bird 2/6; train: bird 2/4, rodent 2/4 → hog moves +0.667.
    shift = 4 / 6
    right = check_share_shift("hog", shift, split, labels)
    assert right.passed and "67% of the held-out site" in right.message
    assert check_share_shift("hog", round(shift, 3), split, labels).passed
    assert "sign" in hint(check_share_shift("hog", -shift, split, labels))
    assert "percentage points" in hint(check_share_shift("hog", 100 * shift, split, labels))
    assert "another species moves more" in hint(check_share_shift("bird", -1 / 6, split, labels))
    assert "all images" in hint(check_share_shift("hog", 4 / 6 - 4 / 10, split, labels))
    assert "not a species" in hint(check_share_shift("hogs", shift, split, labels))
    assert "one number" in hint(check_share_shift("hog", [shift, -shift], split, labels))


# --- 03 ---------------------------------------------------------------------------------------


def test_frozen_trainable_resnet50_seed_head():
    head = 2048 * 100 + 100 + 100 * 8 + 8
    right = check_frozen_trainable(head)
    assert right.passed and f"{head:,}" in right.message
    total = 23_713_740
    assert "every parameter" in hint(check_frozen_trainable(total))
    assert "frozen backbone" in hint(check_frozen_trainable(total - head))
    assert "biases" in hint(check_frozen_trainable(2048 * 100 + 100 * 8))
    assert "last Linear" in hint(check_frozen_trainable(100 * 8 + 8))
    assert "millions" in hint(check_frozen_trainable(round(head / 1e6, 4)))
    assert "EfficientNet-Lite0" in hint(check_frozen_trainable(1280 * 100 + 100 + 808))
    assert "one number" in hint(check_frozen_trainable("205708"))


def test_softmax_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    right = check_softmax(logits.softmax(dim=1), logits)
    assert right.passed
    assert check_softmax(logits.softmax(dim=1).numpy().tolist(), logits).passed
    assert "dim 0" in hint(check_softmax(logits.softmax(dim=0), logits))
    assert "did not divide" in hint(check_softmax(logits.exp(), logits))
    assert "log-probabilities" in hint(check_softmax(logits.log_softmax(dim=1), logits))
    assert "not the logits themselves" in hint(check_softmax(logits / logits.sum(dim=1, keepdim=True), logits))
    assert "unchanged" in hint(check_softmax(logits, logits))
    assert "shape (2, 3)" in hint(check_softmax(logits.softmax(dim=1)[0:1], logits))


# --- 04 ---------------------------------------------------------------------------------------


def history(eval_losses, train_loss):
    """A fit_head history: a train row and an eval row per epoch."""
    rows = [{"epoch": e + 1, "phase": "train", "train_loss": train_loss, "eval_log_loss": np.nan}
            for e in range(len(eval_losses))]
    rows += [{"epoch": e + 1, "phase": "eval", "train_loss": np.nan, "eval_log_loss": v}
             for e, v in enumerate(eval_losses)]
    return pd.DataFrame(rows)


def test_best_learning_rate():
    histories = {
        1e-2: history([1.9, 1.7, 1.8, 1.9], train_loss=0.2),  # fits train best, eval turns up
        1e-3: history([2.0, 1.8, 1.6, 1.65], train_loss=0.9),
        1e-4: history([2.07, 2.05, 2.03, 2.01], train_loss=1.9),
    }
    right = check_best_learning_rate(0.001, histories)
    assert right.passed and "1.600" in right.message
    assert "training loss" in hint(check_best_learning_rate(1e-2, histories))
    assert "another rate did better" in hint(check_best_learning_rate(1e-4, histories))
    assert "not one of the rates" in hint(check_best_learning_rate(0.5, histories))


def test_best_epoch():
    runs = history([2.0, 1.8, 1.6, 1.65, 1.7, 1.75], train_loss=1.0)
    assert check_best_epoch(3, runs).passed
    assert "last epoch" in hint(check_best_epoch(6, runs))
    assert "off by one" in hint(check_best_epoch(2, runs))
    assert "lowest eval_log_loss" in hint(check_best_epoch(5, runs))
    assert "exercise 1 first" in hint(check_best_epoch(3, None))


def test_fresh_head_is_a_new_seeded_copy():
    from conserviz_utils.teaching.exercises import fresh_head

    head = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    state = {k: v.clone() for k, v in head.state_dict().items()}
    before = torch.random.get_rng_state()
    first, second = fresh_head(head, seed=1), fresh_head(head, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator untouched
    assert all(torch.equal(head.state_dict()[k], state[k]) for k in state)  # the original kept
    assert all(torch.equal(first.state_dict()[k], second.state_dict()[k]) for k in state)
    assert not torch.equal(first[0].weight, head[0].weight)
    assert first is not head and first[0].weight is not head[0].weight


# --- 05 ---------------------------------------------------------------------------------------


@pytest.fixture()
def predictions():
    ids = pd.Index(["a", "b", "c", "d"], name="id")
    probs = pd.DataFrame(
        [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4], [0.2, 0.2, 0.6]],
        index=ids, columns=["blank", "hog", "rodent"],
    )
    labels = pd.Series(["blank", "blank", "rodent", "blank"], index=ids)
    return probs, labels


def test_one_log_loss(predictions):
    probs, labels = predictions
    # image "b" is blank, given p = 0.1; the model's favourite is hog (0.6).
    right = -math.log(0.1)
    assert check_one_log_loss(right, labels, probs, "b").passed
    assert check_one_log_loss(round(right, 3), labels, probs, "b").passed
    assert "base-10" in hint(check_one_log_loss(-math.log10(0.1), labels, probs, "b"))
    assert "flip the sign" in hint(check_one_log_loss(math.log(0.1), labels, probs, "b"))
    assert "probability of the true species itself" in hint(check_one_log_loss(0.1, labels, probs, "b"))
    assert "most probable species" in hint(check_one_log_loss(-math.log(0.6), labels, probs, "b"))
    assert "rodent's probability" in hint(check_one_log_loss(-math.log(0.3), labels, probs, "b"))
    assert "1 − p" in hint(check_one_log_loss(-math.log(0.9), labels, probs, "b"))
    mean = log_loss(labels, probs)
    assert "mean over all" in hint(check_one_log_loss(mean, labels, probs, "b"))


def test_confidently_wrong_on_real_sized_labels(data):
    _, labels, _ = data
    truth = labels.to_numpy().argmax(axis=1)
    values = np.zeros(labels.shape)
    values[np.arange(len(values)), (truth + 1) % labels.shape[1]] = 1.0
    wrong = pd.DataFrame(values, index=labels.index, columns=labels.columns)
    right = log_loss(labels, wrong)
    result = check_confidently_wrong(right, labels)
    assert result.passed and "34.5" in result.message
    assert "clips every probability" in hint(check_confidently_wrong(math.inf, labels))
    assert "base-10" in hint(check_confidently_wrong(15.0, labels))
    assert "flip the sign" in hint(check_confidently_wrong(-right, labels))
    assert "perfect score" in hint(check_confidently_wrong(0.0, labels))
    assert "error rate" in hint(check_confidently_wrong(1.0, labels))
    assert "uniform baseline" in hint(check_confidently_wrong(math.log(8), labels))
    assert "still gives the true species" in hint(check_confidently_wrong(-math.log(0.001), labels))


def test_most_common_confusion(predictions):
    probs, labels = predictions
    # true blank: a → blank (right), b → hog, d → rodent: hog and rodent tie as mistakes.
    assert check_most_common_confusion("hog", labels, probs, "blank").passed
    assert check_most_common_confusion("rodent", labels, probs, "blank").passed
    assert "is right for those images" in hint(check_most_common_confusion("blank", labels, probs, "blank"))
    hog_always_right = pd.Series(["blank", "hog", "rodent", "rodent"], index=probs.index)
    assert check_most_common_confusion("none", hog_always_right, probs, "hog").passed
    assert "answer 'none'" in hint(check_most_common_confusion("blank", hog_always_right, probs, "hog"))
    # c is a rodent predicted blank: the column of blank, where the row of blank says hog.
    labels = pd.Series(["blank", "blank", "rodent", "hog"], index=probs.index)
    probs = probs.copy()
    probs.loc["d"] = [0.1, 0.2, 0.7]  # a hog predicted rodent
    assert check_most_common_confusion("hog", labels, probs, "blank").passed
    assert "column" in hint(check_most_common_confusion("rodent", labels, probs, "blank"))
    assert "not a species" in hint(check_most_common_confusion("cat", labels, probs, "blank"))


# --- 06 ---------------------------------------------------------------------------------------


@pytest.fixture()
def submission():
    ids = pd.Index(["ZJ1", "ZJ2"], name="id")
    fmt = pd.DataFrame(1 / 3, index=ids, columns=["blank", "hog", "rodent"])
    good = pd.DataFrame([[0.98, 0.01, 0.01], [0.2, 0.5, 0.3]], index=ids, columns=fmt.columns)
    return good, fmt


def test_broken_submission(submission):
    good, fmt = submission
    assert "still accepts it" in hint(check_broken_submission(good.copy(), fmt))
    dropped = check_broken_submission(good.iloc[1:], fmt)
    assert dropped.passed and "refused it" in dropped.message and "Fix" not in dropped.message
    swapped = check_broken_submission(good[["hog", "blank", "rodent"]], fmt)
    assert swapped.passed and "column" in swapped.message
    doubled = good.copy()
    doubled.iloc[0] *= 2
    assert check_broken_submission(doubled, fmt).passed


def test_worst_case_cost(submission):
    good, _ = submission
    blended = 0.9 * 0.01 + 0.1 / 3
    right = -math.log(blended)
    result = check_worst_case_cost(right, good)
    assert result.passed and f"{right:.2f}" in result.message
    assert "base-10" in hint(check_worst_case_cost(-math.log10(blended), good))
    assert "flip the sign" in hint(check_worst_case_cost(-right, good))
    assert "smallest probability itself" in hint(check_worst_case_cost(blended, good))
    assert "before blending" in hint(check_worst_case_cost(-math.log(0.01), good))
    assert "(1 − 0.9) / 3" in hint(check_worst_case_cost(-math.log(0.9 * 0.01 + 0.1), good))


def test_site_mix_accepts_any_site_tied_for_the_most_images(data):
    features, labels, _ = data
    features = features.copy()
    features.loc[features.index[6:10], "site"] = "B"  # now A: 6 images, B: 4 ... and one more
    features.loc[features.index[3], "site"] = "B"  # A: 5 (3 hog, 2 bird), B: 5 (hog, 2 bird, 2 rodent)
    mix_b = pd.Series({"hog": 0.2, "bird": 0.4, "rodent": 0.4})
    mix_a = pd.Series({"hog": 0.6, "bird": 0.4})
    assert check_site_species_shares(mix_a, features, labels).passed
    assert check_site_species_shares(mix_b, features, labels).passed


def test_share_shift_needs_the_split_of_exercise_1(data):
    _, labels, _ = data
    assert "exercise 1 first" in hint(check_share_shift("hog", 0.5, None, labels))


# --- 07 ---------------------------------------------------------------------------------------


def test_geometric_blend_by_hand():
    from conserviz_utils.teaching.exercises import check_geometric_blend

    members = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.8, 0.01, 0.19]])
    geometric = np.exp(np.log(members).mean(axis=0))
    right = geometric / geometric.sum()
    assert check_geometric_blend(right, members).passed
    assert check_geometric_blend(pd.Series(right.round(5)), members).passed
    assert "arithmetic mean" in hint(check_geometric_blend(members.mean(axis=0), members))
    assert "divide by the row's sum" in hint(check_geometric_blend(geometric, members))
    assert "take their exp" in hint(check_geometric_blend(np.log(members).mean(axis=0), members))
    product = members.prod(axis=0)
    assert "multiplied" in hint(check_geometric_blend(product / product.sum(), members))
    assert "3 numbers" in hint(check_geometric_blend(right[:2], members))


def test_member_weights_by_hand():
    from conserviz_utils.teaching.exercises import check_member_weights

    losses = np.array([1.0, 1.1, 1.5])  # the third is more than 1.2 × the best: dropped
    raw = np.array([1.0, 1 / 1.1**2, 0.0])
    right = raw / raw.sum()
    result = check_member_weights(right, losses)
    assert result.passed and "1 member(s) dropped" in result.message
    assert check_member_weights(list(right.round(6)), losses).passed
    assert "add up to 1" in hint(check_member_weights(raw, losses))
    every = 1 / losses**2
    assert "drop the members" in hint(check_member_weights(every / every.sum(), losses))
    linear = np.array([1.0, 1 / 1.1, 0.0])
    assert "to the power 2" in hint(check_member_weights(linear / linear.sum(), losses))
    backwards = np.array([1.0, 1.1**2, 0.0])
    assert "must weigh more" in hint(check_member_weights(backwards / backwards.sum(), losses))
    assert "3 numbers" in hint(check_member_weights([0.5, 0.5], losses))
    assert check_member_weights([0.6, 0.4], [1.0, 1.2247], max_ratio=None).passed
