"""One rule for labels: one-hot rows, species names or class numbers (the layout notebook 01 shows).

Labels reach conserviz in three forms, and every module reads them through this one:

- the one-hot frame of ``train_labels.csv``: one column per species (any column order), each
  row exactly one 1 and 0 elsewhere. A soft row (probabilities, label smoothing, a NaN) is
  refused, never silently argmaxed;
- species names: a Series (indexed by image id) or any 1-D sequence of names;
- class numbers: integers 0..classes-1, the column positions of ``species``.

A one-hot table without an index (an array or tensor) has its columns in ``species`` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from conserviz_utils import SPECIES
from conserviz_utils.errors import DataValidationError

__all__ = [
    "OneHotFaults",
    "class_positions",
    "from_tensor",
    "one_hot",
    "one_hot_faults",
    "row_names",
    "species_names",
]

_HARD_LABELS_FIX = (
    "pass hard labels: the one-hot train_labels frame as loaded, species names or class numbers"
)


class OneHotFaults(NamedTuple):
    """Where a numeric table breaks the one-hot rule (exact 0/1, a single 1 per row).

    Attributes:
        missing: (rows, classes) bool, NaN cells.
        not_binary: (rows, classes) bool, numbers other than exactly 0 and 1 (NaN excluded).
        ones: (rows,) int, how many cells of each row are 1.
    """

    missing: np.ndarray
    not_binary: np.ndarray
    ones: np.ndarray

    @property
    def bad_rows(self) -> np.ndarray:
        """Positions of the rows that are not one-hot."""
        return np.flatnonzero(
            self.missing.any(axis=1) | self.not_binary.any(axis=1) | (self.ones != 1)
        )


def one_hot_faults(values) -> OneHotFaults:
    """Check a numeric (rows, classes) table cell by cell against the one-hot rule.

    This is the rule itself; `class_positions` applies it with a generic error and
    ``data.load_competition`` with one naming the CSV's lines and columns.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"one_hot_faults needs a (rows, classes) table, got shape {values.shape}")
    missing = np.isnan(values)
    is_one = values == 1.0
    not_binary = ~(is_one | (values == 0.0) | missing)
    return OneHotFaults(missing=missing, not_binary=not_binary, ones=is_one.sum(axis=1))


def class_positions(labels, species: Sequence | None = SPECIES, *, what: str = "labels") -> np.ndarray:
    """The class number (column position in ``species``) of each label.

    Args:
        labels: A one-hot frame (columns = ``species``, any order) or (rows, classes) array or
            tensor (columns in ``species`` order); or a Series, list or array of species
            names or of class numbers 0..len(species)-1.
        species: The classes, in column order. None takes them from the labels: a frame's
            columns, or 0..classes-1 for an array; names then need a species list.
        what: What the labels are, for error messages ("train labels", ...).

    Returns:
        An int64 array with one class number per label, in the order of ``labels``.

    Raises:
        DataValidationError: a row is not one-hot (soft, NaN, no or several 1s), a name is not
            a species, a number is out of range, a value is missing, or the layout is wrong;
            naming the rows and the fix.
    """
    _, positions, _ = _read(labels, species, what)
    if positions is None:  # names without a species list cannot be numbered
        raise ValueError("class_positions needs the species list to number species names")
    return positions


def species_names(labels, species: Sequence | None = SPECIES, *, what: str = "labels") -> pd.Series:
    """The species name of each label, as a Series named ``species``.

    Accepts every form `class_positions` does. With ``species=None`` names are taken as they
    are (any name goes) and a one-hot frame's columns are its species.

    Returns:
        A Series of names indexed like ``labels`` when they have an index (a frame or Series),
        else by position 0..N-1.
    """
    classes, positions, names = _read(labels, species, what)
    if names is None:
        lookup = np.asarray(list(classes), dtype=object)
        names = lookup[positions] if len(positions) else np.array([], dtype=object)
    index = labels.index if isinstance(labels, pd.Series | pd.DataFrame) else None
    return pd.Series(names, index=index, name="species", dtype=object)


def one_hot(names_or_positions, species: Sequence = SPECIES, index=None) -> pd.DataFrame:
    """The one-hot label frame (float 0/1, one column per species) of names or class numbers.

    Args:
        names_or_positions: Labels in any form `class_positions` accepts.
        species: The columns, in order.
        index: The frame's index; by default that of the labels (a Series or frame) or 0..N-1.

    Returns:
        A float64 frame in the layout of ``train_labels``.
    """
    species = list(species)
    positions = class_positions(names_or_positions, species)
    if index is None and isinstance(names_or_positions, pd.Series | pd.DataFrame):
        index = names_or_positions.index
    values = np.zeros((len(positions), len(species)), dtype=np.float64)
    values[np.arange(len(positions)), positions] = 1.0
    return pd.DataFrame(values, index=index, columns=species)


# --- reading ---------------------------------------------------------------------------------


def _read(labels, species, what: str) -> tuple[list, np.ndarray | None, np.ndarray | None]:
    """(classes, class positions or None, names or None) of labels in any accepted form."""
    if isinstance(labels, pd.DataFrame):
        return _read_frame(labels, species, what)
    if isinstance(labels, pd.Series):
        values = labels.to_numpy() if _is_numeric(labels.dtype) else labels.to_numpy(dtype=object)
        return _read_values(values, labels.index, species, what)
    labels = from_tensor(labels)
    if isinstance(labels, str) or not hasattr(labels, "__len__"):
        raise DataValidationError(
            f"{what} must be one label per image, not a single {type(labels).__name__}",
            fix=_HARD_LABELS_FIX,
        )
    values = np.asarray(labels)
    if values.ndim == 2:
        classes = list(range(values.shape[1])) if species is None else list(species)
        frame = pd.DataFrame(values) if values.dtype.kind in "biuf" else pd.DataFrame(values.astype(object))
        if frame.shape[1] != len(classes):
            raise DataValidationError(
                f"{what} are a table of {frame.shape[1]} columns, but there are {len(classes)} species",
                fix="give one-hot rows with one column per species, or one name per image",
            )
        frame.columns = classes
        return _read_frame(frame, classes, what, positional=True)
    return _read_values(values, None, species, what)


def _read_frame(frame: pd.DataFrame, species, what: str, positional: bool = False):
    """Class positions of a one-hot frame, its columns matched to ``species`` by name."""
    columns = list(frame.columns)
    classes = columns if species is None else list(species)
    if not positional:
        missing = [c for c in classes if c not in columns]
        unknown = [c for c in columns if c not in classes]
        if missing or unknown:
            raise DataValidationError(
                f"the columns of the {what} are not the species (missing: {_listed(missing)}; "
                f"unknown: {_listed(unknown)})",
                column=str((missing or unknown)[0]),
                fix="give one one-hot column per species (e.g. the train_labels frame as loaded)",
            )
        if len(set(columns)) != len(columns):
            repeated = sorted({str(c) for c in columns if columns.count(c) > 1})
            raise DataValidationError(
                f"the {what} repeat the column(s) {', '.join(repeated)}",
                column=repeated[0],
                fix="keep one column per species",
            )
    non_numeric = [c for c in classes if not _is_numeric(frame[c].dtype)]
    if non_numeric:
        raise DataValidationError(
            f"{what} columns must be numeric 0/1 values, but {non_numeric[0]!r} holds "
            f"{frame[non_numeric[0]].dtype}",
            column=str(non_numeric[0]),
            fix="pass the one-hot frame of train_labels.csv indexed by id (index_col='id'), "
            "or a Series of species names",
        )
    values = frame[classes].to_numpy(dtype=np.float64)
    faults = one_hot_faults(values)
    bad = faults.bad_rows
    if bad.size:
        soft = bool(((values[bad] > 0) & (values[bad] < 1)).any())
        fix = (
            "these rows look like probabilities or soft labels: " + _HARD_LABELS_FIX
            + " (for predictions use their most probable class, probs.idxmax(axis=1))"
            if soft
            else "correct those rows (one 1 in the image's species column, 0 elsewhere) or drop them"
        )
        raise DataValidationError(
            f"{what} are not one-hot: each row needs exactly one species (a single 1, the rest "
            "0, no NaN)",
            rows=row_names(None if positional else frame.index, bad),
            fix=fix,
        )
    return classes, values.argmax(axis=1).astype(np.int64), None


def _read_values(values: np.ndarray, ids: pd.Index | None, species, what: str):
    """Class positions (and names) of a 1-D array of species names or class numbers."""
    if values.ndim != 1:
        raise DataValidationError(
            f"{what} must be one label per image (or one-hot rows), got shape {values.shape}",
            fix=_HARD_LABELS_FIX,
        )
    missing = np.asarray(pd.isna(values), dtype=bool)
    if missing.any():
        raise DataValidationError(
            f"{what} are missing for some images",
            rows=row_names(ids, np.flatnonzero(missing)),
            fix="drop the unlabelled images or give each one a species name",
        )
    classes = None if species is None else list(species)
    if values.dtype.kind == "b":
        raise DataValidationError(
            f"{what} are booleans, not species names or class numbers",
            fix=_HARD_LABELS_FIX,
        )
    if values.dtype.kind in "iuf":
        return classes, _numbers(values, ids, classes, what), None
    names = values.astype(object)
    if classes is None:
        return None, None, np.array([str(n) for n in names], dtype=object)
    lookup = {name: i for i, name in enumerate(classes)}
    positions = np.array([lookup.get(name, -1) for name in names.tolist()], dtype=np.int64)
    bad = np.flatnonzero(positions < 0)
    if bad.size:
        unknown = sorted({str(names[i]) for i in bad})
        raise DataValidationError(
            f"{what} name classes that are not species: {', '.join(unknown[:5])}",
            rows=row_names(ids, bad),
            fix=f"use the species names {', '.join(map(str, classes))}",
        )
    return classes, positions, None


def _numbers(values: np.ndarray, ids, classes, what: str) -> np.ndarray:
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
            rows=row_names(ids, np.asarray(fractional)),
            fix=_HARD_LABELS_FIX,
        )
    numbers = values.astype(np.int64)
    bad = np.flatnonzero((numbers < 0) | (numbers >= len(classes)))
    if bad.size:
        raise DataValidationError(
            f"{what} hold class numbers outside 0..{len(classes) - 1}",
            rows=row_names(ids, bad),
            fix="give each label as a species name or a class number 0..classes-1",
        )
    return numbers


def _is_numeric(dtype) -> bool:
    """True for numbers and booleans (one-hot frames from pd.get_dummies hold booleans)."""
    return pd.api.types.is_numeric_dtype(dtype)


def row_names(ids: pd.Index | None, positions: np.ndarray) -> list:
    """Name rows by id when there are ids, else by position (for error messages)."""
    return list(ids[positions]) if ids is not None else [int(p) for p in positions]


def from_tensor(values):
    """A torch tensor as a numpy array (without importing torch here); anything else as it is."""
    return values.detach().cpu().numpy() if hasattr(values, "detach") else values


def _listed(names: list) -> str:
    """Names joined for a message, or 'none'."""
    return ", ".join(map(str, names)) if names else "none"
