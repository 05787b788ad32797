"""Sentences computed from this run's numbers, so the notebooks never claim what their figures deny.

``print(compare("fine-tuned", 1.03, "head only", 1.14))`` prints
"fine-tuned helped here: log loss 1.030 against 1.140 for head only (0.110 lower)."
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    """One score against another, and whether the first is better by more than ``tolerance``."""

    name: str
    value: float
    baseline_name: str
    baseline: float
    metric: str = "log loss"
    lower_is_better: bool = True
    tolerance: float = 0.0

    @property
    def difference(self) -> float:
        """How much better ``value`` is than ``baseline`` (negative when it is worse)."""
        return self.baseline - self.value if self.lower_is_better else self.value - self.baseline

    @property
    def helped(self) -> bool:
        return self.difference > self.tolerance

    @property
    def verdict(self) -> str:
        """"helped", "made no real difference" or "did not help"."""
        if self.helped:
            return "helped"
        return "made no real difference" if abs(self.difference) <= self.tolerance else "did not help"

    def __str__(self) -> str:
        way = "lower" if (self.difference > 0) == self.lower_is_better else "higher"
        return (f"{self.name} {self.verdict} here: {self.metric} {self.value:.3f} against "
                f"{self.baseline:.3f} for {self.baseline_name} ({abs(self.difference):.3f} {way}).")


def compare(
    name: str,
    value: float,
    baseline_name: str,
    baseline: float,
    *,
    metric: str = "log loss",
    lower_is_better: bool = True,
    tolerance: float = 0.0,
) -> Comparison:
    """Compare one score with another; ``str()`` of the result is the sentence to print."""
    for label, number in ((name, value), (baseline_name, baseline)):
        if not isinstance(number, (int, float)) or isinstance(number, bool) or not math.isfinite(number):
            raise ValueError(f"the score of {label} must be a finite number, got {number!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be 0 or more, got {tolerance!r}")
    return Comparison(name, float(value), baseline_name, float(baseline), metric, lower_is_better, tolerance)


def describe_curve(values: Sequence[float], *, what: str = "the loss", tolerance: float = 0.0) -> str:
    """Say how a per-epoch curve went: fell throughout, flattened, or turned up after its best epoch.

    Epochs count from 1. A rise after the best epoch smaller than ``tolerance`` counts as flat.
    """
    points = [float(v) for v in values]
    if not points or not all(math.isfinite(v) for v in points):
        raise ValueError(f"the curve must hold finite numbers, got {list(values)!r}")
    if len(points) == 1:
        return f"{what} was {points[0]:.3f} after its only epoch."
    best = min(range(len(points)), key=points.__getitem__)
    start, low, end = points[0], points[best], points[-1]
    if best == len(points) - 1:
        return (f"{what} was still falling at the last epoch: from {start:.3f} to its lowest, {end:.3f}, "
                f"at epoch {best + 1}.")
    rise = end - low
    if rise <= tolerance:
        return (f"{what} went from {start:.3f} to its lowest, {low:.3f}, at epoch {best + 1}, and stayed "
                f"about flat after it ({end:.3f} at epoch {len(points)}).")
    return (f"{what} went from {start:.3f} to its lowest, {low:.3f}, at epoch {best + 1}, then turned up "
            f"to {end:.3f} at epoch {len(points)} ({rise:.3f} higher).")


def describe_blank(truth, predicted, *, blank: str = "blank", top: int = 3) -> str:
    """Say how often ``predicted`` (species by id) answers blank against ``truth``, and the ``top`` it swallows."""
    predicted = predicted.astype(str)
    truth = truth.reindex(predicted.index)
    if predicted.empty or truth.isna().any():
        raise ValueError("truth must hold a species for every id of predicted, and predicted at least one id")
    truth = truth.astype(str)
    called = predicted == blank
    animals = int((called & (truth != blank)).sum())
    said = (f"The model predicts {blank} for {int(called.sum())} of the {len(predicted)} images, against "
            f"{int((truth == blank).sum())} that really are {blank}; {animals} of its {blank} answers are animals.")
    shares = called[truth != blank].groupby(truth[truth != blank]).mean().sort_values(ascending=False, kind="stable")
    shares = shares[shares > 0].head(top)
    if shares.empty:
        return f"{said} It swallows no animal into {blank}."
    named = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
    return f"{said} The species it swallows most, as shares of their own images: {named}."


__all__ = ["Comparison", "compare", "describe_blank", "describe_curve"]
