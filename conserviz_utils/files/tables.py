"""The checks behind `labels` and `metrics`: labels read by the one rule, predictions aligned by id.

Every refusal names the rows (by image id, else by position) and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from conserviz_utils import SPECIES
from conserviz_utils.errors import DataValidationError

_HARD_LABELS_FIX = "pass hard labels: the one-hot train_labels frame as loaded, species names or class numbers"

# Probabilities may stray this far outside [0, 1] through float rounding before we call them wrong.
_PROBABILITY_SLACK = 1e-6


def from_tensor(values):
    """A torch tensor as a numpy array (without importing torch here); anything else as it is."""
    return values.detach().cpu().numpy() if hasattr(values, "detach") else values


def row_names(ids: pd.Index | None, positions: np.ndarray) -> list:
    """Name rows by id when there are ids, else by position (for error messages)."""
    return list(ids[positions]) if ids is not None else [int(p) for p in positions]


class OneHotFaults(NamedTuple):
    """Where a numeric table breaks the one-hot rule (exact 0/1, a single 1 per row)."""

    missing: np.ndarray  # (rows, classes) bool: NaN cells
    not_binary: np.ndarray  # (rows, classes) bool: numbers other than exactly 0 and 1, NaN excluded
    ones: np.ndarray  # (rows,) int: how many cells of each row are 1

    @property
    def bad_rows(self) -> np.ndarray:
        """Positions of the rows that are not one-hot."""
        return np.flatnonzero(self.missing.any(axis=1) | self.not_binary.any(axis=1) | (self.ones != 1))


def one_hot_faults(values) -> OneHotFaults:
    """Check a numeric (rows, classes) table cell by cell against the one-hot rule.

    This is the rule itself; `read_labels` applies it with a generic error and
    ``data.load_competition`` with one naming the CSV's lines and columns.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"one_hot_faults needs a (rows, classes) table, got shape {values.shape}")
    missing = np.isnan(values)
    is_one = values == 1.0
    return OneHotFaults(missing, ~(is_one | (values == 0.0) | missing), is_one.sum(axis=1))


# --- labels ------------------------------------------------------------------------------------


def read_labels(labels, species: Sequence | None, what: str) -> tuple:
    """(classes, class positions or None, names or None) of labels in any form `labels` accepts."""
    if isinstance(labels, pd.DataFrame):
        return _read_frame(labels, species, what)
    if isinstance(labels, pd.Series):
        numeric = pd.api.types.is_numeric_dtype(labels.dtype)
        values = labels.to_numpy() if numeric else labels.to_numpy(dtype=object)
        return _read_values(values, labels.index, species, what)
    labels = from_tensor(labels)
    if isinstance(labels, str) or not hasattr(labels, "__len__"):
        raise DataValidationError(
            f"{what} must be one label per image, not a single {type(labels).__name__}", fix=_HARD_LABELS_FIX
        )
    values = np.asarray(labels)
    if values.ndim != 2:
        return _read_values(values, None, species, what)
    classes = list(range(values.shape[1])) if species is None else list(species)
    if values.shape[1] != len(classes):
        raise DataValidationError(
            f"{what} are a table of {values.shape[1]} columns, but there are {len(classes)} species",
            fix="give one-hot rows with one column per species, or one name per image",
        )
    frame = pd.DataFrame(values if values.dtype.kind in "biuf" else values.astype(object), columns=classes)
    return _read_frame(frame, classes, what, positional=True)


def _read_frame(frame: pd.DataFrame, species, what: str, positional: bool = False):
    """Class positions of a one-hot frame, its columns matched to ``species`` by name."""
    columns = list(frame.columns)
    classes = columns if species is None else list(species)
    if not positional:
        missing = [c for c in classes if c not in columns]
        unknown = [c for c in columns if c not in classes]
        if missing or unknown:
            listed = [", ".join(map(str, names)) or "none" for names in (missing, unknown)]
            raise DataValidationError(
                f"the columns of the {what} are not the species (missing: {listed[0]}; unknown: {listed[1]})",
                column=str((missing or unknown)[0]),
                fix="give one one-hot column per species (e.g. the train_labels frame as loaded)",
            )
        if len(set(columns)) != len(columns):
            repeated = sorted({str(c) for c in columns if columns.count(c) > 1})
            raise DataValidationError(
                f"the {what} repeat the column(s) {', '.join(repeated)}", column=repeated[0],
                fix="keep one column per species",
            )
    text = _text_column(frame, classes)
    if text is not None:
        raise DataValidationError(
            f"{what} columns must be numeric 0/1 values, but {text!r} holds {frame[text].dtype}",
            column=str(text),
            fix="pass the one-hot frame of train_labels.csv indexed by id (index_col='id'), "
            "or a Series of species names",
        )
    values = frame[classes].to_numpy(dtype=np.float64)
    bad = one_hot_faults(values).bad_rows
    if bad.size:
        if ((values[bad] > 0) & (values[bad] < 1)).any():
            fix = (f"these rows look like probabilities or soft labels: {_HARD_LABELS_FIX}"
                   " (for predictions use their most probable class, probs.idxmax(axis=1))")
        else:
            fix = "correct those rows (one 1 in the image's species column, 0 elsewhere) or drop them"
        raise DataValidationError(
            f"{what} are not one-hot: each row needs exactly one species (a single 1, the rest 0, no NaN)",
            rows=row_names(None if positional else frame.index, bad), fix=fix,
        )
    return classes, values.argmax(axis=1).astype(np.int64), None


def _read_values(values: np.ndarray, ids: pd.Index | None, species, what: str):
    """Class positions (or, without ``species``, names) of a 1-D array of species names or class numbers."""
    if values.ndim != 1:
        raise DataValidationError(
            f"{what} must be one label per image (or one-hot rows), got shape {values.shape}",
            fix=_HARD_LABELS_FIX,
        )
    missing = np.asarray(pd.isna(values), dtype=bool)
    if missing.any():
        raise DataValidationError(
            f"{what} are missing for some images", rows=row_names(ids, np.flatnonzero(missing)),
            fix="drop the unlabelled images or give each one a species name",
        )
    if values.dtype.kind == "b":
        raise DataValidationError(
            f"{what} are booleans, not species names or class numbers", fix=_HARD_LABELS_FIX
        )
    classes = None if species is None else list(species)
    if values.dtype.kind in "iuf":
        return classes, _class_numbers(values, ids, classes, what), None
    names = values.astype(object)
    if classes is None:
        return None, None, np.array([str(n) for n in names], dtype=object)
    lookup = {name: i for i, name in enumerate(classes)}
    positions = np.array([lookup.get(name, -1) for name in names.tolist()], dtype=np.int64)
    bad = np.flatnonzero(positions < 0)
    if bad.size:
        unknown = sorted({str(names[i]) for i in bad})
        raise DataValidationError(
            f"{what} name classes that are not species: {', '.join(unknown[:5])}", rows=row_names(ids, bad),
            fix=f"use the species names {', '.join(map(str, classes))}",
        )
    return classes, positions, None


def _class_numbers(values: np.ndarray, ids, classes, what: str) -> np.ndarray:
    """Class numbers as int64, refusing fractions and numbers outside 0..classes-1."""
    if classes is None:
        raise DataValidationError(
            f"{what} are class numbers, which need the species list to be read",
            fix="pass species=... (the class names in column order), or give species names",
        )
    fractional = np.flatnonzero(np.mod(values, 1) != 0) if values.dtype.kind == "f" else []
    if len(fractional):
        raise DataValidationError(
            f"{what} hold numbers that are not whole class numbers",
            rows=row_names(ids, np.asarray(fractional)), fix=_HARD_LABELS_FIX,
        )
    numbers = values.astype(np.int64)
    bad = np.flatnonzero((numbers < 0) | (numbers >= len(classes)))
    if bad.size:
        raise DataValidationError(
            f"{what} hold class numbers outside 0..{len(classes) - 1}", rows=row_names(ids, bad),
            fix="give each label as a species name or a class number 0..classes-1",
        )
    return numbers


# --- predictions against labels ----------------------------------------------------------------


def _text_column(frame: pd.DataFrame, columns):
    """The first of ``columns`` that does not hold numbers, or None; booleans count as numbers."""
    return next((c for c in columns if not pd.api.types.is_numeric_dtype(frame[c].dtype)), None)


def score_table(values, what: str) -> tuple[np.ndarray, pd.Index | None, list | None]:
    """(float64 (N, C) array, ids or None, column names or None) of probabilities or logits."""
    if isinstance(values, pd.DataFrame):
        text = _text_column(values, values.columns)
        if text is not None:
            raise DataValidationError(
                f"{what} must be numbers, but column {text!r} holds {values[text].dtype}",
                column=str(text), fix=f"pass one numeric column of {what} per species",
            )
        matrix, ids, columns = values.to_numpy(dtype=np.float64), values.index, list(values.columns)
    else:
        matrix, ids, columns = np.asarray(from_tensor(values), dtype=np.float64), None, None
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] < 2:
        raise DataValidationError(
            f"{what} must be a non-empty (images, classes) table with at least 2 classes, "
            f"got shape {matrix.shape}",
            fix=f"pass one row of {what} per image and one column per species",
        )
    return matrix, ids, columns


def check_finite(matrix: np.ndarray, ids: pd.Index | None, what: str) -> None:
    """Refuse rows holding NaN or infinite values."""
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise DataValidationError(
            f"{what} hold NaN or infinite values", rows=row_names(ids, bad),
            fix="check the model's outputs for these images",
        )


def _float_table(values) -> np.ndarray | None:
    """The values as a float (N, C) array when they are a 2-D table of numbers, else None."""
    if isinstance(values, pd.DataFrame):
        if _text_column(values, values.columns) is not None:
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
    first = _float_table(labels)
    if first is None or first.size == 0 or np.isin(first, (0.0, 1.0)).all():
        return
    second = _float_table(predictions)
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


def true_classes(labels, classes: list | None, n_columns: int | None = None) -> tuple:
    """(class positions, ids or None, class names) of labels, read against the predictions' classes.

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
        classes = list(SPECIES) if n_columns in (None, len(SPECIES)) else list(range(n_columns))
    _, positions, _ = read_labels(labels, classes, "labels")
    ids = labels.index if isinstance(labels, pd.Series | pd.DataFrame) else None
    return positions, ids, list(classes)


def _refuse_duplicates(index: pd.Index, problem: str) -> None:
    if index.has_duplicates:
        rows = list(index[index.duplicated()].unique())
        raise DataValidationError(problem, rows=rows, fix="keep one row per image id")


def align(labels, values, what: str, call: str) -> tuple[np.ndarray, np.ndarray, list, pd.Index | None]:
    """Predictions matched with labels, by id when both have ids, and checked usable.

    Returns:
        (matrix (N, C) float64, true class positions (N,), class names, ids or None).
    """
    check_argument_order(labels, values, call)
    matrix, ids, columns = score_table(values, what)
    y, label_ids, classes = true_classes(labels, columns, n_columns=matrix.shape[1])
    if len(classes) != matrix.shape[1]:
        raise DataValidationError(
            f"{what} have {matrix.shape[1]} columns but the labels know {len(classes)} classes",
            fix="give one column per species, in the order of SPECIES",
        )
    if ids is not None and label_ids is not None:
        _refuse_duplicates(ids, f"{what} hold duplicated ids")
        _refuse_duplicates(label_ids, "labels hold duplicated ids")
        only_values = ids.difference(label_ids, sort=False)
        only_labels = label_ids.difference(ids, sort=False)
        if len(only_values) or len(only_labels):
            short = "probs" if what == "probabilities" else what
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
    check_finite(matrix, row_ids, what)
    if what == "probabilities":
        bad = np.flatnonzero(((matrix < -_PROBABILITY_SLACK) | (matrix > 1 + _PROBABILITY_SLACK)).any(axis=1))
        if bad.size:
            raise DataValidationError(
                "probabilities must lie in [0, 1]; these rows look like logits", rows=row_names(row_ids, bad),
                fix="turn logits into probabilities with apply_temperature(logits, 1.0) (a softmax)",
            )
    return matrix, y, classes, row_ids


def sites_of(features: pd.DataFrame, ids: pd.Index | None) -> np.ndarray:
    """The camera site of each image id, from a features frame that may hold more ids."""
    if ids is None:
        raise DataValidationError(
            "per-site scores need image ids, but neither probabilities nor labels carry any",
            fix="pass probabilities as a DataFrame indexed by id",
        )
    if "site" not in features.columns:
        raise DataValidationError(
            "the features frame has no site column", column="site",
            fix="pass train_features as loaded by load_competition",
        )
    _refuse_duplicates(features.index, "the features frame holds duplicated ids")
    missing = ids.difference(features.index, sort=False)
    if len(missing):
        raise DataValidationError(
            "features lack the site of some predicted images", column="site", rows=list(missing),
            fix="pass the features frame these images come from",
        )
    return features["site"].reindex(ids).to_numpy()
