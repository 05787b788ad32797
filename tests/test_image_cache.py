"""The pre-resized image cache: same pixels as a fresh decode, invalidated by edits, safe to delete."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conserviz_utils import ImageLoadError
from conserviz_utils.files import image_cache as image_cache_module
from conserviz_utils.data import ImagesDataset, default_transform, load_competition
from conserviz_utils.files.image_cache import ImageCache
from conserviz_utils.files.images import open_image

SIZE = (40, 24)  # (width, height): small, and not square, to catch a swapped axis


@pytest.fixture()
def images(sample_dir, tmp_path):
    """Eight sample JPEGs copied into a folder the test may edit."""
    folder = tmp_path / "images"
    folder.mkdir()
    sources = sorted((sample_dir / "train_features").glob("*.jpg"))[:8]
    copies = []
    for source in sources:
        shutil.copy2(source, folder / source.name)
        copies.append(folder / source.name)
    return copies


@pytest.fixture()
def cache(tmp_path):
    return ImageCache(SIZE, root=tmp_path / "cache")


def forbid_decoding(monkeypatch):
    """Make any decode fail, so that a successful load proves it came from the cache."""

    def refuse(*args, **kwargs):
        raise AssertionError("decoded although the image was cached")

    monkeypatch.setattr(image_cache_module, "open_image", refuse)


def test_a_cache_hit_gives_the_pixels_of_a_fresh_decode_and_resize(images, cache, monkeypatch):
    fresh = [np.asarray(open_image(path, target_size=SIZE)) for path in images]
    first = [np.asarray(cache.load(path)) for path in images]  # misses: decoded and stored
    assert all(cache.contains(path) for path in images)
    forbid_decoding(monkeypatch)
    second = [cache.load(path) for path in images]
    for expected, miss, hit in zip(fresh, first, second):
        assert hit.mode == "RGB" and hit.size == SIZE
        np.testing.assert_array_equal(miss, expected)
        np.testing.assert_array_equal(np.asarray(hit), expected)


def test_an_edited_source_file_is_decoded_afresh(images, cache):
    path = images[0]
    old = np.asarray(cache.load(path))
    old_entry = cache.entry_path(path)
    # Replace the image with another picture: new content, size and modification time.
    Image.open(images[1]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path, quality=70)
    new = np.asarray(cache.load(path))
    assert cache.entry_path(path) != old_entry
    np.testing.assert_array_equal(new, np.asarray(open_image(path, target_size=SIZE)))
    assert not np.array_equal(new, old)
    # Only the modification time changes (e.g. the file was copied in again): a new entry too.
    stat = os.stat(path)
    before = cache.entry_path(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.entry_path(path) != before and not cache.contains(path)


def test_the_entry_depends_on_the_target_size(images, tmp_path):
    small = ImageCache(SIZE, root=tmp_path / "cache")
    square = ImageCache(32, root=tmp_path / "cache")
    assert square.size == (32, 32)
    assert small.entry_path(images[0]) != square.entry_path(images[0])
    assert square.load(images[0]).size == (32, 32)


def test_deleting_the_cache_is_safe(images, cache):
    for path in images:
        cache.load(path)
    shutil.rmtree(cache.root)  # what a user (or make clean) does
    np.testing.assert_array_equal(np.asarray(cache.load(images[0])), np.asarray(open_image(images[0], target_size=SIZE)))
    assert cache.contains(images[0])
    assert cache.clear() == 1
    assert not cache.folder.exists() and cache.clear() == 0


def test_a_damaged_entry_is_rebuilt(images, cache):
    cache.load(images[0])
    entry = cache.entry_path(images[0])
    entry.write_bytes(entry.read_bytes()[:100])  # e.g. the disk filled up during a write
    np.testing.assert_array_equal(np.asarray(cache.load(images[0])), np.asarray(open_image(images[0], target_size=SIZE)))
    assert entry.stat().st_size > 100


def test_build_fills_the_cache_in_parallel_and_reports_failures(images, cache, tmp_path, monkeypatch):
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_text("not a picture")
    report = cache.build([*images, broken], workers=2, progress=False)
    assert (report.total, report.built, report.reused) == (9, 8, 0)
    assert list(report.failed) == [str(broken)] and "broken.jpg" in report.failed[str(broken)]
    assert "8 built" in str(report) and "1 failed" in str(report)
    again = cache.build(images[:5], progress=False)
    assert (again.built, again.reused, again.failed) == (0, 5, {})
    forbid_decoding(monkeypatch)
    for path in images:
        assert cache.load(path).size == SIZE
    with pytest.raises(ImageLoadError, match="not found"):
        cache.load(tmp_path / "images" / "missing.jpg")


def test_images_dataset_reads_through_the_cache_with_identical_tensors(sample_dir, tmp_path, monkeypatch):
    features = load_competition(sample_dir).train_features.iloc[:6]
    transform = default_transform((24, 40))  # (height, width)
    plain = ImagesDataset(features, transform=transform)
    cached = ImagesDataset(features, transform=transform, cache_dir=tmp_path / "cache")
    assert cached.cache.size == SIZE  # the size the dataset decodes at
    expected = [plain[i]["image"] for i in range(len(plain))]
    for i, tensor in enumerate(expected):
        assert torch.equal(cached[i]["image"], tensor)
    forbid_decoding(monkeypatch)
    for i, tensor in enumerate(expected):
        assert torch.equal(cached[i]["image"], tensor)


def test_images_dataset_needs_a_decode_size_to_cache(sample_dir, tmp_path):
    features = load_competition(sample_dir).train_features.iloc[:2]
    no_resize = torch.nn.Identity()  # a transform without a leading Resize decodes at full size
    with pytest.raises(ValueError, match="decode size"):
        ImagesDataset(features, transform=no_resize, cache_dir=tmp_path / "cache")
    explicit = ImagesDataset(features, transform=no_resize, decode_size=SIZE, cache_dir=tmp_path / "cache")
    assert explicit[0]["image"].size == SIZE  # the Pillow image the cache stored, untransformed


def test_a_failed_cache_write_is_an_image_load_error_and_leaves_nothing(images, cache, monkeypatch):
    real_save = np.save

    def disk_full(file, *args, **kwargs):
        file.write(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_cache_module.np, "save", disk_full)
    with pytest.raises(ImageLoadError, match="cannot write the image cache entry") as caught:
        cache.load(images[0])
    monkeypatch.setattr(image_cache_module.np, "save", real_save)
    entry = cache.entry_path(images[0])
    assert caught.value.path == entry and "No space left" in str(caught.value)
    assert "writable" in caught.value.fix
    assert not entry.exists()
    assert [p.name for p in entry.parent.iterdir()] == []  # no temporary file left behind
    # ImageLoadError is what datasets skip with on_error="skip"; the next load simply works.
    assert cache.load(images[0]).size == SIZE
