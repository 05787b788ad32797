"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every artifact conserviz writes goes through :func:`atomic_writer`: a temporary file in the same
folder, flushed to disk, then ``os.replace``d over the target. A crash, a full disk or Ctrl-C
leaves the previous file as it was and no temporary file behind; the error names the real target
and the fix. :func:`user_cache_dir` holds the per-user caches (precision decisions, file digests).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from conserviz_utils.errors import ConservizError

__all__ = [
    "TEMP_PREFIX", "atomic_write_csv", "atomic_write_json", "atomic_write_text",
    "atomic_writer", "user_cache_dir", "write_failure_fix",
]


def user_cache_dir() -> Path:
    """The per-user cache folder: ``$CONSERVIZ_CACHE_DIR``, ``$XDG_CACHE_HOME/conserviz`` or ``~/.cache/conserviz``."""
    folder = os.environ.get("CONSERVIZ_CACHE_DIR", "").strip()
    if folder:
        return Path(folder).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "conserviz"


#: Temporary files start with this and end with ``.tmp``; their name carries the writer's pid so
#: that leftovers of killed runs can be told apart from writes in progress.
TEMP_PREFIX = ".conserviz-"


def write_failure_fix(err: OSError, folder: Path) -> str:
    """The fix to suggest when writing into ``folder`` failed with ``err``."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free some disk space on the drive of {folder} (or write elsewhere), then run again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{folder} is not writable: save to a folder you can write to (e.g. set CONSERVIZ_OUTPUTS)"
    return f"check that {folder} exists and is writable, then run again"


def _temp_path_for(path: Path) -> Path:
    """A fresh temporary path beside ``path`` that names this process."""
    return path.parent / f"{TEMP_PREFIX}{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entry table, so a rename survives a power cut (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    what: str = "file",
    error: type[ConservizError] = ConservizError,
    durable: bool = True,
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the block ends without an error.

    Args:
        mode: "w" (text, UTF-8, newlines as given) or "wb" (bytes).
        what: What the file is, for error messages ("checkpoint", "metrics", ...).
        error: The ConservizError subclass to raise when the folder cannot be created or written.
        durable: Flush the file and its folder to disk around the rename, so the new version
            survives a power cut. Rebuildable caches skip it: two fsyncs cost more than a small entry.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise error(
            f"cannot create the folder for this {what} ({err.strerror})",
            path=target,
            fix=write_failure_fix(err, target.parent),
        ) from None
    temp = _temp_path_for(target)
    try:
        kwargs = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with open(temp, mode, **kwargs) as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise error(
            f"could not write this {what} ({err.strerror or err}); the previous {what} at this path, if any, "
            "is unchanged",
            path=target,
            fix=write_failure_fix(err, target.parent),
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    if durable:
        _fsync_folder(target.parent)


def atomic_write_text(path: str | os.PathLike, text: str, *, what: str = "file") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_writer(path, "w", what=what) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, what: str = "file") -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; returns the path."""
    # Serialise first: a value JSON cannot hold fails before anything is opened.
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write_text(path, text, what=what)


def atomic_write_csv(path: str | os.PathLike, frame, *, what: str = "CSV file", **to_csv: Any) -> Path:
    """Write a pandas frame as CSV to ``path`` atomically (``to_csv`` options pass through)."""
    text = frame.to_csv(**to_csv)
    return atomic_write_text(path, text, what=what)
