"""Notebook 07's checkers held against learners' slips, weights rounded to 3 decimals included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from exercise_inputs import refused

from conserviz_utils.teaching.exercises import check_geometric_blend, check_member_weights

MEMBERS = np.array([[0.7, 0.2, 0.1, 0.0], [0.4, 0.5, 0.05, 0.05], [0.8, 0.01, 0.15, 0.04]])
LOGS = np.log(np.clip(MEMBERS, 1e-15, 1.0))
GEOMETRIC = np.exp(LOGS.mean(axis=0))
RIGHT = GEOMETRIC / GEOMETRIC.sum()
PRODUCT = np.exp(LOGS.sum(axis=0))

BLEND_RIGHT = {
    "exact": RIGHT,
    "rounded to 5 decimals": pd.Series(RIGHT.round(5)),
    "rounded to 3 decimals": RIGHT.round(3),
    "rounded to 2 decimals": RIGHT.round(2),
    "a list": RIGHT.tolist(),
    "a tensor": torch.tensor(RIGHT),
    "a (1, species) row": RIGHT[None, :],
}

BLEND_SLIPS = [
    ("the arithmetic mean", MEMBERS.mean(axis=0), "arithmetic mean"),
    ("not renormalised", GEOMETRIC, "divide by the row's sum"),
    ("the mean logs", LOGS.mean(axis=0), "take their exp"),
    ("the product, renormalised", PRODUCT / PRODUCT.sum(), "multiplied"),
    ("percent", 100 * RIGHT, "percentages"),
    ("the wrong axis (one per member)", np.exp(LOGS.mean(axis=1)), "one value per member"),
    ("the whole table", MEMBERS, "4 numbers"),
    ("unclipped logs (−inf → NaN)", np.array([0.5, 0.5, np.nan, 0.0]), "clip"),
    ("too few numbers", RIGHT[:2], "4 numbers"),
    ("a dict", dict(enumerate(RIGHT)), "4 numbers"),
    ("one number", 0.5, "4 numbers"),
]


@pytest.mark.parametrize("answer", BLEND_RIGHT.values(), ids=BLEND_RIGHT.keys())
def test_geometric_blend_right_answers(answer):
    assert check_geometric_blend(answer, MEMBERS).passed


@pytest.mark.parametrize("slip, answer, expected", BLEND_SLIPS, ids=[s[0] for s in BLEND_SLIPS])
def test_geometric_blend_slips(slip, answer, expected):
    assert expected in refused(check_geometric_blend(answer, MEMBERS))


# --- 07·2 · the blend's weights ---------------------------------------------------------------

LOSSES = np.array([1.5, 1.65, 1.9, 1.55])  # 1.9 > 1.2 × 1.5 = 1.8: dropped
KEPT = LOSSES <= 1.2 * LOSSES.min()
RAW = np.where(KEPT, 1 / LOSSES**2, 0.0)
WEIGHTS = RAW / RAW.sum()

WEIGHTS_RIGHT = {
    "exact": WEIGHTS,
    "rounded to 6 decimals (a list)": list(WEIGHTS.round(6)),
    "rounded to 3 decimals": WEIGHTS.round(3),
    "rounded to 2 decimals": WEIGHTS.round(2),
    "a Series": pd.Series(WEIGHTS),
    "a tensor": torch.tensor(WEIGHTS),
}

EVERY = 1 / LOSSES**2
LINEAR = np.where(KEPT, 1 / LOSSES, 0.0)
BACKWARDS = np.where(KEPT, LOSSES**2, 0.0)

WEIGHTS_SLIPS = [
    ("not scaled to 1", RAW, "add up to 1"),
    ("no member dropped", EVERY / EVERY.sum(), "drop the members"),
    ("1 / loss, not squared", LINEAR / LINEAR.sum(), "to the power 2"),
    ("the better member weighs less", BACKWARDS / BACKWARDS.sum(), "must weigh more"),
    ("percent", 100 * WEIGHTS, "percentages"),
    ("NaN for the dropped member", np.where(KEPT, WEIGHTS, np.nan), "0, not NaN"),
    ("too few weights", WEIGHTS[:2], "4 numbers"),
    ("a dict", {"a": 0.5}, "4 numbers"),
    ("inf", np.full(4, np.inf), "NaN or infinite"),
]


@pytest.mark.parametrize("answer", WEIGHTS_RIGHT.values(), ids=WEIGHTS_RIGHT.keys())
def test_member_weights_right_answers(answer):
    result = check_member_weights(answer, LOSSES, power=2, max_ratio=1.2)
    assert result.passed and "1 member(s) dropped" in result.message


@pytest.mark.parametrize("slip, answer, expected", WEIGHTS_SLIPS, ids=[s[0] for s in WEIGHTS_SLIPS])
def test_member_weights_slips(slip, answer, expected):
    assert expected in refused(check_member_weights(answer, LOSSES, power=2, max_ratio=1.2))


def test_member_weights_max_ratio_read_as_a_loss():
    losses = np.array([0.9, 1.0, 1.1, 1.3])  # the ratio keeps 0.9, 1.0 (≤ 1.08); a cutoff at 1.2 keeps 1.1 too
    ratio = np.where(losses <= 1.2 * 0.9, 1 / losses**2, 0.0)
    assert check_member_weights(ratio / ratio.sum(), losses, max_ratio=1.2).passed
    cutoff = np.where(losses <= 1.2, 1 / losses**2, 0.0)
    assert "is a ratio" in refused(check_member_weights(cutoff / cutoff.sum(), losses, max_ratio=1.2))


def test_member_weights_without_a_ratio():
    assert check_member_weights([0.6, 0.4], [1.0, 1.2247], max_ratio=None).passed
