"""Submissions (notebook 06): probabilities in the exact layout of submission_format, checked.

The competition scores one row per test id and one probability column per species, both in the
order of ``submission_format.csv``. A missing id, a swapped column or a row that does not sum
to 1 fails the upload (or scores the wrong rows), so `write_submission` writes nothing that
`validate_submission` refuses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from conserviz_utils.errors import SubmissionError, refuse_repeated_ids
from conserviz_utils.files.fileio import atomic_writer

#: How far a row's probabilities may sum from 1.
ROW_SUM_TOLERANCE = 1e-6

_FIX_WITH_MAKE = "build it with make_submission(probs, submission_format)"


def make_submission(probs: pd.DataFrame, submission_format: pd.DataFrame) -> pd.DataFrame:
    """Lay out ``probs`` (id × species, any order) as a float64 frame in submission_format's order.

    Every test id must be predicted exactly once: missing, extra or repeated ids are refused,
    never filled in or dropped.
    """
    _require_frame(probs, "probs")
    _check_format(submission_format)
    _check_columns(probs, submission_format, allow_reordered=True)
    _check_ids(probs, submission_format)
    _check_numeric(probs)
    columns = list(submission_format.columns)
    submission = probs.loc[submission_format.index, columns].astype("float64")
    submission.index = submission_format.index.copy()
    return submission


def validate_submission(df: pd.DataFrame, submission_format: pd.DataFrame) -> None:
    """Raise `SubmissionError` unless ``df`` is a submission the competition will accept.

    Checks, in order: the index name, the columns and their order, the ids, the row order,
    numbers, NaN or infinity, values outside [0, 1], and rows not summing to 1.
    """
    _require_frame(df, "the submission")
    _check_format(submission_format)
    expected_name = submission_format.index.name or "id"
    if df.index.name != expected_name:
        fix = (
            f"df = df.set_index({expected_name!r})"
            if expected_name in df.columns
            else f"df.index.name = {expected_name!r} (the index must hold the test ids)"
        )
        raise SubmissionError(f"the index is named {df.index.name!r}, expected {expected_name!r}", fix=fix)
    _check_columns(df, submission_format, allow_reordered=False)
    _check_ids(df, submission_format)
    if not df.index.equals(submission_format.index):
        out_of_place = df.index[df.index.to_numpy() != submission_format.index.to_numpy()]
        raise SubmissionError(
            "rows are not in the order of submission_format",
            rows=out_of_place,
            fix=f"df = df.reindex(submission_format.index), or {_FIX_WITH_MAKE}",
        )
    _check_numeric(df)
    values = df.to_numpy(dtype="float64")
    _check_values(df, ~np.isfinite(values), "NaN or infinite probabilities",
                  "predict every test image; a NaN usually means the model diverged")
    _check_values(df, (values < 0) | (values > 1), "probabilities outside [0, 1]",
                  "pass softmax probabilities, not logits (predict returns probabilities)")
    off = np.abs(values.sum(axis=1) - 1.0) > ROW_SUM_TOLERANCE
    if off.any():
        raise SubmissionError(
            f"rows do not sum to 1 (within {ROW_SUM_TOLERANCE:g})",
            rows=df.index[off],
            fix="normalise each row (df.div(df.sum(axis=1), axis=0)) or pass softmax outputs",
        )


def write_submission(df: pd.DataFrame, path: str | Path, submission_format: pd.DataFrame) -> Path:
    """Validate ``df`` and write it atomically as a CSV the competition accepts; returns the path.

    An invalid ``df`` (`SubmissionError`) or a failed write (`ConservizError`: full disk,
    read-only folder) leaves nothing half-written, and a previous file at ``path`` as it was.
    """
    validate_submission(df, submission_format)
    path = Path(path)
    with atomic_writer(path, "w", what="submission") as handle:
        df.to_csv(handle, lineterminator="\n")
    return path


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read a submission CSV into a frame indexed by id (to validate or compare it)."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(
            "submission file not found", path=path, fix="write it with write_submission first"
        )
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", dtype={"id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SubmissionError(
            f"not a readable CSV ({exc})", path=path, fix="write it again with write_submission"
        ) from None
    if "id" not in df.columns:
        raise SubmissionError(
            "no 'id' column", path=path, column="id", fix="the first column must hold the test ids"
        )
    return df.set_index("id")


def _require_frame(obj: object, what: str) -> None:
    if not isinstance(obj, pd.DataFrame):
        raise SubmissionError(
            f"{what} must be a pandas DataFrame indexed by id, not {type(obj).__name__}",
            fix="pass the frame returned by predict, or read the CSV with index_col='id'",
        )


def _check_format(submission_format: pd.DataFrame) -> None:
    _require_frame(submission_format, "submission_format")
    if "id" in submission_format.columns:
        raise SubmissionError(
            "submission_format holds the ids as a column, not as its index",
            column="id",
            fix="read it with pd.read_csv(path, index_col='id'), or use data.submission_format",
        )


def _check_numeric(df: pd.DataFrame) -> None:
    for column in df.columns:
        dtype = df[column].dtype
        if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            raise SubmissionError(
                f"values must be numbers, found dtype {dtype}",
                column=str(column),
                fix="store probabilities as floats",
            )


def _check_columns(df: pd.DataFrame, submission_format: pd.DataFrame, *, allow_reordered: bool) -> None:
    """Refuse missing, extra or repeated species columns (and reordered ones unless allowed)."""
    expected, found = list(submission_format.columns), list(df.columns)
    for absent, problem, fix in [
        ([c for c in expected if c not in found], "missing species column(s)",
         f"give one probability column per species: {expected}"),
        ([c for c in found if c not in expected], "unexpected column(s)",
         f"keep only the species columns {expected}"),
    ]:
        if absent:
            raise SubmissionError(f"{problem} {absent}", column=str(absent[0]), fix=fix)
    if len(found) != len(set(found)):
        repeated = sorted({c for c in found if found.count(c) > 1})
        raise SubmissionError(
            f"repeated column(s) {repeated}", column=str(repeated[0]), fix="keep each species once"
        )
    if not allow_reordered and found != expected:
        first = next(f for f, e in zip(found, expected, strict=True) if f != e)
        raise SubmissionError(
            f"columns are in the wrong order: {found}, expected {expected}",
            column=str(first),
            fix=f"df = df[submission_format.columns], or {_FIX_WITH_MAKE}",
        )


def _check_ids(df: pd.DataFrame, submission_format: pd.DataFrame) -> None:
    refuse_repeated_ids(df.index, "the submission", fix="keep one row per test id", error=SubmissionError)
    for ids, listed, problem, fix in [
        (submission_format.index, df.index, "test ids without a prediction",
         "predict on every test image (data.test_features) with on_error='raise'"),
        (df.index, submission_format.index, "rows whose ids are not in submission_format",
         "predict on the test images only (train or eval ids do not belong here)"),
    ]:
        absent = ids.difference(listed, sort=False)
        if len(absent):
            raise SubmissionError(problem, rows=absent, fix=fix)


def _check_values(df: pd.DataFrame, bad: np.ndarray, problem: str, fix: str) -> None:
    """Raise naming the first bad column and every bad row, if ``bad`` marks any cell."""
    if bad.any():
        raise SubmissionError(
            problem, column=str(df.columns[bad.any(axis=0)][0]), rows=df.index[bad.any(axis=1)], fix=fix
        )
