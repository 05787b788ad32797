"""Atomic writes: a reader sees the old file or the new one, and a failure names the real target."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pandas as pd
import pytest

from conserviz_utils.files import fileio
from conserviz_utils.errors import ConservizError
from conserviz_utils.files.fileio import (
    TEMP_PREFIX,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    atomic_writer,
)


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


def test_each_helper_writes_its_content_and_returns_the_path(tmp_path):
    assert atomic_write_text(tmp_path / "a.txt", "é\r\nline") == tmp_path / "a.txt"
    assert (tmp_path / "a.txt").read_bytes() == "é\r\nline".encode()  # UTF-8, newlines as given
    atomic_write_json(tmp_path / "c.json", {"loss": 0.5, "ids": ["ZJ1"]})
    assert json.loads((tmp_path / "c.json").read_text()) == {"loss": 0.5, "ids": ["ZJ1"]}
    frame = pd.DataFrame({"bird": [0.25]}, index=pd.Index(["ZJ1"], name="id"))
    atomic_write_csv(tmp_path / "d.csv", frame, lineterminator="\n")
    assert (tmp_path / "d.csv").read_text() == "id,bird\nZJ1,0.25\n"
    atomic_write_text(tmp_path / "new" / "deeper" / "e.txt", "x")  # folders are created
    assert (tmp_path / "new" / "deeper" / "e.txt").read_text() == "x"
    assert leftovers(tmp_path) == []


def test_a_rewrite_replaces_the_file_whole(tmp_path):
    path = atomic_write_text(tmp_path / "f.txt", "old " * 1000)
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_a_crash_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "metrics.json", "old")

    class Crash(Exception):
        pass

    with pytest.raises(Crash), atomic_writer(path, "w") as handle:
        handle.write("half of the new")
        handle.flush()
        # Mid-write, the target still holds the old bytes; the new ones are in a temporary.
        assert path.read_text() == "old"
        assert len(leftovers(tmp_path)) == 1
        raise Crash
    assert path.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_ctrl_c_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old weights")
    with pytest.raises(KeyboardInterrupt), atomic_writer(path, "wb") as handle:
        handle.write(b"new wei")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old weights"
    assert leftovers(tmp_path) == []


def test_a_value_json_cannot_hold_fails_before_anything_is_touched(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert leftovers(tmp_path) == []


def test_a_full_disk_names_the_target_and_says_free_space(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "submission.csv", "old")
    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", disk_full)
    with pytest.raises(ConservizError) as caught:
        atomic_write_text(path, "new", what="submission")
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)
    error = caught.value
    assert error.path == path  # the real target, not the hidden temporary file
    assert TEMP_PREFIX not in str(error)
    assert "submission" in error.problem and "No space left" in error.problem
    assert "unchanged" in error.problem
    assert "free some disk space" in error.fix
    assert path.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_a_full_disk_while_writing_the_bytes_is_reported_the_same_way(tmp_path):
    path = tmp_path / "cache.npy"
    path.write_bytes(b"old")
    writer = atomic_writer(path, "wb", what="cache entry")
    with pytest.raises(ConservizError, match="No space left") as caught, writer as handle:
        handle.write(b"ne")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.path == path and "disk space" in caught.value.fix
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "message"),
    [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")],
    ids=["read-only drive", "no permission"],
)
def test_an_unwritable_folder_names_the_target_and_the_fix(tmp_path, monkeypatch, code, message):
    # Simulated rather than chmod-ed: chmod does not stop root, which CI containers often are.
    path = tmp_path / "outputs" / "checkpoint.pt"
    real_open = open

    def refuse_temporary_files(file, *args, **kwargs):
        if Path(file).name.startswith(TEMP_PREFIX):
            raise OSError(code, message, str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse_temporary_files)
    with pytest.raises(ConservizError) as caught, atomic_writer(path, "wb", what="checkpoint") as handle:
        handle.write(b"weights")
    monkeypatch.undo()
    error = caught.value
    assert error.path == path
    assert message in error.problem and "checkpoint" in error.problem
    assert "not writable" in error.fix and str(path.parent) in error.fix
    assert not path.exists()
    assert leftovers(path.parent) == []


def test_a_folder_that_cannot_be_created_names_the_target(tmp_path):
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(ConservizError, match="cannot create the folder") as caught:
        atomic_write_text(blocker / "metrics.json", "{}", what="metrics")
    assert caught.value.path == blocker / "metrics.json"
    assert caught.value.fix


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="chmod does not stop root")
def test_a_really_read_only_folder_is_refused_cleanly(tmp_path):
    folder = tmp_path / "locked"
    path = atomic_write_text(folder / "a.txt", "old")
    folder.chmod(0o555)
    try:
        with pytest.raises(ConservizError) as caught:
            atomic_write_text(path, "new")
        assert caught.value.path == path and "not writable" in caught.value.fix
        assert path.read_text() == "old"
    finally:
        folder.chmod(0o755)
    assert leftovers(folder) == []


def test_concurrent_writers_never_expose_a_partial_file(tmp_path):
    path = atomic_write_text(tmp_path / "shared.txt", "a" * 100_000)
    stop = threading.Event()
    seen: set[str] = set()

    def read_all_the_time():
        while not stop.is_set():
            seen.add(path.read_text()[:1] + str(len(path.read_text())))

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        for letter in "bcdefgh":
            atomic_write_text(path, letter * 100_000)
    finally:
        stop.set()
        reader.join()
    # Every read saw one whole version (100,000 characters), never a torn one.
    assert all(entry.endswith("100000") for entry in seen)
    assert leftovers(tmp_path) == []


def test_only_text_and_binary_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_writer(tmp_path / "x", "a"):
        pass


def test_a_cache_write_skips_the_fsyncs_but_stays_atomic(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    with atomic_writer(tmp_path / "entry.bin", "wb", durable=False) as handle:
        handle.write(b"cached")
    assert calls == [] and (tmp_path / "entry.bin").read_bytes() == b"cached"
    with atomic_writer(tmp_path / "model.bin", "wb") as handle:
        handle.write(b"weights")
    assert len(calls) == 2  # the file, then its folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.bin", "model.bin"]
