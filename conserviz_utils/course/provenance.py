"""What an artifact was made from: data fingerprints, and sidecars that say when to rebuild.

Every artifact the course writes (splits, embeddings, checkpoint, metrics, predictions,
submission) can carry a small ``<artifact>.provenance.json`` beside it: the fingerprint of the
data it was made from, the settings and recipe that matter, the fingerprints of the artifacts it
used, and the versions. An ``ensure_*`` step compares the record with what it would write now and
rebuilds (saying why in one line) when they differ.

The data fingerprint covers the content of the four competition CSVs and of every image file.
Hashing 20,000 images takes a while once, so each file's digest is cached, keyed on its size,
modification time, change time and inode: a file replaced by another of the same size, even with
its modification time set back, has a new change time (which no user can set) and is hashed again.

How an ``ensure_*`` step uses it::

    from conserviz_utils.course.provenance import check_matches, make_provenance, write_sidecar

    def ensure_splits(data, settings):
        path = settings.artifacts.splits
        expected = make_provenance(data=data, data_part="labels",
                                   settings={"seed": settings.seed, "eval_share": 0.25})
        ok, reason = check_matches(path, expected)
        if ok:
            return load_splits(path)
        if path.exists():
            print(f"{reason}; rebuilding")   # e.g. "splits.csv was made from other data (...)"
        splits = split_by_site(...)
        save_splits(path, splits)
        write_sidecar(path, expected)        # after the artifact: a record never outlives it
        return splits

An artifact made from another one lists it in ``inputs`` (``inputs={"model.pt": checkpoint}``,
fingerprinted by content), so metrics made from an old checkpoint no longer match a new one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conserviz_utils.files.fileio import atomic_write_json, atomic_write_text, user_cache_dir

__all__ = [
    "DATA_PARTS",
    "FileDigests",
    "artifact_fingerprint",
    "check_matches",
    "data_fingerprint",
    "describe_data",
    "digest_cache_dir",
    "file_digest",
    "files_fingerprint",
    "make_provenance",
    "read_sidecar",
    "remove_with_sidecar",
    "sidecar_path",
    "write_sidecar",
]

#: The parts of a record :func:`check_matches` compares (a reader may ``ignore`` some).
COMPARED_PARTS = ("data", "settings", "inputs")

#: Bump when the layout of a provenance record changes; records of another format never match.
PROVENANCE_FORMAT = 1

#: Layout version of the per-folder digest cache files.
DIGEST_CACHE_FORMAT = 1

#: Which competition CSVs, and which images, each part of the data fingerprint covers.
DATA_PARTS = {
    # what a split depends on: ids, sites and labels, not the pixels
    "labels": {"csvs": ("train_features", "train_labels"), "images": ()},
    "train": {"csvs": ("train_features", "train_labels"), "images": ("train_features",)},
    "test": {"csvs": ("test_features", "submission_format"), "images": ("test_features",)},
    "all": {
        "csvs": ("train_features", "train_labels", "test_features", "submission_format"),
        "images": ("train_features", "test_features"),
    },
}

_CHUNK = 1 << 20  # read files in 1 MiB pieces: hashlib releases the GIL on big updates


def digest_cache_dir() -> Path:
    """Where file digests are cached: ``file-digests/`` in the cache folder (`fileio.user_cache_dir`)."""
    return user_cache_dir() / "file-digests"


def file_digest(path: str | os.PathLike) -> str:
    """The BLAKE2b digest (32 hex digits) of a file's whole content."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(stat: os.stat_result) -> list[int]:
    """What must be unchanged for a cached digest to still hold: size, mtime, ctime, inode."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


class FileDigests:
    """Content digests of files, cached per folder so that a rerun only stats the files.

    Args:
        cache_dir: Folder of the cache files (one per data folder), or None to cache in memory
            only. A cache that cannot be read or written is simply not used.
        workers: Threads hashing files in parallel (default: up to 8, from the CPU count).
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, workers: int | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.folders: dict[str, dict[str, list]] = {}
        self.changed: set[str] = set()
        self.seen: dict[str, set[str]] = {}  # per folder, the files stat'ed by this object
        self.hashed = 0  # files read in full by this object (the rest came from the cache)

    def cache_file(self, folder: str) -> Path | None:
        """The cache file of one data folder."""
        if self.cache_dir is None:
            return None
        name = hashlib.blake2b(folder.encode(), digest_size=10).hexdigest()
        return self.cache_dir / f"{Path(folder).name or 'root'}-{name}.json"

    def entries(self, folder: str) -> dict[str, list]:
        """The cached ``name → [size, mtime_ns, ctime_ns, inode, digest]`` of one folder."""
        if folder not in self.folders:
            entries: dict[str, list] = {}
            path = self.cache_file(folder)
            if path is not None:
                try:
                    saved = json.loads(path.read_text())
                    if saved.get("format") == DIGEST_CACHE_FORMAT and saved.get("folder") == folder:
                        entries = dict(saved["entries"])
                except (OSError, ValueError, KeyError, TypeError, AttributeError):
                    entries = {}  # missing or damaged: every file is hashed again
            self.folders[folder] = entries
        return self.folders[folder]

    def digests(self, paths: Sequence[str | os.PathLike]) -> list[str]:
        """The content digest of each file, in order; hashes only files that changed.

        Raises:
            FileNotFoundError: one of the files does not exist (``filename`` names it).
        """
        absolute = [path if os.path.isabs(path) else os.path.abspath(path) for path in map(os.fspath, paths)]
        result: list[str | None] = [None] * len(absolute)
        todo: list[tuple[int, str, list[int]]] = []
        for position, path in enumerate(absolute):
            key = _stat_key(os.stat(path))
            folder, name = os.path.split(path)
            self.seen.setdefault(folder, set()).add(name)
            cached = self.entries(folder).get(name)
            if cached is not None and list(cached[:4]) == key:
                result[position] = cached[4]
            else:
                todo.append((position, path, key))
        if todo:
            if len(todo) > 1 and self.workers > 1:
                with ThreadPoolExecutor(self.workers) as pool:
                    computed = list(pool.map(file_digest, [path for _, path, _ in todo]))
            else:
                computed = [file_digest(path) for _, path, _ in todo]
            for (position, path, key), digest in zip(todo, computed):
                folder, name = os.path.split(path)
                self.entries(folder)[name] = [*key, digest]
                self.changed.add(folder)
                result[position] = digest
            self.hashed += len(todo)
        return [str(d) for d in result]

    def save(self) -> None:
        """Write the caches of the folders that gained digests (best effort, atomically)."""
        created = self.cache_dir is not None and not self.cache_dir.exists()
        for folder in sorted(self.changed):
            path = self.cache_file(folder)
            if path is None:
                continue
            seen = self.seen.get(folder, set())
            entries = {
                name: entry for name, entry in self.entries(folder).items()
                if name in seen or os.path.lexists(os.path.join(folder, name))  # forget deleted files
            }
            payload = {"format": DIGEST_CACHE_FORMAT, "folder": folder, "entries": entries}
            try:
                atomic_write_text(path, json.dumps(payload, separators=(",", ":")), what="file digest cache")
            except Exception:  # noqa: BLE001  (a cache that cannot be written costs time, not results)
                if created:  # leave no empty folder behind on a full or read-only disk
                    with contextlib.suppress(OSError):
                        self.cache_dir.rmdir()
        self.changed.clear()


def files_fingerprint(
    paths: Sequence[str | os.PathLike],
    *,
    digests: FileDigests | None = None,
    names: Sequence[str] | None = None,
) -> str:
    """One digest over the content of ``paths``, in order (a changed byte anywhere changes it).

    Args:
        paths: The files.
        digests: The digest cache to use (default: an in-memory one).
        names: What each file is called in the fingerprint (default: its path). Relative names
            (``train_features/ZJ000000.jpg``) make a copied data folder fingerprint the same.
    """
    digests = digests or FileDigests()
    values = digests.digests(paths)
    labels = [str(n) for n in names] if names is not None else [os.fspath(p) for p in paths]
    combined = hashlib.blake2b(digest_size=16)
    for label, value in zip(labels, values):
        combined.update(f"{label}\0{value}\n".encode())
    return combined.hexdigest()


def artifact_fingerprint(path: str | os.PathLike) -> str:
    """The content fingerprint of an artifact file (a checkpoint, a CSV) used to make another."""
    return file_digest(path)


# --- the data -------------------------------------------------------------------------------------


def _data_root(data_or_root) -> Path:
    """The absolute data folder (not resolved: ``load_competition`` builds the image paths on it)."""
    # A Path has a .root too ("/"): only a CompetitionData's root is its data folder.
    root = data_or_root if isinstance(data_or_root, (str, os.PathLike)) else data_or_root.root
    return Path(os.path.abspath(Path(root).expanduser()))


def _image_paths(data_or_root, root: Path, table: str) -> tuple[list[str], list[str]]:
    """(absolute paths, names relative to the root) of the images listed in one features table."""
    # Plain string work: at 20,000 images, pathlib and relpath cost more than the stats.
    prefix = str(root) + os.sep
    frame = None if isinstance(data_or_root, (str, os.PathLike)) else getattr(data_or_root, table, None)
    if frame is not None and "path" in getattr(frame, "columns", ()):
        paths = [str(p) for p in frame["path"]]
        names = [p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, root) for p in paths]
        return paths, names
    names = []
    with open(root / f"{table}.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            relative = row["filepath"].replace("\\", "/")
            while relative.startswith("./"):
                relative = relative[2:]
            names.append(relative)
    return [prefix + name.replace("/", os.sep) for name in names], names


def data_fingerprint(
    data_or_root,
    part: str = "all",
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    workers: int | None = None,
) -> str:
    """A fingerprint of the competition data: the CSVs' content and the images' content.

    Args:
        data_or_root: A ``CompetitionData`` (its ``root`` and ``path`` columns are used) or the
            data folder (the CSVs are read for the image list).
        part: Which of :data:`DATA_PARTS` to cover: "all"; "train" (train CSVs and images);
            "test" (test CSVs and images); "labels" (the train CSVs only, what a split uses).
        cache_dir: Folder of the digest cache (default: :func:`digest_cache_dir`).
        use_cache: False reads every image in full, with no cache read or written.
        workers: Threads hashing images on the first run.

    Returns:
        32 hex digits. Equal for a copy of the same data in another folder.

    Raises:
        FileNotFoundError: a CSV or an image is missing (``load_competition`` explains which).
    """
    if part not in DATA_PARTS:
        raise ValueError(f"part must be one of {sorted(DATA_PARTS)}, got {part!r}")
    root = _data_root(data_or_root)
    folder = (cache_dir if cache_dir is not None else digest_cache_dir()) if use_cache else None
    digests = FileDigests(folder, workers=workers)
    combined = hashlib.blake2b(digest_size=16)
    combined.update(f"conserviz data fingerprint {PROVENANCE_FORMAT} {part}\n".encode())
    for table in DATA_PARTS[part]["csvs"]:
        combined.update(f"{table}.csv\0{file_digest(root / f'{table}.csv')}\n".encode())
    for table in DATA_PARTS[part]["images"]:
        paths, names = _image_paths(data_or_root, root, table)
        combined.update(f"{table} images\0{files_fingerprint(paths, digests=digests, names=names)}\n".encode())
    digests.save()
    return combined.hexdigest()


def _count_rows(path: Path) -> int | None:
    try:
        with open(path, "rb") as handle:
            return max(0, sum(1 for line in handle if line.strip()) - 1)
    except OSError:
        return None


def describe_data(data_or_root) -> str:
    """A short description of a data folder for messages: "sample, 2,000 train + 500 test images"."""
    from conserviz_utils.files.competition import is_sample_folder  # pandas only when a message needs it

    root = _data_root(data_or_root)
    kind = "sample" if is_sample_folder(root) else "competition data"
    counts = []
    for table, label in (("train_features", "train"), ("test_features", "test")):
        frame = None if isinstance(data_or_root, (str, os.PathLike)) else getattr(data_or_root, table, None)
        n = len(frame) if frame is not None else _count_rows(root / f"{table}.csv")
        if n is not None:
            counts.append(f"{n:,} {label}")
    return f"{kind}, {' + '.join(counts)} images" if counts else kind


# --- provenance records and sidecars --------------------------------------------------------------


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("conserviz-utils", "torch", "torchvision", "numpy", "pandas"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _plain(value: Any) -> Any:
    """A JSON-ready copy: paths as strings, tuples as lists, dataclasses as dicts."""
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def make_provenance(
    *,
    data=None,
    data_part: str = "all",
    data_fingerprint_value: str | None = None,
    settings: Mapping[str, Any] | Any | None = None,
    inputs: Mapping[str, str | os.PathLike] | None = None,
    extra: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """The provenance record of an artifact about to be written.

    Args:
        data: The ``CompetitionData`` or data folder it is made from (None: not data-dependent).
        data_part: Which part of the data it depends on (see :data:`DATA_PARTS`).
        data_fingerprint_value: A fingerprint already computed for ``data`` and ``data_part``
            (saves hashing again when several artifacts are written in one step).
        settings: The settings and recipe fields that change the artifact (a mapping or a
            dataclass such as ``Recipe``); only these are compared, so pass what matters.
        inputs: Artifacts it was made from, ``{name: path}``; each is fingerprinted by content.
        extra: Informative fields (e.g. the temperature of a submission); not compared.
        cache_dir: The digest cache for the data fingerprint (see :func:`data_fingerprint`).

    Returns:
        A JSON-ready dict with "format", "data", "settings", "inputs", "versions" (and "extra").
    """
    record: dict[str, Any] = {"format": PROVENANCE_FORMAT}
    if data is not None:
        fingerprint = data_fingerprint_value or data_fingerprint(data, data_part, cache_dir=cache_dir)
        record["data"] = {
            "fingerprint": fingerprint,
            "part": data_part,
            "description": describe_data(data),
            "root": str(_data_root(data)),
        }
    else:
        record["data"] = None
    record["settings"] = _plain(settings) if settings is not None else {}
    record["inputs"] = {str(name): artifact_fingerprint(path) for name, path in sorted((inputs or {}).items())}
    record["versions"] = _versions()
    if extra:
        record["extra"] = _plain(extra)
    return record


def sidecar_path(artifact_path: str | os.PathLike) -> Path:
    """The provenance file of an artifact: ``model.pt`` → ``model.pt.provenance.json``."""
    path = Path(artifact_path)
    return path.with_name(path.name + ".provenance.json")


def write_sidecar(artifact_path: str | os.PathLike, provenance: Mapping[str, Any], *, digest: bool = True) -> Path:
    """Write an artifact's provenance record beside it, atomically; returns the sidecar's path.

    Write it right after the artifact: an artifact replaced without a new record then fails
    :func:`check_matches` (its content no longer matches ``artifact_digest``) and is rebuilt.

    Args:
        digest: Record the artifact's content digest. False for a file that a run keeps
            rewriting after the record is written (a fine-tuning's resume state): the record
            then says what the file belongs to, and the run deletes both when it ends.
    """
    path = Path(artifact_path)
    record = dict(_plain(provenance))
    record["artifact"] = path.name
    record["written"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if digest and path.is_file():
        record["artifact_digest"] = file_digest(path)
    return atomic_write_json(sidecar_path(path), record, what="provenance record")


def remove_with_sidecar(artifact_path: str | os.PathLike) -> bool:
    """Delete an artifact and its provenance record (the record last); True when the artifact existed."""
    path = Path(artifact_path)
    existed = path.is_file()
    path.unlink(missing_ok=True)
    sidecar_path(path).unlink(missing_ok=True)
    return existed


def read_sidecar(artifact_path: str | os.PathLike) -> dict | None:
    """An artifact's provenance record, or None when there is none or it is unreadable."""
    try:
        record = json.loads(sidecar_path(artifact_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _setting_changes(old: Mapping, new: Mapping, limit: int = 3) -> str:
    """ "arch: resnet50 → efficientnet_lite0, epochs: 1 → 2" for the settings that differ."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {old.get(key, '(unset)')} → {new.get(key, '(unset)')}")
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(changes[:limit]) + more


def check_matches(
    artifact_path: str | os.PathLike,
    expected: Mapping[str, Any],
    *,
    ignore: Sequence[str] = (),
    settings_keys: Sequence[str] | None = None,
) -> tuple[bool, str]:
    """Whether an artifact on disk was made from what ``expected`` describes, with the reason.

    The one staleness rule: every reader of an artifact (the notebooks' ``ensure_*`` steps, the
    ``conserviz`` command, resuming) asks it, and rebuilds or refuses on its answer.

    Args:
        artifact_path: The artifact.
        expected: The record :func:`make_provenance` gives for what would be written now.
        ignore: Parts of :data:`COMPARED_PARTS` that do not matter to this reader, e.g.
            ``("data", "settings")`` for a temperature, which belongs to a model whatever data
            it is used on.
        settings_keys: Compare only these settings (None: all of them), e.g. what a
            fine-tuning needs of the head it starts from.

    Returns:
        ``(ok, reason)``: ``reason`` is one line naming the artifact and what differs, e.g.
        "splits.csv was made from other data (sample, 2,000 train + 500 test images)"; the
        caller adds what it does about it ("; rebuilding"). Empty when ``ok``.
    """
    path = Path(artifact_path)
    name = path.name
    if not path.is_file():
        return False, f"{name} does not exist yet"
    record = read_sidecar(path)
    if record is None:
        return False, f"{name} has no provenance record (made by an older conserviz, or its record was lost)"
    digest = record.get("artifact_digest")
    if digest is not None and digest != file_digest(path):
        return False, f"{name} was changed after its provenance record was written"
    expected = _plain(expected)
    unknown = sorted(set(ignore) - set(COMPARED_PARTS))
    if unknown:
        raise ValueError(f"ignore takes parts of {COMPARED_PARTS}, got {unknown}")
    if record.get("format") != expected.get("format"):
        return False, f"{name} has a provenance record of another format"
    old_data, new_data = record.get("data"), expected.get("data")
    if "data" not in ignore and (old_data or {}).get("fingerprint") != (new_data or {}).get("fingerprint"):
        if old_data and new_data and old_data.get("root") == new_data.get("root"):
            where = f"the data in {old_data.get('root')} has changed since ({old_data.get('description')} then)"
            return False, f"{name} was made from other data: {where}"
        what = (old_data or {}).get("description", "unknown data")
        root = (old_data or {}).get("root")
        return False, f"{name} was made from other data ({what}{f' at {root}' if root else ''})"
    old_settings, new_settings = record.get("settings") or {}, expected.get("settings") or {}
    if settings_keys is not None:
        old_settings = {key: old_settings.get(key) for key in settings_keys}
        new_settings = {key: new_settings.get(key) for key in settings_keys}
    if "settings" not in ignore and old_settings != new_settings:
        return False, f"{name} was made with other settings ({_setting_changes(old_settings, new_settings)})"
    old_inputs, new_inputs = record.get("inputs") or {}, expected.get("inputs") or {}
    if "inputs" not in ignore and old_inputs != new_inputs:
        changed = sorted(k for k in set(old_inputs) | set(new_inputs) if old_inputs.get(k) != new_inputs.get(k))
        return False, f"{name} was made from another {', '.join(changed)}"
    # "versions" is informative only: a new torch does not make a model wrong.
    return True, ""


if __name__ == "__main__":  # python -m conserviz_utils.course.provenance DATA_DIR: print the fingerprint
    import time

    started = time.perf_counter()
    print(data_fingerprint(sys.argv[1] if len(sys.argv) > 1 else "."),
          f"({time.perf_counter() - started:.2f} s)")
