"""The errors conserviz raises on purpose: each names the file, the rows and the fix."""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from pathlib import Path


def _preview(rows: Iterable, limit: int = 5) -> str:
    """Format the first few offending rows (ids or line numbers) and how many there are."""
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" … and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"{len(rows)} row(s): {shown}{more}"


class ConservizError(Exception):
    """Base class of every error conserviz raises for a problem the user can fix.

    The message reads ``<file>: <problem> [column ...] [rows ...]. Fix: <fix>``; the parts stay attributes.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | Path | None = None,
        column: str | None = None,
        rows: Iterable | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = Path(path) if path is not None else None
        self.column = column
        self.rows = list(rows) if rows is not None else []
        self.fix = fix
        #: The fix as another reader needs it, e.g. ``{"cli": "pass --folds 3"}`` (see :meth:`render`).
        self.reader_fixes: dict[str, str] = {}
        super().__init__(self.render())

    def render(self, reader: str = "notebook") -> str:
        """The message for ``reader``: the notebook's ``fix``, unless :meth:`for_reader` gave that reader its own."""
        parts = [f"{self.path}: {self.problem}" if self.path is not None else self.problem]
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        if self.rows:
            parts.append(_preview(self.rows))
        message = "; ".join(parts)
        fix = self.reader_fixes.get(reader, self.fix)
        if fix:
            message += f". Fix: {fix}"
        return message

    def for_reader(self, reader: str, fix: str) -> ConservizError:
        """Give the fix as ``reader`` needs it (e.g. ``"cli"``: flags instead of settings); returns self."""
        self.reader_fixes[reader] = fix
        return self

    def as_data(self) -> dict:
        """The message's parts as plain data, e.g. to send the error back from a loader worker."""
        path = None if self.path is None else str(self.path)
        return {"problem": self.problem, "path": path, "column": self.column, "rows": self.rows, "fix": self.fix}

    def _render_traceback_(self) -> list[str]:
        """What a notebook shows (IPython's hook): the message, the learner's line, where it was raised.

        The library's stack would only bury a message that already says the file, the rows and the fix.
        """
        lines = [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]
        frames = traceback.extract_tb(self.__traceback__)
        package = str(Path(__file__).resolve().parent)
        # The learner's line is the last frame before the call went into conserviz_utils.
        first_ours = next((i for i, f in enumerate(frames) if f.filename.startswith(package)), len(frames))
        if first_ours > 0:
            yours = frames[first_ours - 1]
            lines.append(f"  your code, line {yours.lineno}: {(yours.line or '').strip()}")
        if first_ours < len(frames):
            raised = frames[-1]
            lines.append(f"  raised in {Path(raised.filename).name}, line {raised.lineno}, in {raised.name}()")
        lines.append("  (the full stack: import sys, traceback; traceback.print_exception(sys.last_value))")
        return lines


class DataValidationError(ConservizError, ValueError):
    """A competition CSV (or its image folder) does not have the expected layout or content."""


class ImageLoadError(ConservizError, OSError):
    """An image file is missing, empty, truncated, not an image, or too large to decode safely."""


class CheckpointError(ConservizError):
    """A checkpoint file is missing, not a conserviz checkpoint, or does not fit the data."""


class SubmissionError(ConservizError, ValueError):
    """A submission frame does not match submission_format and must not be written."""


class TrainingError(ConservizError, RuntimeError):
    """Training cannot go on, e.g. the loss became NaN or infinite."""


class WeightsUnavailableError(ConservizError):
    """Pretrained weights are not cached and cannot be downloaded (offline)."""


class SampleFolderError(ConservizError, FileExistsError):
    """The output folder holds files that are not a sample dataset, so nothing is written there."""


class SampleParameterError(ConservizError, ValueError):
    """A parameter of the sample generator is out of range."""


def refuse_repeated_ids(index, what: str, fix: str, error: type[ConservizError] = DataValidationError) -> None:
    """Raise ``error`` naming the ids that ``index`` (a pandas Index) holds more than once."""
    if index.has_duplicates:
        raise error(f"{what} list some ids more than once", rows=index[index.duplicated()].unique(), fix=fix)
