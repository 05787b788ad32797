"""Notebook 02's checkers held against learners' slips; exercise 2 takes every split exercise 1 took."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from exercise_inputs import refused, site_data

from conserviz_utils.split import Split, split_summary
from conserviz_utils.teaching.exercises import check_share_shift, check_site_holdout

FEATURES, LABELS, _ = site_data()
SITES = FEATURES["site"]
AT_A = FEATURES.index[SITES == "A"]
REST = FEATURES.index[SITES != "A"]
AT_B = FEATURES.index[SITES == "B"]

# Every form of the right split a learner may build; exercise 2 must take each of them too.
HOLDOUTS = {
    "tuple of indexes": (REST, AT_A),
    "lists": (list(REST), list(AT_A)),
    "a list pair": [REST, AT_A],
    "sets": (set(REST), set(AT_A)),
    "ndarrays": (REST.to_numpy(), AT_A.to_numpy()),
    "a Split": Split(REST, AT_A),
    "frames": (FEATURES.loc[REST], FEATURES.loc[AT_A]),
    "Series indexed by id": (SITES[SITES != "A"], SITES[SITES == "A"]),
    "Series of ids": (pd.Series(REST), pd.Series(AT_A)),
    "reset_index frames": (FEATURES.loc[REST].reset_index(), FEATURES.loc[AT_A].reset_index()),
    "a list and an Index": (REST.tolist(), AT_A),
}

HOLDOUT_SLIPS = [
    ("the sides swapped", (AT_A, REST), "swapped"),
    ("the wrong site (second biggest)", (FEATURES.index.difference(AT_B), AT_B), "site B (3 images)"),
    ("an image on both sides", (REST.append(AT_A[:1]), AT_A), "both sides"),
    ("a mixed eval side", (REST[1:], AT_A.append(REST[:1])), "mixes 2 sites"),
    ("an image on neither side", (REST[1:], AT_A), "neither side"),
    ("part of the site held out", (REST, AT_A[1:]), "only 5 of site A's 6"),
    ("an id that is not a training image", (REST, AT_A.append(pd.Index(["X"]))), "not training images"),
    ("one side only", AT_A, "pair"),
    ("masks, not ids", (SITES != "A", SITES == "A"), "mask"),
    ("masks as lists", (list(SITES != "A"), list(SITES == "A")), "mask"),
    ("a dict of sides", {"train": REST, "eval": AT_A}, "pair"),
    ("three sides", (REST, AT_A, AT_A), "holds 3 items"),
    ("an empty eval side", (FEATURES.index, []), "eval side is empty"),
    ("tensors", (torch.arange(4), torch.arange(6)), "tensor"),
    ("a site name", "A", "pair"),
    ("generators (read once)", (iter(REST), (i for i in AT_A)), "list(...)"),
]


@pytest.mark.parametrize("split", HOLDOUTS.values(), ids=HOLDOUTS.keys())
def test_holdout_right_in_every_form_and_exercise_2_takes_it(split):
    result = check_site_holdout(split, FEATURES)
    assert result.passed and "site A's 6 images are held out" in result.message
    # eval (site A): hog 4/6, bird 2/6; train: bird 2/4, rodent 2/4 → hog moves +0.667.
    assert check_share_shift("hog", 4 / 6, split, LABELS).passed


@pytest.mark.parametrize("slip, split, expected", HOLDOUT_SLIPS, ids=[s[0] for s in HOLDOUT_SLIPS])
def test_holdout_slips(slip, split, expected):
    assert expected in refused(check_site_holdout(split, FEATURES))


def test_exercise_2_takes_the_notebook_solution_on_frames_of_many_images():
    """The report that started this: the split as frames, 1,820 images, dumped a KeyError."""
    rng = np.random.default_rng(0)
    ids = pd.Index([f"ZJ{k:06d}" for k in range(1820)], name="id")
    features = pd.DataFrame({"site": rng.choice(["S1", "S2", "S3", "S4"], size=1820, p=[0.4, 0.3, 0.2, 0.1])}, index=ids)
    names = pd.Series(rng.choice(["hog", "bird", "blank"], size=1820), index=ids)
    labels = pd.get_dummies(names).astype(float)
    biggest = features["site"].value_counts().idxmax()
    holdout = (features[features["site"] != biggest], features[features["site"] == biggest])
    assert check_site_holdout(holdout, features).passed
    shares = split_summary({"x": (holdout[0].index, holdout[1].index)}, features, labels)
    moves = shares.loc["x"].loc["eval", ["bird", "blank", "hog"]] - shares.loc["x"].loc["train", ["bird", "blank", "hog"]]
    most = moves.abs().idxmax()
    assert check_share_shift(most, moves[most], holdout, labels).passed


# --- 02·2 · the shares move -------------------------------------------------------------------

SPLIT = (REST, AT_A)
SHIFT = 4 / 6  # hog: 4/6 of site A, 0 of the rest

SHIFT_RIGHT = {
    "exact": SHIFT,
    "rounded to 3 decimals": round(SHIFT, 3),
    "a difference of shares read off the table (round(3))": round(4 / 6, 3) - round(0.0, 3),
    "a 0-d tensor": torch.tensor(SHIFT),
    "a numpy float": np.float64(SHIFT),
    "a one-value Series": pd.Series([SHIFT]),
}

SHIFT_SLIPS = [  # (slip, species, shift, split, the hint written for it)
    ("the sign", "hog", -SHIFT, SPLIT, "sign"),
    ("percentage points", "hog", 100 * SHIFT, SPLIT, "percentage points"),
    ("negative percentage points", "hog", -100 * SHIFT, SPLIT, "percentage points"),
    ("a species that moves less", "bird", -1 / 6, SPLIT, "another species moves more"),
    ("compared with all images", "hog", 4 / 6 - 4 / 10, SPLIT, "all images"),
    ("a difference of counts", "hog", 4.0, SPLIT, "image counts"),
    ("a misspelt species", "hogs", SHIFT, SPLIT, "not a species"),
    ("both shares, not one number", "hog", [SHIFT, -SHIFT], SPLIT, "holds 2 numbers"),
    ("the shift as text", "hog", "0.667", SPLIT, "without quotes"),
    ("NaN", "hog", float("nan"), SPLIT, "NaN"),
    ("10**400", "hog", 10**400, SPLIT, "infinite"),
    ("the species as a Series", pd.Series({"hog": SHIFT}), SHIFT, SPLIT, "whole table"),
    ("exercise 1 unanswered", "hog", SHIFT, None, "exercise 1 first"),
    ("exercise 1 not a pair", "hog", SHIFT, AT_A, "get exercise 1 right first"),
    ("exercise 1 with an empty side", "hog", SHIFT, (FEATURES.index, []), "empty"),
    ("exercise 1 with unknown ids", "hog", SHIFT, (REST, ["X"]), "not labelled"),
    ("exercise 1 as masks", "hog", SHIFT, (SITES != "A", SITES == "A"), "mask"),
]


@pytest.mark.parametrize("shift", SHIFT_RIGHT.values(), ids=SHIFT_RIGHT.keys())
def test_shift_right_answers(shift):
    result = check_share_shift("hog", shift, SPLIT, LABELS)
    assert result.passed and "67% of the held-out site" in result.message


@pytest.mark.parametrize(
    "slip, species, shift, split, expected", SHIFT_SLIPS, ids=[s[0] for s in SHIFT_SLIPS]
)
def test_shift_slips(slip, species, shift, split, expected):
    assert expected in refused(check_share_shift(species, shift, split, LABELS))


def test_shift_one_side_and_ratio_hints_on_a_species_present_on_both_sides():
    layout = [("A", "hog")] * 4 + [("A", "bird")] * 2 + [("B", "hog")] * 1 + [("B", "bird")] * 3
    features, labels, _ = site_data(layout)
    held = features.index[features["site"] == "A"]
    split = (features.index.difference(held), held)  # hog: 4/6 held out vs 1/4, bird: 2/6 vs 3/4
    assert check_share_shift("hog", 4 / 6 - 1 / 4, split, labels).passed
    assert check_share_shift("bird", 2 / 6 - 3 / 4, split, labels).passed  # tied: both move 0.417
    assert "share on one side" in refused(check_share_shift("hog", 4 / 6, split, labels))
    assert "share on one side" in refused(check_share_shift("hog", 1 / 4, split, labels))
    assert "ratio" in refused(check_share_shift("hog", (4 / 6) / (1 / 4), split, labels))
    assert "image counts" in refused(check_share_shift("hog", 3, split, labels))


def test_shift_unanswered_names_what_is_missing():
    result = check_share_shift("hog", None, SPLIT, LABELS)
    assert result.status == "not answered yet" and "shift" in result.message


def test_a_split_of_float16_arrays_gets_a_hint_not_a_pandas_error():
    # Found by the fuzz test: pandas has no float16 Index.
    from conserviz_utils.teaching.exercises.results import read_split

    sides, problem = read_split(np.zeros((2, 1), dtype=np.float16), pd.Index(["a", "b"]))
    assert problem is None and list(sides[0]) == [0.0]
