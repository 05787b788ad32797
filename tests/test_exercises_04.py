"""Notebook 04's checkers held against learners' slips; exercise 2 reads the runs exercise 1 took."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from exercise_inputs import history, refused

from conserviz_utils.teaching.exercises import check_best_epoch, check_best_learning_rate, fresh_head

BASE = 3e-4  # a rate whose × 10 is not exactly 0.003 in floating point
HISTORIES = {
    BASE * 10: history([1.9, 1.7, 1.8, 1.9], train_loss=0.2),  # fits train best, eval turns up
    BASE: history([2.0, 1.8, 1.6, 1.65], train_loss=0.9),
    BASE / 10: history([2.07, 2.05, 2.03, 2.01], train_loss=1.9),  # still descending
}

RATE_RIGHT = {
    "the key itself": BASE,
    "typed out": 0.0003,
    "a numpy float": np.float64(BASE),
    "a 0-d tensor": torch.tensor(BASE, dtype=torch.float64),
    "a float32 tensor": torch.tensor(BASE),
}

RATE_SLIPS = [  # (slip, answer, histories, the hint written for it)
    ("only the first rate trained", BASE, {BASE: HISTORIES[BASE]}, "holds 1 run(s)"),
    ("one more rate only", BASE, {BASE: HISTORIES[BASE], BASE * 10: HISTORIES[BASE * 10]}, "holds 2 run(s)"),
    ("the lowest training loss", BASE * 10, HISTORIES, "training loss"),
    ("the worst rate", BASE / 10, HISTORIES, "did worst"),
    ("a rate not tried", 0.5, HISTORIES, "not one of the rates"),
    ("the power of ten", -4.0, {1e-3: HISTORIES[BASE], 1e-2: HISTORIES[BASE * 10], 1e-4: HISTORIES[BASE / 10]}, "power of ten"),
    ("the rate as text", "3e-4", HISTORIES, "without quotes"),
    ("the whole dict", HISTORIES, HISTORIES, "one number"),
    ("the best history", HISTORIES[BASE], HISTORIES, "one number"),
    ("NaN", float("nan"), HISTORIES, "NaN"),
    ("10**400", 10**400, HISTORIES, "infinite"),
    ("histories in a list", BASE, list(HISTORIES.values()), "should be a dict"),
    ("histories keyed by text", BASE, {str(k): v for k, v in HISTORIES.items()}, "key each history"),
    ("a head stored, not its history", BASE, {**HISTORIES, BASE: torch.nn.Linear(2, 2)}, "not a fit_head history"),
    ("a history without held-out loss", BASE, {**HISTORIES, BASE: HISTORIES[BASE].drop(columns="eval_log_loss")}, "not a fit_head history"),
]


@pytest.mark.parametrize("answer", RATE_RIGHT.values(), ids=RATE_RIGHT.keys())
def test_learning_rate_right_answers(answer):
    result = check_best_learning_rate(answer, HISTORIES)
    assert result.passed and "1.600" in result.message


@pytest.mark.parametrize("slip, answer, histories, expected", RATE_SLIPS, ids=[s[0] for s in RATE_SLIPS])
def test_learning_rate_slips(slip, answer, histories, expected):
    assert expected in refused(check_best_learning_rate(answer, histories))


def test_learning_rate_last_epoch_slip():
    histories = {
        1e-2: history([1.5, 1.9, 1.95], train_loss=0.5),  # best early, ends high
        1e-3: history([1.8, 1.7, 1.62], train_loss=0.9),  # ends lowest, best 1.62
        1e-4: history([2.0, 1.99, 1.98], train_loss=0.1),
    }
    assert check_best_learning_rate(1e-2, histories).passed
    assert "last epoch" in refused(check_best_learning_rate(1e-3, histories))


def test_learning_rate_verdict_reports_this_runs_numbers_not_a_fixed_story():
    message = check_best_learning_rate(BASE, HISTORIES).message
    assert "the middle rate" in message
    assert "lr 3e-05 was still improving at its last epoch (4)" in message
    assert "lr 0.003 bottomed out at epoch 2 of 4" in message
    assert "overfits" not in message
    winner_high = {**HISTORIES, BASE * 10: history([1.5, 1.45, 1.4, 1.42], train_loss=0.2)}
    assert "the highest rate" in check_best_learning_rate(BASE * 10, winner_high).message


# --- 04·2 · the epoch early stopping kept -----------------------------------------------------

FAST = HISTORIES[BASE * 10].copy()
FAST.index = FAST.index + 100  # row labels that are not epochs

EPOCH_RIGHT = {"int": 2, "float": 2.0, "numpy int": np.int64(2), "0-d tensor": torch.tensor(2)}

EPOCH_SLIPS = [
    ("the last epoch", 4, FAST, "last epoch"),
    ("counted from 0", 1, FAST, "off by one"),
    ("one too many", 3, FAST, "off by one"),
    ("the lowest loss itself", 1.7, FAST, "lowest held-out log loss itself"),
    ("the row's label", int(FAST["eval_log_loss"].idxmin()), FAST, "row's label"),
    ("the epoch as text", "2", FAST, "without quotes"),
    ("exercise 1 unanswered (.get gave None)", 2, None, "exercise 1 first"),
    ("a history without eval rows", 2, FAST.assign(eval_log_loss=np.nan), "exercise 1 first"),
    ("NaN", float("nan"), FAST, "NaN"),
    ("10**400", 10**400, FAST, "infinite"),
]


@pytest.mark.parametrize("answer", EPOCH_RIGHT.values(), ids=EPOCH_RIGHT.keys())
def test_epoch_right_answers(answer):
    result = check_best_epoch(answer, FAST)
    assert result.passed and "epoch 2 had the lowest held-out log loss (1.700)" in result.message


@pytest.mark.parametrize("slip, answer, run, expected", EPOCH_SLIPS, ids=[s[0] for s in EPOCH_SLIPS])
def test_epoch_slips(slip, answer, run, expected):
    assert expected in refused(check_best_epoch(answer, run))


def test_epoch_reads_the_run_exercise_1_accepted():
    assert check_best_learning_rate(BASE, HISTORIES).passed
    # The notebook's call: the × 10 run looked up by the same expression that stored it.
    assert check_best_epoch(2, HISTORIES.get(BASE * 10)).passed
    # Keys typed out (0.003 is not BASE * 10 in floating point): the dict and the rate find it.
    typed = {0.003: HISTORIES[BASE * 10], 0.0003: HISTORIES[BASE], 0.00003: HISTORIES[BASE / 10]}
    assert check_best_learning_rate(0.0003, typed).passed
    assert typed.get(BASE * 10) is None
    assert check_best_epoch(2, typed, lr=BASE * 10).passed
    assert "exercise 1 first" in refused(check_best_epoch(2, {BASE: HISTORIES[BASE]}, lr=BASE * 10))


def test_fresh_head_is_a_new_seeded_copy():
    head = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    state = {k: v.clone() for k, v in head.state_dict().items()}
    before = torch.random.get_rng_state()
    first, second = fresh_head(head, seed=1), fresh_head(head, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator untouched
    assert all(torch.equal(head.state_dict()[k], state[k]) for k in state)  # the original kept
    assert all(torch.equal(first.state_dict()[k], second.state_dict()[k]) for k in state)
    assert not torch.equal(first[0].weight, head[0].weight)
    assert first is not head and first[0].weight is not head[0].weight
