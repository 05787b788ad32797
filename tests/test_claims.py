"""Sentences computed from a run's numbers (`teaching.claims`)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from conserviz_utils.teaching.claims import compare, describe_blank, describe_curve


def test_a_lower_log_loss_helped_and_says_by_how_much():
    result = compare("fine-tuning", 1.032, "the head alone", 1.135)
    assert result.helped and result.verdict == "helped"
    assert str(result) == ("fine-tuning helped here: log loss 1.032 against 1.135 for the head alone "
                           "(0.103 lower).")


def test_a_higher_log_loss_did_not_help():
    result = compare("the ensemble", 1.914, "one head", 1.889)
    assert not result.helped
    assert str(result).startswith("the ensemble did not help here: log loss 1.914 against 1.889")
    assert str(result).endswith("(0.025 higher).")


def test_a_gap_within_the_tolerance_is_no_real_difference():
    result = compare("TTA", 1.800, "one view", 1.802, tolerance=0.005)
    assert not result.helped and result.verdict == "made no real difference"


def test_higher_is_better_for_accuracy():
    result = compare("crops", 0.72, "whole images", 0.45, metric="accuracy", lower_is_better=False)
    assert result.helped
    assert str(result).endswith("(0.270 higher).")
    assert not compare("crops", 0.40, "whole images", 0.45, metric="accuracy", lower_is_better=False).helped


@pytest.mark.parametrize("bad", [math.nan, math.inf, "1.0", None, True])
def test_scores_must_be_finite_numbers(bad):
    with pytest.raises(ValueError, match="finite number"):
        compare("a", bad, "b", 1.0)


def test_a_curve_that_turns_up_says_so_with_its_numbers():
    text = describe_curve([1.84, 1.73, 1.90], what="the held-out loss")
    assert "turned up" in text and "1.730" in text and "epoch 2" in text and "1.900" in text


def test_a_flat_tail_is_not_called_a_turn():
    # The run the teaching issue quotes: 1.84 -> 1.73 -> 1.75 is flat within 0.05.
    text = describe_curve([1.84, 1.73, 1.75], tolerance=0.05)
    assert "turned up" not in text and "flat" in text
    assert "turned up" in describe_curve([1.84, 1.73, 1.75])


def test_a_falling_curve_is_still_falling():
    text = describe_curve([2.0, 1.5, 1.2])
    assert "still falling" in text and "epoch 3" in text


def test_a_curve_needs_finite_numbers():
    with pytest.raises(ValueError):
        describe_curve([])
    with pytest.raises(ValueError):
        describe_curve([1.0, math.nan])


# True: 2 blank, 4 hog, 2 rodent, 1 bird. Predicted blank: both blanks, 2 hogs (50 %), 1 rodent
# (50 %); the bird is never called blank.
TRUTH = pd.Series(["blank", "blank", "hog", "hog", "hog", "hog", "rodent", "rodent", "bird"], index=list("abcdefghi"))
CALLED = pd.Series(["blank", "blank", "blank", "blank", "hog", "hog", "blank", "rodent", "bird"],
                   index=list("abcdefghi"))


def test_blank_counts_its_answers_against_the_truth_and_names_what_it_swallows():
    assert describe_blank(TRUTH, CALLED) == (
        "The model predicts blank for 5 of the 9 images, against 2 that really are blank; 3 of its blank "
        "answers are animals. The species it swallows most, as shares of their own images: hog 50%, rodent 50%."
    )
    assert describe_blank(TRUTH, CALLED, top=1).endswith("own images: hog 50%.")


def test_blank_aligns_on_the_ids_and_says_when_it_swallows_nothing():
    shuffled = TRUTH.iloc[::-1]  # the same images in another order
    assert describe_blank(shuffled, CALLED) == describe_blank(TRUTH, CALLED)
    assert describe_blank(TRUTH, TRUTH).endswith(
        "0 of its blank answers are animals. It swallows no animal into blank.")


def test_blank_needs_a_truth_for_every_prediction():
    with pytest.raises(ValueError, match="every id"):
        describe_blank(TRUTH.iloc[1:], CALLED)
