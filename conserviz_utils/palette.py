"""Colours, fonts and display contrast shared by the course's figures and widgets.

Everything here is chosen for a room: a projector, a back row, and learners who do not see red and
green apart (about one man in twelve). Colours come from the Okabe–Ito palette, which stays
distinct under the common colour-vision deficiencies; where two things must be told apart
(right and wrong, one label set and the next) a hatch, a marker or a word says it too, so no
contrast rests on colour alone. Fonts are at least `MIN_FONT_SIZE` points at the figure sizes
the course uses. Dark infrared night frames are brightened for display only: the image data a
function receives is never changed.

Nothing here touches matplotlib's global settings: `with_figure_style` applies `FIGURE_STYLE`
only while one plotting function draws.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import matplotlib as mpl
import numpy as np
from cycler import cycler

#: The Okabe–Ito colours (Okabe & Ito, "Color Universal Design", 2008), by name.
OKABE_ITO = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "bluish green": "#009E73",
    "reddish purple": "#CC79A7",
    "sky blue": "#56B4E9",
    "vermillion": "#D55E00",
    "yellow": "#F0E442",
    "black": "#000000",
}

#: The order in which figures use the colours: the first four stay apart in greyscale too.
PALETTE = tuple(OKABE_ITO.values())

#: A hatch per series, in the order of `PALETTE`, so bars differ in more than colour.
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")

#: A marker per series, in the order of `PALETTE`, so lines differ in more than colour.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

#: Right and wrong (the true species and a wrong prediction): blue and vermillion, a pair that
#: stays apart for red-green colour blindness; each use also says it in words.
RIGHT_COLOUR = OKABE_ITO["blue"]
WRONG_COLOUR = OKABE_ITO["vermillion"]
#: Everything else in a right/wrong chart.
NEUTRAL_COLOUR = "#999999"

#: The smallest font, in points, of any text in a figure.
MIN_FONT_SIZE = 10

#: Matplotlib settings the plotting functions draw under (never set globally).
FIGURE_STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": MIN_FONT_SIZE,
    "ytick.labelsize": MIN_FONT_SIZE,
    "legend.fontsize": MIN_FONT_SIZE,
    "legend.title_fontsize": MIN_FONT_SIZE,
    "figure.titlesize": 13,
    "axes.prop_cycle": cycler(color=PALETTE),
    "savefig.bbox": "tight",  # a saved figure keeps its longest labels
}

#: A frame is shown brightened when its median brightness (0–255) is below this: the sample's
#: infrared night shots have a median near 40, its daylight frames near 80.
DARK_MEDIAN = 64
#: The stretched frame's median brightness, as a share of full scale.
TARGET_MEDIAN = 0.35

P = ParamSpec("P")
R = TypeVar("R")


def with_figure_style(draw: Callable[P, R]) -> Callable[P, R]:
    """Run a plotting function under `FIGURE_STYLE`, leaving the global settings as they were."""

    @functools.wraps(draw)
    def styled(*args: P.args, **kwargs: P.kwargs) -> R:
        # Only the style's own keys are saved and put back. mpl.rc_context restores every
        # setting, "interactive" too: when a notebook's first figure activates the inline
        # backend inside the context, that restore turns interactive mode back off and every
        # later figure of the kernel stops showing.
        saved = {key: mpl.rcParams[key] for key in FIGURE_STYLE}
        mpl.rcParams.update(FIGURE_STYLE)
        try:
            return draw(*args, **kwargs)
        finally:
            mpl.rcParams.update(saved)

    return styled


def is_dark(image: np.ndarray) -> bool:
    """Whether an RGB or grey uint8 image is dark enough to be brightened for display."""
    return float(np.median(_brightness(image))) < DARK_MEDIAN


def stretch_for_display(image: np.ndarray, low: float = 1.0, high: float = 99.5) -> np.ndarray:
    """A brightened copy of a dark frame for display; other frames come back unchanged.

    The stretch maps the image's ``low`` and ``high`` brightness percentiles to black and white
    (one mapping for all channels, so an infrared frame stays grey and a colour cast stays), then
    lifts the mid-tones with a gamma so the median lands at `TARGET_MEDIAN`. The array passed in
    is never modified: the model always sees the original pixels.

    Args:
        image: a uint8 array, height × width or height × width × channels.
        low, high: the percentiles that become black and white.
    """
    if not is_dark(image):
        return image
    brightness = _brightness(image)
    black, white = np.percentile(brightness, [low, high])
    if white - black < 1:  # a flat frame: nothing to stretch
        return image
    scaled = np.clip((image.astype(np.float64) - black) / (white - black), 0.0, 1.0)
    median = float(np.median(np.clip((brightness - black) / (white - black), 0.0, 1.0)))
    if 0.0 < median < TARGET_MEDIAN:
        scaled **= np.log(TARGET_MEDIAN) / np.log(median)
    return np.round(scaled * 255).astype(np.uint8)


def _brightness(image: np.ndarray) -> np.ndarray:
    """Per-pixel brightness: the mean of the colour channels, or the grey value itself."""
    pixels = np.asarray(image, dtype=np.float64)
    return pixels if pixels.ndim == 2 else pixels[..., :3].mean(axis=-1)
