"""The embeddings cache on disk: rows written without memory maps, leftovers removed, old entries pruned.

:func:`conserviz_utils.course.embeddings.compute_embeddings` keeps each cache entry as a float32
``.npy`` file of values beside a ``.json`` record. `NpyRowWriter` reserves the whole file's
space before any image is read and writes the rows with ordinary writes, so a full disk raises
a `ConservizError` naming the folder and the space needed, never SIGBUS. What killed runs leave
behind (partial and temporary files of this module, of ``fileio`` and of older writers) is
removed by `remove_stale_partials` once its writer is gone; `prune_cache` keeps the folder small.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from conserviz_utils.errors import ConservizError
from conserviz_utils.files.fileio import TEMP_PREFIX, write_failure_fix

__all__ = ["KEEP_PER_ARCH", "MAX_UNUSED_DAYS", "NpyRowWriter", "prune_cache", "remove_stale_partials"]

#: ``prune_cache`` keeps at most this many entries per architecture (the most recently used) ...
KEEP_PER_ARCH = 6
#: ... and removes entries not used for this many days.
MAX_UNUSED_DAYS = 30

# Leftovers of an interrupted write carry the writer's pid: ``x.npy.<pid>.partial`` (this module),
# ``.conserviz-x.<pid>-<hex>.tmp`` (fileio), ``.x.<pid>-<hex>.tmp`` (older checkpoints) and
# ``.x.<pid>.tmp`` (older submissions).
_PID_LEFTOVER = re.compile(
    r"^(?:.+\.(?P<a>\d+)\.partial"
    rf"|{re.escape(TEMP_PREFIX)}.+\.(?P<b>\d+)-[0-9a-f]+\.tmp"
    r"|\..+\.(?P<c>\d+)(?:-[0-9a-f]+)?\.tmp)$"
)
# A ``.partial`` file without a pid (a tempfile of the image cache) counts as left over after this.
_ANONYMOUS_PARTIAL_AGE = 3600.0


def _size_text(n_bytes: float) -> str:
    """A size for messages: "416 bytes", "12 kB", "84 MB", "1.2 GB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}" if unit == "GB" else f"{n_bytes / scale:,.0f} {unit}"
    return f"{n_bytes:.0f} bytes"


def _cache_write_error(err: OSError, target: Path, needed: int) -> ConservizError:
    """The error to raise when writing a cache entry failed: the folder, the space needed, the fix."""
    folder = target.parent
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f", {_size_text(shutil.disk_usage(folder).free)} free"
        except OSError:
            free = ""
        return ConservizError(
            f"not enough disk space for the embeddings cache: this entry needs {_size_text(needed)}{free}",
            path=folder,
            fix=f"free at least {_size_text(needed)} on the drive of {folder} (`make clean` removes old "
            "outputs and caches), or pass cache_dir= a folder on a disk with room, or cache_dir=None "
            "to keep the embeddings in memory",
        )
    return ConservizError(
        f"cannot write the embeddings cache ({err.strerror or err})",
        path=target,
        fix=write_failure_fix(err, folder) + "; or pass cache_dir=None to keep the embeddings in memory",
    )


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less than it is given)."""
    view = memoryview(data)
    while view:
        if hasattr(os, "pwrite"):
            written = os.pwrite(fd, view, offset)
        else:  # Windows
            os.lseek(fd, offset, os.SEEK_SET)
            written = os.write(fd, view)
        view, offset = view[written:], offset + written


class NpyRowWriter:
    """Writes a float32 ``.npy`` file row batch by row batch, with ordinary writes.

    Never a memory-mapped write: a page of a sparse file that the disk cannot hold kills the
    process with SIGBUS, where a ``write`` raises ENOSPC. The whole file's space is reserved when
    the writer is created (``os.posix_fallocate``, or a free-space check where that is missing),
    so a full disk is found before any work. The rows go to ``<target>.<pid>.partial``;
    :meth:`commit` renames it over the target, :meth:`abort` removes it.

    Raises:
        ConservizError: full disk or unwritable folder, naming the folder, the space and the fix.
    """

    def __init__(self, target: str | os.PathLike, shape: tuple[int, int]) -> None:
        self.target = Path(target)
        self.partial = self.target.with_name(f"{self.target.name}.{os.getpid()}.partial")
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
        )
        self.offset = header.tell()
        self.row_bytes = int(shape[1]) * 4
        self.size = self.offset + int(shape[0]) * self.row_bytes
        self.fd: int | None = None
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
            self.reserve()
            _write_all(self.fd, header.getvalue(), 0)
        except OSError as err:
            self.abort()
            raise _cache_write_error(err, self.target, self.size) from None

    def reserve(self) -> None:
        """Allocate the file's blocks now, so later writes cannot run out of space."""
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(self.fd, 0, self.size)
                return
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
                    raise
        # No fallocate here: check the free space (the writes themselves still raise ENOSPC).
        if shutil.disk_usage(self.target.parent).free < self.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.partial))
        os.ftruncate(self.fd, self.size)

    def write(self, rows: Sequence[int], values: np.ndarray) -> None:
        """Write ``values[i]`` into row ``rows[i]``; consecutive rows go in one write."""
        values = np.ascontiguousarray(values, dtype="<f4")
        try:
            if len(rows) and list(rows) == list(range(rows[0], rows[0] + len(rows))):
                _write_all(self.fd, values.tobytes(), self.offset + rows[0] * self.row_bytes)
            else:
                for row, value in zip(rows, values):
                    _write_all(self.fd, value.tobytes(), self.offset + row * self.row_bytes)
        except OSError as err:
            raise _cache_write_error(err, self.target, self.size) from None

    def commit(self) -> None:
        """Flush the file to disk and rename it over the target."""
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            os.replace(self.partial, self.target)
        except OSError as err:
            self.abort()
            raise _cache_write_error(err, self.target, self.size) from None

    def abort(self) -> None:
        """Close and remove the partial file (nothing of it is left on the disk)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        with contextlib.suppress(OSError):
            self.partial.unlink()


def _writer_alive(pid: int, written_at: float) -> bool:
    """Whether the process that wrote a file at ``written_at`` may still be running."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process, alive
        return True
    # The pid is in use, but pids are reused (a container restarts them from 1): a process that
    # started after the file was last written is not its writer.
    try:
        import psutil

        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return process.create_time() <= written_at + 1.0
    except Exception:  # noqa: BLE001  (no psutil, or the process just ended: keep the file)
        return True


def remove_stale_partials(
    folder: str | os.PathLike,
    *,
    recursive: bool = False,
    anonymous_age: float = _ANONYMOUS_PARTIAL_AGE,
    now: float | None = None,
) -> list[Path]:
    """Remove what killed runs left in ``folder``: partial and temporary files whose writer is gone.

    Recognised: ``*.<pid>.partial`` (embedding cache entries), ``.conserviz-*.<pid>-<hex>.tmp``
    (``fileio``), ``.<name>.<pid>-<hex>.tmp`` and ``.<name>.<pid>.tmp`` (older checkpoint and
    submission writers), each removed only when process ``pid`` no longer runs; and ``.partial``
    files without a pid (the image cache's) once they are ``anonymous_age`` seconds old. A file
    that cannot be removed is left alone.

    Args:
        folder: The folder to clean (a missing folder is fine).
        recursive: Also clean its subfolders (the course cleans its whole output folder).
        anonymous_age: Seconds after which a ``.partial`` without a pid counts as left over.
        now: The current time (tests).

    Returns:
        The files removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    walker = os.walk(root) if recursive else [(str(root), [], [e.name for e in os.scandir(root) if e.is_file()])]
    removed = []
    for directory, _, names in walker:
        for name in names:
            if not (name.endswith(".partial") or name.endswith(".tmp")):
                continue
            path = Path(directory) / name
            try:
                written_at = path.lstat().st_mtime
            except OSError:
                continue
            match = _PID_LEFTOVER.match(name)
            pid = next((int(g) for g in match.groups() if g), None) if match else None
            if pid is not None:
                stale = not _writer_alive(pid, written_at)
            else:
                stale = name.endswith(".partial") and now - written_at > anonymous_age
            if stale:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


def prune_cache(
    cache_dir: str | os.PathLike,
    *,
    keep_per_arch: int = KEEP_PER_ARCH,
    max_unused_days: float = MAX_UNUSED_DAYS,
    protect: Sequence[str | os.PathLike] = (),
    now: float | None = None,
) -> list[Path]:
    """Remove old embedding cache entries: beyond the newest ``keep_per_arch`` of an architecture, or unused for long.

    An entry's last use is its record's time (a reuse touches it). Orphans — values without a
    record, left by a run killed between the two writes, or a record without values — go too.

    Args:
        cache_dir: The cache folder.
        keep_per_arch: Entries kept per architecture (the most recently used).
        max_unused_days: Entries unused for longer are removed.
        protect: Entries never removed (the one just written or read).
        now: The current time (tests).

    Returns:
        The files removed.
    """
    folder = Path(cache_dir)
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    protected = {Path(p).with_suffix("").name for p in protect}
    entries: dict[str, dict[str, Path]] = {}
    for path in folder.iterdir():
        if path.suffix in (".npy", ".json") and path.is_file():
            entries.setdefault(path.stem, {})[path.suffix] = path
    doomed: list[Path] = []
    by_arch: dict[str, list[tuple[float, str]]] = {}
    for stem, files in entries.items():
        if stem in protected:
            continue
        try:
            last_used = max(p.stat().st_mtime for p in files.values())
        except OSError:
            continue
        if len(files) < 2:  # an orphan: a killed run, or half-deleted by hand
            if now - last_used > _ANONYMOUS_PARTIAL_AGE:
                doomed.extend(files.values())
        elif now - last_used > max_unused_days * 86400:
            doomed.extend(files.values())
        else:
            by_arch.setdefault(stem.rsplit("-", 1)[0], []).append((last_used, stem))
    for arch, used in by_arch.items():
        kept_protected = sum(1 for stem in protected if stem.rsplit("-", 1)[0] == arch)
        for _, stem in sorted(used, reverse=True)[max(0, keep_per_arch - kept_protected):]:
            doomed.extend(entries[stem].values())
    removed = []
    for path in doomed:
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed
