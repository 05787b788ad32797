"""Data fingerprints and provenance sidecars: what an artifact was made from, and when to rebuild."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conserviz_utils.course import provenance
from conserviz_utils.data import load_competition
from conserviz_utils.course.provenance import (
    FileDigests,
    check_matches,
    data_fingerprint,
    describe_data,
    files_fingerprint,
    make_provenance,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)


@pytest.fixture()
def data_dir(sample_dir, tmp_path):
    """A copy of the sample that a test may change (copy2 keeps the modification times)."""
    copy = tmp_path / "data"
    shutil.copytree(sample_dir, copy)
    return copy


@pytest.fixture()
def counted_reads(monkeypatch):
    """Counts the files read in full by the fingerprinting."""
    reads = []
    real = provenance.file_digest

    def counting(path):
        reads.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(provenance, "file_digest", counting)
    return reads


def replace_keeping_size_and_mtime(path, other) -> None:
    """Overwrite ``path`` with a smaller image padded to its size, then set its times back."""
    stat = os.stat(path)
    data = open(other, "rb").read()
    assert len(data) <= stat.st_size and data != open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data + b"\0" * (stat.st_size - len(data)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def image_files(root, table="train_features"):
    return sorted((root / table).iterdir(), key=os.path.getsize)


# --- data fingerprints -----------------------------------------------------------------------------


def test_a_replaced_image_of_the_same_size_and_mtime_is_noticed_even_with_a_warm_cache(data_dir, tmp_path,
                                                                                        counted_reads):
    cache = tmp_path / "digests"
    first = data_fingerprint(data_dir, cache_dir=cache)
    n_images = len(list((data_dir / "train_features").iterdir())) + len(list((data_dir / "test_features").iterdir()))
    assert len(counted_reads) == 4 + n_images  # the four CSVs and every image, once
    counted_reads.clear()
    assert data_fingerprint(data_dir, cache_dir=cache) == first
    assert len(counted_reads) == 4  # a rerun reads only the CSVs: the images' digests are cached

    smallest, *_, largest = image_files(data_dir)
    replace_keeping_size_and_mtime(largest, smallest)
    counted_reads.clear()
    changed = data_fingerprint(data_dir, cache_dir=cache)
    assert changed != first
    assert counted_reads[4:] == [str(largest)]  # its change time gave it away: only it was read again


def test_the_fingerprint_follows_content_not_the_folder_or_the_times(data_dir, sample_dir, tmp_path):
    assert data_fingerprint(data_dir, use_cache=False) == data_fingerprint(sample_dir, use_cache=False)
    path = image_files(data_dir)[0]
    os.utime(path, (1, 1))  # touched, content unchanged
    assert data_fingerprint(data_dir, use_cache=False) == data_fingerprint(sample_dir, use_cache=False)
    # A CompetitionData gives the same fingerprint as its folder.
    assert data_fingerprint(load_competition(data_dir), use_cache=False) == data_fingerprint(data_dir, use_cache=False)


def test_each_part_covers_its_own_files(data_dir):
    parts = ("labels", "train", "test", "all")
    before = {part: data_fingerprint(data_dir, part, use_cache=False) for part in parts}
    assert len(set(before.values())) == 4
    smallest, *_, largest = image_files(data_dir, "test_features")
    replace_keeping_size_and_mtime(largest, smallest)
    after = {part: data_fingerprint(data_dir, part, use_cache=False) for part in parts}
    assert [part for part in parts if after[part] != before[part]] == ["test", "all"]
    labels = data_dir / "train_labels.csv"
    labels.write_text(labels.read_text().replace("1.0", "1.00", 1))
    later = {part: data_fingerprint(data_dir, part, use_cache=False) for part in parts}
    assert [part for part in parts if later[part] != after[part]] == ["labels", "train", "all"]
    with pytest.raises(ValueError, match="part must be one of"):
        data_fingerprint(data_dir, "images")


def test_a_damaged_or_foreign_digest_cache_is_not_trusted(data_dir, tmp_path):
    cache = tmp_path / "digests"
    good = data_fingerprint(data_dir, cache_dir=cache)
    cache_files = list(cache.iterdir())
    assert cache_files and not [p for p in cache_files if p.name.endswith(".tmp")]
    for path in cache_files:
        path.write_text("{not json")
    assert data_fingerprint(data_dir, cache_dir=cache) == good
    # A cached digest with the right stat key but a wrong value would be trusted: so a cache file
    # of another folder (same file names) must never be used.
    digests = FileDigests(cache)
    for path in cache.iterdir():
        saved = json.loads(path.read_text())
        saved["folder"] = "/elsewhere"
        path.write_text(json.dumps(saved))
    images = [str(p) for p in image_files(data_dir)]
    assert files_fingerprint(images, digests=digests) == files_fingerprint(images)
    assert digests.hashed == len(images)


def test_a_missing_image_is_a_file_not_found(data_dir):
    image_files(data_dir)[0].unlink()
    with pytest.raises(FileNotFoundError):
        data_fingerprint(data_dir, use_cache=False)


def test_describe_data_says_what_the_data_is(data_dir):
    text = describe_data(data_dir)
    assert text.startswith("sample, ") and "train" in text and "test images" in text
    (data_dir / "conserviz-sample.json").unlink()
    assert describe_data(data_dir).startswith("competition data, ")


# --- provenance records and sidecars ---------------------------------------------------------------


def test_an_artifact_matches_only_what_it_was_made_from(data_dir, sample_dir, tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    splits = out / "splits.csv"
    model = out / "model.pt"
    model.write_bytes(b"weights v1")
    assert check_matches(splits, {}) == (False, "splits.csv does not exist yet")
    splits.write_text("id,split\nZJ000000,train\n")
    assert check_matches(splits, {})[1].startswith("splits.csv has no provenance record")

    settings = {"arch": "resnet50", "seed": 0}
    made = make_provenance(data=sample_dir, data_part="train", settings=settings, inputs={"model.pt": model},
                           extra={"temperature": 1.3}, cache_dir=tmp_path / "digests")
    path = write_sidecar(splits, made)
    assert path == sidecar_path(splits) == out / "splits.csv.provenance.json"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    record = read_sidecar(splits)
    assert record["artifact"] == "splits.csv" and record["extra"] == {"temperature": 1.3}
    assert record["data"]["part"] == "train" and "torch" in record["versions"]

    def now(**changes):
        options = dict(data=sample_dir, data_part="train", settings=settings, inputs={"model.pt": model},
                       cache_dir=tmp_path / "digests")
        options.update(changes)
        return make_provenance(**options)

    assert check_matches(splits, now()) == (True, "")  # the extra fields are not compared
    # Other data: another folder, described, so the learner sees what the old artifact came from.
    labels = data_dir / "train_labels.csv"
    labels.write_text(labels.read_text().replace("1.0", "1.00", 1))
    ok, reason = check_matches(splits, now(data=data_dir))
    assert not ok and reason.startswith("splits.csv was made from other data (sample, ")
    assert str(sample_dir) in reason
    ok, reason = check_matches(splits, now(settings={"arch": "efficientnet_lite0", "seed": 0}))
    assert (ok, reason) == (False, "splits.csv was made with other settings (arch: resnet50 → efficientnet_lite0)")
    model.write_bytes(b"weights v2")
    assert check_matches(splits, now()) == (False, "splits.csv was made from another model.pt")
    model.write_bytes(b"weights v1")
    splits.write_text("id,split\nZJ000000,eval\n")  # changed by hand after its record was written
    assert check_matches(splits, now()) == (False, "splits.csv was changed after its provenance record was written")


def test_data_changed_in_place_is_reported_as_such(data_dir, tmp_path):
    artifact = tmp_path / "metrics.json"
    artifact.write_text("{}")
    write_sidecar(artifact, make_provenance(data=data_dir, data_part="labels", cache_dir=tmp_path / "d"))
    labels = data_dir / "train_labels.csv"
    labels.write_text(labels.read_text().replace("1.0", "1.00", 1))
    ok, reason = check_matches(artifact, make_provenance(data=data_dir, data_part="labels", cache_dir=tmp_path / "d"))
    assert not ok and reason.startswith(f"metrics.json was made from other data: the data in {data_dir} has changed")


def test_settings_may_be_a_dataclass_and_paths_are_stored_as_text(tmp_path):
    from dataclasses import dataclass
    from pathlib import Path

    @dataclass
    class Recipe:
        lr: float = 1e-3
        folder: Path = Path("/x")
        sizes: tuple = (1, 2)

    record = make_provenance(settings=Recipe())
    assert record["settings"] == {"lr": 1e-3, "folder": "/x", "sizes": [1, 2]} and record["data"] is None
    artifact = tmp_path / "a.csv"
    artifact.write_text("x")
    write_sidecar(artifact, record)
    assert check_matches(artifact, make_provenance(settings=Recipe()))[0]
    assert not check_matches(artifact, make_provenance(settings=Recipe(lr=1e-2)))[0]


def test_check_matches_compares_only_what_the_reader_needs(tmp_path):
    artifact = tmp_path / "metrics.json"
    artifact.write_text("{}")
    model = tmp_path / "model.pt"
    model.write_bytes(b"one")
    write_sidecar(artifact, make_provenance(settings={"split": "a", "lr": 1}, inputs={"model.pt": model}))
    same_model = make_provenance(settings={"split": "b"}, inputs={"model.pt": model})
    assert check_matches(artifact, same_model)[0] is False
    assert check_matches(artifact, same_model, ignore=("settings",)) == (True, "")
    assert check_matches(artifact, make_provenance(settings={"split": "a", "lr": 2}, inputs={"model.pt": model}),
                         settings_keys=("split",)) == (True, "")
    model.write_bytes(b"two")  # another model: the record no longer belongs to it
    ok, reason = check_matches(artifact, make_provenance(inputs={"model.pt": model}), ignore=("data", "settings"))
    assert not ok and reason == "metrics.json was made from another model.pt"
    with pytest.raises(ValueError, match="ignore takes parts"):
        check_matches(artifact, same_model, ignore=("versions",))


def test_a_record_without_a_digest_survives_the_file_being_rewritten(tmp_path):
    from conserviz_utils.course.provenance import remove_with_sidecar

    state = tmp_path / "fine_tune_resume.pt"
    expected = make_provenance(settings={"recipe": {"seed": 0}})
    write_sidecar(state, expected, digest=False)
    state.write_bytes(b"epoch 1")
    state.write_bytes(b"epoch 2")
    assert check_matches(state, expected) == (True, "")
    assert remove_with_sidecar(state) is True
    assert not state.exists() and not sidecar_path(state).exists()
