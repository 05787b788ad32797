"""The batches conserviz loaders produce: dicts of "image_id", "image", "label" (and "skipped")."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from conserviz_utils.errors import ImageLoadError, TrainingError

#: The fix to suggest when a loader does not give conserviz's batch layout.
BATCH_LAYOUT_FIX = (
    "build the loader with conserviz_utils.data.make_loader (batches are dicts with "
    "'image_id', 'image' and 'label')"
)


def raise_load_error(batch: Any) -> None:
    """Raise the `ImageLoadError` a loader worker sent in place of a batch (see `data.collate_images`)."""
    parts = batch.get("load_error") if isinstance(batch, Mapping) else None
    if parts:
        raise ImageLoadError(**parts)  # the parts of `ConservizError.as_data`


def check_batch(batch: Any, need_labels: bool) -> None:
    """Refuse a batch that is not the dict conserviz loaders produce, or one that stands for a load error."""
    raise_load_error(batch)
    if not isinstance(batch, Mapping) or "image" not in batch:
        raise TrainingError(
            f"a loader batch is a {type(batch).__name__} without an 'image' entry", fix=BATCH_LAYOUT_FIX
        )
    if need_labels and "label" not in batch and batch_size(batch) > 0:
        raise TrainingError(
            "the loader's batches have no 'label': it was built from features without labels",
            fix="build the training and eval datasets with labels, e.g. ImagesDataset(features, labels)",
        )


def batch_size(batch: Mapping) -> int:
    """Number of images in a batch (0 when every image of it was skipped)."""
    images = batch.get("image")
    return 0 if images is None else int(images.shape[0])


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move an image batch to ``device``, channels-last when it is (N, C, H, W)."""
    if images.dim() == 4:
        return images.to(device, non_blocking=True, memory_format=torch.channels_last)
    return images.to(device, non_blocking=True)


def class_positions(labels: torch.Tensor) -> torch.Tensor:
    """Class numbers of one-hot (or probability) label rows, or of class-number labels."""
    return labels.argmax(dim=1) if labels.dim() == 2 else labels.long()


def first_ids(batch: Mapping) -> list[str]:
    """The image ids of a batch, for error messages."""
    return [str(i) for i in batch.get("image_id", [])]


def loader_length(loader: Iterable) -> int | None:
    """Number of batches of a loader, when it knows."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


__all__ = [
    "BATCH_LAYOUT_FIX", "batch_size", "check_batch", "class_positions", "first_ids", "loader_length",
    "raise_load_error", "to_device",
]
