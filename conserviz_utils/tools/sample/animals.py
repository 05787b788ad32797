"""Animals: one drawing per body plan (``BODY_PLANS``, in the colourings of the real Taï species) and
:func:`animal_layer`, which turns one into an RGBA image cropped to the animal."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from conserviz_utils.tools.sample.paint import blur, jitter, shade
from conserviz_utils.tools.sample.sketch import Build, Pen, Sketch, curve, quadruped, resample, scatter

__all__ = ["BODY_PLANS", "DISTANCE_M", "SIZE_M", "animal_layer", "motion_blur"]


def _draw_duiker(sk: Sketch, rng: np.random.Generator) -> None:
    """A duiker: small arched antelope on thin legs, low head, short spike horns."""
    kinds = ["maxwell", "bay", "zebra", "yellow_backed", "ogilby"]
    kind = rng.choice(kinds, p=[0.35, 0.25, 0.1, 0.1, 0.2])
    coat = {"maxwell": (105, 92, 80), "bay": (125, 62, 30), "zebra": (180, 115, 55),
            "yellow_backed": (55, 45, 38), "ogilby": (150, 85, 40)}[kind]
    coat = jitter(coat, rng, 14)
    colours = {"coat": coat, "belly": shade(coat, 1.25), "legs": shade(coat, 0.8), "muzzle": shade(coat, 0.75)}
    grazing = rng.random() < 0.4
    build = Build(
        torso=0.4, leg=rng.uniform(0.42, 0.52), leg_width=0.055, rump=0.1, neck=0.12, neck_width=0.15,
        neck_angle=rng.uniform(-0.2, 0.1) if grazing else rng.uniform(0.2, 0.6), head=0.26, head_height=0.15,
        head_pitch=rng.uniform(-1.2, -0.7) if grazing else rng.uniform(-0.6, -0.1), muzzle=0.08, ear=0.1, tail=0.1,
        tail_width=0.05, tail_lift=0.2, stride=rng.uniform(0, 0.35),
    )
    p = quadruped(sk, build, colours, rng)
    pen, marks = sk.body, sk.marks
    for side in (0.0, 0.03):  # two short spike horns pointing back, with a tuft between them
        base = p["head"] - p["direction"] * 0.04 + p["up"] * 0.06 + [side, 0]
        pen.limb(base, base - p["direction"] * 0.11 + p["up"] * 0.03, 0.025, 0.006, (40, 35, 30))
    pen.blob(p["head"] + p["up"] * 0.07 - p["direction"] * 0.03, 0.035, 0.025, shade(coat, 0.6))
    back = (p["shoulder"] + [0.05, build.torso * 0.45], p["hip"] + [0, build.torso * 0.48])
    if kind in ("bay", "ogilby"):  # a dark stripe along the back
        marks.limb(*back, 0.06, 0.08, (35, 25, 20))
    if kind == "zebra":
        for x in np.linspace(-0.35, 0.2, 6):
            marks.polygon([(x, 0), (x + 0.05, 0), (x + 0.07, 2), (x + 0.02, 2)], (30, 25, 20))
    if kind == "yellow_backed":
        marks.blob(p["hip"] + [0.0, build.torso * 0.4], 0.18, 0.08, (210, 175, 80))
    if rng.random() < 0.4:  # the white underside of a flicked tail
        pen.blob(p["tail"][-1], 0.035, 0.03, (225, 220, 210))


def _draw_hog(sk: Sketch, rng: np.random.Generator) -> None:
    """A hog: dark, bulky barrel on short legs, big wedge head with a snout disc."""
    red_river = rng.random() < 0.35
    dark_coat = rng.choice([35, 50, 65]) * np.ones(3) * [1.0, 0.9, 0.8] if not red_river else None
    coat = jitter((165, 75, 35) if red_river else dark_coat, rng, 12)
    colours = {"coat": coat, "belly": shade(coat, 0.9), "legs": (30, 25, 22) if red_river else shade(coat, 0.8),
               "muzzle": shade(coat, 0.85), "tail": shade(coat, 0.7)}
    build = Build(
        torso=rng.uniform(0.48, 0.56), leg=rng.uniform(0.2, 0.26), leg_width=0.1, rump=-0.02, neck=0.08,
        neck_width=0.34, neck_angle=0.2, head=0.34, head_height=0.25, head_pitch=rng.uniform(-0.9, -0.25),
        muzzle=0.12, ear=0.08, tail=0.22, tail_width=0.025, tail_lift=-1.3, stride=rng.uniform(0, 0.2),
    )
    p = quadruped(sk, build, colours, rng)
    pen, marks = sk.body, sk.marks
    head, nose, up, ahead = p["head"], p["nose"], p["up"], p["direction"]
    disc = (70, 55, 55) if red_river else (85, 70, 65)
    pen.blob(nose, 0.035, 0.07, disc, turn=build.head_pitch)
    for k in range(28):  # bristles along the back
        x = -0.5 + k / 27
        top = build.leg + build.torso * (0.98 + 0.04 * math.cos(x * 3))
        tip = (x - 0.02, top + rng.uniform(0.02, 0.06))
        pen.limb((x, top - 0.03), tip, 0.018, 0.006, shade(coat, 0.6))
    for point in scatter(rng, p["centre"], 0.45, build.torso * 0.45, 60):  # coarse hair
        marks.limb(point, point + [-0.04, -0.02], 0.012, 0.006, shade(coat, rng.uniform(0.6, 1.3)))
    if red_river:  # white ear tufts and face stripe on a black mask
        pen.limb(p["ear"], p["ear"] + up * 0.1 - ahead * 0.04, 0.03, 0.01, (235, 230, 220))
        stripe = (head - ahead * 0.05 + up * 0.07, nose + up * 0.04)
        marks.limb(*stripe, 0.025, 0.015, (225, 220, 210))
        marks.blob(head + ahead * 0.05, 0.1, 0.08, (35, 30, 28))
    elif rng.random() < 0.6:  # tusks
        pen.limb(nose - ahead * 0.08, nose - ahead * 0.04 + up * 0.07, 0.025, 0.01, (220, 210, 185))


def _draw_leopard(sk: Sketch, rng: np.random.Generator) -> None:
    """A leopard: long golden body covered in rosettes, long tail curving up at the tip."""
    coat = jitter((195, 150, 80), rng, 18)
    colours = {"coat": coat, "belly": (228, 214, 180), "legs": coat, "muzzle": shade(coat, 1.1)}
    crouch = rng.random() < 0.3
    build = Build(
        torso=0.3, leg=rng.uniform(0.24, 0.3) if crouch else rng.uniform(0.34, 0.4), leg_width=0.085, rump=0.0,
        neck=0.14, neck_width=0.19, neck_angle=rng.uniform(-0.1, 0.5), head=0.19, head_height=0.16,
        head_pitch=rng.uniform(-0.5, 0.1), muzzle=0.05, ear=0.045, tail=rng.uniform(0.8, 0.95), tail_width=0.055,
        tail_lift=rng.uniform(-1.0, -0.4), tail_curl=rng.uniform(0.8, 2.0), stride=rng.uniform(0, 0.35),
    )
    p = quadruped(sk, build, colours, rng)
    marks = sk.marks
    dark = (30, 22, 15)
    centre = p["centre"] + [0, build.torso * 0.05]
    for point in scatter(rng, centre, 0.55, build.torso * 0.5, 55):  # rosettes: broken dark rings
        size = rng.uniform(0.025, 0.04)
        marks.blob(point, size * 0.9, size * 0.8, shade(coat, 0.82))
        for t in rng.uniform(0, 2 * np.pi, 4):
            ring = point + size * np.array([math.cos(t), math.sin(t)])
            marks.blob(ring, size * 0.4, size * 0.3, dark)
    for point in scatter(rng, p["head"], 0.1, 0.07, 12):
        marks.blob(point, 0.01, 0.01, dark)
    for point in p["tail"][3::2]:  # dark rings towards the tail tip
        marks.blob(point, 0.025, 0.025, dark)
    for limb_top in (p["shoulder"], p["hip"]):
        for point in scatter(rng, limb_top - [0, build.leg * 0.5], 0.08, build.leg * 0.45, 8):
            marks.blob(point, 0.016, 0.016, dark)
    sk.body.blob(p["nose"], 0.02, 0.015, (60, 40, 35))


def _draw_civet_genet(sk: Sketch, rng: np.random.Generator) -> None:
    """A civet or genet: long, low body on short legs, pointed face, long banded tail."""
    kind = rng.choice(["civet", "genet", "palm_civet"], p=[0.4, 0.4, 0.2])
    civet = kind == "civet"
    coat = {"civet": (150, 140, 118), "genet": (190, 175, 140), "palm_civet": (120, 92, 62)}[kind]
    coat = jitter(coat, rng, 15)
    dark = (28, 24, 20) if kind != "palm_civet" else shade(coat, 0.6)
    colours = {"coat": coat, "belly": shade(coat, 1.1), "legs": dark if civet else shade(coat, 0.8),
               "muzzle": shade(coat, 1.1), "ear": shade(coat, 0.8)}
    build = Build(
        torso=0.28 if civet else 0.22, leg=0.3 if civet else rng.uniform(0.18, 0.22), leg_width=0.06,
        rump=0.04 if civet else 0.0, neck=0.12, neck_width=0.14, neck_angle=rng.uniform(-0.1, 0.4), head=0.2,
        head_height=0.12, head_pitch=rng.uniform(-0.6, 0.0), muzzle=0.13, ear=0.07 if kind == "genet" else 0.05,
        tail=rng.uniform(0.5, 0.6) if civet else rng.uniform(0.85, 1.0), tail_width=0.08 if civet else 0.055,
        tail_lift=rng.uniform(-0.7, -0.1), tail_curl=rng.uniform(-0.3, 0.4), stride=rng.uniform(0, 0.3),
    )
    p = quadruped(sk, build, colours, rng)
    pen, marks = sk.body, sk.marks
    bands = resample(p["tail"], 13)
    widths = np.linspace(build.tail_width, build.tail_width * 0.7, len(bands))
    pen.chain(bands, widths, [coat, dark])  # alternating light and dark rings
    spots = 45 if kind != "palm_civet" else 25
    for point in scatter(rng, p["centre"], 0.5, build.torso * 0.42, spots):  # rows of dark spots
        marks.blob(point, rng.uniform(0.018, 0.03), 0.016, dark)
    back = (p["shoulder"] + [0.1, build.torso * 0.5], p["hip"] + [0, build.torso * 0.5])
    marks.limb(*back, 0.035, 0.04, dark)
    if civet:  # black mask across the eyes, black throat band
        marks.blob(p["eye"], 0.06, 0.04, dark, turn=build.head_pitch)
        throat = (p["shoulder"] + [0.12, build.torso * 0.6], p["shoulder"] + [0.16, -0.05])
        marks.limb(*throat, 0.05, 0.04, dark)
    pen.blob(p["nose"], 0.015, 0.012, (30, 25, 25))


def _draw_rodent(sk: Sketch, rng: np.random.Generator) -> None:
    """A rodent: small egg-shaped body, round ears, a thin naked, quilled or bushy tail."""
    kind = rng.choice(["pouched_rat", "porcupine", "squirrel"], p=[0.45, 0.3, 0.25])
    coat = jitter({"pouched_rat": (115, 100, 85), "porcupine": (72, 58, 46), "squirrel": (150, 98, 58)}[kind], rng, 14)
    colours = {"coat": coat, "belly": shade(coat, 1.35), "legs": shade(coat, 0.8), "ear": (150, 115, 105),
               "tail": (190, 170, 160) if kind == "pouched_rat" else shade(coat, 0.9)}
    # Tail: length, width, lift and curl (a squirrel's curls forward over its back).
    tail = {"pouched_rat": (0.8, 0.035, -0.25, 0.3), "porcupine": (0.35, 0.05, -0.5, 0.0),
            "squirrel": (0.75, 0.16, 0.9, 2.4)}[kind]
    build = Build(
        torso=0.4, leg=rng.uniform(0.08, 0.13), leg_width=0.07, rump=0.08, neck=0.02, neck_width=0.26,
        neck_angle=0.0, head=0.22, head_height=0.17, head_pitch=rng.uniform(-0.5, 0.0), muzzle=0.12, ear=0.09,
        tail=tail[0], tail_width=tail[1], tail_lift=tail[2], tail_curl=tail[3], stride=rng.uniform(0, 0.2),
    )
    p = quadruped(sk, build, colours, rng)
    pen = sk.body
    if kind == "pouched_rat":  # the white end of the tail
        end = resample(p["tail"], 6)[3:]
        pen.chain(end, [0.025, 0.022, 0.02], [(235, 232, 225)])
    if kind == "porcupine":  # quills along the back and a pale tail tuft
        back = p["centre"] + [0, build.torso * 0.3]
        for point in scatter(rng, back, 0.45, build.torso * 0.3, 40):
            tip = point + [-0.12, rng.uniform(0.02, 0.1)]
            pen.limb(point, tip, 0.02, 0.004, shade((210, 200, 185), rng.uniform(0.5, 1.0)))
        pen.blob(p["tail"][-1], 0.07, 0.05, (225, 220, 205))
    pen.blob(p["nose"], 0.02, 0.02, (60, 45, 45))


def _draw_bird(sk: Sketch, rng: np.random.Generator) -> None:
    """A ground bird: tilted oval body, small head and beak, thin legs, a tail behind."""
    kind = rng.choice(["guineafowl", "francolin", "ibis", "dove"], p=[0.4, 0.3, 0.15, 0.15])
    coat = {"guineafowl": (30, 30, 35), "francolin": (110, 82, 58), "ibis": (75, 72, 58), "dove": (120, 100, 90)}[kind]
    coat = jitter(coat, rng, 12)
    pen, marks = sk.body, sk.marks
    leg = {"guineafowl": 0.28, "francolin": 0.22, "ibis": 0.32, "dove": 0.12}[kind]
    pecking = rng.random() < 0.3
    leg_colour = (150, 60, 45) if kind == "francolin" else (60, 55, 50)
    for dx in (-0.06, 0.06):
        pen.limb((dx * 0.5, leg + 0.05), (dx + rng.normal(0, 0.04), 0.0), 0.03, 0.02, leg_colour)
        pen.limb((dx, 0.0), (dx + 0.09, 0.0), 0.02, 0.012, leg_colour)
    body_centre = np.array([0.0, leg + 0.2])
    tilt = rng.uniform(0.0, 0.35) - (0.3 if pecking else 0.0)
    tail = [body_centre + [-0.3, 0.06], (-0.62, leg + 0.08 - tilt * 0.4), (-0.6, leg + 0.02 - tilt * 0.4),
            body_centre + [-0.25, -0.08]]
    pen.polygon(tail, shade(coat, 0.8))
    pen.blob(body_centre, 0.38, 0.2, coat, turn=tilt)
    pen.blob(body_centre + [-0.03, 0.03], 0.26, 0.12, shade(coat, 0.85), turn=tilt)  # folded wing
    head = body_centre + ([0.42, -0.22] if pecking else [0.36, 0.26])
    pen.limb(body_centre + [0.25, 0.08], head, 0.16, 0.09, coat)
    face = {"guineafowl": (120, 130, 165), "ibis": coat, "francolin": (170, 60, 50), "dove": coat}[kind]
    pen.blob(head, 0.1, 0.085, coat)
    pen.blob(head + [0.03, -0.02], 0.06, 0.05, face)
    heading = -0.6 if pecking else 0.0
    direction = np.array([math.cos(heading), math.sin(heading)])
    if kind == "ibis":  # a long down-curved bill
        beak = curve(head + direction * 0.08, 0.38, heading - 0.1, -0.9, 7)
        pen.chain(beak, np.linspace(0.045, 0.012, 7), [(45, 40, 38)])
    else:
        base = head + direction * 0.06
        pen.polygon([base + [0, 0.03], head + direction * 0.2, base - [0, 0.03]], (200, 190, 160))
    if kind == "guineafowl":
        pen.limb(head + [0.0, 0.06], head + [-0.03, 0.16], 0.08, 0.03, (20, 20, 22))  # crest
        for point in scatter(rng, body_centre, 0.37, 0.19, 70):
            marks.blob(point, 0.012, 0.012, (225, 228, 235))
    elif kind == "francolin":
        for point in scatter(rng, body_centre, 0.37, 0.19, 60):
            marks.blob(point, 0.015, 0.008, (200, 180, 150), turn=0.4)
    sk.eyes.append(head + [0.02, 0.02])


def _draw_monkey(sk: Sketch, rng: np.random.Generator) -> None:
    """A monkey or prosimian: sitting upright, walking, or climbing, mostly with a long tail."""
    kinds = ["mangabey", "diana", "colobus", "red_colobus", "chimpanzee", "galago"]
    kind = rng.choice(kinds, p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.1])
    coat = {"mangabey": (95, 90, 88), "diana": (32, 30, 30), "colobus": (25, 24, 24), "red_colobus": (160, 82, 42),
            "chimpanzee": (35, 30, 28), "galago": (130, 110, 90)}[kind]
    coat = jitter(coat, rng, 10)
    colours = {
        "coat": coat, "belly": (225, 220, 210) if kind in ("diana", "colobus") else shade(coat, 1.15), "legs": coat,
        "muzzle": (150, 120, 110) if kind == "chimpanzee" else shade(coat, 1.4),
        "tail": (230, 228, 220) if kind == "colobus" else coat,
    }
    has_tail = kind != "chimpanzee"
    pose = "climb" if sk.body.angle else rng.choice(["sit", "walk"], p=[0.55, 0.45])
    if pose == "sit":
        _monkey_sitting(sk, colours, rng, has_tail, big_eyes=kind == "galago")
        return
    build = Build(
        torso=0.25, leg=0.5, leg_width=0.06, rump=0.1 if kind == "chimpanzee" else 0.07, neck=0.06,
        neck_width=0.16, neck_angle=0.6, head=0.2, head_height=0.19, head_pitch=rng.uniform(-0.4, 0.2),
        muzzle=0.04, ear=0.035, tail=rng.uniform(1.0, 1.3) if has_tail else 0.0, tail_width=0.04,
        tail_lift=rng.uniform(0.4, 1.0), tail_curl=rng.uniform(-2.6, -1.6), stride=rng.uniform(0.15, 0.4),
    )
    p = quadruped(sk, build, colours, rng)
    face = p["head"] + p["direction"] * 0.07
    sk.body.blob(face, 0.05, 0.065, colours["muzzle"])
    sk.body.blob(face + p["direction"] * 0.02 + p["up"] * 0.025, 0.015, 0.015, (20, 18, 16))


def _monkey_sitting(sk: Sketch, colours: dict, rng: np.random.Generator, has_tail, big_eyes):
    """A monkey sitting upright, seen from the side or three-quarters, tail on the ground."""
    pen = sk.body
    coat = colours["coat"]
    if has_tail:
        length, heading = rng.uniform(0.8, 1.1), np.pi + rng.uniform(-0.2, 0.2)
        tail = curve((-0.15, 0.05), length, heading, rng.uniform(-1.5, 1.5), 10)
        pen.chain(tail, np.linspace(0.05, 0.035, 10), [colours["tail"]])
    pen.blob((0.05, 0.12), 0.28, 0.12, shade(coat, 0.85))  # folded legs
    pen.blob((0.0, 0.42), 0.2, 0.34, coat, turn=rng.uniform(-0.2, 0.2))  # upright torso
    pen.blob((0.08, 0.45), 0.1, 0.22, colours["belly"])
    arm_reach = rng.choice([(0.28, 0.04), (0.3, 0.55)])  # on the ground, or to the mouth
    pen.limb((0.08, 0.62), (0.2, 0.35), 0.1, 0.08, shade(coat, 0.9))
    pen.limb((0.2, 0.35), arm_reach, 0.08, 0.06, shade(coat, 0.9))
    head = np.array([0.08, 0.9])
    pen.blob(head, 0.16, 0.15, coat)
    pen.blob(head + [0.08, -0.02], 0.09, 0.1, colours["muzzle"])  # face
    eye = head + [0.12, 0.02]
    eye_size = 0.04 if big_eyes else 0.018
    pen.blob(eye, eye_size, eye_size, (20, 18, 16))
    sk.eyes.append(eye)


#: One drawing function per class; "blank" has no animal.
BODY_PLANS = {"antelope_duiker": _draw_duiker, "bird": _draw_bird, "civet_genet": _draw_civet_genet, "hog": _draw_hog,
              "leopard": _draw_leopard, "monkey_prosimian": _draw_monkey, "rodent": _draw_rodent}
#: Real body length in metres (tail excluded), smallest and largest.
SIZE_M = {"antelope_duiker": (0.5, 1.0), "bird": (0.3, 0.5), "civet_genet": (0.45, 0.85), "hog": (0.9, 1.4),
          "leopard": (1.0, 1.5), "monkey_prosimian": (0.4, 0.75), "rodent": (0.2, 0.42)}
#: Nearest, typical and farthest distance in metres at which a camera catches each class:
#: the infrared motion sensor fires mostly for animals a few metres away, small ones closer.
DISTANCE_M = {
    "antelope_duiker": (0.8, 3.0, 9.0),
    "bird": (0.5, 1.6, 4.0),
    "civet_genet": (0.7, 2.2, 7.0),
    "hog": (1.0, 3.5, 10.0),
    "leopard": (1.0, 3.5, 10.0),
    "monkey_prosimian": (0.8, 2.8, 8.0),
    "rodent": (0.4, 1.4, 3.5),
}


def animal_layer(species, rng, length_px, facing, squash, angle):
    """Draw one animal as an RGBA image cropped to it; returns (image, feet-centre pixel, eye pixels)."""
    supersample = 3 if length_px < 50 else 2 if length_px < 220 else 1  # smooth small animals
    scale = length_px * supersample
    side = math.ceil(3.4 * scale)
    origin = (side / 2, side / 2)
    body = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    marks = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    sketch = Sketch(
        body=Pen(ImageDraw.Draw(body), origin, scale, facing, squash, angle),
        marks=Pen(ImageDraw.Draw(marks), origin, scale, facing, squash, angle),
    )
    BODY_PLANS[species](sketch, rng)
    box = body.getchannel("A").getbbox()
    body, marks = body.crop(box), marks.crop(box)
    marks.putalpha(ImageChops.multiply(marks.getchannel("A"), body.getchannel("A")))
    body.alpha_composite(marks)
    body = body.reduce(supersample) if supersample > 1 else body

    def to_layer(point):
        return ((point[0] - box[0]) / supersample, (point[1] - box[1]) / supersample)

    eyes = [to_layer(sketch.body.pixel(eye)) for eye in sketch.eyes]
    return _fur_shading(body, rng, length_px), to_layer(origin), eyes


def _fur_shading(animal: Image.Image, rng: np.random.Generator, length_px: float) -> Image.Image:
    """Round the flat drawing: darker rims, light from above, a little fur noise."""
    alpha = animal.getchannel("A")
    inner = np.asarray(_soft_mask(alpha, length_px * 0.04), np.float32) / 255
    rgb = np.asarray(animal.convert("RGB"), np.float32)
    light = np.linspace(1.12, 0.8, rgb.shape[0], dtype=np.float32)[:, None]
    fur = rng.normal(1.0, 0.06, rgb.shape[:2]).astype(np.float32)
    factor = (0.55 + 0.45 * np.clip(inner * 1.6, 0, 1)) * light * fur
    shaded = np.clip(rgb * factor[..., None], 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([shaded, np.asarray(alpha)]))


def _soft_mask(mask: Image.Image, radius: float) -> Image.Image:
    """Blur a mask by ``radius`` pixels cheaply: blur a reduced copy and scale it back up."""
    factor = max(1, min(int(radius // 2), mask.width // 4, mask.height // 4))
    small = mask.reduce(factor) if factor > 1 else mask
    small = small.filter(blur(max(0.5, radius / factor)))
    return small.resize(mask.size, Image.Resampling.BILINEAR) if factor > 1 else small


def motion_blur(animal: Image.Image, length: int) -> Image.Image:
    """Smear an RGBA layer sideways over ``length`` pixels: a moving animal, a slow exposure."""
    a = np.asarray(animal, np.float32)
    weight = a[..., 3:] / 255
    premultiplied = np.concatenate([a[..., :3] * weight, weight], axis=2)
    h, w, _ = premultiplied.shape
    smeared = np.zeros((h, w + length, 4), np.float32)
    for shift in range(length + 1):
        smeared[:, shift : shift + w] += premultiplied
    smeared /= length + 1
    rgb = smeared[..., :3] / np.maximum(smeared[..., 3:], 1e-6)
    out = np.concatenate([rgb, smeared[..., 3:] * 255], axis=2)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))

