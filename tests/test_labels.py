"""The one label rule: one-hot rows of exact 0/1, species names or class numbers; one clear error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conserviz_utils import SPECIES, DataValidationError
from conserviz_utils.labels import (
    class_positions,
    one_hot,
    one_hot_faults,
    species_names,
)

NAMES = ["bird", "hog", "rodent", "bird"]
POSITIONS = [SPECIES.index(name) for name in NAMES]


@pytest.fixture
def ids() -> pd.Index:
    return pd.Index([f"ZJ{i:06d}" for i in range(len(NAMES))], name="id")


def every_form(ids: pd.Index) -> dict:
    """The same four labels in every form the rule accepts."""
    frame = one_hot(pd.Series(NAMES, index=ids))
    torch = pytest.importorskip("torch")
    return {
        "one-hot frame": frame,
        "one-hot frame, reversed columns": frame[list(SPECIES[::-1])],
        "one-hot frame of booleans": frame.astype(bool),
        "one-hot frame of integers": frame.astype(int),
        "one-hot array": frame.to_numpy(),
        "one-hot tensor": torch.tensor(frame.to_numpy(), dtype=torch.float32),
        "Series of names": pd.Series(NAMES, index=ids),
        "categorical Series": pd.Series(NAMES, index=ids, dtype="category"),
        "list of names": list(NAMES),
        "array of names": np.array(NAMES),
        "class numbers": np.array(POSITIONS),
        "class numbers as floats": np.array(POSITIONS, dtype=float),
        "Series of class numbers": pd.Series(POSITIONS, index=ids),
        "tensor of class numbers": torch.tensor(POSITIONS),
    }


def test_every_accepted_form_gives_the_same_positions_and_names(ids):
    for form, labels in every_form(ids).items():
        positions = class_positions(labels)
        assert positions.dtype == np.int64, form
        assert positions.tolist() == POSITIONS, form
        names = species_names(labels)
        assert names.tolist() == NAMES, form
        assert names.name == "species", form
        if isinstance(labels, pd.Series | pd.DataFrame):
            assert names.index.equals(ids), form
        else:
            assert names.index.equals(pd.RangeIndex(len(NAMES))), form


def test_one_hot_builds_the_train_labels_layout(ids):
    frame = one_hot(pd.Series(NAMES, index=ids))
    assert list(frame.columns) == list(SPECIES)
    assert frame.index.equals(ids)
    assert (frame.dtypes == "float64").all()
    assert frame.sum(axis=1).tolist() == [1.0] * len(NAMES)
    assert frame.idxmax(axis=1).tolist() == NAMES
    from_numbers = one_hot(POSITIONS, index=ids)
    pd.testing.assert_frame_equal(from_numbers, frame)
    assert one_hot(NAMES).index.equals(pd.RangeIndex(len(NAMES)))


def test_a_species_list_of_its_own(ids):
    species = ["cat", "dog"]
    frame = pd.DataFrame({"dog": [1.0, 0.0], "cat": [0.0, 1.0]}, index=ids[:2])
    assert class_positions(frame, species).tolist() == [1, 0]
    assert species_names([1, 0], species).tolist() == ["dog", "cat"]
    # species=None: a frame's columns are its species, and names are taken as they are.
    assert species_names(frame, species=None).tolist() == ["dog", "cat"]
    assert species_names(pd.Series(["zebra", "okapi"]), species=None).tolist() == ["zebra", "okapi"]
    assert class_positions(np.eye(3)[[2, 0]], species=None).tolist() == [2, 0]
    with pytest.raises(DataValidationError, match="need the species list"):
        species_names([0, 1], species=None)


@pytest.mark.parametrize(
    ("row", "soft"),
    [
        ([0.0] * 8, False),
        ([1.0, 1.0] + [0.0] * 6, False),
        ([np.nan] + [0.0] * 7, False),
        ([0.9, 0.1] + [0.0] * 6, True),
        ([0.125] * 8, True),
        ([2.0] + [0.0] * 7, False),
        ([1.0, -1.0] + [0.0] * 6, False),
    ],
    ids=["no species", "two species", "NaN", "soft", "uniform", "a 2", "a -1"],
)
def test_rows_that_are_not_one_hot_are_refused_by_id(row, soft):
    index = pd.Index(["ok", "bad"], name="id")
    labels = pd.DataFrame([[1.0] + [0.0] * 7, row], columns=list(SPECIES), index=index)
    for read in (class_positions, species_names):
        with pytest.raises(DataValidationError, match="not one-hot: each row needs exactly one species") as err:
            read(labels)
        assert err.value.rows == ["bad"]
        assert ("probabilities or soft labels" in err.value.fix) == soft
    # Without an index the row is named by its position.
    with pytest.raises(DataValidationError, match="not one-hot") as err:
        class_positions(labels.to_numpy())
    assert err.value.rows == [1]


def test_probabilities_are_not_silently_argmaxed():
    rng = np.random.default_rng(0)
    probs = pd.DataFrame(rng.dirichlet(np.ones(8), size=5), columns=list(SPECIES))
    with pytest.raises(DataValidationError, match="not one-hot") as err:
        class_positions(probs)
    assert err.value.rows == [0, 1, 2, 3, 4]
    assert "idxmax" in err.value.fix


def test_names_numbers_and_missing_values_are_checked(ids):
    cases = [
        (pd.Series(["bird", "zebra", "hog", "zebra"], index=ids), "not species: zebra", ["ZJ000001", "ZJ000003"]),
        (pd.Series(["bird", None, "hog", "bird"], index=ids), "missing", ["ZJ000001"]),
        (pd.Series([1.0, np.nan, 2.0, 3.0], index=ids), "missing", ["ZJ000001"]),
        (np.array([0, 8, -1, 2]), r"outside 0\.\.7", [1, 2]),
        (np.array([0.0, 1.5, 2.0, 3.0]), "not whole class numbers", [1]),
    ]
    for labels, match, rows in cases:
        with pytest.raises(DataValidationError, match=match) as err:
            class_positions(labels)
        assert err.value.rows == rows, match
        assert err.value.fix


def test_layout_mistakes_get_a_clear_error(ids):
    frame = one_hot(pd.Series(NAMES, index=ids))
    with pytest.raises(DataValidationError, match="missing: hog") as err:
        class_positions(frame.drop(columns="hog"))
    assert err.value.column == "hog"
    with pytest.raises(DataValidationError, match="unknown: zebra"):
        class_positions(frame.assign(zebra=0.0))
    with pytest.raises(DataValidationError, match="numeric"):
        class_positions(frame.assign(bird="yes"))
    with pytest.raises(DataValidationError, match="3 columns, but there are 8 species"):
        class_positions(np.eye(3))
    with pytest.raises(DataValidationError, match="one label per image"):
        class_positions(np.zeros((2, 2, 2)))
    with pytest.raises(DataValidationError, match="single str"):
        class_positions("bird")
    with pytest.raises(DataValidationError, match="booleans"):
        class_positions(np.array([True, False]))
    with pytest.raises(DataValidationError, match="labels") as err:
        class_positions(frame.drop(columns="hog"), what="train labels")
    assert "columns of the train labels" in str(err.value)


def test_the_callers_labels_are_left_alone(ids):
    frame = one_hot(pd.Series(NAMES, index=ids))
    before = frame.copy()
    species_names(frame[list(SPECIES[::-1])])
    class_positions(frame)
    pd.testing.assert_frame_equal(frame, before)
    assert frame.index.name == "id"


def test_one_hot_faults_is_the_rule_cell_by_cell():
    values = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.0, 0.5, 0.0],
            [np.nan, 1.0, 0.0],
            [1.0, 1.0, 0.0],
            [0.0, 0.0, 0.0],
        ]
    )
    faults = one_hot_faults(values)
    assert faults.missing.tolist() == np.isnan(values).tolist()
    assert np.flatnonzero(faults.not_binary.ravel()).tolist() == [4]  # the 0.5, not the NaN
    assert faults.ones.tolist() == [1, 0, 1, 2, 0]
    assert faults.bad_rows.tolist() == [1, 2, 3, 4]
    assert one_hot_faults(np.eye(4)).bad_rows.size == 0
    with pytest.raises(ValueError, match="rows, classes"):
        one_hot_faults(np.ones(3))


def test_empty_labels_give_empty_results():
    assert class_positions([]).tolist() == []
    assert species_names(np.zeros((0, 8))).empty
    assert one_hot([]).shape == (0, 8)
