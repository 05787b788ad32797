"""Notebook 01's checkers held against learners' slips: each slip gets the hint written for it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from exercise_inputs import hint, refused, site_data

from conserviz_utils.teaching.exercises import check_busiest_site, check_site_species_shares

FEATURES, LABELS, TEST_FEATURES = site_data()
COUNTS = FEATURES["site"].value_counts()

# --- 01·1 · the busiest site ------------------------------------------------------------------

BUSIEST_RIGHT = {
    "the name": "A",
    "idxmax of value_counts": COUNTS.idxmax(),
    "with spaces around": " A ",
    "a numpy string": np.str_("A"),
}

BUSIEST_SLIPS = [  # (slip, answer, the hint written for it)
    ("the count, not the name", 6, "how many images"),
    ("the count as a float", 6.0, "how many images"),
    ("the count as a 0-d tensor", torch.tensor(6), "how many images"),
    ("another number", 3, "that is a number"),
    ("the least busy site (idxmin)", "C", "fewest"),
    ("the second busiest site", "B", "1 site(s) have more"),
    ("a test site", "T1", "test site"),
    ("a misspelt site", "S9", "spelling"),
    ("lower case", "a", "upper and lower case"),
    ("the whole value_counts", COUNTS, "whole table"),
    ("the whole frame", FEATURES, "whole table"),
    ("a one-name list (head(1).index)", list(COUNTS.head(1).index), "holding 'A'"),
    ("a one-name Index", COUNTS.head(1).index, "holding 'A'"),
    ("a one-name set", {"A"}, "holding 'A'"),
    ("NaN", float("nan"), "that is a number"),
    ("10**400", 10**400, "that is a number"),
    ("a dict", {"A": 6}, "one name, a string"),
]


@pytest.mark.parametrize("answer", BUSIEST_RIGHT.values(), ids=BUSIEST_RIGHT.keys())
def test_busiest_site_right_answers(answer):
    result = check_busiest_site(answer, FEATURES, TEST_FEATURES)
    assert result.passed and "6 of the 10" in result.message


@pytest.mark.parametrize("slip, answer, expected", BUSIEST_SLIPS, ids=[s[0] for s in BUSIEST_SLIPS])
def test_busiest_site_slips(slip, answer, expected):
    assert expected in refused(check_busiest_site(answer, FEATURES, TEST_FEATURES))


def test_busiest_site_spelling_hint_does_not_give_the_answer_away():
    assert "A" not in hint(check_busiest_site("S9", FEATURES)).split("like")[1]


# --- 01·2 · its species mix -------------------------------------------------------------------

MIX_A = pd.Series({"hog": 4 / 6, "bird": 2 / 6})
SPECIES = FEATURES.index.to_series().map(LABELS.idxmax(axis=1))

MIX_RIGHT = {
    "value_counts(normalize=True)": SPECIES[FEATURES["site"] == "A"].value_counts(normalize=True),
    "a dict": MIX_A.to_dict(),
    "rounded to 2 decimals as displayed": MIX_A.round(2),
    "rounded to 3 decimals": MIX_A.round(3),
    "with every species, zeros included": MIX_A.reindex(LABELS.columns, fill_value=0.0),
    "a one-column frame": MIX_A.to_frame("share"),
    "a Series of object dtype": MIX_A.astype(object),
}

MIX_SLIPS = [
    ("counts, not shares", MIX_A * 6, "counts"),
    ("percent", MIX_A * 100, "percentages"),
    ("the shares of all images", LABELS.sum() / len(LABELS), "all training images"),
    ("normalised per species (the other axis)", pd.Series({"hog": 1.0, "bird": 0.5}), "normalised per species"),
    ("a value from the wrong row (site B)", pd.Series({"bird": 2 / 3, "rodent": 1 / 3}), "site B"),
    ("not adding up to 1", pd.Series({"hog": 0.5}), "add up to 1"),
    ("a misspelt species", pd.Series({"hogg": 1.0}), "not a species"),
    ("a species name alone", "hog", "Series of shares"),
    ("the numbers without names (list)", [4 / 6, 2 / 6], "numbers alone"),
    ("the numbers without names (ndarray)", np.array([4 / 6, 2 / 6]), "numbers alone"),
    ("the numbers without names (tensor)", torch.tensor([4 / 6, 2 / 6]), "numbers alone"),
    ("the whole crosstab", pd.crosstab(FEATURES["site"], SPECIES), "one Series"),
    ("NaN shares", pd.Series({"hog": np.nan, "bird": 1.0}), "NaN"),
    ("a Series of text", pd.Series({"hog": "0.67", "bird": "x"}), "Series of shares"),
    ("a set", {0.5, 0.5}, "Series of shares"),
]


@pytest.mark.parametrize("answer", MIX_RIGHT.values(), ids=MIX_RIGHT.keys())
def test_site_mix_right_answers(answer):
    result = check_site_species_shares(answer, FEATURES, LABELS)
    assert result.passed and "hog makes up 67%" in result.message


@pytest.mark.parametrize("slip, answer, expected", MIX_SLIPS, ids=[s[0] for s in MIX_SLIPS])
def test_site_mix_slips(slip, answer, expected):
    assert expected in refused(check_site_species_shares(answer, FEATURES, LABELS))


def test_site_mix_accepts_any_site_tied_for_the_most_images():
    features = FEATURES.copy()
    features.loc[features.index[6:10], "site"] = "B"
    features.loc[features.index[3], "site"] = "B"  # A: 5 (3 hog, 2 bird), B: 5 (hog, 2 bird, 2 rodent)
    assert check_site_species_shares(pd.Series({"hog": 0.6, "bird": 0.4}), features, LABELS).passed
    assert check_site_species_shares(pd.Series({"hog": 0.2, "bird": 0.4, "rodent": 0.4}), features, LABELS).passed
