"""Checkers of notebook 07's exercises: a geometric blend by hand, and the blend's weights."""

from __future__ import annotations

import numpy as np

from conserviz_utils.metrics import EPS
from conserviz_utils.teaching.exercises.results import (
    as_array,
    checker,
    correct,
    hint,
    kind_of,
    rounded_as_displayed,
    same,
)

GEOMETRIC = "Exercise 1 · a geometric blend by hand"
WEIGHTS = "Exercise 2 · the blend's weights"
TOLERANCE = 1e-4


def _vector(values) -> np.ndarray | None:
    """A 1-D float array of a list, array, tensor or Series; None when it is not one."""
    array = as_array(values)
    if array is not None and array.ndim == 2 and 1 in array.shape:  # one row or one column
        array = array.reshape(-1)
    return array if array is not None and array.ndim == 1 else None


def _matches(row: np.ndarray, target: np.ndarray) -> bool:
    """Equal up to float arithmetic, or ``target`` rounded to 2 or 3 decimals."""
    return same(row, target, TOLERANCE) or rounded_as_displayed(row, target)


@checker(GEOMETRIC, "the blended probabilities, one per species", placeholder="the blended probabilities of the image")
def check_geometric_blend(answer, member_probs):
    """Exercise 07·1: the geometric blend of one image's (members, species) probabilities, by hand.

    Mean of the log-probabilities (clipped at 1e-15, as the metric does), exp, row renormalised to 1.
    """
    members = np.asarray(member_probs, dtype=np.float64)
    n_members, n_species = members.shape
    row = _vector(answer)
    if row is None or row.shape != (n_species,):
        if row is not None and row.shape == (n_members,):
            return hint(GEOMETRIC, f"that is one value per member ({n_members}); average over the "
                                   f"members (axis 0) to get one value per species ({n_species})")
        return hint(GEOMETRIC, f"give one probability per species: {n_species} numbers (got {kind_of(answer)})")
    if not np.isfinite(row).all():
        return hint(GEOMETRIC, "your row holds NaN or infinite values: the log of 0 is −inf; clip "
                               "the probabilities at 1e-15 first, as the metric does")
    logs = np.log(np.clip(members, EPS, 1.0))
    mean_logs = logs.mean(axis=0)
    geometric = np.exp(mean_logs)
    right = geometric / geometric.sum()
    if _matches(row, right):
        arithmetic = members.mean(axis=0)
        top = int(np.argmax(right))
        return correct(GEOMETRIC, f"the geometric blend gives the top species {right[top]:.3f} "
                                  f"against {arithmetic[top]:.3f} for the arithmetic mean: a "
                                  "class one member finds unlikely is pulled down hard")
    if _matches(row / 100, right):
        return hint(GEOMETRIC, "these are percentages (they add up to 100); give probabilities between 0 and 1")
    if _matches(row, members.mean(axis=0)):
        return hint(GEOMETRIC, "that is the arithmetic mean of the probabilities; the geometric "
                               "blend averages their logarithms")
    if _matches(row, geometric):
        return hint(GEOMETRIC, "close: now divide by the row's sum, so the probabilities add up to 1")
    if same(row, mean_logs, TOLERANCE):
        return hint(GEOMETRIC, "these are mean log-probabilities (all negative); take their exp, then renormalise")
    product = np.exp(logs.sum(axis=0))
    if _matches(row, product / product.sum()):
        return hint(GEOMETRIC, "you multiplied the probabilities; the geometric mean takes the mean "
                               "of their logarithms (the M-th root of the product), not the sum")
    return hint(GEOMETRIC, "not quite: mean of the log-probabilities over the members, exp, then "
                           "divide by the row's sum")


@checker(WEIGHTS, "one weight per member", placeholder="one weight per member")
def check_member_weights(answer, val_losses, power: float = 2.0, max_ratio: float | None = 1.2):
    """Exercise 07·2: the blend's weights by hand: (1 / loss) ** power, 0 past ``max_ratio`` × the best, sum 1."""
    from conserviz_utils.climb.ensemble import member_weights

    losses = np.asarray(val_losses, dtype=np.float64).reshape(-1)
    weights = _vector(answer)
    if weights is None or weights.shape != losses.shape:
        return hint(WEIGHTS, f"give one weight per member: {losses.size} numbers (got {kind_of(answer)})")
    right = member_weights(losses, power=power, max_ratio=max_ratio)
    kept = right > 0
    if np.isnan(weights).any() and np.isfinite(weights[kept]).all():
        return hint(WEIGHTS, "a dropped member weighs 0, not NaN")
    if not np.isfinite(weights).all():
        return hint(WEIGHTS, "your weights hold NaN or infinite values: look for a division by 0 on the way")
    if _matches(weights, right):
        dropped = int((~kept).sum())
        note = f"{dropped} member(s) dropped as too weak, " if dropped else "no member dropped, "
        linear = np.where(kept, 1.0 / losses, 0.0)
        return correct(WEIGHTS, f"{note}the best member weighs {right.max():.3f} (with 1 / loss "
                                f"it would weigh {linear.max() / linear.sum():.3f}): squaring "
                                "favours the better heads without silencing the others")
    if _matches(weights / 100, right):
        return hint(WEIGHTS, "these are percentages (they add up to 100); give weights that add up to 1")
    raw = (1.0 / losses) ** power
    if same(weights, raw, TOLERANCE * raw.max()) or same(weights, np.where(kept, raw, 0.0), TOLERANCE * raw.max()):
        return hint(WEIGHTS, "the weights must add up to 1: divide each by their sum")
    kept_all = raw / raw.sum()
    if max_ratio is not None and not same(kept_all, right, TOLERANCE) and _matches(weights, kept_all):
        return hint(WEIGHTS, f"drop the members whose loss is above {max_ratio:g} × the best "
                             "member's (weight 0) before scaling to 1")
    if max_ratio is not None:
        absolute = np.where(losses > max_ratio, 0.0, raw)
        if absolute.any() and not same(absolute / absolute.sum(), right, TOLERANCE) and _matches(
            weights, absolute / absolute.sum()
        ):
            return hint(WEIGHTS, f"MAX_RATIO is a ratio: drop the members above {max_ratio:g} × the "
                                 f"best member's loss, not above {max_ratio:g} itself")
    linear = np.where(kept, 1.0 / losses, 0.0)
    if _matches(weights, linear / linear.sum()):
        return hint(WEIGHTS, f"the weights are (1 / loss) to the power {power:g}, not 1 / loss")
    by_loss = np.where(kept, losses**power, 0.0)
    if _matches(weights, by_loss / by_loss.sum()) or _matches(weights, losses / losses.sum()):
        return hint(WEIGHTS, "the better member (lower loss) must weigh more: use 1 / loss")
    return hint(WEIGHTS, f"not quite: (1 / loss) ** {power:g}, 0 for the dropped members, then divide by the sum")
