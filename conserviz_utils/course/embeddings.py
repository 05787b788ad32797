"""Cached embeddings: push every image through the frozen backbone once and keep the numbers.

With a frozen backbone, every epoch of ordinary training pushes the same images through the same
network to get the same embeddings; only the small head changes. So on a CPU the course's first
step computes the embeddings once (:func:`compute_embeddings`), keeps them on disk, and trains the
head on them (:func:`fit_head`): an epoch over 16,000 cached embeddings takes a fraction of a
second instead of the better part of an hour. The head trained here is the model's own
``model.head`` module, so afterwards the whole :class:`~conserviz_utils.models.ConservizNet`
predicts from images, saves as a checkpoint and fine-tunes end to end as usual.

The embeddings cache is keyed on everything that changes the numbers: the architecture and a hash
of the backbone's weights, the image ids, their files (path and content, see
``provenance.files_fingerprint``), the transform and the precision. A changed key never matches an
old file, so a stale cache cannot be read by mistake; the folder is safe to delete at any time.

Full disks fail cleanly: the space of a new entry is reserved before anything is computed
(``os.posix_fallocate``) and the rows go in with ordinary writes, never through a memory-mapped
file, so a full disk raises a :class:`~conserviz_utils.errors.ConservizError` naming the folder and
the space needed instead of killing the process with SIGBUS. Leftovers of killed runs are removed
at the next start and old entries are pruned (:mod:`conserviz_utils.course.embedding_cache`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from conserviz_utils.runtime.batches import raise_load_error
from conserviz_utils.data import ImagesDataset, default_transform, make_loader
from conserviz_utils.runtime.device import choose_precision, pick_device
from conserviz_utils.errors import ConservizError, DataValidationError, ImageLoadError
from conserviz_utils.files.fileio import atomic_write_json
from conserviz_utils.models import ARCHITECTURES, model_info
from conserviz_utils.course.embedding_cache import NpyRowWriter, prune_cache, remove_stale_partials
from conserviz_utils.course.provenance import FileDigests, files_fingerprint

__all__ = [
    "DEFAULT_FEATURES_DIR",
    "Embeddings",
    "compute_embeddings",
    "embeddings_key",
    "load_embeddings",
    "weights_fingerprint",
]

#: Where :func:`compute_embeddings` keeps its files unless told otherwise (safe to delete).
DEFAULT_FEATURES_DIR = Path(__file__).resolve().parents[2] / "outputs" / "features"

# Bump when the way embeddings are computed changes, so old cache files stop matching.
# 2: the image files are keyed on their content, not their size and modification time.
_CACHE_FORMAT = 2

#: Subfolder of the cache folder holding the images' content digests (``provenance.FileDigests``).
DIGESTS_FOLDER = "file-digests"


# --- cached embeddings -----------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Embeddings:
    """One embedding per image, row ``i`` belonging to ``ids[i]``.

    Attributes:
        ids: The image ids, in row order.
        values: (n_images, embedding_dim) float32 array; memory-mapped when read from the cache,
            so only the rows used are paged in.
        path: The cache file, or None for embeddings that only live in memory.
        key: The cache key (see :func:`embeddings_key`), or None.
        reused: True when the values were read from an existing cache file.
        seconds: Time spent computing (or loading) them.
        precision: How they were computed, e.g. "bf16, measured: bf16 1.84x fp32".
    """

    ids: pd.Index
    values: np.ndarray
    path: Path | None = None
    key: str | None = None
    reused: bool = False
    seconds: float = 0.0
    precision: str | None = None

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[0] != len(self.ids):
            raise ValueError(
                f"values must be (len(ids), dim) = ({len(self.ids)}, dim), got {self.values.shape}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        """The embedding size."""
        return int(self.values.shape[1])

    def select(self, ids: Sequence | pd.Index) -> Embeddings:
        """The embeddings of ``ids``, in that order (e.g. the train or eval ids of a split)."""
        wanted = pd.Index(ids, name="id")
        positions = self.ids.get_indexer(wanted)
        missing = wanted[positions < 0]
        if len(missing):
            raise DataValidationError(
                "ids without an embedding",
                path=self.path,
                rows=list(missing),
                fix="compute embeddings for a features frame that includes these ids",
            )
        return Embeddings(
            ids=wanted,
            values=np.asarray(self.values[positions]),
            path=self.path,
            key=self.key,
            reused=self.reused,
            seconds=self.seconds,
            precision=self.precision,
        )

    def to_frame(self) -> pd.DataFrame:
        """The embeddings as a DataFrame indexed by id, one column per dimension."""
        return pd.DataFrame(np.asarray(self.values), index=self.ids.rename("id"))

    def __repr__(self) -> str:
        where = f", cache={self.path.name!r}" if self.path is not None else ""
        how = "reused" if self.reused else "computed"
        precision = f" in {self.precision}" if self.precision else ""
        return (
            f"Embeddings({len(self):,} images × {self.dim} dims, {how}{precision} in {self.seconds:.1f} s{where})"
        )


def weights_fingerprint(module: nn.Module) -> str:
    """A hash of a module's weights and buffers: it changes whenever any number changes."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        # Through uint8 bytes: numpy has no bfloat16, and this also covers integer buffers.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _files_digest(paths: Sequence[str], digests: FileDigests | None = None) -> str:
    """A hash of each file's path and content (in row order); unchanged files are not re-read."""
    try:
        return files_fingerprint(paths, digests=digests)
    except FileNotFoundError:
        missing = [path for path in paths if not os.path.exists(path)]
        if not missing:
            raise
    raise ImageLoadError(
        "image files listed in the features frame are missing",
        path=Path(missing[0]),
        column="path",
        rows=missing,
        fix="check the data folder (load_competition reports every missing file)",
    )


def _arch_of(model: nn.Module) -> str:
    """The model's architecture name (``model.arch``), or its class name for other modules."""
    return str(getattr(model, "arch", type(model).__name__))


def embeddings_key(
    model: nn.Module, features: pd.DataFrame, transform, precision: str, *, digests: FileDigests | None = None
) -> str:
    """The cache key of the embeddings of ``features`` under ``model``'s backbone.

    It covers the architecture, a hash of the backbone's weights, the ids, each image file's path
    and content, the transform and the precision: change any of them and the key changes, so an
    old cache file is never read for new data or weights. An image replaced by another of the
    same size, with its modification time set back, still changes the key.

    Args:
        digests: The cache of file digests (``provenance.FileDigests``); default: in memory only,
            so every image is read once.
    """
    parts = {
        "format": _CACHE_FORMAT,
        "arch": _arch_of(model),
        "backbone": weights_fingerprint(model.backbone),
        "ids": hashlib.blake2b("\n".join(map(str, features.index)).encode(), digest_size=16).hexdigest(),
        "files": _files_digest([str(p) for p in features["path"]], digests),
        # Built-in transforms have stable reprs; one holding a lambda's address gets a new
        # key in every session, which costs a recomputation but never a stale read.
        "transform": repr(transform),
        "precision": precision,
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def _cache_files(cache_dir: Path, arch: str, key: str) -> tuple[Path, Path]:
    """The (values .npy, sidecar .json) paths of one cache entry."""
    stem = f"{arch}-{key[:20]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def load_embeddings(path: str | os.PathLike) -> Embeddings:
    """Read a cache file written by :func:`compute_embeddings` (memory-mapped, read-only)."""
    values_path = Path(path).with_suffix(".npy")
    sidecar = values_path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        values = np.load(values_path, mmap_mode="r", allow_pickle=False)
        meta["ids"], meta["dim"], meta["key"]  # noqa: B018  (a sidecar missing these is damaged)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConservizError(
            f"not a readable embeddings cache entry ({exc})",
            path=values_path,
            fix="delete it; compute_embeddings writes it again",
        ) from exc
    if values.shape != (len(meta["ids"]), meta["dim"]) or values.dtype != np.float32:
        raise ConservizError(
            f"holds {values.shape} {values.dtype} values, its sidecar says "
            f"({len(meta['ids'])}, {meta['dim']}) float32",
            path=values_path,
            fix="delete it and its .json sidecar; compute_embeddings writes them again",
        )
    return Embeddings(ids=pd.Index(meta["ids"], name="id"), values=values, path=values_path, key=meta["key"])


def _check_features(features: pd.DataFrame) -> None:
    """The features frame needs a ``path`` column and unique ids."""
    if not isinstance(features, pd.DataFrame) or "path" not in features.columns:
        raise DataValidationError(
            "the features frame has no 'path' column",
            column="path",
            fix="pass data.train_features or data.test_features from load_competition",
        )
    if len(features) == 0:
        raise DataValidationError("the features frame is empty", fix="pass at least one image")
    repeated = features.index[features.index.duplicated()]
    if len(repeated):
        raise DataValidationError(
            "duplicate ids in the features frame",
            column="id",
            rows=list(repeated),
            fix="each image must appear once",
        )


def compute_embeddings(
    model: nn.Module,
    features: pd.DataFrame,
    *,
    transform=None,
    cache_dir: str | os.PathLike | None = DEFAULT_FEATURES_DIR,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    image_cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    progress: bool = True,
) -> Embeddings:
    """Embed every image of ``features`` with ``model.backbone`` once, cached on disk.

    The backbone runs in eval mode under ``torch.inference_mode``, channels_last, with bf16
    autocast where ``device.choose_precision`` chooses it. The cache file's space is reserved before the
    first image is read (a full disk fails at once, with a clear error), and batches are written
    into it as they come, so no tensor of all the images (nor of all the embeddings) is ever held
    in memory. A later call with the same key (see :func:`embeddings_key`) reads the file instead
    of computing anything. Like ``train.fit``, it moves the backbone to ``device`` in the
    channels-last layout, in place. Leftovers of killed runs in ``cache_dir`` are removed first,
    and old entries pruned after a new one is written (`embedding_cache.prune_cache`).

    Args:
        model: A model from ``build_model`` (anything with ``.backbone`` returning (N, D)).
        features: Frame indexed by id with a ``path`` column (``data.train_features``).
        transform: Image transform; default: ``default_transform`` for the model's input size.
        cache_dir: Folder of the cache files; None keeps the result in memory only.
        batch_size: Images per forward pass.
        num_workers: DataLoader workers; None picks from the CPU count (``make_loader``).
        device: "auto", "cpu", "cuda", "mps" or a torch.device.
        precision: "auto", "bf16", "fp16" or "fp32" (see ``device.choose_precision``).
        image_cache_dir: Read the images through the pre-resized image cache in this folder
            (see ``image_cache``); the pixels, and so the embeddings, are the same.
        refresh: Recompute even when a matching cache file exists.
        progress: Show a tqdm progress bar.

    Returns:
        The :class:`Embeddings`, memory-mapped from the cache file when there is one.

    Raises:
        ConservizError: the cache folder is full or not writable (naming it, the space needed
            and the fix); nothing partial is left behind.
    """
    _check_features(features)
    if not hasattr(model, "backbone"):
        raise TypeError(f"expected a model from build_model with a .backbone, got {type(model).__name__}")
    started = time.perf_counter()
    device = pick_device(device)
    # "auto" on a CPU: bf16 where a timed probe of this backbone at this batch size says it is
    # faster (remembered per machine); the embeddings of both agree closely (test_embeddings).
    choice = choose_precision(precision, device, model.backbone, batch_size, "inference", arch=_arch_of(model))
    precision_name = choice.precision
    if transform is None:
        transform = _default_transform_for(model)

    digests = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        remove_stale_partials(cache_dir)
        # The images' content digests live with the cache, so a rerun only stats the files.
        digests = FileDigests(cache_dir / DIGESTS_FOLDER)
    key = embeddings_key(model, features, transform, precision_name, digests=digests)
    arch = _arch_of(model)
    ids = pd.Index(features.index, name="id")
    if cache_dir is not None:
        digests.save()
        values_path, sidecar = _cache_files(cache_dir, arch, key)
        if not refresh and sidecar.is_file() and values_path.is_file():
            try:
                cached = load_embeddings(values_path)
            except ConservizError:
                cached = None  # a damaged entry is simply computed again
            if cached is not None and cached.key == key and list(cached.ids) == list(map(str, ids)):
                with contextlib.suppress(OSError):  # the sidecar's time is the entry's last use
                    os.utime(sidecar)
                return Embeddings(
                    ids=ids,
                    values=cached.values,
                    path=values_path,
                    key=key,
                    reused=True,
                    seconds=time.perf_counter() - started,
                    precision=choice.label,
                )

    dim = _embedding_dim(model)
    row_of = {str(image_id): row for row, image_id in enumerate(ids)}

    if cache_dir is None:
        values = np.empty((len(ids), dim), dtype=np.float32)
        loader = make_loader(ImagesDataset(features, transform=transform, cache_dir=image_cache_dir),
                             batch_size=batch_size, shuffle=False, num_workers=num_workers, device=device)
        _embed_into(model.backbone, loader, values.__setitem__, len(ids), row_of, device, precision_name, progress)
        return Embeddings(ids=ids, values=values, key=key, seconds=time.perf_counter() - started,
                          precision=choice.label)

    # Reserve the space before any image is read: a full disk fails now, not after the work.
    writer = NpyRowWriter(values_path, (len(ids), dim))
    try:
        loader = make_loader(ImagesDataset(features, transform=transform, cache_dir=image_cache_dir),
                             batch_size=batch_size, shuffle=False, num_workers=num_workers, device=device)
        _embed_into(model.backbone, loader, writer.write, len(ids), row_of, device, precision_name, progress)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    meta = {"key": key, "arch": arch, "dim": dim, "precision": precision_name, "ids": list(map(str, ids))}
    try:
        # Written last: the entry counts as complete from here.
        atomic_write_json(sidecar, meta, what="embeddings cache record")
    except BaseException:
        values_path.unlink(missing_ok=True)  # values without their record would never be read
        raise
    prune_cache(cache_dir, protect=(values_path,))
    return Embeddings(
        ids=ids,
        values=np.load(values_path, mmap_mode="r", allow_pickle=False),
        path=values_path,
        key=key,
        seconds=time.perf_counter() - started,
        precision=choice.label,
    )


def _default_transform_for(model: nn.Module):
    """The evaluation transform for the model's architecture (input size and normalisation)."""
    arch = getattr(model, "arch", None)
    if arch not in ARCHITECTURES:
        return default_transform()
    info = model_info(arch)
    return default_transform(size=info.input_size, mean=info.mean, std=info.std)


def _embedding_dim(model: nn.Module) -> int:
    """The size of the backbone's embedding: ``model.embedding_dim``, else the head's input."""
    dim = getattr(model, "embedding_dim", None)
    if dim is None:
        first_linear = next((m for m in model.head.modules() if isinstance(m, nn.Linear)), None)
        dim = getattr(first_linear, "in_features", None)
    if dim is None:
        raise TypeError("cannot tell the embedding size: give the model an .embedding_dim attribute")
    return int(dim)


def _embed_into(
    backbone: nn.Module,
    loader,
    store,
    n_rows: int,
    row_of: dict,
    device: torch.device,
    precision: str,
    progress: bool,
) -> None:
    """Run the backbone over the loader batch by batch, handing each batch to ``store(rows, values)``."""
    was_training = backbone.training
    backbone.eval()  # BatchNorm running statistics and dropout must not change the features
    backbone.to(device=device, memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    filled = np.zeros(n_rows, dtype=bool)
    try:
        with torch.inference_mode(), autocast:
            for batch in tqdm(loader, desc="embeddings", unit="batch", disable=not progress, leave=False):
                raise_load_error(batch)
                images = batch["image"].to(device, non_blocking=True, memory_format=torch.channels_last)
                embedding = backbone(images).float().cpu().numpy()
                rows = [row_of[str(image_id)] for image_id in batch["image_id"]]
                store(rows, embedding.reshape(len(rows), -1))
                filled[rows] = True
    finally:
        backbone.train(was_training)
    if not filled.all():
        missing = [image_id for image_id, row in row_of.items() if not filled[row]]
        raise ConservizError(
            "some images produced no embedding",
            rows=missing,
            fix="check that these images open (the dataset must not skip them)",
        )
