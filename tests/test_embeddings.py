"""Cached embeddings: backbone outputs of the images, streamed to disk, keyed on what made them."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conserviz_utils import SPECIES, ConservizError, DataValidationError, ImageLoadError
from conserviz_utils.data import default_transform, load_competition
from conserviz_utils.course.embedding_cache import prune_cache, remove_stale_partials
from conserviz_utils.course.embeddings import Embeddings, compute_embeddings, load_embeddings
from conserviz_utils.files.images import open_image

N_CLASSES = len(SPECIES)
SMALL = 32  # image side for the tests: the behaviour does not depend on the size


# --- helpers -----------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """A ConservizNet-shaped toy: ``backbone`` gives pooled embeddings, ``head`` gives logits."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.arch = "tiny"
        self.embedding_dim = dim
        self.backbone = nn.Sequential(
            nn.Conv2d(3, dim, 3, stride=2), nn.BatchNorm2d(dim), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(dim, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class CountingBackbone(nn.Module):
    """Wraps a backbone and records the batch size of every call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        return self.inner(x)


@pytest.fixture(scope="module")
def data(sample_dir):
    return load_competition(sample_dir)


@pytest.fixture()
def few(data, tmp_path):
    """Twelve training images, copied so that a test may touch them: enough to see batching."""
    features = data.train_features.iloc[:12].copy()
    (tmp_path / "images").mkdir()
    copies = []
    for path in features["path"]:
        copy = tmp_path / "images" / os.path.basename(path)
        shutil.copy2(path, copy)
        copies.append(str(copy))
    features["path"] = copies
    return features


def replace_keeping_size_and_mtime(path, other) -> None:
    """Overwrite ``path`` with a smaller image padded to the same size, then set its times back.

    JPEG readers stop at the end-of-image marker, so the padded file is a valid, different image.
    """
    stat = os.stat(path)
    data = open(other, "rb").read()
    assert len(data) <= stat.st_size and data != open(path, "rb").read()
    data += b"\0" * (stat.st_size - len(data))
    with open(path, "wb") as handle:
        handle.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def embed(model, features, tmp_path, **kwargs):
    options = dict(transform=default_transform(SMALL), cache_dir=tmp_path / "features", batch_size=5,
                   num_workers=0, device="cpu", precision="fp32", progress=False)
    options.update(kwargs)
    return compute_embeddings(model, features, **options)


# --- compute_embeddings ------------------------------------------------------------------------


def test_embeddings_are_the_backbone_outputs_of_the_transformed_images(few, tmp_path):
    model = TinyNet()
    emb = embed(model, few, tmp_path)
    assert isinstance(emb, Embeddings) and not emb.reused
    assert emb.values.shape == (12, 6) and emb.values.dtype == np.float32
    assert list(emb.ids) == list(few.index)
    model.eval()
    transform = default_transform(SMALL)
    for image_id in [few.index[0], few.index[7]]:
        image = transform(open_image(few.loc[image_id, "path"], target_size=SMALL))
        with torch.no_grad():
            expected = model.backbone(image[None]).numpy()[0]
        np.testing.assert_allclose(emb.select([image_id]).values[0], expected, rtol=1e-5, atol=1e-6)
    frame = emb.to_frame()
    assert frame.shape == (12, 6) and frame.index.equals(pd.Index(few.index, name="id"))


def test_embeddings_are_cached_on_disk_and_reused(few, tmp_path):
    model = TinyNet()
    counter = CountingBackbone(model.backbone)
    model.backbone = counter
    first = embed(model, few, tmp_path)
    assert first.path.is_file() and first.path.with_suffix(".json").is_file()
    assert counter.calls == [5, 5, 2]  # streamed batch by batch, never all images at once
    second = embed(model, few, tmp_path)
    assert second.reused and second.path == first.path and counter.calls == [5, 5, 2]
    np.testing.assert_array_equal(np.asarray(second.values), np.asarray(first.values))
    assert isinstance(second.values, np.memmap)  # read lazily from the file
    assert not list((tmp_path / "features").glob("*.partial"))
    reread = load_embeddings(first.path)
    assert reread.key == first.key and list(reread.ids) == list(few.index)
    embed(model, few, tmp_path, refresh=True)
    assert len(counter.calls) == 6
    # A damaged entry (here its sidecar) is computed again, not read.
    first.path.with_suffix(".json").write_text("{}")
    assert not embed(model, few, tmp_path).reused and len(counter.calls) == 9


def test_the_cache_key_follows_weights_files_transform_and_ids(few, tmp_path):
    model = TinyNet()
    base = embed(model, few, tmp_path)
    with torch.no_grad():
        model.backbone[0].weight[0, 0, 0, 0] += 0.5
    after_training = embed(model, few, tmp_path)
    assert not after_training.reused and after_training.key != base.key

    by_size = sorted(few["path"], key=os.path.getsize)
    path = by_size[-1]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, content unchanged
    assert embed(model, few, tmp_path).reused  # the key follows the content, not the mtime
    replace_keeping_size_and_mtime(path, by_size[0])
    replaced = embed(model, few, tmp_path)
    assert not replaced.reused
    row = list(few["path"]).index(path)
    assert not np.allclose(replaced.values[row], after_training.values[row])  # really another image

    assert not embed(model, few, tmp_path, transform=default_transform(SMALL + 8)).reused
    assert not embed(model, few.iloc[:6], tmp_path).reused
    assert embed(model, few.iloc[:6], tmp_path).reused


def test_embeddings_read_through_the_image_cache_are_the_same(few, tmp_path):
    model = TinyNet()
    plain = embed(model, few, tmp_path, cache_dir=None)
    cached = embed(model, few, tmp_path, cache_dir=None, image_cache_dir=tmp_path / "image-cache")
    np.testing.assert_array_equal(cached.values, plain.values)
    assert len(list((tmp_path / "image-cache").rglob("*.npy"))) == len(few)


def test_embeddings_can_stay_in_memory(few, tmp_path):
    emb = embed(TinyNet(), few, tmp_path, cache_dir=None)
    assert emb.path is None and not isinstance(emb.values, np.memmap)
    assert not (tmp_path / "features").exists()


def test_bf16_embeddings_are_close_to_fp32(few, tmp_path):
    model = TinyNet()
    exact = embed(model, few, tmp_path, cache_dir=None)
    rounded = embed(model, few, tmp_path, cache_dir=None, precision="bf16")
    assert rounded.key != exact.key  # another precision is another cache entry
    np.testing.assert_allclose(rounded.values, exact.values, rtol=0.05, atol=0.02)


def test_compute_embeddings_refuses_bad_features(few, tmp_path):
    with pytest.raises(DataValidationError, match="'path'"):
        embed(TinyNet(), few.drop(columns=["path"]), tmp_path)
    broken = few.copy()
    broken.loc[broken.index[2], "path"] = str(tmp_path / "gone.jpg")
    with pytest.raises(ImageLoadError, match="missing") as excinfo:
        embed(TinyNet(), broken, tmp_path)
    assert "gone.jpg" in str(excinfo.value)
    # The same from a loader worker: the error itself, not torch's re-raise of the worker's traceback.
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not a jpeg")
    broken.loc[broken.index[2], "path"] = str(garbage)
    with pytest.raises(ImageLoadError, match="not an image Pillow can read") as excinfo:
        embed(TinyNet(), broken, tmp_path, num_workers=1)
    assert excinfo.value.rows == [str(broken.index[2])] and excinfo.value.path == garbage
    assert "Traceback" not in str(excinfo.value)
    with pytest.raises(DataValidationError, match="duplicate ids"):
        embed(TinyNet(), pd.concat([few.iloc[:2], few.iloc[:1]]), tmp_path)


# --- full disks, read-only folders, leftovers and pruning --------------------------------------


def mount_tmpfs(folder, options: str) -> None:
    """Mount a small tmpfs on ``folder``, or skip the test where that is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture()
def mounts():
    mounted = []
    yield mounted
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill_up(folder) -> None:
    """Write into ``folder`` until its file system is full."""
    with open(folder / "filler", "wb") as handle:
        with pytest.raises(OSError) as excinfo:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
    assert excinfo.value.errno == errno.ENOSPC


def no_memory_mapped_writes(monkeypatch) -> None:
    """A memory-mapped write into a sparse file SIGBUSes on a full disk: none may happen."""
    read_only_map = np.lib.format.open_memmap

    def read_only(filename, mode="r+", *args, **kwargs):
        assert mode == "r", f"open_memmap(mode={mode!r}): a memory-mapped write"
        return read_only_map(filename, mode, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "open_memmap", read_only)


def test_a_full_disk_fails_before_any_work_with_a_clear_error(few, tmp_path, mounts, monkeypatch):
    cache = tmp_path / "small-disk"
    mount_tmpfs(cache, "size=1m")
    mounts.append(cache)
    fill_up(cache)
    no_memory_mapped_writes(monkeypatch)
    model = TinyNet()
    counter = CountingBackbone(model.backbone)
    model.backbone = counter
    with pytest.raises(ConservizError, match="not enough disk space") as excinfo:
        embed(model, few, tmp_path, cache_dir=cache)
    message = str(excinfo.value)
    assert str(cache) in message and "this entry needs 416 bytes" in message
    assert "make clean" in message and "cache_dir=None" in message
    assert counter.calls == []  # found before a single image was embedded
    assert sorted(p.name for p in cache.iterdir()) == ["filler"]  # nothing partial left
    (cache / "filler").unlink()
    assert embed(model, few, tmp_path, cache_dir=cache).path.parent == cache  # room again: it works


def test_a_simulated_full_disk_fails_cleanly_in_preallocation_and_mid_write(few, tmp_path, monkeypatch):
    no_memory_mapped_writes(monkeypatch)
    cache = tmp_path / "features"

    def no_space(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(ConservizError, match="not enough disk space") as excinfo:
        embed(TinyNet(), few, tmp_path)
    assert str(cache) in str(excinfo.value)
    assert not list(cache.glob("*.partial")) and not list(cache.glob("*.npy"))
    monkeypatch.undo()

    # A disk that fills up during the writes (a copy-on-write file system, a quota) fails too.
    no_memory_mapped_writes(monkeypatch)
    real_pwrite, writes = os.pwrite, []

    def pwrite_then_full(fd, data, offset):
        writes.append(offset)
        if len(writes) > 2:  # the header and the first batch go in
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite_then_full)
    with pytest.raises(ConservizError, match="not enough disk space"):
        embed(TinyNet(), few, tmp_path)
    assert not list(cache.glob("*.partial")) and not list(cache.glob("*.npy")) and not list(cache.glob("*.json"))


def test_a_read_only_cache_folder_gives_one_error_naming_the_real_target(few, tmp_path, mounts):
    cache = tmp_path / "read-only"
    if os.geteuid() == 0:  # root writes through permissions: a read-only mount it is
        mount_tmpfs(cache, "ro,size=1m")
        mounts.append(cache)
    else:
        cache.mkdir()
        cache.chmod(0o555)
    try:
        with pytest.raises(ConservizError) as excinfo:
            embed(TinyNet(), few, tmp_path, cache_dir=cache)
    finally:
        if os.geteuid() != 0:
            cache.chmod(0o755)
    error = excinfo.value
    assert error.path.parent == cache and error.path.suffix == ".npy" and error.path.name.startswith("tiny-")
    assert ".partial" not in str(error) and ".tmp" not in str(error) and "not writable" in str(error)
    assert error.__cause__ is None and error.__suppress_context__  # one error, not a chain


def test_leftovers_of_dead_processes_are_removed_and_a_live_ones_kept(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        files = {
            "dead-partial": f"resnet50-abc.npy.{dead}.partial",
            "dead-fileio": f".conserviz-metrics.json.{dead}-0a1b2c3d.tmp",
            "dead-checkpoint": f".model.pt.{dead}-deadbeef.tmp",
            "dead-submission": f".submission.csv.{dead}.tmp",
            "live-partial": f"resnet50-abc.npy.{live.pid}.partial",
            "live-fileio": f".conserviz-metrics.json.{live.pid}-0a1b2c3d.tmp",
            "own-partial": f"resnet50-def.npy.{os.getpid()}.partial",
            "reused-pid": f".model.pt.{live.pid}-cafe0123.tmp",  # written before that process started
            "old-anonymous": "tmpab12cd.partial",
            "young-anonymous": "tmpef34gh.partial",
            "real-entry": "resnet50-abc.npy",
            "other-tmp": "notes.tmp",
        }
        for name in files.values():
            (tmp_path / name).write_bytes(b"x")
        hour_ago = time.time() - 3600 * 2
        for key in ("reused-pid", "old-anonymous"):
            os.utime(tmp_path / files[key], (hour_ago, hour_ago))
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / files["dead-partial"]).write_bytes(b"x")

        removed = {p.name for p in remove_stale_partials(tmp_path)}
        assert removed == {files[k] for k in ("dead-partial", "dead-fileio", "dead-checkpoint", "dead-submission",
                                              "reused-pid", "old-anonymous")}
        left = {p.name for p in tmp_path.iterdir()}
        assert {files[k] for k in ("live-partial", "live-fileio", "own-partial", "young-anonymous", "real-entry",
                                   "other-tmp")} <= left
        assert (tmp_path / "sub" / files["dead-partial"]).exists()  # not recursive unless asked
        assert [p.name for p in remove_stale_partials(tmp_path, recursive=True)] == [files["dead-partial"]]
    finally:
        live.kill()
        live.wait()


def test_compute_embeddings_removes_leftovers_and_prunes_old_entries(few, tmp_path):
    cache = tmp_path / "features"
    cache.mkdir()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    (cache / f"tiny-0123.npy.{dead}.partial").write_bytes(b"\0" * 1000)
    now = time.time()
    for age_days, stem in [(1, "tiny-old1"), (2, "tiny-old2"), (40, "tiny-ancient"), (1, "other-arch")]:
        for suffix in (".npy", ".json"):
            (cache / f"{stem}{suffix}").write_bytes(b"{}")
            os.utime(cache / f"{stem}{suffix}", (now - age_days * 86400,) * 2)
    emb = embed(TinyNet(), few, tmp_path)
    names = {p.name for p in cache.iterdir()}
    assert not any(name.endswith(".partial") for name in names)
    assert "tiny-ancient.npy" not in names and {"tiny-old1.npy", "tiny-old2.npy", "other-arch.npy"} <= names
    # Beyond the newest N entries of an architecture, the least recently used go.
    removed = prune_cache(cache, keep_per_arch=2, protect=[emb.path])
    assert {p.name for p in removed} == {"tiny-old2.npy", "tiny-old2.json"}
    assert emb.path.is_file() and (cache / "tiny-old1.npy").is_file() and (cache / "other-arch.npy").is_file()
    assert load_embeddings(emb.path).key == emb.key


def test_a_head_on_bf16_embeddings_scores_like_one_on_fp32(sample_dir):
    """The course's pretrained backbone in bf16: the head's eval scores match fp32's closely.

    Tolerance: 0.05 in eval log loss and 0.05 in accuracy (8 of 160 images), far below the gaps
    the course reads (the split leak is ~0.5 in log loss, fine-tuning vs head ~0.1).
    """
    from conserviz_utils.course.features import fit_head
    from conserviz_utils.models import build_model
    from conserviz_utils.split import split_by_site

    data = load_competition(sample_dir)
    split = split_by_site(data.train_features, data.train_labels, test_size=0.3, seed=0)
    scores = {}
    for precision in ("fp32", "bf16"):
        model = build_model("efficientnet_lite0", pretrained=True, seed=0, progress=False)
        emb = compute_embeddings(model, data.train_features, cache_dir=None, precision=precision, progress=False)
        history = fit_head(model.head, emb.select(split.train), data.train_labels.loc[split.train],
                           emb.select(split.eval), data.train_labels.loc[split.eval],
                           epochs=15, lr=1e-3, batch_size=32, seed=0, progress=False)
        scores[precision] = history.dropna(subset=["eval_log_loss"]).iloc[-1]
        assert precision in emb.precision
    assert abs(scores["bf16"].eval_log_loss - scores["fp32"].eval_log_loss) < 0.05
    assert abs(scores["bf16"].eval_accuracy - scores["fp32"].eval_accuracy) <= 0.05
