"""A site's scenery: its camera's style and its patch of forest, from ``(seed, site number)`` alone.

Both are cached per process, so every image of a site shares them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from conserviz_utils.tools.sample.paint import blur, draw_leaves, jitter, jitter_many, leaf_points, leaf_shapes, shade
from conserviz_utils.tools.sample.plan import SITE_STREAM

__all__ = ["Scene", "SiteStyle", "site_scene", "site_style"]


@dataclass(frozen=True)
class SiteStyle:
    """How one site's camera sees its patch of forest; drawn from (seed, site number)."""

    horizon: float  # far edge of the visible ground, as a share of the image height
    tilt: float  # camera roll in degrees
    camera_height: float  # metres above the ground
    litter: tuple[int, int, int]  # leaf-litter colour
    foliage: tuple[int, int, int]  # far-foliage colour
    undergrowth: float  # 0…1, how many plants
    n_trunks: int
    light: float  # daylight brightness under the canopy
    cast: tuple[float, float, float]  # the camera's colour cast
    flash: float  # infrared flash strength
    jpeg_quality: int
    band_dark: bool  # white text on black, else black text on light grey
    fahrenheit: bool
    date_format: str
    first_day: datetime  # the camera's deployment
    near_plants: bool  # out-of-focus plants right in front of the lens


@lru_cache(maxsize=512)
def site_style(seed: int, site: int) -> SiteStyle:
    """The style of a site's camera and forest; the same for every image of the site."""
    rng = np.random.default_rng([seed, SITE_STREAM, site])
    litter = jitter((105, 80, 55), rng, 22)
    return SiteStyle(
        horizon=rng.uniform(0.30, 0.55),
        tilt=float(np.clip(rng.normal(0, 1.3), -3, 3)),
        camera_height=rng.uniform(0.3, 0.7),
        litter=litter,
        foliage=jitter((45, 62, 40), rng, 14),
        undergrowth=rng.uniform(0.15, 1.0),
        n_trunks=int(rng.integers(2, 9)),
        light=rng.uniform(0.75, 1.25),
        cast=tuple(float(c) for c in rng.normal(1.0, 0.05, 3)),
        flash=rng.uniform(0.8, 1.25),
        jpeg_quality=int(rng.integers(45, 66)),
        band_dark=bool(rng.random() < 0.8),
        fahrenheit=bool(rng.random() < 0.2),
        date_format=str(rng.choice(["%Y-%m-%d %H:%M:%S", "%m/%d/%Y %I:%M %p", "%d.%m.%Y %H:%M"])),
        first_day=datetime(2014, 1, 1) + timedelta(days=int(rng.integers(0, 900))),
        near_plants=bool(rng.random() < 0.3),
    )


@dataclass(frozen=True)
class Scene:
    """A site's background at one camera size, drawn once and reused for all its images."""

    background: Image.Image  # RGB, larger than the frame by ``margin`` on every side
    margin: int
    foreground: Image.Image | None  # RGBA plants in front of the lens, frame-sized
    falloff: Image.Image  # L: how far the infrared flash reaches, frame-sized
    horizon: float  # pixels from the top
    trunks: tuple[tuple[float, float], ...]  # (x centre, width) of near trunks, for climbers


@lru_cache(maxsize=8)
def site_scene(seed: int, site: int, width: int, height: int) -> Scene:
    """Draw a site's forest floor, trunks and plants at the camera's size (cached per process)."""
    style = site_style(seed, site)
    rng = np.random.default_rng([seed, SITE_STREAM, site, 1])
    margin = round(0.05 * width)
    big_w, big_h = width + 2 * margin, height + 2 * margin
    horizon = style.horizon * height + margin
    image = _ground_and_sky(style, rng, big_w, big_h, horizon)
    draw = ImageDraw.Draw(image)
    _draw_far_foliage(draw, style, rng, big_w, big_h, horizon)
    image = image.filter(blur(big_h * 0.006))  # haze: far things are soft
    draw = ImageDraw.Draw(image)
    _draw_litter(draw, style, rng, big_w, big_h, horizon)
    trunks = _draw_trunks(draw, style, rng, big_w, big_h, horizon)
    _draw_undergrowth(draw, style, rng, big_w, big_h, horizon)
    image = image.rotate(style.tilt, resample=Image.Resampling.BICUBIC)
    image = image.filter(blur(big_h * 0.0012))
    foreground = _near_plants(rng, width, height) if style.near_plants else None
    return Scene(background=image, margin=margin, foreground=foreground,
                 falloff=_flash_falloff(width, height, style.horizon), horizon=style.horizon * height,
                 trunks=tuple((x - margin, w) for x, w in trunks))


def _ground_and_sky(style, rng, width, height, horizon) -> Image.Image:
    """Dark understorey above the horizon, leaf litter fading into haze below it, mottled."""
    y = np.arange(height, dtype=np.float32)[:, None, None]
    foliage = np.asarray(style.foliage, np.float32)
    haze = 0.55 * foliage + 0.45 * np.array([120, 128, 112], np.float32)
    near = np.asarray(style.litter, np.float32)
    far_ground = 0.6 * near + 0.4 * haze
    up = np.clip(y / horizon, 0, 1)
    down = np.clip((y - horizon) / (height - horizon), 0, 1)
    colour = np.where(y < horizon, foliage + (haze - foliage) * up**3, far_ground + (near - far_ground) * down**0.5)
    mottle = rng.normal(1.0, 0.18, (6, 10, 1)).astype(np.float32)
    mottle = Image.fromarray(np.clip(mottle[..., 0] * 128, 0, 255).astype(np.uint8))
    mottle = np.asarray(mottle.resize((width, height), Image.Resampling.BICUBIC), np.float32)[..., None] / 128
    return Image.fromarray(np.clip(colour * mottle, 0, 255).astype(np.uint8))


def _draw_far_foliage(draw, style, rng, width, height, horizon) -> None:
    """Clumps of distant leaves, thin pale far trunks and a few bright canopy gaps."""
    n_clumps = int(width * horizon / 1200)
    per_clump = 14
    centres = np.stack([rng.uniform(0, width, n_clumps), rng.uniform(-0.05 * height, horizon * 1.1, n_clumps)], 1)
    # Lighter and hazier towards the horizon, darker up in the canopy.
    depth = np.clip(centres[:, 1] / horizon, 0, 1)[:, None]
    clump_colours = jitter_many(style.foliage, rng, 20, n_clumps) * (0.75 + 0.45 * depth)
    spread = height * rng.uniform(0.02, 0.06, (n_clumps, 1, 1))
    offsets = rng.normal(0, 1, (n_clumps, per_clump, 2)) * spread
    points = (centres[:, None, :] + offsets).reshape(-1, 2)
    size = height * rng.uniform(0.012, 0.035, len(points))
    turns = rng.uniform(0, 2 * np.pi, len(points))
    shapes = leaf_shapes(points[:, 0], points[:, 1], size, size * 0.5, turns)
    colours = jitter_many(np.repeat(clump_colours, per_clump, axis=0), rng, 10, len(points))
    draw_leaves(draw, shapes, colours)
    for _ in range(int(rng.integers(3, 12))):
        x, w = rng.uniform(0, width), height * rng.uniform(0.004, 0.012)
        base = horizon + rng.uniform(-0.02, 0.04) * height
        draw.rectangle((x - w, 0, x + w, base), fill=jitter((118, 120, 105), rng, 18))
    for _ in range(int(rng.integers(0, 4))):  # sky seen through a gap in the canopy
        x, y = rng.uniform(0, width), rng.uniform(0, horizon * 0.5)
        size = height * rng.uniform(0.01, 0.03)
        xs, ys = x + rng.normal(0, size, 5), y + rng.normal(0, size * 0.5, 5)
        shapes = leaf_shapes(xs, ys, size * 1.5, size, rng.uniform(0, 6, 5))
        draw_leaves(draw, shapes, jitter_many((165, 180, 160), rng, 15, 5))


def _draw_litter(draw, style, rng, width, height, horizon) -> None:
    """Fallen leaves and twigs, larger towards the camera, and sometimes a fallen log."""
    tones = np.array([(1.0, 1.0, 1.0), (0.7, 0.65, 0.6), (1.3, 1.2, 1.0), (1.35, 1.1, 0.6), (0.5, 0.45, 0.4)])
    n_leaves = int(width * (height - horizon) * 0.006)
    near = rng.random(n_leaves) ** 0.8
    size = height * (0.004 + 0.03 * near) * rng.uniform(0.6, 1.4, n_leaves)
    shapes = leaf_shapes(rng.uniform(0, width, n_leaves), horizon + (height - horizon) * near, size, size * 0.45,
                         rng.uniform(0, 2 * np.pi, n_leaves))
    tone = tones[rng.integers(len(tones), size=n_leaves)]
    colours = jitter_many(np.asarray(style.litter) * tone, rng, 15, n_leaves)
    draw_leaves(draw, shapes, colours)
    for _ in range(int(rng.integers(2, 10))):
        t = rng.random()
        x, y = rng.uniform(0, width), horizon + (height - horizon) * t
        length, angle = height * (0.03 + 0.15 * t), rng.uniform(-0.5, 0.5)
        draw.line((x, y, x + length * math.cos(angle), y + length * math.sin(angle)),
                  fill=jitter((75, 58, 42), rng, 15), width=max(1, round(height * 0.004 * (0.3 + t))))
    if rng.random() < 0.35:
        t = rng.uniform(0.15, 0.6)
        y, x = horizon + (height - horizon) * t, rng.uniform(-0.2, 0.6) * width
        length, thick = width * rng.uniform(0.25, 0.6), height * (0.02 + 0.06 * t)
        slope = rng.uniform(-0.08, 0.08) * length
        draw.polygon([(x, y), (x + length, y + slope), (x + length, y + slope - thick * 0.8), (x, y - thick)],
                     fill=jitter((70, 58, 45), rng, 15))


def _draw_trunks(draw, style, rng, width, height, horizon) -> list[tuple[float, float]]:
    """Tree trunks with buttress roots, bark and lianas; returns (x, width) of the near ones."""
    haze = np.array([120, 128, 112])
    near_trunks = []
    depths = np.sort(rng.uniform(0.05, 1.0, style.n_trunks))  # far first, near last
    for depth in depths:
        base = horizon + (height - horizon) * 0.6 * depth**1.5
        half = height * (0.01 + 0.08 * depth**2) * rng.uniform(0.7, 1.3)
        x = rng.uniform(0, width)
        lean = rng.normal(0, 0.05) * height
        colour = np.asarray(jitter((105, 98, 82), rng, 30), float)
        colour = tuple(int(v) for v in colour * (0.4 + 0.6 * depth) + haze * (0.6 - 0.6 * depth))
        top = -0.05 * height
        draw.polygon([(x - half + lean, top), (x + half + lean, top), (x + half, base), (x - half, base)], fill=colour)
        for side in (-1, 1):  # buttress roots: thin concave fins flaring out to the ground
            reach, rise = half * rng.uniform(0.6, 2.2), half * rng.uniform(1.2, 3.0)
            fin = [(x + side * half * 0.7, base - rise), (x + side * (half + reach * 0.25), base - rise * 0.25),
                   (x + side * (half + reach), base + half * 0.1), (x, base)]
            draw.polygon(fin, fill=shade(colour, rng.uniform(0.85, 1.05)))
        for _ in range(int(rng.integers(2, 6))):  # bark furrows
            bx = x + rng.uniform(-0.7, 0.7) * half
            furrow = max(1, round(half * 0.08))
            draw.line((bx + lean, top, bx, base), fill=shade(colour, 0.75), width=furrow)
        lit = x + half * 0.55  # the side the light falls on
        draw.line((lit + lean, top, lit, base), fill=shade(colour, 1.2), width=max(1, round(half * 0.2)))
        if depth > 0.3:
            near_trunks.append((x + lean / 2, 2 * half))
    for _ in range(int(rng.integers(0, 4))):  # lianas hanging from the canopy
        x0 = rng.uniform(0, width)
        ys = np.linspace(-0.05 * height, rng.uniform(0.3, 1.0) * horizon, 12)
        xs = x0 + np.sin(ys / height * rng.uniform(3, 9) + rng.uniform(0, 6)) * height * 0.04
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=jitter((60, 52, 40), rng, 15),
                  width=max(1, round(height * 0.006)), joint="curve")
    return near_trunks


def _draw_undergrowth(draw, style, rng, width, height, horizon) -> None:
    """Seedlings, broad-leaved herbs and ferns standing on the forest floor."""
    n_plants = int(style.undergrowth * 30 * width / 700)
    for t in np.sort(rng.random(n_plants)):  # far plants first
        base_y = horizon + (height - horizon) * t * 0.9
        x = rng.uniform(0, width)
        size = height * (0.04 + 0.3 * t**1.3) * rng.uniform(0.6, 1.4)
        green = jitter((50, 85, 40), rng, 25)
        if rng.random() < 0.3:  # fern: a curved frond with leaflets
            angle = -np.pi / 2 + rng.uniform(-0.9, 0.9)
            for k in range(9):
                px = x + math.cos(angle) * size * k / 9
                py = base_y + math.sin(angle) * size * k / 9
                for side in (-1, 1):
                    leaflet = size * 0.22 * (1 - k / 12)
                    shape = leaf_points(px, py, leaflet, size * 0.06, angle + side * 1.2)
                    draw.polygon(shape, fill=green)
            continue
        stem_top = (x + rng.normal(0, 0.1) * size, base_y - size)
        draw.line((x, base_y, *stem_top), fill=shade(green, 0.8), width=max(1, round(size * 0.03)))
        for k in range(int(rng.integers(3, 10))):
            along = rng.uniform(0.2, 1.0)
            sx = x + (stem_top[0] - x) * along
            sy = base_y + (stem_top[1] - base_y) * along
            angle = -np.pi / 2 + rng.choice([-1, 1]) * rng.uniform(0.4, 1.5)
            leaf_colour = jitter(green, rng, 18)
            length, breadth = size * rng.uniform(0.25, 0.5), size * rng.uniform(0.08, 0.2)
            draw.polygon(leaf_points(sx, sy, length, breadth, angle), fill=leaf_colour)


def _near_plants(rng, width, height) -> Image.Image:
    """Out-of-focus leaves and grass right in front of the lens, in one or two corners."""
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for corner in rng.choice([0, 1], size=int(rng.integers(1, 3)), replace=False):
        x0 = width * (0.02 if corner == 0 else 0.98)
        for _ in range(int(rng.integers(3, 8))):
            x = x0 + rng.normal(0, 0.06) * width
            angle = -np.pi / 2 + (0.7 if corner == 0 else -0.7) * rng.random()
            length = height * rng.uniform(0.25, 0.6)
            colour = (*jitter((38, 60, 32), rng, 15), 255)
            breadth = length * rng.uniform(0.08, 0.3)
            draw.polygon(leaf_points(x, height * 1.05, length, breadth, angle), fill=colour)
    return layer.filter(blur(height * 0.012))


def _flash_falloff(width: int, height: int, horizon: float) -> Image.Image:
    """How much infrared light reaches each pixel: much on the near ground, little far or aside."""
    rows = np.arange(height, dtype=np.float32)[:, None] / height
    y = (rows - horizon * 0.5) / (1 - horizon * 0.5)
    x = np.arange(width, dtype=np.float32)[None, :] / width - 0.5
    reach = 0.1 + 0.9 * np.clip(y, 0, 1) ** 1.4
    side = 1.0 - 0.9 * x**2
    return Image.fromarray((np.clip(reach * side, 0.04, 1) * 255).astype(np.uint8))

