"""Notebook 03's checkers held against learners' slips, softmax rounded as the notebook shows it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from exercise_inputs import refused

from conserviz_utils.teaching.exercises import check_frozen_trainable, check_softmax

HEAD = 2048 * 100 + 100 + 100 * 8 + 8  # the seed head on a ResNet50: Linear(2048, 100), Linear(100, 8)
TOTAL = 23_713_740

FROZEN_RIGHT = {
    "int": HEAD,
    "float": float(HEAD),
    "numpy int": np.int64(HEAD),
    "0-d tensor": torch.tensor(HEAD),
    "one-value list": [HEAD],
}

FROZEN_SLIPS = [
    ("every parameter", TOTAL, "every parameter"),
    ("the frozen backbone", TOTAL - HEAD, "frozen backbone"),
    ("weights without biases", 2048 * 100 + 100 * 8, "biases"),
    ("the last layer only", 100 * 8 + 8, "last Linear"),
    ("in millions", round(HEAD / 1e6, 4), "millions"),
    ("in thousands", round(HEAD / 1e3, 1), "thousands"),
    ("the share that trains", HEAD / TOTAL, "share of the model"),
    ("the share in percent", 100 * HEAD / TOTAL, "share of the model"),
    ("the notebook's EfficientNet-Lite0", 1280 * 100 + 100 + 808, "EfficientNet-Lite0"),
    ("the count as text", "205708", "one number"),
    ("the count with thousands commas", "205,708", "without quotes"),
    ("(total, trainable) both", (TOTAL, HEAD), "holds 2 numbers"),
    ("True", True, "True/False"),
    ("NaN", float("nan"), "NaN"),
    ("10**400", 10**400, "infinite"),
    ("an empty list", [], "empty"),
]


@pytest.mark.parametrize("answer", FROZEN_RIGHT.values(), ids=FROZEN_RIGHT.keys())
def test_frozen_right_answers(answer):
    result = check_frozen_trainable(answer)
    assert result.passed and f"{HEAD:,}" in result.message


@pytest.mark.parametrize("slip, answer, expected", FROZEN_SLIPS, ids=[s[0] for s in FROZEN_SLIPS])
def test_frozen_slips(slip, answer, expected):
    assert expected in refused(check_frozen_trainable(answer))


# --- 03·2 · softmax by hand -------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0], [1.0, 1.5, -0.5], [0.3, 0.2, 0.1]])
PROBS = LOGITS.softmax(dim=1)
COLUMNS = ["hog", "bird", "rodent"]

SOFTMAX_RIGHT = {
    "a tensor": PROBS,
    "exp over the row sum": LOGITS.exp() / LOGITS.exp().sum(dim=1, keepdim=True),
    "a list": PROBS.numpy().tolist(),
    "an ndarray": PROBS.numpy(),
    "a frame with species columns": pd.DataFrame(PROBS.numpy(), columns=COLUMNS),
    "rounded to 2 decimals, as displayed": pd.DataFrame(PROBS.numpy(), columns=COLUMNS).round(2),
    "rounded to 3 decimals": PROBS.numpy().round(3),
    "a float64 tensor": PROBS.double(),
    "a tensor that requires grad": PROBS.clone().requires_grad_(),
    "bf16": PROBS.to(torch.bfloat16),
}

SOFTMAX_SLIPS = [
    ("the wrong axis (dim 0)", LOGITS.softmax(dim=0), "dim 0"),
    ("exp, not divided", LOGITS.exp(), "did not divide"),
    ("exp minus the row max, not divided", (LOGITS - LOGITS.max(dim=1, keepdim=True).values).exp(), "did not divide"),
    ("log-probabilities", LOGITS.log_softmax(dim=1), "log-probabilities"),
    ("the logits over their sum", LOGITS / LOGITS.sum(dim=1, keepdim=True), "not the logits themselves"),
    ("the logits unchanged", LOGITS, "unchanged"),
    ("percent", 100 * PROBS, "percentages"),
    ("percent, rounded to 1 decimal", (100 * PROBS).numpy().round(1), "percentages"),
    ("the sigmoid", torch.sigmoid(LOGITS), "sigmoid"),
    ("the argmax as one-hot", torch.nn.functional.one_hot(LOGITS.argmax(dim=1), 3).float(), "argmax"),
    ("transposed", PROBS.T, "transposed"),
    ("one image only (1-d)", PROBS[0], "shape (4, 3)"),
    ("one image only (a row)", PROBS[0:1], "shape (4, 3)"),
    ("a 0-d tensor", torch.tensor(1.0), "shape (4, 3)"),
    ("overflowed exp", torch.full((4, 3), float("nan")), "NaN or infinite"),
    ("a dict", {"hog": 0.5}, "table of numbers"),
    ("a set", {0.1, 0.2}, "table of numbers"),
    ("text", "probs", "table of numbers"),
    ("a frame of text", pd.DataFrame([["a"] * 3] * 4), "table of numbers"),
]


@pytest.mark.parametrize("probs", SOFTMAX_RIGHT.values(), ids=SOFTMAX_RIGHT.keys())
def test_softmax_right_answers(probs):
    assert check_softmax(probs, LOGITS).passed


@pytest.mark.parametrize("slip, probs, expected", SOFTMAX_SLIPS, ids=[s[0] for s in SOFTMAX_SLIPS])
def test_softmax_slips(slip, probs, expected):
    assert expected in refused(check_softmax(probs, LOGITS))


def test_softmax_rounded_to_one_decimal_or_off_the_grid_is_not_right():
    assert not check_softmax(PROBS.numpy().round(1), LOGITS).passed
    # Within half a hundredth of the right values but not on the 2-decimal grid: another formula.
    assert not check_softmax(PROBS.numpy() + 0.004, LOGITS).passed


def test_softmax_overflow_hint_on_large_logits():
    big = LOGITS * 400  # exp overflows float32
    naive = big.exp() / big.exp().sum(dim=1, keepdim=True)
    assert "subtracting each row's largest logit" in refused(check_softmax(naive, big))
    assert check_softmax(big.softmax(dim=1), big).passed
