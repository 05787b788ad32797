"""Sketching animals: a pen that draws in body lengths (side-on, y up, feet at y = 0), and a four-legged body."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from conserviz_utils.tools.sample.paint import shade

__all__ = ["Build", "Pen", "Sketch", "curve", "quadruped", "resample", "scatter"]

_CIRCLE = np.stack([np.cos(np.arange(24) * np.pi / 12), np.sin(np.arange(24) * np.pi / 12)], 1)


class Pen:
    """Draws shapes given in an animal's own units (body length 1, y up, feet at y=0)."""

    def __init__(self, draw, origin, scale, facing, squash=1.0, angle=0.0):
        self.draw = draw
        self.origin = origin
        self.scale = scale
        self.facing = facing  # +1 looks right, -1 looks left
        self.squash = squash  # < 1 when the animal walks towards or away from the camera
        self.angle = angle  # radians; a climber is drawn turned upright

    def points(self, xy) -> list[tuple[float, float]]:
        """Canvas pixels of points given in animal units."""
        p = np.asarray(xy, float).reshape(-1, 2)
        x, y = p[:, 0] * self.squash, p[:, 1]
        if self.angle:
            c, s = math.cos(self.angle), math.sin(self.angle)
            x, y = x * c - y * s, x * s + y * c
        px = self.origin[0] + self.facing * self.scale * x
        py = self.origin[1] - self.scale * y
        return list(zip(px.tolist(), py.tolist()))

    def polygon(self, xy, fill) -> None:
        self.draw.polygon(self.points(xy), fill=fill)

    def blob(self, centre, rx, ry, fill, turn=0.0) -> None:
        """A filled ellipse with radii (rx, ry), turned by ``turn`` radians."""
        c, s = math.cos(turn), math.sin(turn)
        x, y = rx * _CIRCLE[:, 0], ry * _CIRCLE[:, 1]
        self.polygon(np.stack([centre[0] + x * c - y * s, centre[1] + x * s + y * c], 1), fill)

    def limb(self, a, b, width_a, width_b, fill) -> None:
        """A tapered limb from ``a`` to ``b`` with rounded ends."""
        a, b = np.asarray(a, float), np.asarray(b, float)
        d = b - a
        n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
        half_a, half_b = n * width_a / 2, n * width_b / 2
        self.polygon([a + half_a, b + half_b, b - half_b, a - half_a], fill)
        self.blob(a, width_a / 2, width_a / 2, fill)
        self.blob(b, width_b / 2, width_b / 2, fill)

    def chain(self, points, widths, fills) -> None:
        """Consecutive limbs through ``points`` (a tail), each segment with its width and colour."""
        for k in range(len(points) - 1):
            self.limb(points[k], points[k + 1], widths[k], widths[k + 1], fills[k % len(fills)])

    def pixel(self, xy) -> tuple[float, float]:
        return self.points(xy)[0]


@dataclass
class Sketch:
    """An animal being drawn: the silhouette pen, the markings pen (clipped to the silhouette)."""

    body: Pen
    marks: Pen
    eyes: list = field(default_factory=list)  # eye points in animal units, for eyeshine


@dataclass(frozen=True)
class Build:
    """Proportions of a four-legged body, in body lengths."""

    torso: float = 0.32  # torso height
    leg: float = 0.45  # shoulder height above the ground
    leg_width: float = 0.07
    rump: float = 0.0  # rump raised above the shoulders (duikers) or lowered (hyenas)
    neck: float = 0.18
    neck_width: float = 0.14
    neck_angle: float = 0.7  # radians above the horizontal
    head: float = 0.22  # head length
    head_height: float = 0.13
    head_pitch: float = -0.3  # radians; negative looks down
    muzzle: float = 0.1
    ear: float = 0.07
    tail: float = 0.15
    tail_width: float = 0.04
    tail_lift: float = -1.0  # radians from pointing straight back; negative hangs
    tail_curl: float = 0.0  # total bend along the tail
    stride: float = 0.3  # leg swing; 0 stands still


def quadruped(sk: Sketch, build: Build, colours: dict, rng: np.random.Generator) -> dict:
    """Draw a four-legged animal side-on; returns its key points (in body lengths)."""
    b, pen = build, sk.body
    phase = rng.uniform(0, 2 * np.pi)
    shoulder = np.array([0.3, b.leg + b.torso * 0.5])
    hip = np.array([-0.3, b.leg + b.torso * 0.5 + b.rump])

    def leg(top, offset, hind, colour):
        swing = b.stride * math.sin(phase + offset)
        height = top[1] - b.torso * 0.25
        bend = -0.07 if hind else 0.04
        joint = top + np.array([bend + swing * 0.5 * height, -0.55 * height - b.torso * 0.25])
        foot = np.array([top[0] + swing * height, 0.0])
        pen.limb(top, joint, b.leg_width * 1.7, b.leg_width, colour)
        pen.limb(joint, foot, b.leg_width, b.leg_width * 0.7, colour)
        pen.blob(foot + [0.02, 0.0], b.leg_width * 0.55, b.leg_width * 0.35, shade(colour, 0.6))

    far_legs = shade(colours["legs"], 0.7)
    leg(shoulder + [0.04, 0], np.pi, False, far_legs)
    leg(hip + [0.04, 0], 0.0, True, far_legs)
    tail_start = hip + np.array([-0.18, b.torso * 0.3])
    tail = curve(tail_start, b.tail, np.pi - b.tail_lift, b.tail_curl, 8, facing_back=True)
    if b.tail > 0:
        widths = np.linspace(b.tail_width, b.tail_width * 0.6, len(tail))
        pen.chain(tail, widths, [colours.get("tail", colours["coat"])])
    centre = (shoulder + hip) / 2
    pen.blob(centre, 0.45, b.torso / 2, colours["coat"], turn=math.atan2(b.rump, 0.6))
    pen.blob(shoulder + [0.04, 0.0], 0.2, b.torso * 0.52, colours["coat"])
    pen.blob(hip + [-0.04, 0.0], 0.22, b.torso * 0.55, colours["coat"])
    pen.blob(centre - [0, b.torso * 0.36], 0.3, b.torso * 0.12, colours["belly"])
    neck_base = shoulder + np.array([0.1, b.torso * 0.2])
    neck_end = neck_base + b.neck * np.array([math.cos(b.neck_angle), math.sin(b.neck_angle)])
    pen.limb(neck_base, neck_end, b.neck_width, b.neck_width * 0.8, colours["coat"])
    direction = np.array([math.cos(b.head_pitch), math.sin(b.head_pitch)])
    up = np.array([-direction[1], direction[0]])
    head = neck_end + direction * b.head * 0.3
    pen.blob(head, b.head / 2, b.head_height / 2, colours["coat"], turn=b.head_pitch)
    nose = head + direction * (b.head * 0.4 + b.muzzle)
    muzzle_colour = colours.get("muzzle", colours["coat"])
    snout_base = head + direction * b.head * 0.1
    pen.limb(snout_base, nose, b.head_height * 0.8, b.head_height * 0.45, muzzle_colour)
    ear = head - direction * b.head * 0.25 + up * b.head_height * 0.55
    ear_colour = colours.get("ear", shade(colours["coat"], 0.8))
    pen.blob(ear, b.ear * 0.45, b.ear, ear_colour, turn=b.head_pitch - 0.4)
    leg(shoulder, 0.0, False, colours["legs"])
    leg(hip, np.pi, True, colours["legs"])
    eye = head + direction * b.head * 0.12 + up * b.head_height * 0.15
    sk.eyes.append(eye)
    return {"head": head, "direction": direction, "up": up, "nose": nose, "ear": ear,
            "shoulder": shoulder, "hip": hip, "centre": centre, "tail": tail, "eye": eye}


def curve(start, length, angle, bend, n, facing_back=False) -> np.ndarray:
    """``n`` points along a bending line: a tail, a neck, a frond (angle and bend in radians)."""
    steps = np.linspace(0, 1, n)
    headings = angle + (bend * steps if not facing_back else -bend * steps)
    deltas = np.stack([np.cos(headings), np.sin(headings)], 1) * length / (n - 1)
    deltas[0] = 0
    return np.asarray(start, float) + np.cumsum(deltas, axis=0)


def scatter(rng, centre, rx, ry, n) -> np.ndarray:
    """``n`` random points inside an ellipse, for spots and speckles."""
    r = np.sqrt(rng.random(n))
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([centre[0] + rx * r * np.cos(t), centre[1] + ry * r * np.sin(t)], 1)


def resample(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced along a polyline."""
    steps = np.r_[0, np.cumsum(np.hypot(*np.diff(points, axis=0).T))]
    at = np.linspace(0, steps[-1], n)
    return np.stack([np.interp(at, steps, points[:, 0]), np.interp(at, steps, points[:, 1])], 1)
