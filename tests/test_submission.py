"""Submissions: exact layout of submission_format, every defect caught, nothing invalid written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conserviz_utils import SPECIES, ConservizError, SubmissionError
from conserviz_utils.submission import (
    make_submission,
    read_submission,
    validate_submission,
    write_submission,
)

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def random_probabilities(ids: list[str], seed: int) -> pd.DataFrame:
    """A valid probability frame for ``ids`` (Dirichlet rows), indexed by ``id``."""
    rng = np.random.default_rng(seed)
    values = rng.dirichlet(np.ones(len(SPECIES)), size=len(ids))
    return pd.DataFrame(values, index=pd.Index(ids, name="id"), columns=list(SPECIES))


def competition_test_ids(n: int) -> list[str]:
    """The first ``n`` ids of the competition's test range."""
    return [f"ZJ{16488 + k:06d}" for k in range(n)]


@pytest.fixture
def submission_format() -> pd.DataFrame:
    return random_probabilities(competition_test_ids(20), seed=0)


@pytest.fixture
def probs(submission_format) -> pd.DataFrame:
    return random_probabilities(list(submission_format.index), seed=1)


# --- make_submission ------------------------------------------------------------------------


def test_make_submission_reorders_rows_and_columns_to_the_format(submission_format, probs):
    shuffled = probs.sample(frac=1.0, random_state=0)[list(reversed(SPECIES))].astype("float32")
    shuffled.index.name = "image_id"
    submission = make_submission(shuffled, submission_format)
    assert submission.index.equals(submission_format.index)
    assert submission.index.name == "id"
    assert list(submission.columns) == list(SPECIES)
    assert (submission.dtypes == "float64").all()
    np.testing.assert_allclose(submission.to_numpy(), probs.to_numpy(), rtol=1e-6)
    validate_submission(submission, submission_format)


def test_make_submission_names_the_missing_test_ids(submission_format, probs):
    with pytest.raises(SubmissionError, match="without a prediction") as err:
        make_submission(probs.drop(index=["ZJ016490", "ZJ016499"]), submission_format)
    assert err.value.rows == ["ZJ016490", "ZJ016499"]
    assert "Fix:" in str(err.value)


def test_make_submission_refuses_extra_ids_instead_of_dropping_them(submission_format, probs):
    extra = random_probabilities(["ZJ000001"], seed=2)
    with pytest.raises(SubmissionError, match="not in submission_format") as err:
        make_submission(pd.concat([probs, extra]), submission_format)
    assert err.value.rows == ["ZJ000001"]


def test_make_submission_refuses_repeated_ids(submission_format, probs):
    with pytest.raises(SubmissionError, match="more than once") as err:
        make_submission(pd.concat([probs, probs.iloc[[3]]]), submission_format)
    assert err.value.rows == [probs.index[3]]


def test_make_submission_refuses_missing_and_extra_columns(submission_format, probs):
    with pytest.raises(SubmissionError, match="missing species") as err:
        make_submission(probs.drop(columns="hog"), submission_format)
    assert err.value.column == "hog"
    with pytest.raises(SubmissionError, match="unexpected column") as err:
        make_submission(probs.assign(site="S0001"), submission_format)
    assert err.value.column == "site"


def test_make_submission_refuses_what_is_not_a_frame_of_numbers(submission_format, probs):
    with pytest.raises(SubmissionError, match="DataFrame"):
        make_submission(probs.to_numpy(), submission_format)
    with pytest.raises(SubmissionError, match="must be numbers") as err:
        make_submission(probs.astype({"bird": str}), submission_format)
    assert err.value.column == "bird"


def test_a_format_read_without_its_index_is_explained(submission_format, probs):
    with pytest.raises(SubmissionError, match="ids as a column") as err:
        make_submission(probs, submission_format.reset_index())
    assert "index_col='id'" in str(err.value)


# --- validate_submission ----------------------------------------------------------------------


def test_a_valid_submission_passes(submission_format, probs):
    validate_submission(make_submission(probs, submission_format), submission_format)


def _broken_submissions() -> dict:
    """Each defect: (how to break a valid submission, what the error must say)."""

    def set_cell(value):
        def apply(df):
            df = df.copy()
            df.iloc[4, 2] = value
            return df

        return apply

    def negative(df):
        # Moves probability between two cells so the row still sums to 1: only the range is wrong.
        df = df.copy()
        row = df.iloc[4].to_numpy(copy=True)
        row[3] += row[2] + 0.1
        row[2] = -0.1
        df.iloc[4] = row
        return df

    return {
        "dropped row": (lambda df: df.drop(index=df.index[4]), "without a prediction"),
        "extra row": (
            lambda df: pd.concat([df, df.iloc[[0]].rename(index={df.index[0]: "ZJ999999"})]),
            "not in submission_format",
        ),
        "duplicated row": (lambda df: pd.concat([df, df.iloc[[4]]]), "more than once"),
        "reordered rows": (lambda df: df.iloc[::-1], "not in the order"),
        "swapped columns": (
            lambda df: df[["bird", "antelope_duiker", *SPECIES[2:]]], "wrong order"
        ),
        "renamed column": (lambda df: df.rename(columns={"hog": "pig"}), "missing species"),
        "extra column": (lambda df: df.assign(site="S1"), "unexpected column"),
        "index named differently": (lambda df: df.rename_axis("image_id"), "index is named"),
        "ids as a column": (lambda df: df.reset_index(), "index is named"),
        "NaN": (set_cell(np.nan), "NaN or infinite"),
        "infinity": (set_cell(np.inf), "NaN or infinite"),
        "negative": (negative, "outside \\[0, 1\\]"),
        "above one": (set_cell(1.5), "outside \\[0, 1\\]"),
        "row sum off": (
            lambda df: df.mul(np.where(np.arange(len(df)) == 4, 1.01, 1.0), axis=0), "sum to 1"
        ),
        "text values": (lambda df: df.astype({"hog": str}), "must be numbers"),
    }


BROKEN_SUBMISSIONS = _broken_submissions()


@pytest.mark.parametrize("defect", list(BROKEN_SUBMISSIONS))
def test_every_defect_is_caught_with_a_fix(submission_format, probs, defect):
    breaks, message = BROKEN_SUBMISSIONS[defect]
    broken = breaks(make_submission(probs, submission_format))
    with pytest.raises(SubmissionError, match=message) as err:
        validate_submission(broken, submission_format)
    assert "Fix:" in str(err.value)


def test_value_errors_name_the_row_and_column(submission_format, probs):
    submission = make_submission(probs, submission_format)
    submission.loc["ZJ016495", "leopard"] = np.nan
    with pytest.raises(SubmissionError) as err:
        validate_submission(submission, submission_format)
    assert err.value.rows == ["ZJ016495"] and err.value.column == "leopard"


def test_rows_within_the_tolerance_pass(submission_format, probs):
    submission = make_submission(probs, submission_format)
    submission.iloc[0] *= 1 + 5e-7
    validate_submission(submission, submission_format)


# --- write_submission / read_submission -------------------------------------------------------


def test_written_submission_reads_back_exactly(submission_format, probs, tmp_path):
    submission = make_submission(probs, submission_format)
    path = write_submission(submission, tmp_path / "out" / "submission.csv", submission_format)
    assert path == tmp_path / "out" / "submission.csv"
    assert path.read_text().splitlines()[0] == "id," + ",".join(SPECIES)
    back = read_submission(path)
    pd.testing.assert_frame_equal(back, submission, check_exact=True, check_index_type=False)
    validate_submission(back, submission_format)
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]


def test_an_invalid_submission_is_never_written(submission_format, probs, tmp_path):
    path = tmp_path / "submission.csv"
    broken = make_submission(probs, submission_format).iloc[:-1]
    with pytest.raises(SubmissionError):
        write_submission(broken, path, submission_format)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_keeps_the_previous_submission(
    submission_format, probs, tmp_path, monkeypatch
):
    submission = make_submission(probs, submission_format)
    path = write_submission(submission, tmp_path / "submission.csv", submission_format)
    before = path.read_bytes()

    def write_half_then_fail(self, handle, **kwargs):
        handle.write("id,antelope_duiker\nZJ016488,0.")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", write_half_then_fail)
    newer = random_probabilities(list(submission_format.index), seed=5)
    with pytest.raises(ConservizError, match="No space left") as caught:
        write_submission(newer, path, submission_format)
    assert caught.value.path == path and "disk space" in caught.value.fix
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_read_submission_explains_a_missing_file_or_id_column(tmp_path):
    with pytest.raises(SubmissionError, match="not found"):
        read_submission(tmp_path / "nothing.csv")
    (tmp_path / "no_id.csv").write_text("image,bird\nZJ1,1.0\n")
    with pytest.raises(SubmissionError, match="no 'id' column") as err:
        read_submission(tmp_path / "no_id.csv")
    assert err.value.path == tmp_path / "no_id.csv"


def test_the_real_submission_format_is_a_valid_submission_of_itself(shared_dir, tmp_path):
    csv = shared_dir / "reference" / "conservision_csvs" / "submission_format.csv"
    submission_format = pd.read_csv(csv, index_col="id")
    shuffled = submission_format.sample(frac=1.0, random_state=0)
    submission = make_submission(shuffled, submission_format)
    validate_submission(submission, submission_format)
    back = read_submission(write_submission(submission, tmp_path / "s.csv", submission_format))
    pd.testing.assert_frame_equal(back, submission_format, check_exact=True, check_index_type=False)


# --- properties ---------------------------------------------------------------------------------

frames = st.builds(
    lambda n, seed: random_probabilities(competition_test_ids(n), seed),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=0, max_value=2**32 - 1),
)


@PROPERTY_SETTINGS
@given(submission_format=frames, data=st.data())
def test_any_permutation_comes_out_in_format_order(submission_format, data):
    n = len(submission_format)
    rows = data.draw(st.permutations(range(n)), label="row order")
    columns = data.draw(st.permutations(list(SPECIES)), label="column order")
    probs = random_probabilities(list(submission_format.index), seed=n).iloc[rows][columns]
    submission = make_submission(probs, submission_format)
    assert submission.index.equals(submission_format.index)
    assert list(submission.columns) == list(SPECIES)
    for image_id in submission.index:  # every value stays with its id and species
        assert submission.loc[image_id].equals(probs.loc[image_id, list(SPECIES)])


@PROPERTY_SETTINGS
@given(submission_format=frames, seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_random_valid_submissions_always_pass(submission_format, seed):
    probs = random_probabilities(list(submission_format.index), seed)
    validate_submission(make_submission(probs, submission_format), submission_format)


# Each injected defect breaks one rule only, so the check of that rule must be the one that fires.
DEFECTS = {
    "drop row": "without a prediction",
    "duplicate row": "more than once",
    "extra row": "not in submission_format",
    "swap columns": "wrong order",
    "NaN": "NaN or infinite",
    "negative": "outside \\[0, 1\\]",
    "above one": "outside \\[0, 1\\]",
    "row sum off": "do not sum to 1",
}


@PROPERTY_SETTINGS
@given(submission_format=frames, defect=st.sampled_from(list(DEFECTS)), data=st.data())
def test_injected_defects_are_always_caught(submission_format, defect, data, tmp_path):
    n = len(submission_format)
    probs = random_probabilities(list(submission_format.index), seed=n + 1)
    df = make_submission(probs, submission_format)
    row = data.draw(st.integers(min_value=0, max_value=n - 1), label="row")
    col = data.draw(st.integers(min_value=0, max_value=len(SPECIES) - 1), label="column")
    shift = data.draw(st.integers(min_value=1, max_value=len(SPECIES) - 1), label="shift")
    other = (col + shift) % len(SPECIES)  # another column than col
    size = data.draw(st.floats(min_value=1e-5, max_value=10.0), label="size")
    values = df.to_numpy(copy=True)
    if defect == "drop row":
        df = df.drop(index=df.index[row])
    elif defect == "duplicate row":
        df = pd.concat([df, df.iloc[[row]]])
    elif defect == "extra row":
        df = pd.concat([df, df.iloc[[row]].rename(index={df.index[row]: "ZJ999999"})])
    elif defect == "swap columns":
        names = list(SPECIES)
        names[col], names[other] = names[other], names[col]
        df = df[names]
    else:
        if defect == "NaN":
            values[row, col] = np.nan
        elif defect == "negative":  # the row still sums to 1: only the range is wrong
            values[row, other] += values[row, col] + size
            values[row, col] = -size
        elif defect == "above one":
            values[row, other] -= 1 + size - values[row, col]
            values[row, col] = 1 + size
        elif defect == "row sum off":  # shrinking the row keeps every value inside [0, 1]
            values[row] *= data.draw(st.floats(min_value=0.0, max_value=1 - 1e-5), label="factor")
        df = pd.DataFrame(values, index=df.index, columns=df.columns)
    with pytest.raises(SubmissionError, match=DEFECTS[defect]):
        validate_submission(df, submission_format)
    target = tmp_path / f"{defect}.csv"
    with pytest.raises(SubmissionError, match=DEFECTS[defect]):
        write_submission(df, target, submission_format)
    assert not target.exists()
