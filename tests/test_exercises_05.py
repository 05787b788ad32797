"""Notebook 05's checkers held against learners' slips: log loss by hand, confident mistakes, confusions, blank."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from exercise_inputs import ODD_INPUTS, refused, site_data

from conserviz_utils.metrics import log_loss
from conserviz_utils.teaching.exercises import (
    NOT_ANSWERED,
    check_blank_swallows,
    check_confidently_wrong,
    check_most_common_confusion,
    check_one_log_loss,
)

IDS = pd.Index(["a", "b", "c", "d"], name="id")
PROBS = pd.DataFrame(
    [[0.7, 0.2, 0.1], [0.1234, 0.5766, 0.3], [0.5, 0.1, 0.4], [0.2, 0.2, 0.6]],
    index=IDS, columns=["blank", "hog", "rodent"],
)
LABELS = pd.Series(["blank", "blank", "rodent", "blank"], index=IDS)
P = 0.1234  # image "b" is blank, given p = 0.1234; the model's favourite is hog (0.5766)
RIGHT = -math.log(P)

ONE_RIGHT = {
    "exact": RIGHT,
    "rounded to 3 decimals": round(RIGHT, 3),
    "from p as displayed (round(3))": -math.log(round(P, 3)),
    "np.log of the Series value": float(-np.log(PROBS.loc["b", "blank"])),
    "a one-value Series": -np.log(PROBS.loc[["b"], "blank"]),
    "a 0-d tensor": torch.tensor(RIGHT),
}

ONE_SLIPS = [
    ("base-10 log", -math.log10(P), "base-10"),
    ("base-2 log", -math.log2(P), "base-2"),
    ("the sign", math.log(P), "flip the sign"),
    ("p itself", P, "probability of the true species itself"),
    ("p in percent", 100 * P, "probability of the true species itself"),
    ("−log(1 − p)", -math.log(1 - P), "1 − p"),
    ("the predicted species' p (a value from the wrong column)", -math.log(0.5766), "most probable species"),
    ("another species' p", -math.log(0.3), "rodent's probability"),
    ("the mean over all images", log_loss(LABELS, PROBS), "mean over all"),
    ("the p of the wrong image (row a)", -math.log(0.7), "not quite"),
    ("p rounded to 0 (−ln 0)", math.inf, "unrounded"),
    ("NaN", float("nan"), "NaN"),
    ("10**400", 10**400, "unrounded"),
    ("as text", "2.09", "without quotes"),
    ("the whole row", PROBS.loc["b"], "holds 3 numbers"),
]


@pytest.mark.parametrize("answer", ONE_RIGHT.values(), ids=ONE_RIGHT.keys())
def test_one_log_loss_right_answers(answer):
    assert check_one_log_loss(answer, LABELS, PROBS, "b").passed


@pytest.mark.parametrize("slip, answer, expected", ONE_SLIPS, ids=[s[0] for s in ONE_SLIPS])
def test_one_log_loss_slips(slip, answer, expected):
    assert expected in refused(check_one_log_loss(answer, LABELS, PROBS, "b"))


def test_one_log_loss_sum_and_a_changed_image_id():
    costs = [-math.log(PROBS.at[i, LABELS[i]]) for i in IDS]
    assert "sum over all" in refused(check_one_log_loss(sum(costs), LABELS, PROBS, "b"))
    assert "not one of the eval images" in refused(check_one_log_loss(1.0, LABELS, PROBS, "zz"))


# --- 05·2 · a confidently wrong submission ----------------------------------------------------

_, EVAL_LABELS, _ = site_data()
TRUTH = EVAL_LABELS.to_numpy().argmax(axis=1)
WRONG = pd.DataFrame(np.roll(EVAL_LABELS.to_numpy(), 1, axis=1), index=EVAL_LABELS.index, columns=EVAL_LABELS.columns)
SCORE = log_loss(EVAL_LABELS, WRONG)

WRONG_RIGHT = {"log_loss": SCORE, "rounded to 3 decimals": round(SCORE, 3), "rounded to 1 decimal as in 34.5": 34.5}

WRONG_SLIPS = [
    ("no clipping (inf)", math.inf, "clips every probability"),
    ("scikit-learn's log_loss (float64)", 36.04365338911715, "scikit-learn"),
    ("scikit-learn's log_loss (float32)", 15.942384719848633, "scikit-learn"),
    ("base-10 log", SCORE / math.log(10), "base-10"),
    ("the sign", -SCORE, "flip the sign"),
    ("a perfect score", 0.0, "perfect score"),
    ("the error rate", 1.0, "error rate"),
    ("the uniform baseline", math.log(8), "uniform baseline"),
    ("the true species kept some p", -math.log(0.001), "still gives the true species"),
    ("the sum over images", SCORE * len(EVAL_LABELS), "sum over the 10 images"),
    ("−inf", -math.inf, "NaN or −inf"),
    ("NaN", float("nan"), "NaN or −inf"),
    ("10**400", 10**400, "clips every probability"),
    ("the frame itself", WRONG, "holds 80 numbers"),
]


@pytest.mark.parametrize("answer", WRONG_RIGHT.values(), ids=WRONG_RIGHT.keys())
def test_confidently_wrong_right_answers(answer):
    result = check_confidently_wrong(answer, EVAL_LABELS)
    assert result.passed and "34.5" in result.message


@pytest.mark.parametrize("slip, answer, expected", WRONG_SLIPS, ids=[s[0] for s in WRONG_SLIPS])
def test_confidently_wrong_slips(slip, answer, expected):
    assert expected in refused(check_confidently_wrong(answer, EVAL_LABELS))


def test_scikit_learn_values_are_what_its_log_loss_gives():
    metrics = pytest.importorskip("sklearn.metrics")
    for dtype in (np.float64, np.float32):
        value = metrics.log_loss(EVAL_LABELS.to_numpy(), WRONG.to_numpy(dtype=dtype))
        assert "scikit-learn" in refused(check_confidently_wrong(value, EVAL_LABELS))


# --- 05·3a · what blank is mistaken for -------------------------------------------------------

# True blank → blank (a), hog (b, e), bird (d); true rodent → blank (c, f); true hog → hog (g).
# The row of blank says hog (2), then bird (1); its column says rodent (2).
CONFUSION_PROBS = pd.DataFrame(
    [[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.5, 0.1, 0.4, 0.0], [0.2, 0.1, 0.1, 0.6],
     [0.1, 0.8, 0.1, 0.0], [0.6, 0.1, 0.3, 0.0], [0.1, 0.8, 0.1, 0.0]],
    index=list("abcdefg"), columns=["blank", "hog", "rodent", "bird"],
)
CONFUSION_LABELS = pd.Series(["blank", "blank", "rodent", "blank", "blank", "rodent", "hog"], index=list("abcdefg"))

CONFUSION_RIGHT = {"the name": "hog", "with spaces": " hog ", "a numpy string": np.str_("hog")}

CONFUSION_SLIPS = [
    ("the true species itself", "blank", "is right for those images"),
    ("the column (what is predicted blank)", "rodent", "you read a column"),
    ("a value from the row, not its top", "bird", "puts 1 of the 4 blank images in bird"),
    ("'none' while there are mistakes", "none", "does get some"),
    ("a misspelt species", "cat", "not a species"),
    ("upper case", "Hog", "upper and lower case"),
    ("the count, not the name", 2, "that is a number"),
    ("value_counts itself", pd.Series({"hog": 2, "bird": 1}), "whole table"),
    ("a one-name list", ["hog"], "holding 'hog'"),
    ("NaN", float("nan"), "that is a number"),
    ("a set", {"hog", "rodent"}, "one name, a string"),
]


@pytest.mark.parametrize("answer", CONFUSION_RIGHT.values(), ids=CONFUSION_RIGHT.keys())
def test_confusion_right_answers(answer):
    result = check_most_common_confusion(answer, CONFUSION_LABELS, CONFUSION_PROBS, "blank")
    assert result.passed and "2 of the 4 blank images are predicted hog" in result.message


@pytest.mark.parametrize("slip, answer, expected", CONFUSION_SLIPS, ids=[s[0] for s in CONFUSION_SLIPS])
def test_confusion_slips(slip, answer, expected):
    assert expected in refused(check_most_common_confusion(answer, CONFUSION_LABELS, CONFUSION_PROBS, "blank"))


def test_confusion_row_slip_is_not_called_a_column_mistake():
    """Rodent both in blank's row (1 image, h) and top of its column: the hint names both."""
    probs = pd.concat([CONFUSION_PROBS, pd.DataFrame([[0.1, 0.1, 0.8, 0.0]], index=["h"], columns=CONFUSION_PROBS.columns)])
    labels = pd.concat([CONFUSION_LABELS, pd.Series(["blank"], index=["h"])])
    message = refused(check_most_common_confusion("rodent", labels, probs, "blank"))
    assert message.startswith("the model puts 1 of the 5 blank images in rodent")
    assert "also tops the column" in message and "you read a column" not in message


def test_confusion_ties_and_none():
    probs, labels = CONFUSION_PROBS.loc[list("abcd")], CONFUSION_LABELS.loc[list("abcd")]
    assert check_most_common_confusion("hog", labels, probs, "blank").passed  # hog 1, bird 1
    assert check_most_common_confusion("bird", labels, probs, "blank").passed
    always_right = pd.Series(["blank", "hog", "rodent", "bird"], index=list("abcd"))
    assert check_most_common_confusion("none", always_right, probs, "hog").passed
    assert check_most_common_confusion("None", always_right, probs, "hog").passed
    assert "answer 'none'" in refused(check_most_common_confusion("blank", always_right, probs, "hog"))


# --- 05·3b · what blank swallows --------------------------------------------------------------

# Predicted blank: rodent 3 of 6 (the most, by count), leopard 2 of 2 (the largest share of its
# own images), hog 1 of 4, and 2 true blanks. The row of blank (blank images predicted as
# something else) is topped by bird, which the model never calls blank.
SWALLOW_LAYOUT = (
    [("blank", "blank")] * 2 + [("blank", "bird")] * 2 + [("blank", "hog")]
    + [("rodent", "blank")] * 3 + [("rodent", "rodent")] * 3
    + [("leopard", "blank")] * 2
    + [("hog", "blank")] + [("hog", "hog")] * 3
    + [("bird", "bird")] * 2
)
SWALLOW_COLUMNS = ["blank", "hog", "rodent", "bird", "leopard"]
SWALLOW_IDS = pd.Index([f"ZJ{k:06d}" for k in range(len(SWALLOW_LAYOUT))], name="id")


def swallow_probs(predicted_names, ids=SWALLOW_IDS) -> pd.DataFrame:
    """Probabilities whose first choice is each predicted name (0.6 on it, the rest spread)."""
    values = np.full((len(predicted_names), len(SWALLOW_COLUMNS)), 0.1)
    for row, name in enumerate(predicted_names):
        values[row, SWALLOW_COLUMNS.index(name)] = 0.6
    return pd.DataFrame(values, index=ids, columns=SWALLOW_COLUMNS)


SWALLOW_PROBS = swallow_probs([predicted for _, predicted in SWALLOW_LAYOUT])
SWALLOW_NAMES = pd.Series([true for true, _ in SWALLOW_LAYOUT], index=SWALLOW_IDS)
SWALLOW_LABELS = pd.get_dummies(SWALLOW_NAMES).reindex(columns=SWALLOW_COLUMNS, fill_value=0).astype(float)

SWALLOW_RIGHT = {"the name": "rodent", "with spaces": " rodent ", "a numpy string": np.str_("rodent")}

SWALLOW_SLIPS = [
    ("the row of blank (wrong direction)", "bird", "you read the row of blank"),
    ("shares, not counts (the matrix's row shares)", "leopard", "largest share of leopard's own images (100%)"),
    ("a value from the column, not its top", "hog", "predicts blank for 1 hog image(s), but another"),
    ("blank itself", "blank", "are right answers"),
    ("'none' while animals are called blank", "none", "does predict blank for 6 animal"),
    ("upper case", "Rodent", "upper and lower case"),
    ("a misspelt species", "rodnet", "'rodnet' is not a species"),
    ("the count, not the name", 3, "that is a number"),
    ("the share, not the name", 0.5, "that is a number"),
    ("value_counts itself", pd.Series({"rodent": 3, "leopard": 2}), "whole table"),
    ("a one-name list", ["rodent"], "holding 'rodent'"),
    ("a set of names", {"rodent", "leopard"}, "one name, a string"),
    ("NaN", float("nan"), "that is a number"),
    ("huge int", 10**400, "that is a number"),
    ("a 0-d tensor", torch.tensor(3), "that is a number"),
]


@pytest.mark.parametrize("labels", [SWALLOW_LABELS, SWALLOW_NAMES], ids=["one-hot", "names"])
@pytest.mark.parametrize("answer", SWALLOW_RIGHT.values(), ids=SWALLOW_RIGHT.keys())
def test_blank_swallows_right_answers(answer, labels):
    result = check_blank_swallows(answer, labels, SWALLOW_PROBS)
    assert result.passed, result
    assert result.message.startswith("3 of the 8 images predicted blank are rodent (6 animals in all)")
    assert "50% of the 6 rodent eval images" in result.message


@pytest.mark.parametrize("slip, answer, expected", SWALLOW_SLIPS, ids=[s[0] for s in SWALLOW_SLIPS])
def test_blank_swallows_slips(slip, answer, expected):
    assert expected in refused(check_blank_swallows(answer, SWALLOW_LABELS, SWALLOW_PROBS))


def test_blank_swallows_no_other_species_is_ever_correct():
    for name in [*SWALLOW_COLUMNS, "none", "None", "NONE"]:
        assert check_blank_swallows(name, SWALLOW_LABELS, SWALLOW_PROBS).passed == (name == "rodent"), name


@pytest.mark.parametrize("odd", ODD_INPUTS.values(), ids=ODD_INPUTS.keys())
def test_blank_swallows_odd_inputs_get_a_message_written_for_them(odd):
    refused(check_blank_swallows(odd, SWALLOW_LABELS, SWALLOW_PROBS))


def test_blank_swallows_placeholder_ties_and_none():
    assert check_blank_swallows(None, SWALLOW_LABELS, None).status == NOT_ANSWERED
    # One more leopard called blank: leopard (3) ties rodent (3), and both are right.
    tie_ids = SWALLOW_IDS.append(pd.Index(["ZJ999999"]))
    probs = swallow_probs([p for _, p in SWALLOW_LAYOUT] + ["blank"], ids=tie_ids)
    names = pd.concat([SWALLOW_NAMES, pd.Series(["leopard"], index=["ZJ999999"])])
    assert check_blank_swallows("rodent", names, probs).passed
    assert check_blank_swallows("leopard", names, probs).passed
    assert not check_blank_swallows("hog", names, probs).passed
    # A model that never calls an animal blank: "none" is right, a species is not.
    honest = SWALLOW_NAMES.copy()
    honest[SWALLOW_PROBS.idxmax(axis=1) == "blank"] = "blank"
    assert check_blank_swallows("none", honest, SWALLOW_PROBS).passed
    assert "answer 'none'" in refused(check_blank_swallows("rodent", honest, SWALLOW_PROBS))


def test_blank_swallows_a_species_also_topping_the_row_is_named_both_ways():
    """Hog: one hog image predicted blank and the top of blank's row; the hint says both."""
    layout = [*SWALLOW_LAYOUT, ("blank", "hog"), ("blank", "hog")]
    ids = pd.Index([f"ZJ{k:06d}" for k in range(len(layout))], name="id")
    probs = swallow_probs([p for _, p in layout], ids=ids)
    names = pd.Series([t for t, _ in layout], index=ids)
    message = refused(check_blank_swallows("hog", names, probs))
    assert message.startswith("the model predicts blank for 1 hog image(s)")
    assert "also tops the row of blank" in message and "you read the row" not in message


def test_blank_swallows_a_share_that_ties_the_largest_as_displayed_is_the_shares_slip():
    """hog 166 of 333 (0.4985, shown 0.50) ties rodent's 1 of 2 as displayed; bird has the most (200)."""
    layout = ([("hog", "blank")] * 166 + [("hog", "hog")] * 167 + [("rodent", "blank"), ("rodent", "rodent")]
              + [("bird", "blank")] * 200 + [("bird", "bird")] * 800)
    ids = pd.Index([f"ZJ{k:06d}" for k in range(len(layout))], name="id")
    probs = swallow_probs([p for _, p in layout], ids=ids)
    names = pd.Series([t for t, _ in layout], index=ids)
    assert check_blank_swallows("bird", names, probs).passed
    for shown_largest in ("hog", "rodent"):
        assert "largest share of" in refused(check_blank_swallows(shown_largest, names, probs))
