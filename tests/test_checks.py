"""Outcome checks: they pass quietly with a summary, or fail with a sentence and a fix."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest

from conserviz_utils import ConservizError
from conserviz_utils.course.checks import (
    OutcomeCheckError,
    SharedSiteWarning,
    require,
    require_better_than_baseline,
    require_sites_apart,
    shared_sites,
    warn_if_sites_shared,
)


def test_a_lower_log_loss_beats_the_baseline_and_says_by_how_much():
    summary = require_better_than_baseline(
        1.782, 2.079, metric="log loss", baseline_name="the uniform baseline"
    )
    assert summary == "log loss 1.782 beats the uniform baseline (2.079) by 0.297"


def test_a_higher_accuracy_beats_the_baseline():
    assert "by 0.160" in require_better_than_baseline(0.253, 0.093, metric="accuracy")


def test_the_issue_case_fails_with_both_numbers_and_what_to_try():
    # Issue 10: two training sites, log loss 2.084 against the uniform 2.079.
    with pytest.raises(OutcomeCheckError) as caught:
        require_better_than_baseline(
            2.084, 2.079, metric="log loss", baseline_name="the uniform baseline"
        )
    message = str(caught.value)
    assert "2.084" in message and "2.079" in message
    assert "is worse than the uniform baseline's" in message and "lower is better" in message
    assert "Fix:" in message and "CONSERVIZ_MAX_TRAIN_IMAGES" in message
    # Still an AssertionError for code that expects one, and a ConservizError for the course.
    assert isinstance(caught.value, AssertionError) and isinstance(caught.value, ConservizError)


def test_an_accuracy_equal_to_the_baseline_is_no_better():
    with pytest.raises(OutcomeCheckError, match=r"0\.250 is no better than .*higher is better"):
        require_better_than_baseline(0.25, 0.25, metric="accuracy")


def test_a_custom_hint_and_names_reach_the_message():
    with pytest.raises(OutcomeCheckError, match="the head's log loss.*Fix: train longer"):
        require_better_than_baseline(3.0, 2.0, what="the head", hint="train longer")


def test_nan_scores_are_named_as_divergence():
    with pytest.raises(OutcomeCheckError, match="nan.*diverged"):
        require_better_than_baseline(math.nan, 2.079)


def test_unknown_metric_needs_a_direction():
    with pytest.raises(ValueError, match="higher_is_better"):
        require_better_than_baseline(0.9, 0.5, metric="f1")
    assert "f1" in require_better_than_baseline(0.9, 0.5, metric="f1", higher_is_better=True)
    with pytest.raises(ValueError, match="single number"):
        require_better_than_baseline("good", 0.5, metric="accuracy")


def test_require_raises_the_sentence_and_fix():
    require(True, "unused", fix="unused")
    with pytest.raises(OutcomeCheckError, match="nothing leaked. Fix: use more sites"):
        require(False, "nothing leaked", fix="use more sites")


def features(sites, start=0):
    ids = [f"ZJ{start + k:06d}" for k in range(len(sites))]
    return pd.DataFrame({"site": sites}, index=pd.Index(ids, name="id"))


def test_shared_sites_are_listed_and_warned_about():
    train = features(["S0001", "S0002", "S0002", "S0003"])
    test = features(["S0002", "S0009", "S0003", "S0003"], start=10)
    assert shared_sites(train, test) == ["S0002", "S0003"]
    with pytest.warns(SharedSiteWarning) as caught:
        both = warn_if_sites_shared(train, test)
    assert both == ["S0002", "S0003"]
    message = str(caught[0].message)
    assert "2 camera site(s) appear in both the train and the test images" in message
    assert "S0002, S0003" in message and "3 test image(s)" in message
    assert "same download" in message


def test_no_warning_when_the_sites_are_apart():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_sites_shared(features(["S0001"]), features(["S0002"], start=5)) == []


def test_site_checks_refuse_frames_without_sites():
    with pytest.raises(ConservizError, match="'site'"):
        shared_sites(features(["S0001"]).rename(columns={"site": "camera"}), features(["S0002"]))


def test_require_sites_apart_passes_a_site_split_and_names_a_leak():
    frame = features(["S0001", "S0001", "S0002", "S0003"])
    ids = list(frame.index)
    summary = require_sites_apart(ids[:2], ids[2:], frame, what="the site split")
    assert summary == "the site split: 1 train sites, 2 eval sites, none on both sides"
    with pytest.raises(OutcomeCheckError, match=r"puts 1 camera site\(s\) on both sides \(S0001\)"):
        require_sites_apart(ids[:1], ids[1:], frame)
