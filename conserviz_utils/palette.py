"""Colours, fonts and display contrast for a room: a projector, a back row, colour-blind eyes.

Colours are Okabe–Ito's, which stay apart under the common colour-vision deficiencies (about one
man in twelve); where two things must be told apart a hatch, a marker or a word says it too. Fonts
are at least `MIN_FONT_SIZE` points. Dark infrared frames are brightened for display only.
`with_figure_style` applies `FIGURE_STYLE` while one function draws, never globally.
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
#: A hatch and a marker per series, in the order of `PALETTE`, so series differ in more than colour.
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

#: Right and wrong: blue and vermillion stay apart for red-green colour blindness; each use also
#: says it in words. Everything else in a right/wrong chart is neutral grey.
RIGHT_COLOUR = OKABE_ITO["blue"]
WRONG_COLOUR = OKABE_ITO["vermillion"]
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

#: A frame is brightened when its median brightness (0–255) is below this: the sample's infrared
#: night shots have a median near 40, its daylight frames near 80.
DARK_MEDIAN = 64
#: The brightened frame's median brightness, as a share of full scale.
TARGET_MEDIAN = 0.35

P = ParamSpec("P")
R = TypeVar("R")


def with_figure_style(draw: Callable[P, R]) -> Callable[P, R]:
    """Run a plotting function under `FIGURE_STYLE`, leaving the global settings as they were."""

    @functools.wraps(draw)
    def styled(*args: P.args, **kwargs: P.kwargs) -> R:
        # Only the style's own keys are put back: mpl.rc_context restores "interactive" too, and
        # when a notebook's first figure starts the inline backend inside the context, that
        # restore turns interactive mode off and no later figure of the kernel shows.
        saved = {key: mpl.rcParams[key] for key in FIGURE_STYLE}
        mpl.rcParams.update(FIGURE_STYLE)
        try:
            return draw(*args, **kwargs)
        finally:
            mpl.rcParams.update(saved)

    return styled


def stretch_for_display(image: np.ndarray, low: float = 1.0, high: float = 99.5) -> np.ndarray:
    """A brightened copy of a dark uint8 frame for display; other frames come back unchanged.

    The ``low`` and ``high`` brightness percentiles become black and white (one mapping for all
    channels, so an infrared frame stays grey), then a gamma lifts the median to `TARGET_MEDIAN`.
    The array passed in is never modified: the model always sees the original pixels.
    """
    pixels = np.asarray(image, dtype=np.float64)
    brightness = pixels if pixels.ndim == 2 else pixels[..., :3].mean(axis=-1)
    if float(np.median(brightness)) >= DARK_MEDIAN:
        return image
    black, white = np.percentile(brightness, [low, high])
    if white - black < 1:  # a flat frame: nothing to stretch
        return image
    scaled = np.clip((pixels - black) / (white - black), 0.0, 1.0)
    median = float(np.median(np.clip((brightness - black) / (white - black), 0.0, 1.0)))
    if 0.0 < median < TARGET_MEDIAN:
        scaled **= np.log(TARGET_MEDIAN) / np.log(median)
    return np.round(scaled * 255).astype(np.uint8)
