"""Test-time augmentation on the fast path: embed a few views of every image, average the heads.

Averaging a head's probabilities over harmless variations of an image (mirrored, zoomed into the
centre) smooths out the accidents of framing. Each view is one more cached embedding pass; the
heads are trained once and only predicted per view (``CrossValidation.predict`` takes the views).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd
from torch import nn
from torchvision.transforms import v2

from conserviz_utils.data import default_transform
from conserviz_utils.course.embeddings import (
    DEFAULT_FEATURES_DIR,
    Embeddings,
    compute_embeddings,
)
from conserviz_utils.models import model_info

__all__ = ["VIEWS", "ZOOM", "embed_views", "view_transforms"]

#: The views, in order: the plain evaluation image first (the embeddings every notebook uses).
VIEWS = ("original", "flip", "zoom", "zoom flip")

#: The zoomed views keep the centre this share of the frame's width and height.
ZOOM = 0.85


def view_transforms(arch: str, views: Sequence[str] = VIEWS, zoom: float = ZOOM) -> dict[str, v2.Compose]:
    """View name → transform for ``arch``'s input size and normalisation, each starting with a Resize.

    ``"original"`` is exactly ``default_transform`` (its embeddings are the other notebooks' cached
    ones); ``"flip"`` mirrors it; ``"zoom"`` resizes to 1/``zoom`` of the input size and keeps the
    centre; ``"zoom flip"`` does both. No vertical flip or rotation: camera traps stand upright.
    """
    if not 0 < zoom <= 1:
        raise ValueError(f"zoom must be in (0, 1], got {zoom!r}")
    info = model_info(arch)
    base = default_transform(info.input_size, info.mean, info.std).transforms
    resize, to_tensor = base[0], list(base[1:])
    larger = round(info.input_size / zoom)
    zoomed = [v2.Resize((larger, larger), antialias=True), v2.CenterCrop(info.input_size)]
    flip = v2.RandomHorizontalFlip(p=1.0)
    steps = {
        "original": [resize, *to_tensor],
        "flip": [resize, flip, *to_tensor],
        "zoom": [*zoomed, *to_tensor],
        "zoom flip": [*zoomed, flip, *to_tensor],
    }
    unknown = [view for view in views if view not in steps]
    if unknown:
        raise ValueError(f"unknown views {unknown}; choose from {', '.join(VIEWS)}")
    return {view: v2.Compose(steps[view]) for view in views}


def embed_views(
    model: nn.Module,
    features: pd.DataFrame,
    views: Sequence[str] = VIEWS,
    *,
    cache_dir: str | os.PathLike | None = DEFAULT_FEATURES_DIR,
    batch_size: int = 64,
    zoom: float = ZOOM,
    progress: bool = True,
) -> dict[str, Embeddings]:
    """View name → :class:`Embeddings` of every image of ``features``, each view cached like any embeddings."""
    transforms = view_transforms(model.arch, views, zoom)
    return {
        view: compute_embeddings(
            model, features, transform=transform, cache_dir=cache_dir, batch_size=batch_size, progress=progress
        )
        for view, transform in transforms.items()
    }
