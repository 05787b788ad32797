"""The competition's tables and images as PyTorch batches (taught in notebooks 01 and 04).

`load_competition` reads the four CSVs (checked line by line in `files.competition`); the
transforms turn one photo into a normalised tensor, `ImagesDataset` makes the items and
`make_loader` the batches. A batch is a dict: ``image_id`` (list of str), ``image``
(N×3×H×W float), ``label`` (N×C one-hot, when the dataset has labels) and ``skipped``
(``(image_id, reason)`` of each unreadable image left out under ``on_error="skip"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision.transforms as legacy_transforms
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info
from torchvision.transforms import v2

from conserviz_utils import IMAGENET_MEAN, IMAGENET_STD
from conserviz_utils.errors import DataValidationError, ImageLoadError
from conserviz_utils.files.competition import is_sample_folder, validated_tables
from conserviz_utils.files.image_cache import ImageCache
from conserviz_utils.files.images import as_size, open_image
from conserviz_utils.labels import species_names
from conserviz_utils.runtime.cpu import available_cpus

__all__ = [
    "CompetitionData", "ImagesDataset", "collate_images", "default_num_workers", "default_transform",
    "load_competition", "make_loader", "path_column", "train_transform",
]

# --- the competition's tables --------------------------------------------------------------


@dataclass(repr=False)
class CompetitionData:
    """The four validated competition tables, indexed by image id, and the sorted species list.

    The features frames keep the CSV's columns (``filepath``, ``site``, …) and gain ``path``,
    the absolute image path.
    """

    root: Path
    train_features: pd.DataFrame
    train_labels: pd.DataFrame
    test_features: pd.DataFrame
    submission_format: pd.DataFrame
    species: list[str]

    @property
    def train_species(self) -> pd.Series:
        """The species name of each training image (Series id → species)."""
        return species_names(self.train_labels, self.species)

    @property
    def is_sample(self) -> bool:
        """True when the data is a generated sample dataset, not the real competition data."""
        return is_sample_folder(self.root)

    def __repr__(self) -> str:
        kind = "synthetic sample" if self.is_sample else "competition data"
        train, test = self.train_features, self.test_features
        return (
            f"CompetitionData({kind} at {str(self.root)!r}: {len(train):,} train images at "
            f"{train['site'].nunique()} sites, {len(test):,} test images at "
            f"{test['site'].nunique()} sites, {len(self.species)} species)"
        )


def load_competition(root: str | os.PathLike, check_images: bool = True) -> CompetitionData:
    """Load and validate the competition CSVs (and image files) under ``root``.

    A problem in the data raises `DataValidationError` naming the file, the column, the first
    offending rows and the fix (the checks: `files.competition.validated_tables`).

    Args:
        check_images: Also check that every image file exists and that no symlink leads
            outside ``root``; turn it off for CSVs without their images.
    """
    return CompetitionData(**validated_tables(root, check_images))


# --- transforms ----------------------------------------------------------------------------


def default_transform(
    size: int | tuple[int, int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize to ``size`` (side or (height, width)), scale to [0, 1], normalise: for evaluation.

    The walkthrough's ``Resize((224, 224)) → ToTensor → Normalize``: the whole frame is squashed,
    not cropped, so an animal at the edge stays in view.
    """
    return v2.Compose([v2.Resize(_height_width(size), antialias=True), *_to_normalised_tensor(mean, std)])


def train_transform(
    size: int | tuple[int, int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] = (0.65, 1.0),
) -> v2.Compose:
    """`default_transform` plus augmentation suited to camera traps, for training.

    A mild random crop (``scale``: the share of the frame's area kept; animals are often small
    or at the edge), a horizontal flip (animals walk both ways) and a small colour jitter (day,
    dusk and flash-lit night). No vertical flip or rotation: a camera trap is never upside down.
    """
    height_width = _height_width(size)
    return v2.Compose(
        [
            # Squash first, as at evaluation: the crop then sees the same geometry, and the
            # dataset can decode straight to this size (JPEG draft mode).
            v2.Resize(height_width, antialias=True),
            v2.RandomResizedCrop(height_width, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            *_to_normalised_tensor(mean, std),
        ]
    )


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    """PIL image → plain float tensor in [0, 1] → normalised: ToTensor + Normalize in v2."""
    return [
        v2.ToImage(),
        # ToImage keeps Pillow's pixel-interleaved layout; Normalize runs 5× faster on a
        # contiguous tensor, which costs one small uint8 copy.
        v2.Lambda(torch.Tensor.contiguous, torch.Tensor),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
        v2.ToPureTensor(),
    ]


def _height_width(size: int | Sequence[int]) -> tuple[int, int]:
    """An int side or a (height, width) pair, as a (height, width) tuple."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _decode_size(transform) -> tuple[int, int] | None:
    """The (width, height) a transform first resizes every image to, if it does."""
    first = next(iter(getattr(transform, "transforms", [transform])), None)
    size = first.size if isinstance(first, (v2.Resize, legacy_transforms.Resize)) else None
    if isinstance(size, Sequence) and len(size) == 2:
        return int(size[1]), int(size[0])
    return None  # a shorter-side resize, a crop or anything else first: decode at full size


# --- dataset and loader --------------------------------------------------------------------


class ImagesDataset(Dataset):
    """The images of a features frame as ``{"image_id", "image", "label"}`` items (``label`` with labels).

    Args:
        features: A frame indexed by id with a ``path`` column (from `load_competition`)
            or a ``filepath`` column (relative to the working directory).
        labels: One-hot labels (e.g. ``data.train_labels``), matched to ``features`` by id.
        transform: Applied to each RGB Pillow image; `default_transform` when None.
        on_error: ``"raise"`` stops at an unreadable image with an `ImageLoadError` naming its
            id; ``"skip"`` yields ``{"image_id", "error"}`` for `collate_images` to list.
        decode_size: ``(width, height)`` or int side to decode JPEGs at (a reduced scale is much
            faster); ``"auto"`` takes the transform's leading Resize; None decodes at full size.
        cache_dir: Read images through the on-disk cache of pre-resized images in this folder
            (`image_cache.ImageCache`): each is decoded once at ``decode_size``, then read back.
    """

    def __init__(
        self,
        features: pd.DataFrame,
        labels: pd.DataFrame | None = None,
        transform=None,
        on_error: str = "raise",
        *,
        decode_size: int | tuple[int, int] | str | None = "auto",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        column = path_column(features)
        self.transform = default_transform() if transform is None else transform
        self.on_error = on_error
        self.decode_size = _decode_size(self.transform) if decode_size == "auto" else as_size(decode_size)
        if cache_dir is not None and self.decode_size is None:
            raise ValueError(
                "cache_dir stores images at the decode size, and there is none: use a transform "
                "that starts with Resize((height, width)), or pass decode_size"
            )
        self.cache = None if cache_dir is None else ImageCache(self.decode_size, root=cache_dir)
        # Plain lists, not a frame: fast to index and cheap to send to loader workers.
        self.image_ids = [str(image_id) for image_id in features.index]
        self.paths = [str(path) for path in features[column]]
        self.species = None if labels is None else [str(c) for c in labels.columns]
        self.labels = None if labels is None else _aligned_labels(features.index, labels)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.image_ids[index]
        try:
            if self.cache is not None:
                image = self.cache.load(self.paths[index])
            else:
                image = open_image(self.paths[index], target_size=self.decode_size)
        except ImageLoadError as exc:
            if self.on_error == "skip":
                return {"image_id": image_id, "error": str(exc)}
            named = ImageLoadError(exc.problem, path=exc.path, rows=[image_id], fix=exc.fix)
            if get_worker_info() is None:
                raise named from exc
            # Raised in a loader worker, torch would re-raise it in the main process as one string
            # holding the worker's traceback; as data, batches.raise_load_error raises it whole.
            return {"image_id": image_id, "load_error": named.as_data()}
        item = {"image_id": image_id, "image": self.transform(image)}
        if self.labels is not None:
            item["label"] = self.labels[index].clone()  # not a view a caller could write into
        return item


def path_column(features: pd.DataFrame, order: Sequence[str] = ("path", "filepath")) -> str:
    """The first column of ``order`` that ``features`` has: the one that locates its images."""
    column = next((c for c in order if c in features.columns), None)
    if column is None:
        raise DataValidationError(
            f"the features frame has neither a {order[0]!r} nor a {order[1]!r} column",
            column=order[0],
            fix="pass a features frame from load_competition(...), e.g. data.train_features",
        )
    return column


def _aligned_labels(ids: pd.Index, labels: pd.DataFrame) -> torch.Tensor:
    """The label rows of ``ids``, in their order, as a float32 tensor."""
    missing = ids.difference(labels.index, sort=False)
    if len(missing):
        raise DataValidationError(
            "images without a label row", column="id", rows=list(missing),
            fix="pass labels covering every id of the features frame, e.g. data.train_labels",
        )
    values = labels.loc[ids].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
    if np.isnan(values).any():
        raise DataValidationError(
            "labels that are not numbers", column="label", rows=list(ids[np.isnan(values).any(axis=1)]),
            fix="pass the one-hot labels frame from load_competition(...)",
        )
    return torch.tensor(values)


def collate_images(batch: list[dict]) -> dict:
    """Stack dataset items into a batch, leaving out unreadable ones (listed under ``skipped``).

    When every item failed, ``image_id`` is empty and ``image`` has length 0. An image that
    failed in a loader worker under ``on_error="raise"`` makes the batch carry only its
    ``load_error``, for `batches.raise_load_error` to raise.
    """
    failed = [item["load_error"] for item in batch if "load_error" in item]
    if failed:
        return {"image_id": [], "image": torch.empty(0), "skipped": [], "load_error": failed[0]}
    good = [item for item in batch if "error" not in item]
    collated = default_collate(good) if good else {"image_id": [], "image": torch.empty(0)}
    collated["skipped"] = [(item["image_id"], item["error"]) for item in batch if "error" in item]
    return collated


def default_num_workers() -> int:
    """Loader worker processes for this machine: one core stays with the model, at most 4."""
    cores = available_cpus()
    return 0 if cores <= 1 else min(4, cores - 1)


def make_loader(
    dataset: Dataset,
    batch_size: int = 32,
    shuffle: bool = False,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader with defaults that fit the machine, batching with `collate_images`.

    Args:
        num_workers: Decoding processes, kept across epochs; None picks `default_num_workers`.
        device: Where batches go; on CUDA (or ``"auto"`` with a GPU) memory is pinned.
        seed: Seeds the shuffle order and, in worker processes, the random augmentation
            (without workers, augmentation draws from torch's global generator).
        sampler: Picks the images in place of ``shuffle`` (e.g. a process's share under
            `distributed.distributed_loader`).
    """
    num_workers = default_num_workers() if num_workers is None else num_workers
    if device == "auto":
        pin_memory = torch.cuda.is_available()
    else:
        pin_memory = device is not None and torch.device(device).type == "cuda"
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_images, pin_memory=pin_memory, persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
