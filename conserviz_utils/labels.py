"""One rule for labels: one-hot rows, species names or class numbers (the layout notebook 01 shows).

Labels reach conserviz in three forms, and every module reads them through this one:

- the one-hot frame of ``train_labels.csv``: one column per species (any column order), each
  row exactly one 1 and 0 elsewhere. A soft row (probabilities, label smoothing, a NaN) is
  refused, never silently argmaxed;
- species names: a Series (indexed by image id) or any 1-D sequence of names;
- class numbers: integers 0..classes-1, the column positions of ``species``.

A one-hot table without an index (an array or tensor) has its columns in ``species`` order.
The checks behind the rule (`one_hot_faults` is the rule cell by cell) live in
`conserviz_utils.files.tables`; each refusal names the rows and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from conserviz_utils import SPECIES
from conserviz_utils.files.tables import one_hot_faults, read_labels

__all__ = ["class_positions", "one_hot", "one_hot_faults", "species_names"]


def class_positions(labels, species: Sequence | None = SPECIES, *, what: str = "labels") -> np.ndarray:
    """The class number (column position in ``species``) of each label, as an int64 array.

    Args:
        labels: Any form above, or a (rows, classes) one-hot array or tensor.
        species: The classes, in column order. None takes them from the labels: a frame's
            columns, or 0..classes-1 for an array; names then need a species list.
        what: What the labels are, for error messages ("train labels", ...).
    """
    _, positions, _ = read_labels(labels, species, what)
    if positions is None:  # names without a species list cannot be numbered
        raise ValueError("class_positions needs the species list to number species names")
    return positions


def species_names(labels, species: Sequence | None = SPECIES, *, what: str = "labels") -> pd.Series:
    """The species name of each label, as a Series named ``species`` indexed like ``labels`` (else 0..N-1).

    With ``species=None`` names are taken as they are (any name goes) and a one-hot frame's
    columns are its species.
    """
    classes, positions, names = read_labels(labels, species, what)
    if names is None:
        names = np.asarray(list(classes), dtype=object)[positions]
    index = labels.index if isinstance(labels, pd.Series | pd.DataFrame) else None
    return pd.Series(names, index=index, name="species", dtype=object)


def one_hot(names_or_positions, species: Sequence = SPECIES, index=None) -> pd.DataFrame:
    """The one-hot label frame (float64 0/1, one column per species) in the layout of ``train_labels``.

    ``index`` defaults to that of the labels (a Series or frame), else 0..N-1.
    """
    species = list(species)
    positions = class_positions(names_or_positions, species)
    if index is None and isinstance(names_or_positions, pd.Series | pd.DataFrame):
        index = names_or_positions.index
    values = np.zeros((len(positions), len(species)), dtype=np.float64)
    values[np.arange(len(positions)), positions] = 1.0
    return pd.DataFrame(values, index=index, columns=species)
