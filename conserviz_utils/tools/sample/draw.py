"""Drawing one camera-trap image: one animal placed in its site's forest, and the camera.

Every draw of an image comes from ``(seed, stream, image index)`` (its site's from
:mod:`~conserviz_utils.tools.sample.scenery`), so its pixels do not depend on which worker draws it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont

from conserviz_utils import SPECIES
from conserviz_utils.tools.sample.animals import BODY_PLANS, DISTANCE_M, SIZE_M, animal_layer, motion_blur
from conserviz_utils.tools.sample.paint import blur, jitter, leaf_points
from conserviz_utils.tools.sample.plan import GRID_STREAM, IMAGE_STREAM, NOISE_STREAM
from conserviz_utils.tools.sample.scenery import Scene, SiteStyle, site_scene, site_style

__all__ = ["ImageTask", "render_image", "sample_grid", "site_style"]


@dataclass(frozen=True)
class ImageTask:
    """Everything a worker needs to draw one image; its random draws come from (seed, index)."""

    index: int
    path: Path | None
    species: str
    site: int
    width: int
    height: int
    night: bool
    band: str
    seed: int
    stream: int = IMAGE_STREAM


def _add_animal(image, species, rng, scene, style, exposure, drawn) -> list[tuple[float, float]]:
    """Place one animal in the frame, near or far, maybe cut by its edge; returns its eye pixels (for eyeshine).

    Distance sets both size and height in the frame (a ground plane seen from the camera's height);
    ``exposure`` is a night shot's infrared gain, None by day; ``drawn`` gets the facts of :func:`render_image`.
    """
    night = exposure is not None
    width, height = image.size
    focal = 1.05 * height  # pixels per metre at one metre: a ~50° vertical field of view
    near, typical, far = DISTANCE_M[species]
    distance = float(np.clip(typical * math.exp(rng.normal(0, 0.5)), near, far))
    length = max(0.035 * height, focal * rng.uniform(*SIZE_M[species]) / distance)
    facing = int(rng.choice([-1, 1]))
    squash = 1.0 if rng.random() < 0.6 else rng.uniform(0.45, 1.0)  # walking towards or away
    feet_y = scene.horizon + focal * style.camera_height / distance
    if rng.random() < 0.8:  # mostly inside the frame
        x = rng.uniform(0.08, 0.92) * width
    else:  # at the left or right edge, cut by it when near enough
        x = rng.choice([-1, 1]) * rng.uniform(0.0, 0.1) * width
        x += width if rng.random() < 0.5 else 0
    angle = 0.0
    if species == "monkey_prosimian" and scene.trunks and rng.random() < 0.3:  # climbing a trunk
        trunk_x, trunk_w = scene.trunks[int(rng.integers(len(scene.trunks)))]
        x, feet_y = trunk_x - facing * trunk_w * 0.3, rng.uniform(0.2, 0.8) * height
        angle = math.pi / 2
        length = max(0.035 * height, min(length, 2.5 * trunk_w + 0.05 * height))
    elif species == "bird" and rng.random() < 0.15:  # perched on a log or a low branch
        feet_y -= rng.uniform(0.05, 0.2) * height
    layer, anchor, eyes = animal_layer(species, rng, length, facing, squash, angle)
    drawn["blurred"] = bool(rng.random() < (0.35 if night else 0.12))
    if drawn["blurred"]:
        layer = motion_blur(layer, max(1, round(length * rng.uniform(0.03, 0.15))))
    if distance < 1.1:  # too close to be in focus
        layer = layer.filter(blur(length * 0.015 * (1.1 - distance) / 0.5))
    drawn["distance"] = distance
    drawn["infrared_brightness"] = None
    if night:  # fur reflects the infrared flash: near animals shine, the closest burn out
        # The frame's flash reach and exposure are applied to the whole frame later; divide them
        # out here so that the animal's brightness follows its distance, not its place.
        at = (int(np.clip(x, 0, width - 1)), int(np.clip(feet_y - length * 0.3, 0, height - 1)))
        reach = max(scene.falloff.getpixel(at) / 255, 0.2)
        drawn["infrared_brightness"] = min(1.8, max(0.55, (1.8 / distance) ** 0.7))
        gain = drawn["infrared_brightness"] / (reach * exposure)
        lift = [int(min(255, (40 + 0.85 * v) * gain)) for v in range(256)] * 3
        lit = layer.convert("RGB").point(lift)
        layer = Image.merge("RGBA", (*lit.split(), layer.getchannel("A")))
    left, top = round(x - anchor[0]), round(feet_y - anchor[1])
    if not night and angle == 0.0:
        _shadow(image, left + anchor[0], feet_y, layer.width)
    image.paste(layer, (left, top), layer)
    drawn["animal_box"] = (left, top, left + layer.width, top + layer.height)
    drawn["animal_alpha"] = layer.getchannel("A")
    drawn["grass"] = []
    if rng.random() < 0.25:
        drawn["grass"] = _grass_in_front(image, rng, left + anchor[0], feet_y, layer.width, layer.height)
    return [(left + ex, top + ey) for ex, ey in eyes]


def _shadow(image: Image.Image, x: float, y: float, width: float) -> None:
    """A soft contact shadow under an animal in daylight."""
    w, h = max(4, int(width * 0.9)), max(3, int(width * 0.12))
    mask = Image.new("L", (w * 2, h * 3), 0)
    ImageDraw.Draw(mask).ellipse((w / 2, h, w * 1.5, h * 2), fill=90)
    mask = mask.filter(blur(h * 0.4))
    image.paste((15, 12, 8), (round(x - w), round(y - h * 1.5)), mask)


def _grass_in_front(image, rng, x, feet_y, width, height) -> list[list[float]]:
    """Blades of grass between the camera and the animal; returns their polygons (for the detector's view)."""
    draw = ImageDraw.Draw(image)
    blades = []
    for _ in range(int(rng.integers(4, 14))):
        bx = x + rng.uniform(-0.6, 0.6) * width
        tall = height * rng.uniform(0.3, 0.9)
        angle = -np.pi / 2 + rng.normal(0, 0.3)
        colour = jitter((55, 90, 40), rng, 25)
        breadth = tall * rng.uniform(0.06, 0.25)
        blades.append(leaf_points(bx, feet_y + height * 0.05, tall, breadth, angle))
        draw.polygon(blades[-1], fill=colour)
    return blades


def _false_trigger(image: Image.Image, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """What fires a camera with no animal: a swaying leaf near the lens; returns its box, cut to the frame."""
    width, height = image.size
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    x, y = rng.uniform(0, width), rng.uniform(0.3, 1.0) * height
    length = height * rng.uniform(0.3, 0.8)
    colour = (*jitter((50, 80, 38) if rng.random() < 0.7 else (90, 70, 50), rng, 20), 230)
    leaf = leaf_points(x, y, length, length * rng.uniform(0.1, 0.35), rng.uniform(0, 2 * np.pi))
    draw.polygon(leaf, fill=colour)
    layer = layer.filter(blur(height * rng.uniform(0.01, 0.03)))
    image.paste(layer, (0, 0), layer)
    xs, ys = leaf[0::2], leaf[1::2]
    return (int(np.clip(min(xs), 0, width)), int(np.clip(min(ys), 0, height)),
            int(np.clip(math.ceil(max(xs)), 0, width)), int(np.clip(math.ceil(max(ys)), 0, height)))


def render_image(task: ImageTask, drawn: dict | None = None) -> Image.Image:
    """Draw one RGB camera-trap image, every random choice from (seed, image index).

    Args:
        drawn: when given, receives facts about the drawing, which never change its pixels:
            ``size``; for an animal ``animal_box`` (its layer's pixel box, left, top, right,
            bottom, possibly beyond the frame), ``animal_alpha`` (the layer's alpha, L),
            ``grass`` (polygons drawn in front of it), ``blurred``, ``distance`` (metres) and
            ``infrared_brightness`` (None by day); for a blank ``trigger_box`` (the leaf that
            fired the camera, or None); and for every image ``foreground`` (RGBA plants in
            front of the lens, or None), ``band_rows`` (top and bottom row of the info band, or
            None) and ``washed_out`` (an over-exposed day frame).
    """
    facts = {} if drawn is None else drawn
    rng = np.random.default_rng([task.seed, task.stream, task.index])
    style = site_style(task.seed, task.site)
    scene = site_scene(task.seed, task.site, task.width, task.height)
    image = _frame(scene, rng, task.width, task.height)
    facts.update(size=image.size, foreground=scene.foreground, trigger_box=None, washed_out=False)
    exposure = style.flash * rng.uniform(1.5, 2.4) if task.night else None
    eyes: list[tuple[float, float]] = []
    if task.species in BODY_PLANS:
        eyes = _add_animal(image, task.species, rng, scene, style, exposure, facts)
    elif rng.random() < 0.35:
        facts["trigger_box"] = _false_trigger(image, rng)
    if scene.foreground is not None:
        image.paste(scene.foreground, (0, 0), scene.foreground)
    if exposure is not None:
        image = _infrared(image, rng, scene, exposure, eyes)
    else:
        image = _daylight(image, rng, style, facts)
    image = _add_noise(image, rng, task.seed, sigma=9.0 if task.night else 3.0)
    facts["band_rows"] = _draw_band(image, rng, style, task) if task.band != "none" else None
    return image.convert("RGB")


def _frame(scene: Scene, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """The site's background, shifted by a pixel or two as the camera settles differently."""
    shake = round(0.012 * width)
    dx, dy = (int(np.clip(round(rng.normal(0, 0.4) * shake), -shake, shake)) for _ in range(2))
    left, top = scene.margin + dx, scene.margin + dy
    return scene.background.crop((left, top, left + width, top + height))


def _gain_lut(gain, gamma, channels: int = 3) -> list[int]:
    """A lookup table that multiplies brightness by ``gain`` (clipping) and applies ``gamma``."""
    gains = np.broadcast_to(np.asarray(gain, float), (channels,))
    x = np.arange(256) / 255
    return [int(v) for g in gains for v in np.clip(255 * np.clip(g * x, 0, 1) ** gamma, 0, 255)]


def _daylight(image: Image.Image, rng: np.random.Generator, style: SiteStyle, facts: dict):
    """Daylight under the canopy: brightness, colour cast, sun flecks, sometimes over-exposure."""
    gain = style.light * rng.uniform(0.8, 1.2) * np.asarray(style.cast)
    if rng.random() < 0.07:  # the sun broke through: a washed-out frame
        facts["washed_out"] = True
        gain = gain * rng.uniform(1.5, 2.0)
    image = image.point(_gain_lut(gain, rng.uniform(0.85, 1.15)))
    if rng.random() < 0.6:
        width, height = image.size
        cells = rng.random((max(2, height // 30), max(2, width // 30)))
        spots = Image.fromarray((np.clip((cells - 0.75) * 6, 0, 1) * 255).astype(np.uint8))
        spots = spots.filter(blur(0.6)).resize(image.size, Image.Resampling.BICUBIC)
        image = Image.composite(image.point(_gain_lut((1.6, 1.55, 1.3), 0.9)), image, spots)
    return image


def _infrared(image, rng, scene, exposure, eyes) -> Image.Image:
    """An infrared night shot: grey, lit by the flash near the camera, eyes shining."""
    a = np.asarray(image, np.int16)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    # Leaves reflect near-infrared strongly, so vegetation comes out bright.
    lum = (3 * r + 5 * g + 2 * b) // 10 + (4 * np.maximum(g - np.maximum(r, b), 0)) // 5
    grey = Image.fromarray(np.clip(lum, 0, 255).astype(np.uint8))
    grey = ImageChops.multiply(grey, scene.falloff)
    grey = grey.point(_gain_lut(exposure, 1.0, channels=1))
    if eyes and rng.random() < 0.6:
        draw = ImageDraw.Draw(grey)
        radius = max(1.0, image.height * 0.006)
        for x, y in eyes:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=250)
    return grey


@lru_cache(maxsize=16)
def _noise_tile(seed: int, mode: str, width: int, height: int, sigma: float) -> Image.Image:
    """Sensor noise centred on 128, a little larger than the frame (cached per process)."""
    rng = np.random.default_rng([seed, NOISE_STREAM, width, height, round(sigma * 10)])
    noise = np.clip(128 + rng.normal(0, sigma, (height + 32, width + 32)), 0, 255).astype(np.uint8)
    tile = Image.fromarray(noise)
    return tile if mode == "L" else tile.convert(mode)


def _add_noise(image: Image.Image, rng: np.random.Generator, seed: int, sigma: float):
    """Add sensor noise from a shared tile at a random offset (cheap, deterministic)."""
    tile = _noise_tile(seed, image.mode, image.width, image.height, sigma)
    dx, dy = (int(v) for v in rng.integers(0, 32, 2))
    noise = tile.crop((dx, dy, dx + image.width, dy + image.height))
    return ImageChops.add(image, noise, 1.0, -128)  # image + noise - 128, clipped


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` pixels (a fixed bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _draw_band(image, rng, style: SiteStyle, task: ImageTask) -> tuple[int, int]:
    """The camera's info band: date and time on the left, temperature on the right; returns its first and last row."""
    width, height = image.size
    band = max(6, round(height * 0.06))
    top = 0 if task.band == "top" else height - band
    paper, ink = ((0, 0, 0), (235, 235, 235)) if style.band_dark else ((205, 205, 205), (10, 10, 10))
    if image.mode == "L":
        paper, ink = paper[0], ink[0]
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, top, width, top + band - 1), fill=paper)
    # Night: 18:45 to 05:45 the next morning; day: 06:15 to 18:30.
    hours = (18.75, 29.75) if task.night else (6.25, 18.5)
    minutes = rng.uniform(hours[0] * 60, hours[1] * 60)
    when = style.first_day + timedelta(days=int(rng.integers(0, 75)), minutes=float(minutes))
    celsius = rng.uniform(19, 24) if task.night else rng.uniform(23, 31)
    temperature = f"{celsius * 9 / 5 + 32:.0f}°F" if style.fahrenheit else f"{celsius:.0f}°C"
    font = _font(max(6, round(band * 0.7)))
    y = top + band * 0.12
    draw.text((band * 0.4, y), when.strftime(style.date_format), fill=ink, font=font)
    right = width - band * 0.4 - draw.textlength(temperature, font=font)
    draw.text((right, y), temperature, fill=ink, font=font)
    return top, top + band - 1


def sample_grid(seed: int = 0, tile_width: int = 288, species: Sequence[str] = SPECIES) -> Image.Image:
    """One labelled day and one night image per class, side by side, as a single RGB image (for the docs).

    Each tile is the first draw (640×360 camera) whose animal is mostly in the frame and not tiny;
    the dataset itself also holds the hard cases: far, cut by the frame, hidden, blurred.
    """
    tile_height = round(tile_width * 360 / 640)
    label_height = 18
    columns = 4  # two classes per row, day then night
    rows = math.ceil(2 * len(species) / columns)
    grid = Image.new("RGB", (columns * tile_width, rows * (tile_height + label_height)), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(12)
    for k, (name, night) in enumerate((s, n) for s in species for n in (False, True)):
        for attempt in range(50):
            task = ImageTask(index=k + 100 * attempt, path=None, species=name, site=1 + k // 2, width=640,
                             height=360, night=night, band=("bottom", "top")[k // 2 % 2], seed=seed, stream=GRID_STREAM)
            drawn: dict = {}
            image = render_image(task, drawn)
            if name not in BODY_PLANS or (_in_clear_view(drawn["animal_box"], image.size) and not drawn["blurred"]):
                break
        tile = image.resize((tile_width, tile_height), Image.Resampling.LANCZOS)
        x, y = (k % columns) * tile_width, (k // columns) * (tile_height + label_height)
        grid.paste(tile, (x, y))
        label = f"{name} · {'night (IR)' if night else 'day'}"
        draw.text((x + 4, y + tile_height + 2), label, font=font, fill=(20, 20, 20))
    return grid


def _in_clear_view(box: tuple[int, int, int, int], size: tuple[int, int]) -> bool:
    """Whether an animal's box lies mostly inside the frame and covers a fair part of it."""
    left, top, right, bottom = box
    inside = max(0, min(right, size[0]) - max(left, 0)) * max(0, min(bottom, size[1]) - max(top, 0))
    area = (right - left) * (bottom - top)
    return inside >= 0.8 * area and inside >= 0.03 * size[0] * size[1]
