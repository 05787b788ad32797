"""How good are the predictions? Log loss, accuracy, baselines, calibration (taught in notebook 05).

Every scoring function takes scikit-learn's order, ``(y_true, y_pred)``: ``log_loss(labels, probs)``;
the two swapped are refused with an error that says so. Predictions (probabilities or logits) are a
DataFrame indexed by image id with one column per species, the submission layout, or a plain
(N, classes) array; labels come in any form of `conserviz_utils.labels`. When both sides carry ids
they are matched by id, whatever their order, and different id sets are refused: comparing row i
with row i of another order is the classic way to report a wrong score. Those checks live in
`conserviz_utils.files.tables`, so that each function here reads as its formula.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from conserviz_utils.files.tables import align, check_finite, score_table, sites_of, true_classes

__all__ = [
    "EPS", "accuracy", "log_loss", "majority_baseline", "uniform_baseline", "per_class_report",
    "per_site_accuracy", "fit_temperature", "apply_temperature",
]

#: The competition clips probabilities to [EPS, 1 - EPS] before taking logarithms.
EPS = 1e-15


def _row_losses(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image -log p(true class) after the competition's clip and row renormalisation."""
    clipped = np.clip(probs, EPS, 1.0 - EPS)
    normalised = clipped / clipped.sum(axis=1, keepdims=True)
    return -np.log(normalised[np.arange(len(y)), y])


def accuracy(labels, probs) -> float:
    """Share of images whose most probable class is the true one."""
    matrix, y, _, _ = align(labels, probs, "probabilities", call="accuracy(labels, probs)")
    return float(np.mean(matrix.argmax(axis=1) == y))


def log_loss(labels, probs) -> float:
    r"""The competition metric: multi-class log loss (lower is better).

    .. math::

        \text{log loss} = -\frac{1}{N} \sum_{i=1}^{N} \log \hat p_{i, y_i},\qquad
        \hat p_{ij} = \frac{\operatorname{clip}(p_{ij}, \varepsilon, 1 - \varepsilon)}
                           {\sum_k \operatorname{clip}(p_{ik}, \varepsilon, 1 - \varepsilon)}

    where :math:`y_i` is the true class of image *i* and :math:`\varepsilon` is `EPS`. Each probability
    is clipped to [EPS, 1 - EPS] and each row renormalised to sum to 1, so one confident mistake costs
    at most -log(EPS) ≈ 34.5 rather than infinity. Predicting 1/8 everywhere scores ln 8 ≈ 2.079.
    scikit-learn's ``log_loss`` gives the same number on the clipped, renormalised
    probabilities (since version 1.5 it clips at machine precision and no longer renormalises).
    """
    matrix, y, _, _ = align(labels, probs, "probabilities", call="log_loss(labels, probs)")
    return float(np.mean(_row_losses(matrix, y)))


def _constant_scores(y_eval: np.ndarray, shares: np.ndarray, hit_rate: float) -> dict[str, float]:
    """The given accuracy, and the log loss of predicting the same class shares for every image."""
    constant = np.tile(shares, (len(y_eval), 1))
    return {"accuracy": hit_rate, "log_loss": float(np.mean(_row_losses(constant, y_eval)))}


def majority_baseline(train_labels, eval_labels) -> dict[str, float]:
    """Scores on ``eval_labels`` of a model that ignores the image and predicts the training class shares.

    Accuracy is that of always answering the most frequent training class. A trained model has
    to beat both scores to have learnt anything from the pixels.
    """
    y_train, _, classes = true_classes(train_labels, None)
    counts = np.bincount(y_train, minlength=len(classes)).astype(np.float64)
    y_eval, _, _ = true_classes(eval_labels, classes)
    return _constant_scores(y_eval, counts / counts.sum(), float(np.mean(y_eval == np.argmax(counts))))


def uniform_baseline(eval_labels) -> dict[str, float]:
    """Scores of predicting 1/classes for every image: log loss ln 8 ≈ 2.079 for 8 species.

    Uniform probabilities have no argmax, so accuracy is the chance level 1/classes, the expected
    accuracy of a uniform random guess.
    """
    y_eval, _, classes = true_classes(eval_labels, None)
    return _constant_scores(y_eval, np.full(len(classes), 1.0 / len(classes)), 1.0 / len(classes))


def per_class_report(labels, probs) -> pd.DataFrame:
    """Precision, recall, F1 and support of each species (the index), from the most probable class."""
    matrix, y, classes, _ = align(labels, probs, "probabilities", call="per_class_report(labels, probs)")
    precision, recall, f1, support = precision_recall_fscore_support(
        y, matrix.argmax(axis=1), labels=list(range(len(classes))), zero_division=0
    )
    return pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)},
        index=pd.Index(classes, name="species"),
    )


def per_site_accuracy(labels, probs, features: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and log loss per camera site (columns site, n, accuracy, log_loss), worst sites first.

    ``features`` is indexed by id with a ``site`` column (it may hold more ids); ``probs`` may be an
    array when ``labels`` carry the ids. Sorted by accuracy, then log loss (highest first), then site.
    """
    call = "per_site_accuracy(labels, probs, features)"
    matrix, y, _, ids = align(labels, probs, "probabilities", call=call)
    per_image = pd.DataFrame({
        "site": sites_of(features, ids), "correct": matrix.argmax(axis=1) == y, "loss": _row_losses(matrix, y),
    })
    table = (
        per_image.groupby("site", sort=True)
        .agg(n=("correct", "size"), accuracy=("correct", "mean"), log_loss=("loss", "mean"))
        .reset_index()
    )
    return table.sort_values(
        ["accuracy", "log_loss", "site"], ascending=[True, False, True], kind="stable"
    ).reset_index(drop=True)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _nll_slope(logits: np.ndarray, y: np.ndarray, beta: float) -> float:
    """d/dβ of the mean NLL of softmax(β·logits): E_p[z] - z_true, averaged over images."""
    probs = np.exp(_log_softmax(beta * logits))
    return float(np.mean((probs * logits).sum(axis=1) - logits[np.arange(len(y)), y]))


def fit_temperature(labels, logits, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """Fit the one temperature T that minimises the log loss of softmax(logits / T).

    Temperature scaling fixes over-confidence, which log loss punishes hard, without changing
    any prediction's ranking (so accuracy stays the same). Fit T on held-out eval logits, never
    on the training images the model has memorised. T > 1 softens over-confident predictions;
    it is clamped to ``bounds``, and is 1.0 when no row's softmax depends on T.

    The loss is convex in β = 1/T (its slope E_p[z] - z_true grows with β), so bisecting the
    slope on log β finds the minimum exactly and deterministically.
    """
    t_min, t_max = bounds
    if not 0.0 < t_min < t_max or not math.isfinite(t_max):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds!r}")
    matrix, y, _, _ = align(labels, logits, "logits", call="fit_temperature(labels, logits)")
    low, high = math.log(1.0 / t_max), math.log(1.0 / t_min)  # bracket on log β
    slope_low = _nll_slope(matrix, y, math.exp(low))
    slope_high = _nll_slope(matrix, y, math.exp(high))
    if abs(slope_low) < 1e-12 and abs(slope_high) < 1e-12:
        return 1.0
    if slope_low >= 0:
        return float(t_max)
    if slope_high <= 0:
        return float(t_min)
    for _ in range(100):  # bisect until the bracket is 1e-12 wide (about 45 halvings)
        middle = 0.5 * (low + high)
        low, high = (middle, high) if _nll_slope(matrix, y, math.exp(middle)) < 0 else (low, middle)
        if high - low < 1e-12:
            break
    return float(1.0 / math.exp(0.5 * (low + high)))


def apply_temperature(logits, temperature: float):
    """Softmax of logits / temperature: calibrated probabilities (temperature 1 is a plain softmax).

    Returns a DataFrame (same index and columns) for a DataFrame, otherwise a numpy array.
    """
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = math.nan
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    matrix, ids, columns = score_table(logits, "logits")
    check_finite(matrix, ids, "logits")
    probs = np.exp(_log_softmax(matrix / t))
    return probs if ids is None else pd.DataFrame(probs, index=ids, columns=columns)
