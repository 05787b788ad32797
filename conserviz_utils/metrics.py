"""How good are the predictions? Log loss, accuracy, baselines, calibration (taught in notebook 05).

Every scoring function takes its arguments in scikit-learn's order, ``(y_true, y_pred)``:
``log_loss(labels, probs)``; the two swapped are refused with an error that says so.
Probabilities (or logits) are a DataFrame indexed by image id with one column per species, the
submission layout, or a plain (N, classes) array. Labels are the competition's one-hot frame, a
Series of species names (or class numbers), or an array of either, read by the one rule of
`conserviz_utils.labels`. When both sides carry ids
they are matched by id, whatever their order; different id sets are refused with an error
naming the ids, because silently comparing row i with row i of another order is the classic way
to report a wrong score.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from conserviz_utils import SPECIES
from conserviz_utils.errors import DataValidationError
from conserviz_utils.labels import class_positions, from_tensor, one_hot_faults, row_names

#: The competition clips probabilities to [EPS, 1 - EPS] before taking logarithms.
EPS = 1e-15

# Probabilities may stray this far outside [0, 1] through float rounding before we call them wrong.
_PROBABILITY_SLACK = 1e-6


def _to_matrix(values, what: str) -> tuple[np.ndarray, pd.Index | None, list | None]:
    """Return (float64 (N, C) array, ids or None, column names or None) of probabilities or logits."""
    if isinstance(values, pd.DataFrame):
        ids, columns = values.index, list(values.columns)
        non_numeric = [c for c in columns if not pd.api.types.is_numeric_dtype(values[c])]
        if non_numeric:
            raise DataValidationError(
                f"{what} must be numbers, but column {non_numeric[0]!r} holds {values[non_numeric[0]].dtype}",
                column=str(non_numeric[0]),
                fix=f"pass one numeric column of {what} per species",
            )
        matrix = values.to_numpy(dtype=np.float64)
    else:
        ids, columns = None, None
        matrix = np.asarray(from_tensor(values), dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] < 2:
        raise DataValidationError(
            f"{what} must be a non-empty (images, classes) table with at least 2 classes, "
            f"got shape {matrix.shape}",
            fix=f"pass one row of {what} per image and one column per species",
        )
    return matrix, ids, columns


def _true_classes(
    labels, classes: list | None, n_columns: int | None = None
) -> tuple[np.ndarray, pd.Index | None, list]:
    """Return (class positions, ids or None, class names) of labels, by the one label rule.

    Without known ``classes`` (array predictions), labels are read against SPECIES, or against
    the class numbers 0..n_columns-1 when the predictions do not have 8 columns; a one-hot
    frame brings its own columns.
    """
    if isinstance(labels, pd.DataFrame):
        if classes is None:
            classes = list(labels.columns)
        elif set(labels.columns) != set(classes):
            missing = [c for c in classes if c not in labels.columns]
            extra = [c for c in labels.columns if c not in classes]
            raise DataValidationError(
                f"the one-hot label columns do not match the probability columns "
                f"(missing: {missing or 'none'}; extra: {extra or 'none'})",
                column=str((missing or extra)[0]),
                fix="give labels and probabilities the same species columns",
            )
    elif classes is None:
        use_species = n_columns is None or n_columns == len(SPECIES)
        classes = list(SPECIES) if use_species else list(range(n_columns))
    positions = class_positions(labels, classes)
    ids = labels.index if isinstance(labels, pd.Series | pd.DataFrame) else None
    return positions, ids, list(classes)


def as_float_table(values) -> np.ndarray | None:
    """The values as a float (N, C) array when they are a 2-D table of numbers, else None."""
    if isinstance(values, pd.DataFrame):
        if not all(pd.api.types.is_numeric_dtype(values[c]) for c in values.columns):
            return None
        values = values.to_numpy(dtype=np.float64)
    try:
        table = np.asarray(from_tensor(values), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return table if table.ndim == 2 else None


def check_argument_order(labels, predictions, call: str) -> None:
    """Refuse predictions passed first and labels second (the order before scikit-learn's).

    The sign: the first argument is a table holding numbers other than 0 and 1 (probabilities
    or logits), while the second is one label per image or a one-hot table.
    """
    first = as_float_table(labels)
    if first is None or first.size == 0 or np.isin(first, (0.0, 1.0)).all():
        return
    second = as_float_table(predictions)
    if second is None:
        looks_like_labels = np.ndim(np.asarray(from_tensor(predictions), dtype=object)) == 1
    else:
        looks_like_labels = second.size > 0 and one_hot_faults(second).bad_rows.size == 0
    if looks_like_labels:
        raise DataValidationError(
            "arguments look swapped: metrics and plots take (y_true, y_pred) like scikit-learn, but the "
            "first argument holds scores (numbers other than 0 and 1) and the second labels",
            fix=f"call {call}: the true labels first, then the model's outputs",
        )


def _align(
    labels, values, what: str = "probabilities", call: str = "log_loss(labels, probs)"
) -> tuple[np.ndarray, np.ndarray, list, pd.Index | None]:
    """Match predictions with labels, by id when both have ids; check the values are usable.

    Returns:
        (matrix (N, C) float64, true class positions (N,), class names, ids or None).
    """
    check_argument_order(labels, values, call)
    matrix, ids, columns = _to_matrix(values, what)
    y, label_ids, classes = _true_classes(labels, columns, n_columns=matrix.shape[1])
    if len(classes) != matrix.shape[1]:
        raise DataValidationError(
            f"{what} have {matrix.shape[1]} columns but the labels know {len(classes)} classes",
            fix="give one column per species, in the order of SPECIES",
        )
    if ids is not None and label_ids is not None:
        for name, index in ((what, ids), ("labels", label_ids)):
            if index.has_duplicates:
                raise DataValidationError(
                    f"{name} hold duplicated ids",
                    rows=list(index[index.duplicated()].unique()),
                    fix="keep one row per image id",
                )
        short = "probs" if what == "probabilities" else what
        if not ids.equals(label_ids):
            only_values = ids.difference(label_ids, sort=False)
            only_labels = label_ids.difference(ids, sort=False)
            if len(only_values) or len(only_labels):
                raise DataValidationError(
                    f"{what} and labels cover different images: {len(only_values)} id(s) only in "
                    f"the {what}, {len(only_labels)} only in the labels",
                    rows=list(only_values) + list(only_labels),
                    fix=f"select the same ids on both sides, e.g. labels.loc[{short}.index]",
                )
            y = y[label_ids.get_indexer(ids)]
    elif len(y) != matrix.shape[0]:
        raise DataValidationError(
            f"{matrix.shape[0]} rows of {what} but {len(y)} labels",
            fix="pass one label per row, or give both an id index so they can be matched",
        )
    row_ids = ids if ids is not None else label_ids
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise DataValidationError(
            f"{what} hold NaN or infinite values",
            rows=row_names(row_ids, bad),
            fix="check the model's outputs for these images",
        )
    if what == "probabilities":
        bad = np.flatnonzero(((matrix < -_PROBABILITY_SLACK) | (matrix > 1 + _PROBABILITY_SLACK)).any(axis=1))
        if bad.size:
            raise DataValidationError(
                "probabilities must lie in [0, 1]; these rows look like logits",
                rows=row_names(row_ids, bad),
                fix="turn logits into probabilities with apply_temperature(logits, 1.0) (a softmax)",
            )
    return matrix, y, list(classes), row_ids


def _row_losses(probs: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """Per-image -log p(true class) after the competition's clip and row renormalisation."""
    clipped = np.clip(probs, eps, 1.0 - eps)
    normalised = clipped / clipped.sum(axis=1, keepdims=True)
    return -np.log(normalised[np.arange(len(y)), y])


def accuracy(labels, probs) -> float:
    """Share of images whose most probable class is the true one.

    Args:
        labels: The true labels (one-hot frame, species names or class numbers).
        probs: (N, classes) probabilities, a DataFrame indexed by id or an array.
    """
    matrix, y, _, _ = _align(labels, probs, call="accuracy(labels, probs)")
    return float(np.mean(matrix.argmax(axis=1) == y))


def log_loss(labels, probs, eps: float = EPS) -> float:
    r"""The competition metric: multi-class log loss (lower is better).

    .. math::

        \text{log loss} = -\frac{1}{N} \sum_{i=1}^{N} \log \hat p_{i, y_i},\qquad
        \hat p_{ij} = \frac{\operatorname{clip}(p_{ij}, \varepsilon, 1 - \varepsilon)}
                           {\sum_k \operatorname{clip}(p_{ik}, \varepsilon, 1 - \varepsilon)}

    where :math:`y_i` is the true class of image *i*. Each probability is clipped to
    [eps, 1 - eps] and each row renormalised to sum to 1, so one confident mistake costs at
    most -log(eps) ≈ 34.5 rather than infinity. Predicting 1/8 everywhere scores ln 8 ≈ 2.079.
    scikit-learn's ``log_loss`` gives the same number on the clipped, renormalised
    probabilities (since version 1.5 it clips at machine precision and no longer renormalises).

    Arguments come in scikit-learn's order, ``(y_true, y_pred)``; passing them the other way
    round raises a `DataValidationError` saying so.

    Args:
        labels: One-hot frame, Series of species names, or an array of names or class numbers.
        probs: (N, classes) probabilities: a DataFrame indexed by id or an array.
        eps: Clipping bound; the competition uses 1e-15.

    Returns:
        The mean log loss over the images.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    matrix, y, _, _ = _align(labels, probs, call="log_loss(labels, probs)")
    return float(np.mean(_row_losses(matrix, y, eps)))


def majority_baseline(train_labels, eval_labels) -> dict[str, float]:
    """Scores of a model that ignores the image: the training set's class shares for every image.

    Accuracy is that of always answering the most frequent training class; log loss is that of
    predicting the training class shares. A trained model has to beat both to have learnt
    anything from the pixels.

    Returns:
        ``{"accuracy": ..., "log_loss": ...}`` on ``eval_labels``.
    """
    y_train, _, classes = _true_classes(train_labels, None)
    counts = np.bincount(y_train, minlength=len(classes)).astype(np.float64)
    y_eval, _, _ = _true_classes(eval_labels, classes)
    constant = np.tile(counts / counts.sum(), (len(y_eval), 1))
    return {
        "accuracy": float(np.mean(y_eval == np.argmax(counts))),
        "log_loss": float(np.mean(_row_losses(constant, y_eval, EPS))),
    }


def uniform_baseline(eval_labels) -> dict[str, float]:
    """Scores of predicting 1/classes for every image: log loss ln 8 ≈ 2.079 for 8 species.

    Returns:
        ``{"accuracy": ..., "log_loss": ...}``; accuracy is the chance level 1/classes, the
        expected accuracy of a uniform random guess (uniform probabilities have no argmax).
    """
    y_eval, _, classes = _true_classes(eval_labels, None)
    constant = np.full((len(y_eval), len(classes)), 1.0 / len(classes))
    return {
        "accuracy": 1.0 / len(classes),
        "log_loss": float(np.mean(_row_losses(constant, y_eval, EPS))),
    }


def per_class_report(labels, probs) -> pd.DataFrame:
    """Precision, recall, F1 and support of each species, from the most probable class.

    Args:
        labels: The true labels (one-hot frame, species names or class numbers).
        probs: (N, classes) probabilities, a DataFrame indexed by id or an array.

    Returns:
        A frame indexed by species with columns precision, recall, f1, support.
    """
    matrix, y, classes, _ = _align(labels, probs, call="per_class_report(labels, probs)")
    positions = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, matrix.argmax(axis=1), labels=positions, zero_division=0
    )
    return pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)},
        index=pd.Index(classes, name="species"),
    )


def per_site_accuracy(labels, probs, features: pd.DataFrame, eps: float = EPS) -> pd.DataFrame:
    """Accuracy and log loss per camera site, worst sites first.

    Args:
        labels: One-hot frame or Series of species names.
        probs: Probabilities indexed by id (or an array, when ``labels`` carry the ids).
        features: A features frame indexed by id with a ``site`` column (it may hold more ids).
        eps: Clipping bound of the log loss.

    Returns:
        Columns site, n, accuracy, log_loss; sorted by accuracy (lowest first), then log loss
        (highest first), then site.
    """
    matrix, y, _, ids = _align(labels, probs, call="per_site_accuracy(labels, probs, features)")
    if ids is None:
        raise DataValidationError(
            "per-site scores need image ids, but neither probabilities nor labels carry any",
            fix="pass probabilities as a DataFrame indexed by id",
        )
    if "site" not in features.columns:
        raise DataValidationError(
            "the features frame has no site column",
            column="site",
            fix="pass train_features as loaded by load_competition",
        )
    if features.index.has_duplicates:
        raise DataValidationError(
            "the features frame holds duplicated ids",
            rows=list(features.index[features.index.duplicated()].unique()),
            fix="keep one row per image id",
        )
    missing = ids.difference(features.index, sort=False)
    if len(missing):
        raise DataValidationError(
            "features lack the site of some predicted images",
            column="site",
            rows=list(missing),
            fix="pass the features frame these images come from",
        )
    per_image = pd.DataFrame(
        {
            "site": features["site"].reindex(ids).to_numpy(),
            "correct": matrix.argmax(axis=1) == y,
            "loss": _row_losses(matrix, y, eps),
        }
    )
    table = (
        per_image.groupby("site", sort=True)
        .agg(n=("correct", "size"), accuracy=("correct", "mean"), log_loss=("loss", "mean"))
        .reset_index()
    )
    table["accuracy"] = table["accuracy"].astype(float)
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
    on the training images the model has memorised.

    The loss is convex in β = 1/T (its slope E_p[z] - z_true grows with β), so bisecting the
    slope on log β finds the minimum exactly and deterministically.

    Args:
        labels: One-hot frame, Series of species names, or array of names or class numbers.
        logits: (N, classes) raw model outputs (DataFrame indexed by id, array or tensor).
        bounds: Smallest and largest temperature allowed; the result is clamped to them.

    Returns:
        The temperature T (> 1 softens over-confident predictions); 1.0 when the logits do not
        depend on T (every row constant).
    """
    t_min, t_max = bounds
    if not 0.0 < t_min < t_max or not math.isfinite(t_max):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds!r}")
    matrix, y, _, _ = _align(labels, logits, what="logits", call="fit_temperature(labels, logits)")
    low, high = math.log(1.0 / t_max), math.log(1.0 / t_min)  # bracket on log β
    slope_low = _nll_slope(matrix, y, math.exp(low))
    slope_high = _nll_slope(matrix, y, math.exp(high))
    if abs(slope_low) < 1e-12 and abs(slope_high) < 1e-12:
        return 1.0
    if slope_low >= 0:
        return float(t_max)
    if slope_high <= 0:
        return float(t_min)
    for _ in range(100):
        middle = 0.5 * (low + high)
        if _nll_slope(matrix, y, math.exp(middle)) < 0:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return float(1.0 / math.exp(0.5 * (low + high)))


def apply_temperature(logits, temperature: float):
    """Softmax of logits / temperature: calibrated probabilities (temperature 1 is a plain softmax).

    Returns:
        Probabilities of the same form: a DataFrame (same index and columns) for a DataFrame,
        otherwise a numpy array.
    """
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = math.nan
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    matrix, ids, columns = _to_matrix(logits, "logits")
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise DataValidationError(
            "logits hold NaN or infinite values",
            rows=row_names(ids, bad),
            fix="check the model's outputs for these images",
        )
    probs = np.exp(_log_softmax(matrix / t))
    if ids is not None:
        return pd.DataFrame(probs, index=ids, columns=columns)
    return probs


__all__ = [
    "as_float_table",
    "check_argument_order",
    "EPS",
    "accuracy",
    "log_loss",
    "majority_baseline",
    "uniform_baseline",
    "per_class_report",
    "per_site_accuracy",
    "fit_temperature",
    "apply_temperature",
]
