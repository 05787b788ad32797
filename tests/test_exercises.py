"""Every exercise checker against whatever a cell can hold: a message always, "correct" only when right.

The slips of each exercise and the hints written for them are in ``test_exercises_0N.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from exercise_inputs import ODD_INPUTS, history, refused, site_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conserviz_utils.metrics import log_loss
from conserviz_utils.teaching import exercises
from conserviz_utils.teaching.exercises import (
    CORRECT,
    NOT_ANSWERED,
    CheckResult,
    check_best_epoch,
    check_best_learning_rate,
    check_broken_submission,
    check_busiest_site,
    check_confidently_wrong,
    check_frozen_trainable,
    check_geometric_blend,
    check_member_weights,
    check_most_common_confusion,
    check_one_log_loss,
    check_share_shift,
    check_site_holdout,
    check_site_species_shares,
    check_softmax,
    check_worst_case_cost,
)
from conserviz_utils.teaching.exercises.results import as_array, as_number

FEATURES, LABELS, TEST_FEATURES = site_data()
AT_A = FEATURES.index[FEATURES["site"] == "A"]
SPLIT = (FEATURES.index.difference(AT_A), AT_A)
HISTORIES = {
    1e-2: history([1.9, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2], 0.2),
    1e-3: history([2.0, 1.8, 1.6, 1.65, 1.7, 1.75, 1.8], 0.9),
    1e-4: history([2.07, 2.05, 2.03, 2.01, 2.0, 1.99, 1.98], 1.9),
}
IDS = pd.Index(["a", "b", "c", "d"], name="id")
PROBS = pd.DataFrame([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4], [0.2, 0.2, 0.6]], index=IDS,
                     columns=["blank", "hog", "rodent"])
EVAL = pd.Series(["blank", "blank", "rodent", "blank"], index=IDS)
FORMAT = pd.DataFrame(1 / 3, index=pd.Index(["ZJ1", "ZJ2"], name="id"), columns=["blank", "hog", "rodent"])
SUBMISSION = pd.DataFrame([[0.98, 0.01, 0.01], [0.2, 0.5, 0.3]], index=FORMAT.index, columns=FORMAT.columns)
MEMBERS = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.8, 0.01, 0.19]])
LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
LOSSES = [1.0, 1.1, 1.5]


def number_is(target):
    return lambda x: as_number(x) is not None and math.isclose(as_number(x), target, rel_tol=2e-3, abs_tol=1e-3)


def table_is(target):
    def right(x):
        array = as_array(x)
        return array is not None and array.size == target.size and np.allclose(array.reshape(target.shape), target, atol=5e-3)
    return right


def never(_):
    return False


# checker slot → (call with the learner's input in that slot, what the right input would be)
SLOTS = {
    "01·1 site": (lambda x: check_busiest_site(x, FEATURES, TEST_FEATURES), never),
    "01·2 shares": (lambda x: check_site_species_shares(x, FEATURES, LABELS), never),
    "02·1 split": (lambda x: check_site_holdout(x, FEATURES), never),
    "02·2 species": (lambda x: check_share_shift(x, 4 / 6, SPLIT, LABELS), never),
    "02·2 shift": (lambda x: check_share_shift("hog", x, SPLIT, LABELS), never),
    "02·2 split": (lambda x: check_share_shift("hog", 4 / 6, x, LABELS), never),
    "03·1 count": (lambda x: check_frozen_trainable(x), number_is(205_708)),
    "03·2 probs": (lambda x: check_softmax(x, LOGITS), table_is(LOGITS.softmax(dim=1).numpy())),
    "04·1 rate": (lambda x: check_best_learning_rate(x, HISTORIES), number_is(1e-3)),
    "04·1 histories": (lambda x: check_best_learning_rate(1e-3, x), never),
    "04·2 epoch": (lambda x: check_best_epoch(x, HISTORIES[1e-2]), number_is(2)),
    "04·2 history": (lambda x: check_best_epoch(5, x), never),
    "05·1 loss": (lambda x: check_one_log_loss(x, EVAL, PROBS, "b"), number_is(-math.log(0.1))),
    "05·2 loss": (lambda x: check_confidently_wrong(x, LABELS), number_is(34.5388)),
    "05·3 species": (lambda x: check_most_common_confusion(x, EVAL, PROBS, "blank"), never),
    "06·1 broken": (lambda x: check_broken_submission(x, FORMAT), never),
    "06·2 cost": (lambda x: check_worst_case_cost(x, SUBMISSION), number_is(-math.log(0.9 * 0.01 + 0.1 / 3))),
    "07·1 row": (lambda x: check_geometric_blend(x, MEMBERS), never),
    "07·2 weights": (lambda x: check_member_weights(x, LOSSES), never),
}


def test_result_shows_its_status_in_text_and_html():
    result = CheckResult("Exercise 1 · x", CORRECT, "because <reasons>")
    assert result.passed and bool(result)
    assert str(result) == repr(result) == "✓ Exercise 1 · x: correct — because <reasons>"
    assert "&lt;reasons&gt;" in result._repr_html_() and "#2e7d32" in result._repr_html_()
    waiting = CheckResult("Exercise 1 · x", NOT_ANSWERED, "replace None")
    assert not waiting.passed and str(waiting).startswith("… ")


def test_the_package_exposes_every_checker_the_notebooks_import():
    assert sorted(exercises.__all__) == sorted(
        [n for n in dir(exercises) if n.startswith("check_")] + ["CORRECT", "NOT_ANSWERED", "NOT_YET",
                                                                "CheckResult", "fresh_head"]
    )


def test_placeholders_are_not_answered_yet():
    for result in (
        check_busiest_site(None, FEATURES),
        check_site_species_shares(None, FEATURES, LABELS),
        check_site_holdout(None, FEATURES),
        check_share_shift(None, None, SPLIT, LABELS),
        check_one_log_loss(None, LABELS, None, "ZJ000000"),
        check_confidently_wrong(None, LABELS),
        check_broken_submission(None, None),
        check_worst_case_cost(None, None),
        check_softmax(None, None),
        check_best_learning_rate(None, {}),
        check_best_epoch(None, None),
        check_most_common_confusion(None, LABELS, None, "hog"),
        check_frozen_trainable(None),
        check_geometric_blend(None, MEMBERS),
        check_member_weights(None, LOSSES),
    ):
        assert result.status == NOT_ANSWERED and "replace None" in result.message


@pytest.mark.parametrize("odd", ODD_INPUTS.values(), ids=ODD_INPUTS.keys())
@pytest.mark.parametrize("slot", SLOTS, ids=SLOTS)
def test_odd_inputs_get_a_message_written_for_them(slot, odd):
    """No input raises, none is "correct", and none falls through to the safety net."""
    call, _ = SLOTS[slot]
    refused(call(odd))


ANYTHING = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.floats(),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.booleans(),
    st.lists(st.floats(), max_size=5),
    st.lists(st.text(max_size=3), max_size=4),
    st.dictionaries(st.text(max_size=3), st.floats(), max_size=4),
    st.sets(st.integers(), max_size=4),
    hnp.arrays(hnp.floating_dtypes() | hnp.integer_dtypes(), hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=2, max_side=4)).map(torch.from_numpy),
    st.lists(st.floats(), max_size=4).map(lambda v: pd.Series(v, dtype=float)),
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=4)).map(pd.DataFrame),
)


@pytest.mark.parametrize("slot", SLOTS, ids=SLOTS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=ANYTHING)
def test_any_input_gets_a_message_and_correct_only_when_right(slot, answer):
    call, is_right = SLOTS[slot]
    result = call(answer)
    assert isinstance(result, CheckResult) and result.message
    assert not result.passed or is_right(answer), result
    assert "could not read" not in result.message, result


@pytest.mark.parametrize("slot", [s for s in SLOTS if SLOTS[s][1] is not never], ids=str)
@settings(max_examples=60, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6))
def test_no_wrong_number_is_ever_correct(slot, value):
    call, is_right = SLOTS[slot]
    if not is_right(value):
        assert not call(value).passed


def test_the_confidently_wrong_target_is_what_log_loss_gives():
    truth = LABELS.to_numpy().argmax(axis=1)
    values = np.zeros(LABELS.shape)
    values[np.arange(len(values)), (truth + 1) % LABELS.shape[1]] = 1.0
    assert number_is(34.5388)(log_loss(LABELS, pd.DataFrame(values, index=LABELS.index, columns=LABELS.columns)))
