"""Drawing primitives shared by the scenes and the animals: colours, blur and leaf shapes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import ImageDraw, ImageFilter

__all__ = ["blur", "draw_leaves", "jitter", "jitter_many", "leaf_points", "leaf_shapes", "shade"]


def blur(radius: float) -> ImageFilter.GaussianBlur:
    """A Gaussian blur filter; Pillow wants a plain float radius, not a numpy scalar."""
    return ImageFilter.GaussianBlur(float(radius))


def jitter(colour: Sequence[float], rng: np.random.Generator, amount: float) -> tuple[int, ...]:
    """A colour moved by up to ``amount`` per channel, mostly in brightness."""
    shift = rng.uniform(-amount, amount) + rng.uniform(-amount / 3, amount / 3, 3)
    return tuple(int(v) for v in np.clip(np.asarray(colour, float) + shift, 0, 255))


def shade(colour: Sequence[float], factor: float) -> tuple[int, int, int]:
    """A colour made darker (factor < 1) or lighter (> 1)."""
    return tuple(int(v) for v in np.clip(np.asarray(colour, float) * factor, 0, 255))


_LEAF_T = np.linspace(0.0, 1.0, 7)
_LEAF_ALONG = np.concatenate([_LEAF_T, _LEAF_T[::-1]])
_LEAF_ACROSS = np.concatenate([np.sin(np.pi * _LEAF_T), -np.sin(np.pi * _LEAF_T[::-1])]) / 2


def leaf_shapes(x, y, length, width, angle) -> np.ndarray:
    """n pointed leaves from stalks at (x, y), ``angle`` radians from the x axis, as (n, 28) flat polygons.

    Every argument may be a number or an array of n values.
    """
    x, y, length, width, angle = (np.atleast_1d(np.asarray(v, float))[:, None] for v in (x, y, length, width, angle))
    along, across = _LEAF_ALONG * length, _LEAF_ACROSS * width
    c, s = np.cos(angle), np.sin(angle)
    points = np.stack([x + along * c - across * s, y + along * s + across * c], axis=-1)
    return points.reshape(len(x), 2 * len(_LEAF_ALONG))


def leaf_points(x, y, length, width, angle) -> list[float]:
    """One pointed leaf as a flat x, y sequence (see :func:`leaf_shapes`)."""
    return leaf_shapes(x, y, length, width, angle)[0].tolist()


def draw_leaves(draw: ImageDraw.ImageDraw, shapes: np.ndarray, colours: np.ndarray) -> None:
    """Fill many leaf polygons, each with its colour."""
    for points, colour in zip(shapes.tolist(), np.clip(colours, 0, 255).astype(int).tolist()):
        draw.polygon(points, fill=tuple(colour))


def jitter_many(colour, rng: np.random.Generator, amount: float, n: int) -> np.ndarray:
    """``n`` colours around ``colour`` (one, or one per row), moved as :func:`jitter` does."""
    shift = rng.uniform(-amount, amount, (n, 1)) + rng.uniform(-amount / 3, amount / 3, (n, 3))
    return np.clip(np.asarray(colour, float) + shift, 0, 255)

