"""Outcome checks for the notebooks: a failed check says what happened and what to try.

A notebook that ends a training or evaluation step with ``assert loss < baseline`` stops, when it
fails, on a bare ``AssertionError`` with no numbers and no advice. These checks raise an
`OutcomeCheckError` instead: a `ConservizError` (and an ``AssertionError``, so code and tests
that expect an assertion still catch it) whose message gives the two numbers, what they mean and
what to try. They return a one-line summary when the check passes, for the notebook to print.

`shared_sites` and `warn_if_sites_shared` look for camera sites on both sides of a pair of
feature frames (train and test): images from one site share a background, so such a site lets a
model score on the test set by recognising the place, and the eval score stops predicting it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import pandas as pd

from conserviz_utils.errors import ConservizError, DataValidationError

__all__ = [
    "OutcomeCheckError",
    "SharedSiteWarning",
    "require",
    "require_better_than_baseline",
    "require_sites_apart",
    "shared_sites",
    "warn_if_sites_shared",
]

#: Metrics the checks know, and whether a higher value is better.
HIGHER_IS_BETTER = {"accuracy": True, "log loss": False}

# What to try when a model does not beat a baseline: the causes seen in practice, cheapest first.
_DEFAULT_HINTS = {
    "accuracy": (
        "check that the checkpoint was trained on this data (delete model.pt in the output folder "
        "to retrain it), then give the model more to learn from: more training images (unset "
        "CONSERVIZ_MAX_TRAIN_IMAGES), more training sites (a split with fewer, smaller eval "
        "sites), or more head epochs (CONSERVIZ_HEAD_EPOCHS)"
    ),
    "log loss": (
        "check that the checkpoint was trained on this data (delete model.pt in the output folder "
        "to retrain it); an over-confident model loses to the baseline on new sites, so compare "
        "after temperature scaling (fit_temperature), and give it more to learn from: more "
        "training images (unset CONSERVIZ_MAX_TRAIN_IMAGES) and more training sites"
    ),
}


class OutcomeCheckError(ConservizError, AssertionError):
    """A notebook's outcome check failed: the message says what happened and what to try."""


class SharedSiteWarning(UserWarning):
    """Camera sites appear on both sides of what should be a clean train / test separation."""


def _metric_direction(metric: str, higher_is_better: bool | None) -> tuple[str, bool]:
    """The metric's display name and whether higher is better, refusing an unknown metric."""
    name = metric.replace("_", " ").strip().lower()
    if higher_is_better is not None:
        return name, bool(higher_is_better)
    if name not in HIGHER_IS_BETTER:
        raise ValueError(
            f"unknown metric {metric!r}: pass higher_is_better=True or False "
            f"(known metrics: {', '.join(HIGHER_IS_BETTER)})"
        )
    return name, HIGHER_IS_BETTER[name]


def _number(value, what: str) -> float:
    """``value`` as a float, refusing what is not a single number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a single number, got {type(value).__name__}") from None


def require(condition: bool, problem: str, *, fix: str) -> None:
    """Raise `OutcomeCheckError` with ``problem`` and ``fix`` unless ``condition`` holds.

    Args:
        condition: What the notebook expects to be true at this point.
        problem: A sentence saying what happened when it is not.
        fix: What the learner can try.
    """
    if not condition:
        raise OutcomeCheckError(problem, fix=fix)


def require_better_than_baseline(
    score: float,
    baseline: float,
    *,
    metric: str = "log loss",
    what: str = "the model",
    baseline_name: str = "the baseline",
    higher_is_better: bool | None = None,
    hint: str | None = None,
) -> str:
    """Check that ``score`` beats ``baseline`` on ``metric``; raise a readable error if not.

    Args:
        score: The model's value of the metric (e.g. its eval log loss).
        baseline: The baseline's value of the same metric on the same images.
        metric: ``"log loss"`` (lower is better), ``"accuracy"`` (higher is better), or any
            name together with ``higher_is_better``.
        what: What scored ``score``, for the message (``"the model"``, ``"the head"``).
        baseline_name: What scored ``baseline`` (``"the uniform baseline"``).
        higher_is_better: Overrides the direction known for ``metric``.
        hint: What to try when the check fails; a default per known metric otherwise.

    Returns:
        A one-line summary of the margin, e.g. ``"log loss 1.782 beats the uniform baseline
        (2.079) by 0.297"``.

    Raises:
        OutcomeCheckError: ``score`` is not a finite number, or does not beat ``baseline``.
    """
    name, higher = _metric_direction(metric, higher_is_better)
    score = _number(score, f"the {name} score")
    baseline = _number(baseline, f"the {name} baseline")
    fix = hint or _DEFAULT_HINTS.get(
        name, "give the model more to learn from, and check it was trained on this data"
    )
    if not math.isfinite(score):
        raise OutcomeCheckError(
            f"{what}'s {name} is {score}, not a number that can beat {baseline_name} "
            f"({baseline:.3f}): training diverged or the predictions hold NaN",
            fix="retrain with a lower learning rate, and check the predictions for NaN",
        )
    margin = score - baseline if higher else baseline - score
    if margin <= 0:
        direction = "higher" if higher else "lower"
        verdict = "is no better than" if margin == 0 else "is worse than"
        raise OutcomeCheckError(
            f"{what}'s {name} {score:.3f} {verdict} {baseline_name}'s {baseline:.3f} "
            f"({direction} is better): on these images it has learnt nothing the baseline "
            "does not already know",
            fix=fix,
        )
    return f"{name} {score:.3f} beats {baseline_name} ({baseline:.3f}) by {margin:.3f}"


def _site_column(features: pd.DataFrame, what: str) -> pd.Series:
    """The ``site`` column of a features frame, refusing a frame without one."""
    if not isinstance(features, pd.DataFrame) or "site" not in features.columns:
        raise DataValidationError(
            f"the {what} features have no 'site' column",
            column="site",
            fix="pass the features frames of load_competition (train_features, test_features)",
        )
    return features["site"].dropna().astype(str)


def shared_sites(first: pd.DataFrame, second: pd.DataFrame) -> list[str]:
    """The camera sites that appear in both feature frames, sorted."""
    return sorted(set(_site_column(first, "first")) & set(_site_column(second, "second")))


def _site_list(sites: Sequence[str], limit: int = 5) -> str:
    """``S0001, S0002 … and 3 more``: the first few site names of a list."""
    shown = ", ".join(sites[:limit])
    return shown + (f" … and {len(sites) - limit} more" if len(sites) > limit else "")


def warn_if_sites_shared(
    train_features: pd.DataFrame,
    test_features: pd.DataFrame,
    *,
    first: str = "train",
    second: str = "test",
) -> list[str]:
    """Warn (`SharedSiteWarning`) when a camera site appears in both frames; return those sites.

    The competition's test sites are not among its training sites, and the course's site split
    copies that. A shared site means the data are not what the course assumes (another download,
    a custom split): test images from it can be classified by their background, so the eval
    score of the site split no longer estimates the test score.

    Returns:
        The shared sites, sorted; empty when the two sets of sites are apart.
    """
    both = shared_sites(train_features, test_features)
    if both:
        n_images = int(_site_column(test_features, second).isin(both).sum())
        warnings.warn(
            f"{len(both)} camera site(s) appear in both the {first} and the {second} images "
            f"({_site_list(both)}; {n_images:,} {second} image(s) come from them). Images of one "
            "site share a background, so a model can recognise the place instead of the animal "
            f"there, and the site split's eval score will not predict the {second} score. Check "
            f"that both CSVs come from the same download; if the sites really overlap, expect "
            f"the {second} score of those images to be better than the eval score.",
            SharedSiteWarning,
            stacklevel=2,
        )
    return both


def require_sites_apart(
    train_ids: Iterable, eval_ids: Iterable, features: pd.DataFrame, *, what: str = "the split"
) -> str:
    """Check that no camera site has images on both sides of a split; raise if one does.

    Returns:
        A one-line summary: how many sites each side holds.

    Raises:
        OutcomeCheckError: naming the shared sites and the fix.
    """
    sites = _site_column(features, "split")
    train_sites = set(sites.reindex(pd.Index(train_ids)).dropna())
    eval_sites = set(sites.reindex(pd.Index(eval_ids)).dropna())
    both = sorted(train_sites & eval_sites)
    if both:
        raise OutcomeCheckError(
            f"{what} puts {len(both)} camera site(s) on both sides ({_site_list(both)}), so its "
            "eval score rewards recognising a place the model has seen",
            fix="split with split_by_site, which keeps every site whole",
        )
    return f"{what}: {len(train_sites)} train sites, {len(eval_sites)} eval sites, none on both sides"
