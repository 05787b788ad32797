"""A simulated MegaDetector: the boxes a real detector would plausibly report for the drawn images.

No model runs. The generator knows where it drew each animal and what hides it, and reports it with
a detector's faults: small, hidden, cut, blurred, washed-out or far infrared animals are found less
often and less surely; misses often leave a weak box; blanks get false boxes, about one in ten at
0.2 (rates tuned towards published evaluations, docs/sample.md). The file follows the MegaDetector
batch-output format (https://lila.science/megadetector-output-format): ``file`` as in the CSVs'
``filepath``, ``bbox`` = [x_min, y_min, width, height] in 0–1, every box of confidence ≥ 0.005.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from conserviz_utils.tools.sample.plan import DETECTION_STREAM

__all__ = [
    "CONSERVATIVE_THRESHOLD", "DETECTION_CATEGORIES", "DETECTOR_NAME", "FORMAT_VERSION", "OUTPUT_THRESHOLD",
    "TYPICAL_THRESHOLD", "FrameView", "detection_probability", "detections_document", "frame_view",
    "simulate_detections", "simulated_detections",
]

#: The MegaDetector output format version written (the one of MegaDetector 5's batch output).
FORMAT_VERSION = "1.4"
#: Written as ``info.detector``: says plainly that no real detector produced the file.
DETECTOR_NAME = "conserviz-simulated-megadetector"
#: MegaDetector's categories; the simulation only ever reports "1" (animal).
DETECTION_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}
ANIMAL_CATEGORY = "1"
#: MegaDetector's batch output keeps every box at or above this confidence.
OUTPUT_THRESHOLD = 0.005
#: The thresholds MegaDetector 5 recommends: a box at ≥ 0.2 is an animal, ≥ 0.05 maybe one.
TYPICAL_THRESHOLD = 0.2
CONSERVATIVE_THRESHOLD = 0.05
#: An animal pixel counts as seen where its layer is at least half opaque.
_OPAQUE = 128
#: An animal of this apparent size (square root of its visible share of the frame), fully in
#: view in daylight, is found 98 % of the time (logit `_REFERENCE_LOGIT`); each halving of the
#: size costs 1.04.
_REFERENCE_SIZE = 0.08
#: 3.9 rather than 3.4 (generator version 2) brings the default sample's misses at 0.2 from 17 %
#: to 13 %, towards the 8 % of a published MegaDetector evaluation (docs/sample.md); the many
#: infrared night shots and small rodents keep it above.
_REFERENCE_LOGIT = 3.9
#: The strongest false box on a leaf that fired the camera, and on the background: published
#: evaluations imply that 5–31 % of empty frames keep a box (docs/sample.md), so about one blank
#: in nine here keeps a box at ≥ 0.2 (1.5 % in version 2).
_LEAF_BOX_CONF = 0.6
_BACKGROUND_BOX_CONF = 0.45


@dataclass(frozen=True)
class FrameView:
    """What a detector could see in one drawn frame: the visible part of its animal, if any."""

    width: int
    height: int
    #: The visible part of the animal (left, top, right, bottom) in pixels, right and bottom
    #: exclusive; None for a blank frame or an animal entirely hidden or outside the frame.
    animal_box: tuple[int, int, int, int] | None
    #: Share of the animal's pixels that are inside the frame and not hidden (0–1).
    visible_share: float
    #: Visible animal pixels as a share of the frame's pixels.
    area_share: float
    night: bool
    #: How bright the infrared flash renders the animal (0.55 far … 1.8 near); None by day.
    infrared_brightness: float | None = None
    blurred: bool = False
    washed_out: bool = False
    #: On a blank, the box of the leaf that fired the camera (pixels), else None.
    trigger_box: tuple[int, int, int, int] | None = None

    @property
    def apparent_size(self) -> float:
        """The animal's linear size relative to the frame: sqrt(visible pixels / frame pixels)."""
        return math.sqrt(self.area_share)


def frame_view(drawn: dict, night: bool) -> FrameView:
    """What a detector could see of the animal ``render_image`` recorded in ``drawn``: in frame, not hidden."""
    width, height = drawn["size"]
    common = {"width": width, "height": height, "night": night, "washed_out": bool(drawn.get("washed_out", False)),
              "trigger_box": drawn.get("trigger_box")}
    if "animal_alpha" not in drawn:
        return FrameView(animal_box=None, visible_share=0.0, area_share=0.0, **common)
    common.update(infrared_brightness=drawn.get("infrared_brightness"), blurred=bool(drawn["blurred"]))
    opaque = np.asarray(drawn["animal_alpha"]) >= _OPAQUE
    total = int(opaque.sum())
    left, top, right, bottom = drawn["animal_box"]
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if total == 0 or x1 <= x0 or y1 <= y0:
        return FrameView(animal_box=None, visible_share=0.0, area_share=0.0, **common)
    visible = opaque[y0 - top : y1 - top, x0 - left : x1 - left]
    hidden = _hidden_pixels(drawn, (x0, y0, x1, y1))
    if hidden is not None:
        visible = visible & ~hidden
    n_visible = int(visible.sum())
    if n_visible == 0:
        return FrameView(animal_box=None, visible_share=0.0, area_share=0.0, **common)
    rows, columns = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    box = (x0 + int(columns[0]), y0 + int(rows[0]), x0 + int(columns[-1]) + 1, y0 + int(rows[-1]) + 1)
    return FrameView(animal_box=box, visible_share=n_visible / total, area_share=n_visible / (width * height), **common)


def _hidden_pixels(drawn: dict, region: tuple[int, int, int, int]) -> np.ndarray | None:
    """Which pixels of ``region`` something in front of the animal covers; None if nothing."""
    x0, y0, x1, y1 = region
    hidden = None
    if drawn.get("grass"):
        mask = Image.new("L", (x1 - x0, y1 - y0), 0)
        draw = ImageDraw.Draw(mask)
        for blade in drawn["grass"]:
            shifted = [v - (x0 if k % 2 == 0 else y0) for k, v in enumerate(blade)]
            draw.polygon(shifted, fill=255)
        hidden = np.asarray(mask) > 0
    if drawn.get("foreground") is not None:
        plants = np.asarray(drawn["foreground"].getchannel("A").crop(region)) >= _OPAQUE
        hidden = plants if hidden is None else hidden | plants
    if drawn.get("band_rows") is not None:
        first, last = drawn["band_rows"]
        band = np.zeros((y1 - y0, x1 - x0), bool)
        band[max(first - y0, 0) : max(last + 1 - y0, 0)] = True
        hidden = band if hidden is None else hidden | band
    return hidden


def _evidence(view: FrameView) -> float:
    """The logit of finding the animal: size, visibility and lighting, the detector's weak spots."""
    z = _REFERENCE_LOGIT + 1.5 * math.log(max(view.apparent_size, 1e-4) / _REFERENCE_SIZE)
    z -= 3.5 * (1.0 - view.visible_share)  # hidden or cut by the frame
    if view.night:  # grey, noisy, and far animals barely lit by the flash
        brightness = 0.55 if view.infrared_brightness is None else view.infrared_brightness
        z -= 0.8 + 1.0 * (1.8 - brightness) / (1.8 - 0.55)
    if view.blurred:
        z -= 0.5
    if view.washed_out:
        z -= 0.8
    return z


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def detection_probability(view: FrameView) -> float:
    """The chance that the simulated detector finds the animal at confidence ≥ 0.2 (0 if none)."""
    return 0.0 if view.animal_box is None else _sigmoid(_evidence(view))


def simulate_detections(view: FrameView, rng: np.random.Generator) -> list[dict]:
    """The detections a MegaDetector-like model would report for one frame, most confident first.

    An animal is found (confidence 0.2–0.99, lower for small, hidden and dark ones) with
    :func:`detection_probability`; a missed one leaves a weak box (< 0.15) half of the time. A
    found animal sometimes gets a second, weaker box on part of it. Any frame may get a false
    box on the background, and a leaf that fired the camera on a blank gets one half of the
    time; both are mostly weak, a few above the usual 0.2 threshold.
    """
    boxes: list[tuple[tuple[float, float, float, float], float]] = []
    if view.animal_box is not None:
        z = _evidence(view)
        if rng.random() < _sigmoid(z):
            # -1.05 = version 2's -0.6 less 0.9 × the logit's rise: confidences stay as before.
            conf = TYPICAL_THRESHOLD + 0.79 * _sigmoid(0.9 * z - 1.05 + rng.normal(0.0, 0.5))
            boxes.append((_jittered(view.animal_box, rng, 0.03, view), conf))
            if rng.random() < 0.08:  # a second box on the front or back half of the animal
                left, top, right, bottom = view.animal_box
                middle = (left + right) / 2
                front = rng.random() < 0.5
                half = (left, top, middle, bottom) if front else (middle, top, right, bottom)
                boxes.append((_jittered(half, rng, 0.05, view), conf * rng.uniform(0.15, 0.5)))
        elif rng.random() < 0.5:  # missed: only a weak box, below the usual thresholds
            conf = OUTPUT_THRESHOLD + 0.145 * rng.random() ** 2
            boxes.append((_jittered(view.animal_box, rng, 0.08, view), conf))
    if view.trigger_box is not None and rng.random() < 0.5:
        conf = OUTPUT_THRESHOLD + _LEAF_BOX_CONF * rng.random() ** 2
        boxes.append((_jittered(view.trigger_box, rng, 0.1, view), conf))
    for _ in range(int(rng.poisson(0.12))):  # a stump, a root, a patch of light
        w, h = rng.uniform(0.05, 0.25) * view.width, rng.uniform(0.05, 0.25) * view.height
        x, y = rng.uniform(0, view.width - w), rng.uniform(0.3 * view.height, view.height - h)
        conf = OUTPUT_THRESHOLD + _BACKGROUND_BOX_CONF * rng.random() ** 3
        boxes.append(((x, y, x + w, y + h), conf))
    detections = [_detection(box, conf, view) for box, conf in boxes]
    return sorted(detections, key=lambda d: -d["conf"])


def _jittered(box, rng: np.random.Generator, spread: float, view: FrameView):
    """A box with each edge moved by a normal share ``spread`` of its size, kept in the frame."""
    left, top, right, bottom = (float(v) for v in box)
    w, h = right - left, bottom - top
    moved = np.array([left, top, right, bottom]) + rng.normal(0.0, spread, 4) * [w, h, w, h]
    left, right = np.clip(moved[[0, 2]], 0, view.width)
    top, bottom = np.clip(moved[[1, 3]], 0, view.height)
    # At least one pixel wide and high, still inside the frame.
    right, bottom = max(right, min(left + 1, view.width)), max(bottom, min(top + 1, view.height))
    left, top = min(left, right - 1), min(top, bottom - 1)
    return left, top, right, bottom


def _detection(box, conf: float, view: FrameView) -> dict:
    """One detection in the MegaDetector format: box normalised to the frame, 4 decimals."""
    left, top, right, bottom = box
    x, y = round(left / view.width, 4), round(top / view.height, 4)
    w = min(round((right - left) / view.width, 4), round(1.0 - x, 4))
    h = min(round((bottom - top) / view.height, 4), round(1.0 - y, 4))
    return {"category": ANIMAL_CATEGORY, "conf": round(float(np.clip(conf, OUTPUT_THRESHOLD, 0.99)), 3),
            "bbox": [x, y, max(w, 0.0001), max(h, 0.0001)]}


def simulated_detections(drawn: dict, night: bool, seed: int, index: int) -> list[dict]:
    """The simulated detections of one drawn image, from its own random stream (seed, index)."""
    rng = np.random.default_rng([seed, DETECTION_STREAM, index])
    return simulate_detections(frame_view(drawn, night), rng)


def detections_document(images: list[dict], seed: int, generator: str, version: int) -> dict:
    """The batch-output JSON object for ``images`` ([{"file", "detections"}], in order)."""
    return {
        "info": {
            "format_version": FORMAT_VERSION,
            "detector": DETECTOR_NAME,
            "detector_metadata": {
                "megadetector_version": "simulated",
                "typical_detection_threshold": TYPICAL_THRESHOLD,
                "conservative_detection_threshold": CONSERVATIVE_THRESHOLD,
            },
            "simulated": True,
            "simulation": (
                "Not a real detector: boxes are where the sample generator drew each animal, "
                "with simulated misses, weak boxes and false boxes (docs/sample.md)."
            ),
            "generator": generator,
            "generator_version": version,
            "seed": seed,
        },
        "detection_categories": dict(DETECTION_CATEGORIES),
        "images": images,
    }
