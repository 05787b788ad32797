"""Checks of the figures' and widgets' inputs: each refuses a likely mistake before anything is drawn.

Every refusal is a `DataValidationError` that names the argument or the rows, and the fix.
"""

from __future__ import annotations

import pandas as pd

from conserviz_utils.errors import DataValidationError, refuse_repeated_ids
from conserviz_utils.labels import species_names
from conserviz_utils.files.tables import check_argument_order

#: Labels as the plotting functions take them: the one-hot frame or a Series of species names.
Labels = pd.DataFrame | pd.Series


def check_positive(value: int, name: str, example: int) -> None:
    """Refuse anything but a positive integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DataValidationError(
            f"{name} must be a positive integer, got {value!r}", fix=f"pass e.g. {name}={example}"
        )


def require_paths(features: pd.DataFrame, ids: pd.Index) -> None:
    """Refuse features without an absolute ``path`` for each of ``ids``."""
    if not isinstance(features, pd.DataFrame) or "path" not in features.columns:
        raise DataValidationError(
            "features have no 'path' column (absolute image paths)",
            column="path",
            fix="use the features of load_competition, which adds it from filepath and the root",
        )
    missing = pd.Index(ids).difference(features.index)
    if len(missing):
        raise DataValidationError(
            "these ids are not in the features", rows=missing, fix="pass the features of the same images"
        )


def check_probs(
    probs: pd.DataFrame, fix: str = "pass the frame returned by predict", min_columns: int = 1
) -> None:
    """Refuse anything but a non-empty frame of numbers, indexed by id, one column per species."""
    if not isinstance(probs, pd.DataFrame) or probs.empty or probs.shape[1] < min_columns:
        raise DataValidationError(
            "probabilities must be a non-empty DataFrame indexed by id with one column per species",
            fix=fix,
        )
    non_numeric = [c for c in probs.columns if not pd.api.types.is_numeric_dtype(probs[c])]
    if non_numeric:
        raise DataValidationError("probabilities must be numbers", column=str(non_numeric[0]), fix=fix)


def names_of(labels: Labels, ids: pd.Index, problem: str, fix: str) -> pd.Series:
    """The species name of each of ``ids``, in their order, refusing repeated ids and ids without a label."""
    names = species_names(labels, species=None).astype(str)
    refuse_repeated_ids(names.index, "labels", fix="keep one label per image id")
    unlabelled = ids.difference(names.index)
    if len(unlabelled):
        raise DataValidationError(problem, rows=unlabelled, fix=fix)
    return names.reindex(ids)


def true_species(labels: Labels, probs: pd.DataFrame, call: str) -> pd.Series:
    """The true species of each row of ``probs``, once labels and probabilities are checked to match."""
    check_argument_order(labels, probs, call)
    check_probs(probs)
    true = names_of(labels, probs.index, "these ids have probabilities but no label",
                    fix="evaluate on labelled images (the eval side of the split)")
    unknown = sorted(set(true) - set(probs.columns))
    if unknown:
        raise DataValidationError(
            f"labels name species that have no probability column: {unknown}",
            fix="predict with the same species list as the labels",
        )
    return true


def predicted_species(probs: pd.DataFrame) -> pd.Series:
    """The most probable species of each row."""
    names = probs.columns[probs.to_numpy().argmax(axis=1)].astype(str)
    return pd.Series(names, index=probs.index, name="predicted")
