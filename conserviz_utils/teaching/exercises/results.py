"""What every exercise checker shares: the verdict, and readers that turn any cell value into an answer."""

from __future__ import annotations

import functools
import html
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from conserviz_utils.labels import species_names

CORRECT, NOT_YET, NOT_ANSWERED = "correct", "not yet", "not answered yet"

_STYLE = {  # status → (symbol, colour of the box's edge)
    CORRECT: ("✓", "#2e7d32"),
    NOT_YET: ("✗", "#c62828"),
    NOT_ANSWERED: ("…", "#757575"),
}

# Learners type numbers rounded to 3 decimals; both sides of a comparison get this slack.
RELATIVE, ABSOLUTE = 2e-3, 5e-4
# The start of the message of an answer no reader foresaw (tests assert it never shows).
UNREADABLE = "the check could not read this answer"


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one exercise: its status and a one-line reason or hint."""

    exercise: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == CORRECT

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{_STYLE[self.status][0]} {self.exercise}: {self.status} — {self.message}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        symbol, colour = _STYLE[self.status]
        return (
            f'<div style="border-left: 4px solid {colour}; padding: 4px 10px; margin: 2px 0">'
            f'<b style="color: {colour}">{symbol} {html.escape(self.exercise)}: '
            f"{html.escape(self.status)}</b> — {html.escape(self.message)}</div>"
        )


def correct(exercise: str, why: str) -> CheckResult:
    return CheckResult(exercise, CORRECT, why)


def hint(exercise: str, text: str) -> CheckResult:
    return CheckResult(exercise, NOT_YET, text)


def unanswered(exercise: str, what: str) -> CheckResult:
    """The verdict while the learner's cell still holds its placeholder ``None``."""
    return CheckResult(exercise, NOT_ANSWERED, f"replace None with {what}, then run the cell again")


class Refused(Exception):
    """Raised by a reader inside a checker: the answer cannot be read, and ``result`` says why."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.message)
        self.result = result


def checker(exercise: str, what: str, placeholder: str | None = None) -> Callable:
    """Make a checker total: ``None`` (with ``placeholder``) is unanswered, and nothing raises.

    ``what`` is what the answer should be, for the hint on an answer no reader foresaw.
    """

    def wrap(check: Callable) -> Callable:
        @functools.wraps(check)
        def checked(*args, **kwargs) -> CheckResult:
            if placeholder is not None and args and args[0] is None:
                return unanswered(exercise, placeholder)
            try:
                return check(*args, **kwargs)
            except Refused as refusal:
                return refusal.result
            except Exception as error:  # the learner must see a message, never a traceback
                detail = f"{type(error).__name__}: {error}"
                detail = detail if len(detail) <= 120 else detail[:117] + "..."
                return hint(exercise, f"{UNREADABLE} ({detail}); give {what}")

        return checked

    return wrap


# --- comparing -------------------------------------------------------------------------------


def close(value: float, target: float) -> bool:
    """Equal up to the rounding a learner may have applied (3 decimals)."""
    return math.isclose(value, target, rel_tol=RELATIVE, abs_tol=ABSOLUTE)


def same(values: np.ndarray, target: np.ndarray, tolerance: float) -> bool:
    """Same shape and every value within ``tolerance``."""
    return values.shape == target.shape and bool(np.allclose(values, target, atol=tolerance, rtol=0))


def rounded_as_displayed(values: np.ndarray, target: np.ndarray, decimals=(2, 3)) -> bool:
    """True when ``values`` are ``target`` rounded to 2 or 3 decimals, as a notebook shows them.

    Only values on the rounding grid count, so one merely near the right one (another formula) is told apart.
    """
    if values.shape != target.shape or not np.isfinite(values).all():
        return False
    for k in decimals:
        scaled = values * 10**k
        on_grid = np.allclose(scaled, np.round(scaled), atol=1e-4, rtol=0)  # float32 answers too
        if on_grid and np.allclose(values, target, atol=0.5 * 10.0**-k + 1e-9, rtol=0):
            return True
    return False


# --- reading answers -------------------------------------------------------------------------


def as_array(values) -> np.ndarray | None:
    """The values as a float64 array (any shape), or None when they are not all numbers."""
    if values is None or isinstance(values, str | bytes | Mapping | set | frozenset):
        return None
    if hasattr(values, "detach"):  # a torch tensor, bf16 and on a GPU too
        try:
            values = values.detach().cpu().double().numpy()
        except (TypeError, RuntimeError):
            return None
    if isinstance(values, pd.DataFrame):
        if not all(pd.api.types.is_numeric_dtype(values[c]) for c in values.columns):
            return None
        values = values.to_numpy()
    try:
        array = np.asarray(values)
        if array.dtype.kind == "O":  # huge ints, Decimals, or a ragged mix
            array = array.astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    return array.astype(np.float64) if array.dtype.kind in "biuf" else None


def as_number(answer) -> float | None:
    """The answer as one float (a huge int becomes ±inf), or None when it is not one number."""
    if answer is None or isinstance(answer, bool | np.bool_ | str | bytes):
        return None
    if isinstance(answer, numbers.Real):
        try:
            return float(answer)
        except OverflowError:  # 10**400
            return math.inf if answer > 0 else -math.inf
    array = as_array(answer)
    return float(array.reshape(())) if array is not None and array.size == 1 else None


def kind_of(answer) -> str:
    """A few words on what the answer is, for a hint: "a str", "a list of 3 values", ..."""
    kind = type(answer).__name__
    size = getattr(answer, "shape", None)
    if size is not None and len(size):
        return f"a {kind} of shape {tuple(size)}"
    if isinstance(answer, list | tuple | set | frozenset | dict):
        return f"a {kind} of {len(answer)} value(s)"
    return f"a {kind}"


def not_a_number(exercise: str, answer, what: str) -> CheckResult:
    """The hint for an answer that is not one number, aimed at what it is instead."""
    if isinstance(answer, str):
        try:
            float(answer.replace(",", ""))
        except ValueError:
            return hint(exercise, f"give {what} as a number, not text ({answer[:30]!r})")
        return hint(exercise, f"you gave text ({answer[:30]!r}); give {what} as one number, without quotes")
    if isinstance(answer, bool | np.bool_):
        return hint(exercise, f"that is True/False; give {what} as a number")
    array = as_array(answer)
    if array is not None and array.size == 0:
        return hint(exercise, f"that is empty ({kind_of(answer)}); give {what} as one number")
    if array is not None:
        return hint(exercise, f"that holds {array.size} numbers ({kind_of(answer)}); give {what} "
                              "as one number, e.g. float(...) of your result")
    return hint(exercise, f"give {what} as one number (got {kind_of(answer)}); e.g. float(...) of your result")


def read_number(exercise: str, answer, what: str, finite: bool = True) -> float:
    """The answer as one float, finite unless ``finite`` is False; else `Refused` with the hint."""
    value = as_number(answer)
    if value is None:
        raise Refused(not_a_number(exercise, answer, what))
    if finite and math.isnan(value):
        raise Refused(hint(exercise, f"your {what} is NaN (not a number): look for a 0 / 0 or the log "
                                     "of a negative number on the way"))
    if finite and math.isinf(value):
        raise Refused(hint(exercise, f"your {what} is infinite: look for the log of 0 or a division by 0 on the way"))
    return value


def as_name(answer) -> str | None:
    """The answer as one stripped name, or None when it is not a string."""
    return str(answer).strip() if isinstance(answer, str | np.str_) else None


def not_a_name(exercise: str, answer, what: str) -> CheckResult:
    """The hint for an answer that should be one name (a string) and is not."""
    if isinstance(answer, pd.Series | pd.DataFrame):
        return hint(exercise, f"that is a whole table ({len(answer)} rows); give {what}, one name (a string)")
    if isinstance(answer, list | tuple | set | frozenset) or getattr(answer, "ndim", 0) == 1:
        items = list(answer)
        if len(items) == 1 and isinstance(items[0], str):
            return hint(exercise, f"that is {kind_of(answer)} holding {items[0]!r}; give the name itself, a string")
    return hint(exercise, f"give {what} as one name, a string (got {kind_of(answer)})")


def read_ids(values, known: pd.Index) -> tuple[pd.Index | None, str | None]:
    """(an id collection as an Index, None) or (None, what is wrong with it).

    Frames and Series count by their index (a Series by its values when those are the ids).
    """
    if values is None:
        return None, "is None"
    if isinstance(values, str | bytes | numbers.Number | Mapping):
        return None, f"is {kind_of(values)}, not a collection of ids"
    if isinstance(values, pd.DataFrame | pd.Series):
        if isinstance(values, pd.Series) and pd.api.types.is_bool_dtype(values):
            return None, "is a True/False mask"
        index = pd.Index(values.index)
        if isinstance(values, pd.Series) and not index.isin(known).all():
            as_values = pd.Index(values.to_numpy())
            if len(as_values) and as_values.isin(known).all():
                return as_values, None
        if isinstance(values, pd.DataFrame) and "id" in values.columns and not index.isin(known).all():
            return pd.Index(values["id"]), None
        return index, None
    if hasattr(values, "detach"):
        return None, "is a tensor; image ids are strings"
    if isinstance(values, np.ndarray) and values.ndim != 1:
        return None, f"is {kind_of(values)}, not one list of ids"
    if isinstance(values, Iterator):  # the next exercise would find it empty
        return None, f"is {kind_of(values)}, read only once; wrap it in list(...)"
    try:
        items = list(values)
    except TypeError:
        return None, f"is {kind_of(values)}, not a collection of ids"
    if items and all(isinstance(v, bool | np.bool_) for v in items):
        return None, "is a True/False mask"
    if not all(isinstance(v, str | numbers.Number) for v in items):
        return None, f"is {kind_of(values)} whose items are not ids"
    # As Python values: pandas has no Index of some numpy types (float16).
    return pd.Index([v.item() if isinstance(v, np.generic) else v for v in items]), None


def read_split(split, known: pd.Index) -> tuple[tuple[pd.Index, pd.Index] | None, str | None]:
    """((train_ids, eval_ids), None), or (None, what is wrong with the pair)."""
    if split is None:
        return None, "is None"
    not_a_pair = f"is {kind_of(split)}, not a pair (train_ids, eval_ids)"
    if isinstance(split, str | bytes | Mapping | set | frozenset | pd.DataFrame | pd.Series) or not hasattr(
        split, "__len__"
    ) or hasattr(split, "detach"):
        return None, not_a_pair
    if isinstance(split, np.ndarray) and (split.ndim == 0 or split.shape[0] != 2):
        return None, not_a_pair
    if len(split) != 2:
        return None, f"holds {len(split)} items; a split is a pair (train_ids, eval_ids)"
    sides = []
    for side, values in zip(("train", "eval"), split, strict=True):
        ids, problem = read_ids(values, known)
        if problem is not None:
            return None, f"has a {side} side that {problem}"
        sides.append(ids)
    return (sides[0], sides[1]), None


# --- the data the checkers compute answers from ---------------------------------------------


def species_of(labels) -> pd.Series:
    """Species name of each labelled image, indexed by id (the labels module's one rule)."""
    return species_names(labels, species=None)


def species_order(species: pd.Series, labels=None) -> list[str]:
    """The species to compare shares over: the label columns when known, else those present."""
    if isinstance(labels, pd.DataFrame):
        return [str(c) for c in labels.columns]
    return sorted(species.unique())


def busiest_sites(features: pd.DataFrame) -> tuple[list[str], pd.Series]:
    """(the sites with the most images, sorted; the image count of every site)."""
    counts = features["site"].astype(str).value_counts()
    return sorted(counts.index[counts == counts.max()]), counts
