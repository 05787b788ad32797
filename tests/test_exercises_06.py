"""Notebook 06's checkers held against learners' slips: only a broken *submission* counts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from exercise_inputs import refused

from conserviz_utils.teaching.exercises import check_broken_submission, check_worst_case_cost

IDS = pd.Index(["ZJ1", "ZJ2", "ZJ3"], name="id")
FORMAT = pd.DataFrame(1 / 3, index=IDS, columns=["blank", "hog", "rodent"])
GOOD = pd.DataFrame([[0.98, 0.01, 0.01], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]], index=IDS, columns=FORMAT.columns)


def damaged(change):
    copy = GOOD.copy()
    change(copy)
    return copy


BROKEN_RIGHT = {  # (a broken copy, a word of the refusal)
    "a row dropped": (GOOD.iloc[1:], "without a prediction"),
    "two columns swapped": (GOOD[["hog", "blank", "rodent"]], "column"),
    "a probability of 2": (damaged(lambda d: d.iloc.__setitem__((0, 0), 2.0)), "outside [0, 1]"),
    "a row summing to 0.9": (damaged(lambda d: d.iloc.__setitem__((1, 1), 0.4)), "sum to 1"),
    "a NaN": (damaged(lambda d: d.iloc.__setitem__((2, 2), np.nan)), "NaN"),
    "the index renamed": (GOOD.rename_axis("image"), "index"),
    "the rows shuffled": (GOOD.iloc[[2, 0, 1]], "order"),
    "every row dropped": (GOOD.iloc[:0], "without a prediction"),
    "a duplicated row": (pd.concat([GOOD, GOOD.iloc[:1]]), "more than once"),
    "text in a column": (GOOD.astype({"hog": object}).assign(hog=["x", "y", "z"]), "must be numbers"),
}

BROKEN_SLIPS = [
    ("the submission unbroken", GOOD.copy(), "still accepts it"),
    ("the format itself", FORMAT.copy(), "still accepts it"),
    ("a string", "broken", "not a submission at all"),
    ("the values alone (ndarray)", GOOD.to_numpy(), "not a submission at all"),
    ("a tensor", torch.tensor(GOOD.to_numpy()), "not a submission at all"),
    ("one column (a Series)", GOOD["hog"], "not a submission at all"),
    ("a dict of columns", GOOD.to_dict(), "not a submission at all"),
    ("a list of rows", GOOD.to_numpy().tolist(), "not a submission at all"),
    ("an unrelated frame", pd.DataFrame({"x": [1, 2]}), "shares no id"),
    ("an empty frame", pd.DataFrame(), "empty"),
    ("a number", 2.0, "not a submission at all"),
]


@pytest.mark.parametrize("broken, word", BROKEN_RIGHT.values(), ids=BROKEN_RIGHT.keys())
def test_broken_submission_right_answers_name_the_rule(broken, word):
    result = check_broken_submission(broken, FORMAT)
    assert result.passed and "refused it" in result.message
    assert word.lower() in result.message.lower()


@pytest.mark.parametrize("slip, broken, expected", BROKEN_SLIPS, ids=[s[0] for s in BROKEN_SLIPS])
def test_broken_submission_slips(slip, broken, expected):
    assert expected in refused(check_broken_submission(broken, FORMAT))


def test_a_refusal_without_a_fix_says_none():
    assert "Fix" not in check_broken_submission(GOOD.iloc[1:], FORMAT).message


# --- 06·2 · the worst case after blending -----------------------------------------------------

BLENDED = 0.9 * 0.01 + 0.1 / 3
WORST = -math.log(BLENDED)

WORST_RIGHT = {
    "exact": WORST,
    "rounded to 3 decimals": round(WORST, 3),
    "rounded to 2 decimals as printed": round(WORST, 2),
    "np.log of the blended frame's min": float(-np.log((0.9 * GOOD + 0.1 / 3).to_numpy().min())),
    "a 0-d tensor": torch.tensor(WORST),
}

WORST_SLIPS = [
    ("base-10 log", -math.log10(BLENDED), "base-10"),
    ("the sign", -WORST, "flip the sign"),
    ("the smallest probability itself", BLENDED, "smallest probability itself"),
    ("before blending", -math.log(0.01), "before blending"),
    ("(1 − w) not divided by the species", -math.log(0.9 * 0.01 + 0.1), "(1 − 0.9) / 3"),
    ("the weights swapped", -math.log(0.1 * 0.01 + 0.9 / 3), "weights are swapped"),
    ("the uniform part alone", -math.log(0.1 / 3), "uniform part alone"),
    ("the largest probability (best case)", -math.log(0.9 * 0.98 + 0.1 / 3), "largest probability"),
    ("averaged over the images", float(np.mean(-np.log(0.9 * GOOD.min(axis=1) + 0.1 / 3))), "averages over the images"),
    ("as text", "3.26", "without quotes"),
    ("the blended frame", 0.9 * GOOD + 0.1 / 3, "holds 9 numbers"),
    ("NaN", float("nan"), "NaN"),
    ("inf", math.inf, "infinite"),
    ("10**400", 10**400, "infinite"),
]


@pytest.mark.parametrize("answer", WORST_RIGHT.values(), ids=WORST_RIGHT.keys())
def test_worst_case_right_answers(answer):
    result = check_worst_case_cost(answer, GOOD)
    assert result.passed and f"{WORST:.2f}" in result.message


@pytest.mark.parametrize("slip, answer, expected", WORST_SLIPS, ids=[s[0] for s in WORST_SLIPS])
def test_worst_case_slips(slip, answer, expected):
    assert expected in refused(check_worst_case_cost(answer, GOOD))
