"""The synthetic Taï-like sample dataset: camera-trap scenes in exactly the competition layout.

Learners without the Conser-vision images (offline, in CI, in a workshop) get a dataset that every
notebook reads unchanged: the same four CSVs, the same columns, ids ``ZJ000000…`` with test ids
continuing after train ids, and JPEGs under ``train_features/`` and ``test_features/``. It mirrors
the facts of the real data (docs/sample.md lists them): train and test sites disjoint in the
proportion 148:51, heavy-tailed site sizes, the class shares, species that live at only some
sites, the camera image sizes, infrared night shots and camera info bands.

How a dataset is made, in two steps:

1. :func:`plan_sample` decides, from the seed alone, every image's split, site, species, size,
   day or night and info band (a DataFrame; cheap, so tests check its statistics at full scale).
2. Worker processes draw each planned image: the site's persistent background, lighting, one
   animal with the body plan of its class, occluding plants, camera effects, the info band.
   Every random draw of an image comes from ``(seed, image index)`` and every draw of a site from
   ``(seed, site number)``, so the bytes do not depend on the number of workers or their order.

Run ``python -m conserviz_utils.sample --out data/sample`` to build one from the shell.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont
from tqdm.auto import tqdm

from conserviz_utils import SPECIES, __version__
from conserviz_utils.errors import ConservizError

__all__ = [
    "MARKER_NAME",
    "SampleFolderError",
    "SampleParameterError",
    "SampleReport",
    "generate_sample",
    "main",
    "plan_sample",
    "sample_grid",
    "sample_marker",
]

#: The file that marks a folder as a complete sample dataset; it is written last.
MARKER_NAME = "conserviz-sample.json"
#: Present only while a generator is writing; marks the folder as an unfinished sample of ours.
INCOMPLETE_NAME = ".conserviz-sample-incomplete"
#: Bump when the same parameters would draw different files, so old samples are rebuilt.
GENERATOR_VERSION = 1
#: Written into the marker (not ``__name__``, which is "__main__" under ``python -m``).
GENERATOR_NAME = "conserviz_utils.sample"

_CSV_NAMES = (
    "train_features.csv",
    "train_labels.csv",
    "test_features.csv",
    "submission_format.csv",
)
_IMAGE_DIRS = ("train_features", "test_features")
#: Everything a sample folder may hold, an interrupted write's ``.partial`` files included.
_SAMPLE_ENTRIES = frozenset(
    (*_CSV_NAMES, *_IMAGE_DIRS, MARKER_NAME, INCOMPLETE_NAME)
    + tuple(f"{name}.partial" for name in (*_CSV_NAMES, MARKER_NAME))
)

# ---------------------------------------------------------------------------------------------
# Facts of the real competition data (../shared/README.md) that the sample reproduces.
# ---------------------------------------------------------------------------------------------

#: Train images per class in the real data; the sample keeps their shares.
REAL_CLASS_COUNTS = {
    "antelope_duiker": 2474,
    "bird": 1641,
    "blank": 2213,
    "civet_genet": 2423,
    "hog": 978,
    "leopard": 2254,
    "monkey_prosimian": 2492,
    "rodent": 2013,
}
#: Train image sizes (width, height) of the real data; the rare 360×215 and 160×95 are left out.
REAL_IMAGE_SIZES = {
    (640, 360): 7490,
    (960, 540): 6345,
    (640, 335): 970,
    (360, 240): 864,
    (960, 515): 458,
    (160, 120): 293,
}
REAL_N_TRAIN, REAL_N_TEST = 16488, 4464
REAL_TRAIN_SITES, REAL_TEST_SITES = 148, 51
#: Share of the train sites where each class is seen. civet_genet, leopard, hog and blank are
#: the real counts (49, 47, 37, 142 of 148); the others are not published and are assumptions.
SITE_PRESENCE = {
    "antelope_duiker": 0.80,
    "bird": 0.60,
    "blank": 142 / 148,
    "civet_genet": 49 / 148,
    "hog": 37 / 148,
    "leopard": 47 / 148,
    "monkey_prosimian": 0.70,
    "rodent": 0.70,
}
#: Chance that a camera fires in infrared (night) mode, by class: civets, genets and rodents
#: are nocturnal, monkeys and birds diurnal. Together about 47 % of images are infrared.
NIGHT_SHARE = {
    "antelope_duiker": 0.40,
    "bird": 0.10,
    "blank": 0.30,
    "civet_genet": 0.95,
    "hog": 0.45,
    "leopard": 0.60,
    "monkey_prosimian": 0.05,
    "rodent": 0.80,
}
#: Smallest number of sites per side, so even a 200-image sample can be split by site.
MIN_TRAIN_SITES, MIN_TEST_SITES = 9, 3
#: Sites grow as (images)^0.6: the full size has the real 148 and 51 sites, and smaller samples
#: keep more sites than a linear scaling would (28 for 1,000 train images instead of 9), so a
#: site-grouped split still has every class in its training folds.
SITE_SCALING_EXPONENT = 0.6
#: Share of the test set held by its largest site (S0040 in the real data holds 11 %).
BIGGEST_TEST_SITE_SHARE = 0.11
#: Spread of the log-normal site sizes: a log-normal's median/mean is exp(-σ²/2), and σ = 1
#: gives 0.61 against the real 70.5 / 111 = 0.63.
SITE_SIZE_SIGMA = 1.0

_PLAN_STREAM, _SITE_STREAM, _IMAGE_STREAM, _NOISE_STREAM, _GRID_STREAM = range(5)


class SampleFolderError(ConservizError, FileExistsError):
    """The output folder holds files that are not a sample dataset, so nothing is written there."""


class SampleParameterError(ConservizError, ValueError):
    """A parameter of the sample generator is out of range."""


@dataclass(frozen=True)
class SampleReport:
    """What :func:`generate_sample` wrote and how fast."""

    out: Path
    n_train: int
    n_test: int
    n_train_sites: int
    n_test_sites: int
    image_scale: float
    workers: int
    seconds: float
    megabytes: float

    @property
    def n_images(self) -> int:
        """Train and test images together."""
        return self.n_train + self.n_test

    @property
    def images_per_second(self) -> float:
        """Generation speed over the whole run, writing the files included."""
        return self.n_images / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"sample dataset in {self.out}: {self.n_train} train images at {self.n_train_sites} "
            f"sites, {self.n_test} test images at {self.n_test_sites} other sites, "
            f"{self.megabytes:.1f} MB; {self.seconds:.1f} s with {self.workers} worker(s), "
            f"{self.images_per_second:.1f} images/s"
        )


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def generate_sample(
    out: str | Path,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
    image_scale: float = 1.0,
    workers: int | None = None,
    progress: bool = True,
) -> SampleReport:
    """Write a synthetic sample dataset in the competition layout into ``out``.

    ``out`` must be missing, empty or hold a previous sample dataset (which is replaced); any
    other content makes it refuse. The marker file is written last, so an interrupted run never
    leaves a folder that looks complete.

    Args:
        out: the folder to write; created if missing.
        n_train: train images (at least 8, one per class).
        n_test: test images (0 or more); their sites never appear in train.
        seed: everything drawn follows from it; the same seed gives the same bytes.
        image_scale: multiplies every image size, e.g. 0.25 for fast tests.
        workers: processes drawing images; None picks one per available CPU core.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`SampleReport` with counts, seconds and images per second.
    """
    _check_parameters(n_train, n_test, seed, image_scale, workers)
    out = Path(out)
    _prepare_folder(out)
    started = time.perf_counter()
    plan = plan_sample(n_train, n_test, seed)
    tasks = _image_tasks(plan, out, seed, image_scale)
    n_workers = _worker_count(workers, len(tasks))
    n_bytes = _draw_all(tasks, n_workers, progress)
    _write_csvs(plan, out)
    seconds = time.perf_counter() - started
    report = SampleReport(
        out=out,
        n_train=n_train,
        n_test=n_test,
        n_train_sites=plan.loc[plan.split == "train", "site"].nunique(),
        n_test_sites=plan.loc[plan.split == "test", "site"].nunique(),
        image_scale=float(image_scale),
        workers=n_workers,
        seconds=seconds,
        megabytes=n_bytes / 1e6,
    )
    _write_marker(out, report, seed)
    return report


def plan_sample(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> pd.DataFrame:
    """Decide every image of a sample dataset from the seed, without drawing any.

    Returns:
        A DataFrame indexed by ``id`` (train ids first, test ids continuing) with columns
        ``split`` ("train"/"test"), ``filepath``, ``site``, ``species``, ``night`` (bool: infrared
        shot), ``width`` and ``height`` (before ``image_scale``) and ``band`` ("top", "bottom" or
        "none": where the camera prints its info band).
    """
    _check_parameters(n_train, n_test, seed, 1.0, None)
    rng = np.random.default_rng([seed, _PLAN_STREAM])
    n_train_sites = _site_count(n_train, REAL_N_TRAIN, REAL_TRAIN_SITES, MIN_TRAIN_SITES)
    n_test_sites = _site_count(n_test, REAL_N_TEST, REAL_TEST_SITES, MIN_TEST_SITES)
    # Site numbers interleave train and test, as S0001…S0199 do in the real data.
    numbers = rng.permutation(np.arange(1, n_train_sites + n_test_sites + 1))
    sides = [
        _plan_side("train", n_train, numbers[:n_train_sites], rng, biggest_share=None),
        _plan_side("test", n_test, numbers[n_train_sites:], rng, BIGGEST_TEST_SITE_SHARE),
    ]
    plan = pd.concat([side for side in sides if len(side)], ignore_index=True)
    plan.index = pd.Index([f"ZJ{i:06d}" for i in range(len(plan))], name="id")
    folder = plan["split"].map({"train": "train_features", "test": "test_features"})
    plan.insert(1, "filepath", folder + "/" + plan.index + ".jpg")
    return plan


def sample_marker(folder: str | Path) -> dict | None:
    """The generator parameters of the complete sample dataset in ``folder``, else None."""
    marker = Path(folder) / MARKER_NAME
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("generator") != GENERATOR_NAME:
        return None
    return content


def sample_grid(
    seed: int = 0, tile_width: int = 288, species: Sequence[str] = SPECIES
) -> Image.Image:
    """One labelled day and one night image per class, side by side, as a single RGB image.

    Each tile is the first ordinary draw of the generator (640×360 camera, random site and pose)
    whose animal is mostly inside the frame and not tiny, so the grid shows the drawing of each
    class. The dataset itself also holds the hard cases: far, cut by the frame, hidden, blurred.
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
            task = _ImageTask(
                index=k + 100 * attempt,
                path=None,
                species=name,
                site=1 + k // 2,
                width=640,
                height=360,
                night=night,
                band=("bottom", "top")[k // 2 % 2],
                seed=seed,
                stream=_GRID_STREAM,
            )
            drawn: dict = {}
            image = _render_image(task, drawn)
            if name not in _BODY_PLANS or (
                _in_clear_view(drawn["animal_box"], image.size) and not drawn["blurred"]
            ):
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


# ---------------------------------------------------------------------------------------------
# Planning: sites, their sizes and species, cameras, day or night
# ---------------------------------------------------------------------------------------------


def _check_parameters(n_train, n_test, seed, image_scale, workers) -> None:
    """Refuse parameters the generator cannot honour, naming the parameter and the fix."""

    def integer(value, least):
        whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        return whole and value >= least

    checks = [
        ("n_train", n_train, integer(n_train, 8), "an integer ≥ 8 (one image per class)"),
        ("n_test", n_test, integer(n_test, 0), "an integer ≥ 0"),
        ("seed", seed, integer(seed, 0), "an integer ≥ 0"),
        (
            "image_scale",
            image_scale,
            isinstance(image_scale, (int, float)) and 0.05 <= image_scale <= 4,
            "a number between 0.05 and 4",
        ),
        ("workers", workers, workers is None or integer(workers, 1), "None or an integer ≥ 1"),
    ]
    for name, value, ok, wanted in checks:
        if not ok:
            raise SampleParameterError(
                f"{name}={value!r} is out of range", fix=f"pass {name} as {wanted}"
            )


def _site_count(n_images: int, real_images: int, real_sites: int, minimum: int) -> int:
    """Sites on one side: the real count scaled by (images / real images)^0.6, within limits."""
    if n_images == 0:
        return 0
    scaled = round(real_sites * (n_images / real_images) ** SITE_SCALING_EXPONENT)
    return int(min(n_images, max(minimum, scaled)))


def _plan_side(
    split: str, n_images: int, site_numbers: np.ndarray, rng: np.random.Generator, biggest_share
) -> pd.DataFrame:
    """Plan the images of one side (train or test): sites, species, cameras, night shots."""
    if n_images == 0:
        return pd.DataFrame()
    sizes = _site_sizes(n_images, len(site_numbers), rng, biggest_share)
    shares = np.array([REAL_CLASS_COUNTS[s] for s in SPECIES], float)
    class_counts = _allocate(n_images, shares, minimum=1 if n_images >= len(SPECIES) else 0)
    per_site = _species_per_site(sizes, class_counts, rng)
    cameras = _assign_cameras(sizes, rng)
    night_bias = rng.normal(0.0, 0.5, len(sizes))  # darker sites switch to infrared more often
    rows = []
    for s, number in enumerate(site_numbers):
        width, height, band = cameras[s]
        for c, name in enumerate(SPECIES):
            for _ in range(per_site[s, c]):
                logit = math.log(NIGHT_SHARE[name] / (1 - NIGHT_SHARE[name])) + night_bias[s]
                night = bool(rng.random() < 1 / (1 + math.exp(-logit)))
                rows.append((split, f"S{number:04d}", name, night, width, height, band))
    columns = ["split", "site", "species", "night", "width", "height", "band"]
    side = pd.DataFrame(rows, columns=columns)
    # Real ids are not grouped by site or class: shuffle before numbering.
    return side.iloc[rng.permutation(len(side))].reset_index(drop=True)


def _allocate(total: int, weights: np.ndarray, minimum: int = 0) -> np.ndarray:
    """Split ``total`` into integers ≥ ``minimum``, proportional to ``weights``."""
    weights = np.asarray(weights, float)
    counts = np.full(len(weights), minimum, dtype=int)
    rest = total - counts.sum()
    quota = rest * weights / weights.sum()
    counts += np.floor(quota).astype(int)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _site_sizes(n_images: int, n_sites: int, rng: np.random.Generator, biggest_share) -> np.ndarray:
    """Heavy-tailed images per site (log-normal), every site ≥ 1, optionally one dominant site."""
    weights = rng.lognormal(0.0, SITE_SIZE_SIGMA, n_sites)
    if biggest_share is not None and n_sites >= 10:
        # With few sites the biggest is dominant anyway; with many, make sure one is.
        top = int(np.argmax(weights))
        others = weights.sum() - weights[top]
        weights[top] = max(weights[top], biggest_share / (1 - biggest_share) * others)
    return _allocate(n_images, weights, minimum=1)


def _species_per_site(
    site_sizes: np.ndarray, class_counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """An integer sites × classes matrix: rows sum to the site sizes, columns to the class counts.

    Each class lives at a share of the sites (``SITE_PRESENCE``) and is unevenly abundant there,
    so per-site species mixes differ the way they do in the real data.
    """
    n_sites = len(site_sizes)
    present = np.zeros((n_sites, len(SPECIES)), bool)
    for c, name in enumerate(SPECIES):
        if class_counts[c] == 0:
            continue
        k = int(np.clip(round(SITE_PRESENCE[name] * n_sites), 1, n_sites))
        chosen = rng.choice(n_sites, size=k, replace=False)
        present[chosen, c] = True
        # Room for the class: its sites must be able to hold it without being swamped.
        while site_sizes[present[:, c]].sum() < 2 * class_counts[c] and not present[:, c].all():
            absent = np.flatnonzero(~present[:, c])
            p = site_sizes[absent] / site_sizes[absent].sum()
            present[rng.choice(absent, p=p), c] = True
    blank = SPECIES.index("blank")
    present[~present.any(axis=1), blank] = True
    abundance = present * rng.gamma(0.8, 1.0, present.shape) + present * 1e-3
    # Every class seen at a site gets at least one image there; the rest follows abundance.
    first = _one_per_present_cell(abundance, site_sizes, class_counts)
    rows_left, columns_left = site_sizes - first.sum(axis=1), class_counts - first.sum(axis=0)
    expected = _sinkhorn(abundance, rows_left, columns_left)
    return first + _round_margins(expected, rows_left, columns_left)


def _one_per_present_cell(abundance: np.ndarray, rows: np.ndarray, columns: np.ndarray):
    """One image per (site, class) with abundance, within the row and column sums.

    Where a site or a class cannot afford one image per cell (tiny sites, rare classes), the
    least abundant cells go without.
    """
    first = (abundance > 0).astype(int)
    for s in range(len(rows)):
        extra = first[s].sum() - rows[s]
        if extra > 0:
            drop = [c for c in np.argsort(abundance[s]) if first[s, c]][:extra]
            first[s, drop] = 0
    for c in range(len(columns)):
        extra = first[:, c].sum() - columns[c]
        if extra > 0:
            drop = [s for s in np.argsort(abundance[:, c]) if first[s, c]][:extra]
            first[drop, c] = 0
    return first


def _sinkhorn(matrix: np.ndarray, rows: np.ndarray, columns: np.ndarray, steps: int = 500):
    """Scale ``matrix`` so that its row and column sums approach ``rows`` and ``columns``."""
    m = matrix.astype(float)
    for _ in range(steps):
        m *= (rows / np.maximum(m.sum(axis=1), 1e-12))[:, None]
        m *= (columns / np.maximum(m.sum(axis=0), 1e-12))[None, :]
    return m


def _round_margins(expected: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Round a real matrix to integers with exactly the given row and column sums."""
    counts = np.floor(expected).astype(int)
    row_left = rows - counts.sum(axis=1)
    col_left = columns - counts.sum(axis=0)
    n_columns = expected.shape[1]
    for flat in np.argsort(-(expected - counts).ravel(), kind="stable"):
        s, c = divmod(int(flat), n_columns)
        if row_left[s] > 0 and col_left[c] > 0 and expected[s, c] > 1e-6:
            counts[s, c] += 1
            row_left[s] -= 1
            col_left[c] -= 1
    # When the present cells cannot meet both sums (tiny samples), a class visits one more site.
    while row_left.sum() > 0:
        s, c = int(np.argmax(row_left)), int(np.argmax(col_left))
        counts[s, c] += 1
        row_left[s] -= 1
        col_left[c] -= 1
    return counts


def _assign_cameras(site_sizes: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int, str]]:
    """One camera per site: image size in the real proportions (by images, not sites) and band.

    Sites are taken from the biggest down and each gets the size furthest behind its quota, so
    the image-size mix stays close to the real one even though whole sites share a camera.
    The real 640×335 and 960×515 images are 640×360 and 960×540 with the info band cut off, so
    those cameras print no band.
    """
    sizes = list(REAL_IMAGE_SIZES)
    target = np.array(list(REAL_IMAGE_SIZES.values()), float)
    target /= target.sum()
    assigned = np.zeros(len(sizes))
    cameras: list[tuple[int, int, str]] = [(0, 0, "none")] * len(site_sizes)
    done = 0
    for s in np.argsort(-site_sizes, kind="stable"):
        done += site_sizes[s]
        k = int(np.argmax(target * done - assigned))
        assigned[k] += site_sizes[s]
        width, height = sizes[k]
        cropped = height in (335, 515)
        if cropped:
            band = "none"
        else:
            band = str(rng.choice(["top", "bottom", "none"], p=[0.45, 0.45, 0.1]))
        cameras[s] = (width, height, band)
    return cameras


# ---------------------------------------------------------------------------------------------
# The output folder: refuse foreign content, replace a previous sample, write the marker last
# ---------------------------------------------------------------------------------------------


def _prepare_folder(out: Path) -> None:
    """Make ``out`` an empty folder marked incomplete, refusing one that holds anything else."""
    if out.exists() and not out.is_dir():
        raise SampleFolderError(
            "is a file, not a folder", path=out, fix="pass a new or empty folder as out"
        )
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        ours = (out / MARKER_NAME).is_file() or (out / INCOMPLETE_NAME).is_file()
        foreign = [name for name in entries if name not in _SAMPLE_ENTRIES]
        if entries and (not ours or foreign):
            shown = foreign or entries
            raise SampleFolderError(
                "holds files that are not a conserviz sample dataset, so nothing is written there",
                path=out,
                rows=shown,
                fix="pass a new or empty folder, or move those files away",
            )
    out.mkdir(parents=True, exist_ok=True)
    # From here on the folder never looks complete until the marker is written again.
    (out / INCOMPLETE_NAME).write_text("a conserviz sample dataset is being written\n")
    for name in (MARKER_NAME, *_CSV_NAMES):
        (out / name).unlink(missing_ok=True)
        (out / f"{name}.partial").unlink(missing_ok=True)
    for name in _IMAGE_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).mkdir()


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and move it into place."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _write_csvs(plan: pd.DataFrame, out: Path) -> None:
    """Write the four competition CSVs: features, one-hot labels and a uniform submission format."""
    train = plan[plan.split == "train"]
    test = plan[plan.split == "test"]
    labels = pd.DataFrame(
        {name: (train.species == name).astype(float) for name in SPECIES}, index=train.index
    )
    submission = pd.DataFrame(1.0 / len(SPECIES), index=test.index, columns=list(SPECIES))
    frames = {
        "train_features.csv": train[["filepath", "site"]],
        "train_labels.csv": labels,
        "test_features.csv": test[["filepath", "site"]],
        "submission_format.csv": submission,
    }
    for name, frame in frames.items():
        _write_atomically(out / name, frame.to_csv(lineterminator="\n"))


def _write_marker(out: Path, report: SampleReport, seed: int) -> None:
    """Mark the folder as a complete sample dataset (last step of a run)."""
    marker = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "package_version": __version__,
        "n_train": report.n_train,
        "n_test": report.n_test,
        "seed": seed,
        "image_scale": report.image_scale,
        "n_train_sites": report.n_train_sites,
        "n_test_sites": report.n_test_sites,
    }
    _write_atomically(out / MARKER_NAME, json.dumps(marker, indent=2) + "\n")
    (out / INCOMPLETE_NAME).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Drawing all images in worker processes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageTask:
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
    stream: int = _IMAGE_STREAM


def _image_tasks(plan: pd.DataFrame, out: Path, seed: int, image_scale: float) -> list[_ImageTask]:
    """One task per planned image, sorted by site so each worker reuses a site's background."""
    tasks = [
        _ImageTask(
            index=i,
            path=out / row.filepath,
            species=row.species,
            site=int(row.site[1:]),
            width=max(8, round(row.width * image_scale)),
            height=max(8, round(row.height * image_scale)),
            night=bool(row.night),
            band=row.band,
            seed=seed,
        )
        for i, row in enumerate(plan.itertuples())
    ]
    return sorted(tasks, key=lambda t: (t.site, t.index))


def _worker_count(workers: int | None, n_tasks: int) -> int:
    """The requested workers, or one per usable core; a single process for tiny samples."""
    if workers is not None:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # Starting a worker costs about a second; give each at least a few dozen images.
    return 1 if n_tasks < 64 else max(1, min(cores or 1, 32, n_tasks // 32))


def _draw_all(tasks: list[_ImageTask], workers: int, progress: bool) -> int:
    """Draw and write every image; returns the bytes written."""
    total = 0
    with tqdm(total=len(tasks), desc="sample images", unit="img", disable=not progress) as bar:
        if workers == 1:
            for task in tasks:
                total += _draw_and_write(task)
                bar.update()
            return total
        # "spawn" is safe in processes that already run threads (notebooks, torch) on every OS.
        context = multiprocessing.get_context("spawn")
        chunk = max(1, min(32, len(tasks) // (8 * workers)))
        with context.Pool(workers) as pool:
            for written in pool.imap_unordered(_draw_and_write, tasks, chunksize=chunk):
                total += written
                bar.update()
    return total


def _draw_and_write(task: _ImageTask) -> int:
    """Draw one image, save it as JPEG and return its size in bytes."""
    image = _render_image(task)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=_site_style(task.seed, task.site).jpeg_quality)
    data = buffer.getvalue()
    task.path.write_bytes(data)
    return len(data)


# ---------------------------------------------------------------------------------------------
# A site: its camera and its persistent patch of forest
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SiteStyle:
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
def _site_style(seed: int, site: int) -> _SiteStyle:
    """The style of a site's camera and forest; the same for every image of the site."""
    rng = np.random.default_rng([seed, _SITE_STREAM, site])
    litter = _jitter((105, 80, 55), rng, 22)
    return _SiteStyle(
        horizon=rng.uniform(0.30, 0.55),
        tilt=float(np.clip(rng.normal(0, 1.3), -3, 3)),
        camera_height=rng.uniform(0.3, 0.7),
        litter=litter,
        foliage=_jitter((45, 62, 40), rng, 14),
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
class _Scene:
    """A site's background at one camera size, drawn once and reused for all its images."""

    background: Image.Image  # RGB, larger than the frame by ``margin`` on every side
    margin: int
    foreground: Image.Image | None  # RGBA plants in front of the lens, frame-sized
    falloff: Image.Image  # L: how far the infrared flash reaches, frame-sized
    horizon: float  # pixels from the top
    trunks: tuple[tuple[float, float], ...]  # (x centre, width) of near trunks, for climbers


@lru_cache(maxsize=8)
def _site_scene(seed: int, site: int, width: int, height: int) -> _Scene:
    """Draw a site's forest floor, trunks and plants at the camera's size (cached per process)."""
    style = _site_style(seed, site)
    rng = np.random.default_rng([seed, _SITE_STREAM, site, 1])
    margin = round(0.05 * width)
    big_w, big_h = width + 2 * margin, height + 2 * margin
    horizon = style.horizon * height + margin
    image = _ground_and_sky(style, rng, big_w, big_h, horizon)
    draw = ImageDraw.Draw(image)
    _draw_far_foliage(draw, style, rng, big_w, big_h, horizon)
    image = image.filter(_blur(big_h * 0.006))  # haze: far things are soft
    draw = ImageDraw.Draw(image)
    _draw_litter(draw, style, rng, big_w, big_h, horizon)
    trunks = _draw_trunks(draw, style, rng, big_w, big_h, horizon)
    _draw_undergrowth(draw, style, rng, big_w, big_h, horizon)
    image = image.rotate(style.tilt, resample=Image.Resampling.BICUBIC)
    image = image.filter(_blur(big_h * 0.0012))
    foreground = _near_plants(rng, width, height) if style.near_plants else None
    return _Scene(
        background=image,
        margin=margin,
        foreground=foreground,
        falloff=_flash_falloff(width, height, style.horizon),
        horizon=style.horizon * height,
        trunks=tuple((x - margin, w) for x, w in trunks),
    )


def _blur(radius: float) -> ImageFilter.GaussianBlur:
    """A Gaussian blur filter; Pillow wants a plain float radius, not a numpy scalar."""
    return ImageFilter.GaussianBlur(float(radius))


def _jitter(colour: Sequence[float], rng: np.random.Generator, amount: float) -> tuple[int, ...]:
    """A colour moved by up to ``amount`` per channel, mostly in brightness."""
    shift = rng.uniform(-amount, amount) + rng.uniform(-amount / 3, amount / 3, 3)
    return tuple(int(v) for v in np.clip(np.asarray(colour, float) + shift, 0, 255))


def _shade(colour: Sequence[float], factor: float) -> tuple[int, int, int]:
    """A colour made darker (factor < 1) or lighter (> 1)."""
    return tuple(int(v) for v in np.clip(np.asarray(colour, float) * factor, 0, 255))


_LEAF_T = np.linspace(0.0, 1.0, 7)
_LEAF_ALONG = np.concatenate([_LEAF_T, _LEAF_T[::-1]])
_LEAF_ACROSS = np.concatenate([np.sin(np.pi * _LEAF_T), -np.sin(np.pi * _LEAF_T[::-1])]) / 2


def _leaf_shapes(x, y, length, width, angle) -> np.ndarray:
    """Pointed leaves from their stalks at (x, y), ``angle`` radians from the image x axis.

    Every argument may be a number or an array of n values; returns n polygons as (n, 28)
    flat x, y sequences, ready for ``ImageDraw.polygon``.
    """
    x, y, length, width, angle = (
        np.atleast_1d(np.asarray(v, float))[:, None] for v in (x, y, length, width, angle)
    )
    along, across = _LEAF_ALONG * length, _LEAF_ACROSS * width
    c, s = np.cos(angle), np.sin(angle)
    points = np.stack([x + along * c - across * s, y + along * s + across * c], axis=-1)
    return points.reshape(len(x), 2 * len(_LEAF_ALONG))


def _leaf_points(x, y, length, width, angle) -> list[float]:
    """One pointed leaf as a flat x, y sequence (see :func:`_leaf_shapes`)."""
    return _leaf_shapes(x, y, length, width, angle)[0].tolist()


def _draw_leaves(draw: ImageDraw.ImageDraw, shapes: np.ndarray, colours: np.ndarray) -> None:
    """Fill many leaf polygons, each with its colour."""
    for points, colour in zip(shapes.tolist(), np.clip(colours, 0, 255).astype(int).tolist()):
        draw.polygon(points, fill=tuple(colour))


def _jitter_many(colour, rng: np.random.Generator, amount: float, n: int) -> np.ndarray:
    """``n`` colours around ``colour`` (one, or one per row), moved as :func:`_jitter` does."""
    shift = rng.uniform(-amount, amount, (n, 1)) + rng.uniform(-amount / 3, amount / 3, (n, 3))
    return np.clip(np.asarray(colour, float) + shift, 0, 255)


def _ground_and_sky(style, rng, width, height, horizon) -> Image.Image:
    """Dark understorey above the horizon, leaf litter fading into haze below it, mottled."""
    y = np.arange(height, dtype=np.float32)[:, None, None]
    foliage = np.asarray(style.foliage, np.float32)
    haze = 0.55 * foliage + 0.45 * np.array([120, 128, 112], np.float32)
    near = np.asarray(style.litter, np.float32)
    far_ground = 0.6 * near + 0.4 * haze
    up = np.clip(y / horizon, 0, 1)
    down = np.clip((y - horizon) / (height - horizon), 0, 1)
    colour = np.where(
        y < horizon,
        foliage + (haze - foliage) * up**3,
        far_ground + (near - far_ground) * down**0.5,
    )
    mottle = rng.normal(1.0, 0.18, (6, 10, 1)).astype(np.float32)
    mottle = np.asarray(
        Image.fromarray(np.clip(mottle[..., 0] * 128, 0, 255).astype(np.uint8)).resize(
            (width, height), Image.Resampling.BICUBIC
        ),
        np.float32,
    )[..., None] / 128
    return Image.fromarray(np.clip(colour * mottle, 0, 255).astype(np.uint8))


def _draw_far_foliage(draw, style, rng, width, height, horizon) -> None:
    """Clumps of distant leaves, thin pale far trunks and a few bright canopy gaps."""
    n_clumps = int(width * horizon / 1200)
    per_clump = 14
    centres = np.stack(
        [rng.uniform(0, width, n_clumps), rng.uniform(-0.05 * height, horizon * 1.1, n_clumps)], 1
    )
    # Lighter and hazier towards the horizon, darker up in the canopy.
    depth = np.clip(centres[:, 1] / horizon, 0, 1)[:, None]
    clump_colours = _jitter_many(style.foliage, rng, 20, n_clumps) * (0.75 + 0.45 * depth)
    spread = height * rng.uniform(0.02, 0.06, (n_clumps, 1, 1))
    offsets = rng.normal(0, 1, (n_clumps, per_clump, 2)) * spread
    points = (centres[:, None, :] + offsets).reshape(-1, 2)
    size = height * rng.uniform(0.012, 0.035, len(points))
    turns = rng.uniform(0, 2 * np.pi, len(points))
    shapes = _leaf_shapes(points[:, 0], points[:, 1], size, size * 0.5, turns)
    colours = _jitter_many(np.repeat(clump_colours, per_clump, axis=0), rng, 10, len(points))
    _draw_leaves(draw, shapes, colours)
    for _ in range(int(rng.integers(3, 12))):
        x, w = rng.uniform(0, width), height * rng.uniform(0.004, 0.012)
        base = horizon + rng.uniform(-0.02, 0.04) * height
        draw.rectangle((x - w, 0, x + w, base), fill=_jitter((118, 120, 105), rng, 18))
    for _ in range(int(rng.integers(0, 4))):  # sky seen through a gap in the canopy
        x, y = rng.uniform(0, width), rng.uniform(0, horizon * 0.5)
        size = height * rng.uniform(0.01, 0.03)
        xs, ys = x + rng.normal(0, size, 5), y + rng.normal(0, size * 0.5, 5)
        shapes = _leaf_shapes(xs, ys, size * 1.5, size, rng.uniform(0, 6, 5))
        _draw_leaves(draw, shapes, _jitter_many((165, 180, 160), rng, 15, 5))


def _draw_litter(draw, style, rng, width, height, horizon) -> None:
    """Fallen leaves and twigs, larger towards the camera, and sometimes a fallen log."""
    tones = np.array(
        [(1.0, 1.0, 1.0), (0.7, 0.65, 0.6), (1.3, 1.2, 1.0), (1.35, 1.1, 0.6), (0.5, 0.45, 0.4)]
    )
    n_leaves = int(width * (height - horizon) * 0.006)
    near = rng.random(n_leaves) ** 0.8
    size = height * (0.004 + 0.03 * near) * rng.uniform(0.6, 1.4, n_leaves)
    shapes = _leaf_shapes(
        rng.uniform(0, width, n_leaves), horizon + (height - horizon) * near, size, size * 0.45,
        rng.uniform(0, 2 * np.pi, n_leaves),
    )
    tone = tones[rng.integers(len(tones), size=n_leaves)]
    colours = _jitter_many(np.asarray(style.litter) * tone, rng, 15, n_leaves)
    _draw_leaves(draw, shapes, colours)
    for _ in range(int(rng.integers(2, 10))):
        t = rng.random()
        x, y = rng.uniform(0, width), horizon + (height - horizon) * t
        length, angle = height * (0.03 + 0.15 * t), rng.uniform(-0.5, 0.5)
        draw.line(
            (x, y, x + length * math.cos(angle), y + length * math.sin(angle)),
            fill=_jitter((75, 58, 42), rng, 15),
            width=max(1, round(height * 0.004 * (0.3 + t))),
        )
    if rng.random() < 0.35:
        t = rng.uniform(0.15, 0.6)
        y, x = horizon + (height - horizon) * t, rng.uniform(-0.2, 0.6) * width
        length, thick = width * rng.uniform(0.25, 0.6), height * (0.02 + 0.06 * t)
        slope = rng.uniform(-0.08, 0.08) * length
        draw.polygon(
            [(x, y), (x + length, y + slope), (x + length, y + slope - thick * 0.8),
             (x, y - thick)],
            fill=_jitter((70, 58, 45), rng, 15),
        )


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
        colour = np.asarray(_jitter((105, 98, 82), rng, 30), float)
        colour = tuple(int(v) for v in colour * (0.4 + 0.6 * depth) + haze * (0.6 - 0.6 * depth))
        top = -0.05 * height
        draw.polygon(
            [(x - half + lean, top), (x + half + lean, top), (x + half, base), (x - half, base)],
            fill=colour,
        )
        for side in (-1, 1):  # buttress roots: thin concave fins flaring out to the ground
            reach, rise = half * rng.uniform(0.6, 2.2), half * rng.uniform(1.2, 3.0)
            draw.polygon(
                [
                    (x + side * half * 0.7, base - rise),
                    (x + side * (half + reach * 0.25), base - rise * 0.25),
                    (x + side * (half + reach), base + half * 0.1),
                    (x, base),
                ],
                fill=_shade(colour, rng.uniform(0.85, 1.05)),
            )
        for _ in range(int(rng.integers(2, 6))):  # bark furrows
            bx = x + rng.uniform(-0.7, 0.7) * half
            furrow = max(1, round(half * 0.08))
            draw.line((bx + lean, top, bx, base), fill=_shade(colour, 0.75), width=furrow)
        lit = x + half * 0.55  # the side the light falls on
        draw.line(
            (lit + lean, top, lit, base), fill=_shade(colour, 1.2), width=max(1, round(half * 0.2))
        )
        if depth > 0.3:
            near_trunks.append((x + lean / 2, 2 * half))
    for _ in range(int(rng.integers(0, 4))):  # lianas hanging from the canopy
        x0 = rng.uniform(0, width)
        ys = np.linspace(-0.05 * height, rng.uniform(0.3, 1.0) * horizon, 12)
        xs = x0 + np.sin(ys / height * rng.uniform(3, 9) + rng.uniform(0, 6)) * height * 0.04
        draw.line(
            list(zip(xs.tolist(), ys.tolist())),
            fill=_jitter((60, 52, 40), rng, 15),
            width=max(1, round(height * 0.006)),
            joint="curve",
        )
    return near_trunks


def _draw_undergrowth(draw, style, rng, width, height, horizon) -> None:
    """Seedlings, broad-leaved herbs and ferns standing on the forest floor."""
    n_plants = int(style.undergrowth * 30 * width / 700)
    for t in np.sort(rng.random(n_plants)):  # far plants first
        base_y = horizon + (height - horizon) * t * 0.9
        x = rng.uniform(0, width)
        size = height * (0.04 + 0.3 * t**1.3) * rng.uniform(0.6, 1.4)
        green = _jitter((50, 85, 40), rng, 25)
        if rng.random() < 0.3:  # fern: a curved frond with leaflets
            angle = -np.pi / 2 + rng.uniform(-0.9, 0.9)
            for k in range(9):
                px = x + math.cos(angle) * size * k / 9
                py = base_y + math.sin(angle) * size * k / 9
                for side in (-1, 1):
                    leaflet = size * 0.22 * (1 - k / 12)
                    shape = _leaf_points(px, py, leaflet, size * 0.06, angle + side * 1.2)
                    draw.polygon(shape, fill=green)
            continue
        stem_top = (x + rng.normal(0, 0.1) * size, base_y - size)
        draw.line((x, base_y, *stem_top), fill=_shade(green, 0.8), width=max(1, round(size * 0.03)))
        for k in range(int(rng.integers(3, 10))):
            along = rng.uniform(0.2, 1.0)
            sx = x + (stem_top[0] - x) * along
            sy = base_y + (stem_top[1] - base_y) * along
            angle = -np.pi / 2 + rng.choice([-1, 1]) * rng.uniform(0.4, 1.5)
            leaf_colour = _jitter(green, rng, 18)
            length, breadth = size * rng.uniform(0.25, 0.5), size * rng.uniform(0.08, 0.2)
            draw.polygon(_leaf_points(sx, sy, length, breadth, angle), fill=leaf_colour)


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
            colour = (*_jitter((38, 60, 32), rng, 15), 255)
            breadth = length * rng.uniform(0.08, 0.3)
            draw.polygon(_leaf_points(x, height * 1.05, length, breadth, angle), fill=colour)
    return layer.filter(_blur(height * 0.012))


def _flash_falloff(width: int, height: int, horizon: float) -> Image.Image:
    """How much infrared light reaches each pixel: much on the near ground, little far or aside."""
    rows = np.arange(height, dtype=np.float32)[:, None] / height
    y = (rows - horizon * 0.5) / (1 - horizon * 0.5)
    x = np.arange(width, dtype=np.float32)[None, :] / width - 0.5
    reach = 0.1 + 0.9 * np.clip(y, 0, 1) ** 1.4
    side = 1.0 - 0.9 * x**2
    return Image.fromarray((np.clip(reach * side, 0.04, 1) * 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# Animals: a pen that draws in body lengths, one function per body plan
# ---------------------------------------------------------------------------------------------


_CIRCLE = np.stack([np.cos(np.arange(24) * np.pi / 12), np.sin(np.arange(24) * np.pi / 12)], 1)


class _Pen:
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
        """A filled polygon."""
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
        """Canvas pixel of one point."""
        return self.points(xy)[0]


@dataclass
class _Sketch:
    """An animal being drawn: the silhouette pen, the markings pen (clipped to the silhouette)."""

    body: _Pen
    marks: _Pen
    eyes: list = field(default_factory=list)  # eye points in animal units, for eyeshine


@dataclass(frozen=True)
class _Build:
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


def _quadruped(sk: _Sketch, build: _Build, colours: dict, rng: np.random.Generator) -> dict:
    """Draw a four-legged animal side-on; returns its key points (in body lengths)."""
    b = build
    pen = sk.body
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
        pen.blob(foot + [0.02, 0.0], b.leg_width * 0.55, b.leg_width * 0.35, _shade(colour, 0.6))

    far_legs = _shade(colours["legs"], 0.7)
    leg(shoulder + [0.04, 0], np.pi, False, far_legs)
    leg(hip + [0.04, 0], 0.0, True, far_legs)
    tail_start = hip + np.array([-0.18, b.torso * 0.3])
    tail = _curve(tail_start, b.tail, np.pi - b.tail_lift, b.tail_curl, 8, facing_back=True)
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
    ear_colour = colours.get("ear", _shade(colours["coat"], 0.8))
    pen.blob(ear, b.ear * 0.45, b.ear, ear_colour, turn=b.head_pitch - 0.4)
    leg(shoulder, 0.0, False, colours["legs"])
    leg(hip, np.pi, True, colours["legs"])
    eye = head + direction * b.head * 0.12 + up * b.head_height * 0.15
    sk.eyes.append(eye)
    return {"head": head, "direction": direction, "up": up, "nose": nose, "ear": ear,
            "shoulder": shoulder, "hip": hip, "centre": centre, "tail": tail, "eye": eye}


def _curve(start, length, angle, bend, n, facing_back=False) -> np.ndarray:
    """``n`` points along a bending line: a tail, a neck, a frond (angle and bend in radians)."""
    steps = np.linspace(0, 1, n)
    headings = angle + (bend * steps if not facing_back else -bend * steps)
    deltas = np.stack([np.cos(headings), np.sin(headings)], 1) * length / (n - 1)
    deltas[0] = 0
    return np.asarray(start, float) + np.cumsum(deltas, axis=0)


def _inside(rng, centre, rx, ry, n) -> np.ndarray:
    """``n`` random points inside an ellipse, for spots and speckles."""
    r = np.sqrt(rng.random(n))
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([centre[0] + rx * r * np.cos(t), centre[1] + ry * r * np.sin(t)], 1)


def _draw_duiker(sk: _Sketch, rng: np.random.Generator) -> None:
    """A duiker: small arched antelope on thin legs, low head, short spike horns."""
    kinds = ["maxwell", "bay", "zebra", "yellow_backed", "ogilby"]
    kind = rng.choice(kinds, p=[0.35, 0.25, 0.1, 0.1, 0.2])
    coat = {
        "maxwell": (105, 92, 80),
        "bay": (125, 62, 30),
        "zebra": (180, 115, 55),
        "yellow_backed": (55, 45, 38),
        "ogilby": (150, 85, 40),
    }[kind]
    coat = _jitter(coat, rng, 14)
    colours = {
        "coat": coat,
        "belly": _shade(coat, 1.25),
        "legs": _shade(coat, 0.8),
        "muzzle": _shade(coat, 0.75),
    }
    grazing = rng.random() < 0.4
    build = _Build(
        torso=0.4,
        leg=rng.uniform(0.42, 0.52),
        leg_width=0.055,
        rump=0.1,
        neck=0.12,
        neck_width=0.15,
        neck_angle=rng.uniform(-0.2, 0.1) if grazing else rng.uniform(0.2, 0.6),
        head=0.26,
        head_height=0.15,
        head_pitch=rng.uniform(-1.2, -0.7) if grazing else rng.uniform(-0.6, -0.1),
        muzzle=0.08,
        ear=0.1,
        tail=0.1,
        tail_width=0.05,
        tail_lift=0.2,
        stride=rng.uniform(0, 0.35),
    )
    p = _quadruped(sk, build, colours, rng)
    pen, marks = sk.body, sk.marks
    for side in (0.0, 0.03):  # two short spike horns pointing back, with a tuft between them
        base = p["head"] - p["direction"] * 0.04 + p["up"] * 0.06 + [side, 0]
        pen.limb(base, base - p["direction"] * 0.11 + p["up"] * 0.03, 0.025, 0.006, (40, 35, 30))
    pen.blob(p["head"] + p["up"] * 0.07 - p["direction"] * 0.03, 0.035, 0.025, _shade(coat, 0.6))
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


def _draw_hog(sk: _Sketch, rng: np.random.Generator) -> None:
    """A hog: dark, bulky barrel on short legs, big wedge head with a snout disc."""
    red_river = rng.random() < 0.35
    dark_coat = rng.choice([35, 50, 65]) * np.ones(3) * [1.0, 0.9, 0.8] if not red_river else None
    coat = _jitter((165, 75, 35) if red_river else dark_coat, rng, 12)
    colours = {
        "coat": coat,
        "belly": _shade(coat, 0.9),
        "legs": (30, 25, 22) if red_river else _shade(coat, 0.8),
        "muzzle": _shade(coat, 0.85),
        "tail": _shade(coat, 0.7),
    }
    build = _Build(
        torso=rng.uniform(0.48, 0.56),
        leg=rng.uniform(0.2, 0.26),
        leg_width=0.1,
        rump=-0.02,
        neck=0.08,
        neck_width=0.34,
        neck_angle=0.2,
        head=0.34,
        head_height=0.25,
        head_pitch=rng.uniform(-0.9, -0.25),
        muzzle=0.12,
        ear=0.08,
        tail=0.22,
        tail_width=0.025,
        tail_lift=-1.3,
        stride=rng.uniform(0, 0.2),
    )
    p = _quadruped(sk, build, colours, rng)
    pen, marks = sk.body, sk.marks
    head, nose, up, ahead = p["head"], p["nose"], p["up"], p["direction"]
    disc = (70, 55, 55) if red_river else (85, 70, 65)
    pen.blob(nose, 0.035, 0.07, disc, turn=build.head_pitch)
    for k in range(28):  # bristles along the back
        x = -0.5 + k / 27
        top = build.leg + build.torso * (0.98 + 0.04 * math.cos(x * 3))
        tip = (x - 0.02, top + rng.uniform(0.02, 0.06))
        pen.limb((x, top - 0.03), tip, 0.018, 0.006, _shade(coat, 0.6))
    for point in _inside(rng, p["centre"], 0.45, build.torso * 0.45, 60):  # coarse hair
        marks.limb(point, point + [-0.04, -0.02], 0.012, 0.006, _shade(coat, rng.uniform(0.6, 1.3)))
    if red_river:  # white ear tufts and face stripe on a black mask
        pen.limb(p["ear"], p["ear"] + up * 0.1 - ahead * 0.04, 0.03, 0.01, (235, 230, 220))
        stripe = (head - ahead * 0.05 + up * 0.07, nose + up * 0.04)
        marks.limb(*stripe, 0.025, 0.015, (225, 220, 210))
        marks.blob(head + ahead * 0.05, 0.1, 0.08, (35, 30, 28))
    elif rng.random() < 0.6:  # tusks
        pen.limb(nose - ahead * 0.08, nose - ahead * 0.04 + up * 0.07, 0.025, 0.01, (220, 210, 185))


def _draw_leopard(sk: _Sketch, rng: np.random.Generator) -> None:
    """A leopard: long golden body covered in rosettes, long tail curving up at the tip."""
    coat = _jitter((195, 150, 80), rng, 18)
    colours = {"coat": coat, "belly": (228, 214, 180), "legs": coat, "muzzle": _shade(coat, 1.1)}
    crouch = rng.random() < 0.3
    build = _Build(
        torso=0.3,
        leg=rng.uniform(0.24, 0.3) if crouch else rng.uniform(0.34, 0.4),
        leg_width=0.085,
        rump=0.0,
        neck=0.14,
        neck_width=0.19,
        neck_angle=rng.uniform(-0.1, 0.5),
        head=0.19,
        head_height=0.16,
        head_pitch=rng.uniform(-0.5, 0.1),
        muzzle=0.05,
        ear=0.045,
        tail=rng.uniform(0.8, 0.95),
        tail_width=0.055,
        tail_lift=rng.uniform(-1.0, -0.4),
        tail_curl=rng.uniform(0.8, 2.0),
        stride=rng.uniform(0, 0.35),
    )
    p = _quadruped(sk, build, colours, rng)
    marks = sk.marks
    dark = (30, 22, 15)
    centre = p["centre"] + [0, build.torso * 0.05]
    for point in _inside(rng, centre, 0.55, build.torso * 0.5, 55):  # rosettes: broken dark rings
        size = rng.uniform(0.025, 0.04)
        marks.blob(point, size * 0.9, size * 0.8, _shade(coat, 0.82))
        for t in rng.uniform(0, 2 * np.pi, 4):
            ring = point + size * np.array([math.cos(t), math.sin(t)])
            marks.blob(ring, size * 0.4, size * 0.3, dark)
    for point in _inside(rng, p["head"], 0.1, 0.07, 12):
        marks.blob(point, 0.01, 0.01, dark)
    for point in p["tail"][3::2]:  # dark rings towards the tail tip
        marks.blob(point, 0.025, 0.025, dark)
    for limb_top in (p["shoulder"], p["hip"]):
        for point in _inside(rng, limb_top - [0, build.leg * 0.5], 0.08, build.leg * 0.45, 8):
            marks.blob(point, 0.016, 0.016, dark)
    sk.body.blob(p["nose"], 0.02, 0.015, (60, 40, 35))


def _draw_civet_genet(sk: _Sketch, rng: np.random.Generator) -> None:
    """A civet or genet: long, low body on short legs, pointed face, long banded tail."""
    kind = rng.choice(["civet", "genet", "palm_civet"], p=[0.4, 0.4, 0.2])
    civet = kind == "civet"
    coat = {"civet": (150, 140, 118), "genet": (190, 175, 140), "palm_civet": (120, 92, 62)}[kind]
    coat = _jitter(coat, rng, 15)
    dark = (28, 24, 20) if kind != "palm_civet" else _shade(coat, 0.6)
    colours = {
        "coat": coat,
        "belly": _shade(coat, 1.1),
        "legs": dark if civet else _shade(coat, 0.8),
        "muzzle": _shade(coat, 1.1),
        "ear": _shade(coat, 0.8),
    }
    build = _Build(
        torso=0.28 if civet else 0.22,
        leg=0.3 if civet else rng.uniform(0.18, 0.22),
        leg_width=0.06,
        rump=0.04 if civet else 0.0,
        neck=0.12,
        neck_width=0.14,
        neck_angle=rng.uniform(-0.1, 0.4),
        head=0.2,
        head_height=0.12,
        head_pitch=rng.uniform(-0.6, 0.0),
        muzzle=0.13,
        ear=0.07 if kind == "genet" else 0.05,
        tail=rng.uniform(0.5, 0.6) if civet else rng.uniform(0.85, 1.0),
        tail_width=0.08 if civet else 0.055,
        tail_lift=rng.uniform(-0.7, -0.1),
        tail_curl=rng.uniform(-0.3, 0.4),
        stride=rng.uniform(0, 0.3),
    )
    p = _quadruped(sk, build, colours, rng)
    pen, marks = sk.body, sk.marks
    bands = _resample(p["tail"], 13)
    widths = np.linspace(build.tail_width, build.tail_width * 0.7, len(bands))
    pen.chain(bands, widths, [coat, dark])  # alternating light and dark rings
    spots = 45 if kind != "palm_civet" else 25
    for point in _inside(rng, p["centre"], 0.5, build.torso * 0.42, spots):  # rows of dark spots
        marks.blob(point, rng.uniform(0.018, 0.03), 0.016, dark)
    back = (p["shoulder"] + [0.1, build.torso * 0.5], p["hip"] + [0, build.torso * 0.5])
    marks.limb(*back, 0.035, 0.04, dark)
    if civet:  # black mask across the eyes, black throat band
        marks.blob(p["eye"], 0.06, 0.04, dark, turn=build.head_pitch)
        throat = (p["shoulder"] + [0.12, build.torso * 0.6], p["shoulder"] + [0.16, -0.05])
        marks.limb(*throat, 0.05, 0.04, dark)
    pen.blob(p["nose"], 0.015, 0.012, (30, 25, 25))


def _resample(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced along a polyline."""
    steps = np.r_[0, np.cumsum(np.hypot(*np.diff(points, axis=0).T))]
    at = np.linspace(0, steps[-1], n)
    return np.stack([np.interp(at, steps, points[:, 0]), np.interp(at, steps, points[:, 1])], 1)


def _draw_rodent(sk: _Sketch, rng: np.random.Generator) -> None:
    """A rodent: small egg-shaped body, round ears, a thin naked, quilled or bushy tail."""
    kind = rng.choice(["pouched_rat", "porcupine", "squirrel"], p=[0.45, 0.3, 0.25])
    coat = {
        "pouched_rat": (115, 100, 85), "porcupine": (72, 58, 46), "squirrel": (150, 98, 58)
    }[kind]
    coat = _jitter(coat, rng, 14)
    colours = {
        "coat": coat,
        "belly": _shade(coat, 1.35),
        "legs": _shade(coat, 0.8),
        "ear": (150, 115, 105),
        "tail": (190, 170, 160) if kind == "pouched_rat" else _shade(coat, 0.9),
    }
    # Tail: length, width, lift and curl (a squirrel's curls forward over its back).
    tail = {
        "pouched_rat": (0.8, 0.035, -0.25, 0.3),
        "porcupine": (0.35, 0.05, -0.5, 0.0),
        "squirrel": (0.75, 0.16, 0.9, 2.4),
    }[kind]
    build = _Build(
        torso=0.4,
        leg=rng.uniform(0.08, 0.13),
        leg_width=0.07,
        rump=0.08,
        neck=0.02,
        neck_width=0.26,
        neck_angle=0.0,
        head=0.22,
        head_height=0.17,
        head_pitch=rng.uniform(-0.5, 0.0),
        muzzle=0.12,
        ear=0.09,
        tail=tail[0],
        tail_width=tail[1],
        tail_lift=tail[2],
        tail_curl=tail[3],
        stride=rng.uniform(0, 0.2),
    )
    p = _quadruped(sk, build, colours, rng)
    pen = sk.body
    if kind == "pouched_rat":  # the white end of the tail
        end = _resample(p["tail"], 6)[3:]
        pen.chain(end, [0.025, 0.022, 0.02], [(235, 232, 225)])
    if kind == "porcupine":  # quills along the back and a pale tail tuft
        back = p["centre"] + [0, build.torso * 0.3]
        for point in _inside(rng, back, 0.45, build.torso * 0.3, 40):
            tip = point + [-0.12, rng.uniform(0.02, 0.1)]
            pen.limb(point, tip, 0.02, 0.004, _shade((210, 200, 185), rng.uniform(0.5, 1.0)))
        pen.blob(p["tail"][-1], 0.07, 0.05, (225, 220, 205))
    pen.blob(p["nose"], 0.02, 0.02, (60, 45, 45))


def _draw_bird(sk: _Sketch, rng: np.random.Generator) -> None:
    """A ground bird: tilted oval body, small head and beak, thin legs, a tail behind."""
    kind = rng.choice(["guineafowl", "francolin", "ibis", "dove"], p=[0.4, 0.3, 0.15, 0.15])
    coat = {
        "guineafowl": (30, 30, 35),
        "francolin": (110, 82, 58),
        "ibis": (75, 72, 58),
        "dove": (120, 100, 90),
    }[kind]
    coat = _jitter(coat, rng, 12)
    pen, marks = sk.body, sk.marks
    leg = {"guineafowl": 0.28, "francolin": 0.22, "ibis": 0.32, "dove": 0.12}[kind]
    pecking = rng.random() < 0.3
    leg_colour = (150, 60, 45) if kind == "francolin" else (60, 55, 50)
    for dx in (-0.06, 0.06):
        pen.limb((dx * 0.5, leg + 0.05), (dx + rng.normal(0, 0.04), 0.0), 0.03, 0.02, leg_colour)
        pen.limb((dx, 0.0), (dx + 0.09, 0.0), 0.02, 0.012, leg_colour)
    body_centre = np.array([0.0, leg + 0.2])
    tilt = rng.uniform(0.0, 0.35) - (0.3 if pecking else 0.0)
    tail = [
        body_centre + [-0.3, 0.06],
        (-0.62, leg + 0.08 - tilt * 0.4),
        (-0.6, leg + 0.02 - tilt * 0.4),
        body_centre + [-0.25, -0.08],
    ]
    pen.polygon(tail, _shade(coat, 0.8))
    pen.blob(body_centre, 0.38, 0.2, coat, turn=tilt)
    pen.blob(body_centre + [-0.03, 0.03], 0.26, 0.12, _shade(coat, 0.85), turn=tilt)  # folded wing
    head = body_centre + ([0.42, -0.22] if pecking else [0.36, 0.26])
    pen.limb(body_centre + [0.25, 0.08], head, 0.16, 0.09, coat)
    face = {
        "guineafowl": (120, 130, 165), "ibis": coat, "francolin": (170, 60, 50), "dove": coat
    }[kind]
    pen.blob(head, 0.1, 0.085, coat)
    pen.blob(head + [0.03, -0.02], 0.06, 0.05, face)
    heading = -0.6 if pecking else 0.0
    direction = np.array([math.cos(heading), math.sin(heading)])
    if kind == "ibis":  # a long down-curved bill
        beak = _curve(head + direction * 0.08, 0.38, heading - 0.1, -0.9, 7)
        pen.chain(beak, np.linspace(0.045, 0.012, 7), [(45, 40, 38)])
    else:
        base = head + direction * 0.06
        pen.polygon([base + [0, 0.03], head + direction * 0.2, base - [0, 0.03]], (200, 190, 160))
    if kind == "guineafowl":
        pen.limb(head + [0.0, 0.06], head + [-0.03, 0.16], 0.08, 0.03, (20, 20, 22))  # crest
        for point in _inside(rng, body_centre, 0.37, 0.19, 70):
            marks.blob(point, 0.012, 0.012, (225, 228, 235))
    elif kind == "francolin":
        for point in _inside(rng, body_centre, 0.37, 0.19, 60):
            marks.blob(point, 0.015, 0.008, (200, 180, 150), turn=0.4)
    sk.eyes.append(head + [0.02, 0.02])


def _draw_monkey(sk: _Sketch, rng: np.random.Generator) -> None:
    """A monkey or prosimian: sitting upright, walking, or climbing, mostly with a long tail."""
    kinds = ["mangabey", "diana", "colobus", "red_colobus", "chimpanzee", "galago"]
    kind = rng.choice(kinds, p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.1])
    coat = {
        "mangabey": (95, 90, 88),
        "diana": (32, 30, 30),
        "colobus": (25, 24, 24),
        "red_colobus": (160, 82, 42),
        "chimpanzee": (35, 30, 28),
        "galago": (130, 110, 90),
    }[kind]
    coat = _jitter(coat, rng, 10)
    colours = {
        "coat": coat,
        "belly": (225, 220, 210) if kind in ("diana", "colobus") else _shade(coat, 1.15),
        "legs": coat,
        "muzzle": (150, 120, 110) if kind == "chimpanzee" else _shade(coat, 1.4),
        "tail": (230, 228, 220) if kind == "colobus" else coat,
    }
    has_tail = kind != "chimpanzee"
    pose = "climb" if sk.body.angle else rng.choice(["sit", "walk"], p=[0.55, 0.45])
    if pose == "sit":
        _monkey_sitting(sk, colours, rng, has_tail, big_eyes=kind == "galago")
        return
    build = _Build(
        torso=0.25,
        leg=0.5,
        leg_width=0.06,
        rump=0.1 if kind == "chimpanzee" else 0.07,
        neck=0.06,
        neck_width=0.16,
        neck_angle=0.6,
        head=0.2,
        head_height=0.19,
        head_pitch=rng.uniform(-0.4, 0.2),
        muzzle=0.04,
        ear=0.035,
        tail=rng.uniform(1.0, 1.3) if has_tail else 0.0,
        tail_width=0.04,
        tail_lift=rng.uniform(0.4, 1.0),
        tail_curl=rng.uniform(-2.6, -1.6),
        stride=rng.uniform(0.15, 0.4),
    )
    p = _quadruped(sk, build, colours, rng)
    face = p["head"] + p["direction"] * 0.07
    sk.body.blob(face, 0.05, 0.065, colours["muzzle"])
    sk.body.blob(face + p["direction"] * 0.02 + p["up"] * 0.025, 0.015, 0.015, (20, 18, 16))


def _monkey_sitting(sk: _Sketch, colours: dict, rng: np.random.Generator, has_tail, big_eyes):
    """A monkey sitting upright, seen from the side or three-quarters, tail on the ground."""
    pen = sk.body
    coat = colours["coat"]
    if has_tail:
        length, heading = rng.uniform(0.8, 1.1), np.pi + rng.uniform(-0.2, 0.2)
        tail = _curve((-0.15, 0.05), length, heading, rng.uniform(-1.5, 1.5), 10)
        pen.chain(tail, np.linspace(0.05, 0.035, 10), [colours["tail"]])
    pen.blob((0.05, 0.12), 0.28, 0.12, _shade(coat, 0.85))  # folded legs
    pen.blob((0.0, 0.42), 0.2, 0.34, coat, turn=rng.uniform(-0.2, 0.2))  # upright torso
    pen.blob((0.08, 0.45), 0.1, 0.22, colours["belly"])
    arm_reach = rng.choice([(0.28, 0.04), (0.3, 0.55)])  # on the ground, or to the mouth
    pen.limb((0.08, 0.62), (0.2, 0.35), 0.1, 0.08, _shade(coat, 0.9))
    pen.limb((0.2, 0.35), arm_reach, 0.08, 0.06, _shade(coat, 0.9))
    head = np.array([0.08, 0.9])
    pen.blob(head, 0.16, 0.15, coat)
    pen.blob(head + [0.08, -0.02], 0.09, 0.1, colours["muzzle"])  # face
    eye = head + [0.12, 0.02]
    eye_size = 0.04 if big_eyes else 0.018
    pen.blob(eye, eye_size, eye_size, (20, 18, 16))
    sk.eyes.append(eye)


#: One drawing function per class; "blank" has no animal.
_BODY_PLANS = {
    "antelope_duiker": _draw_duiker,
    "bird": _draw_bird,
    "civet_genet": _draw_civet_genet,
    "hog": _draw_hog,
    "leopard": _draw_leopard,
    "monkey_prosimian": _draw_monkey,
    "rodent": _draw_rodent,
}
#: Real body length in metres (tail excluded) and the distances at which the camera catches it.
_SIZE_M = {
    "antelope_duiker": (0.5, 1.0),
    "bird": (0.3, 0.5),
    "civet_genet": (0.45, 0.85),
    "hog": (0.9, 1.4),
    "leopard": (1.0, 1.5),
    "monkey_prosimian": (0.4, 0.75),
    "rodent": (0.2, 0.42),
}
#: Nearest, typical and farthest distance in metres at which a camera catches each class:
#: the infrared motion sensor fires mostly for animals a few metres away, small ones closer.
_DISTANCE_M = {
    "antelope_duiker": (0.8, 3.0, 9.0),
    "bird": (0.5, 1.6, 4.0),
    "civet_genet": (0.7, 2.2, 7.0),
    "hog": (1.0, 3.5, 10.0),
    "leopard": (1.0, 3.5, 10.0),
    "monkey_prosimian": (0.8, 2.8, 8.0),
    "rodent": (0.4, 1.4, 3.5),
}


def _animal_layer(species, rng, length_px, facing, squash, angle):
    """Draw one animal as an RGBA image cropped to it.

    Returns:
        (image, anchor, eyes): ``anchor`` is the pixel of the animal's feet centre, ``eyes`` the
        pixels of its eyes, both in the returned image.
    """
    supersample = 3 if length_px < 50 else 2 if length_px < 220 else 1  # smooth small animals
    scale = length_px * supersample
    side = math.ceil(3.4 * scale)
    origin = (side / 2, side / 2)
    body = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    marks = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    sketch = _Sketch(
        body=_Pen(ImageDraw.Draw(body), origin, scale, facing, squash, angle),
        marks=_Pen(ImageDraw.Draw(marks), origin, scale, facing, squash, angle),
    )
    _BODY_PLANS[species](sketch, rng)
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
    small = small.filter(_blur(max(0.5, radius / factor)))
    return small.resize(mask.size, Image.Resampling.BILINEAR) if factor > 1 else small


def _motion_blur(animal: Image.Image, length: int) -> Image.Image:
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


def _add_animal(image, species, rng, scene, style, exposure, drawn) -> list[tuple[float, float]]:
    """Place one animal of ``species`` in the frame, near or far, maybe cut by the frame edge.

    Distance sets both size and height in the frame (a ground plane seen from the camera's
    height). ``exposure`` is the infrared gain of a night shot, None by day. Records the
    animal's box in ``drawn`` and returns its eye pixels, for eyeshine.
    """
    night = exposure is not None
    width, height = image.size
    focal = 1.05 * height  # pixels per metre at one metre: a ~50° vertical field of view
    near, typical, far = _DISTANCE_M[species]
    distance = float(np.clip(typical * math.exp(rng.normal(0, 0.5)), near, far))
    length = max(0.035 * height, focal * rng.uniform(*_SIZE_M[species]) / distance)
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
    layer, anchor, eyes = _animal_layer(species, rng, length, facing, squash, angle)
    drawn["blurred"] = bool(rng.random() < (0.35 if night else 0.12))
    if drawn["blurred"]:
        layer = _motion_blur(layer, max(1, round(length * rng.uniform(0.03, 0.15))))
    if distance < 1.1:  # too close to be in focus
        layer = layer.filter(_blur(length * 0.015 * (1.1 - distance) / 0.5))
    if night:  # fur reflects the infrared flash: near animals shine, the closest burn out
        # The frame's flash reach and exposure are applied to the whole frame later; divide them
        # out here so that the animal's brightness follows its distance, not its place.
        at = (int(np.clip(x, 0, width - 1)), int(np.clip(feet_y - length * 0.3, 0, height - 1)))
        reach = max(scene.falloff.getpixel(at) / 255, 0.2)
        gain = min(1.8, max(0.55, (1.8 / distance) ** 0.7)) / (reach * exposure)
        lift = [int(min(255, (40 + 0.85 * v) * gain)) for v in range(256)] * 3
        lit = layer.convert("RGB").point(lift)
        layer = Image.merge("RGBA", (*lit.split(), layer.getchannel("A")))
    left, top = round(x - anchor[0]), round(feet_y - anchor[1])
    if not night and angle == 0.0:
        _shadow(image, left + anchor[0], feet_y, layer.width)
    image.paste(layer, (left, top), layer)
    drawn["animal_box"] = (left, top, left + layer.width, top + layer.height)
    if rng.random() < 0.25:
        _grass_in_front(image, rng, left + anchor[0], feet_y, layer.width, layer.height)
    return [(left + ex, top + ey) for ex, ey in eyes]


def _shadow(image: Image.Image, x: float, y: float, width: float) -> None:
    """A soft contact shadow under an animal in daylight."""
    w, h = max(4, int(width * 0.9)), max(3, int(width * 0.12))
    mask = Image.new("L", (w * 2, h * 3), 0)
    ImageDraw.Draw(mask).ellipse((w / 2, h, w * 1.5, h * 2), fill=90)
    mask = mask.filter(_blur(h * 0.4))
    image.paste((15, 12, 8), (round(x - w), round(y - h * 1.5)), mask)


def _grass_in_front(image, rng, x, feet_y, width, height) -> None:
    """Blades of grass and leaves between the camera and the animal, hiding part of it."""
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 14))):
        bx = x + rng.uniform(-0.6, 0.6) * width
        tall = height * rng.uniform(0.3, 0.9)
        angle = -np.pi / 2 + rng.normal(0, 0.3)
        colour = _jitter((55, 90, 40), rng, 25)
        breadth = tall * rng.uniform(0.06, 0.25)
        draw.polygon(_leaf_points(bx, feet_y + height * 0.05, tall, breadth, angle), fill=colour)


def _false_trigger(image: Image.Image, rng: np.random.Generator) -> None:
    """What fires a camera with no animal: a swaying out-of-focus leaf or branch near the lens."""
    width, height = image.size
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    x, y = rng.uniform(0, width), rng.uniform(0.3, 1.0) * height
    length = height * rng.uniform(0.3, 0.8)
    colour = (*_jitter((50, 80, 38) if rng.random() < 0.7 else (90, 70, 50), rng, 20), 230)
    leaf = _leaf_points(x, y, length, length * rng.uniform(0.1, 0.35), rng.uniform(0, 2 * np.pi))
    draw.polygon(leaf, fill=colour)
    layer = layer.filter(_blur(height * rng.uniform(0.01, 0.03)))
    image.paste(layer, (0, 0), layer)


# ---------------------------------------------------------------------------------------------
# The camera: framing, daylight or infrared, softness, noise and the info band
# ---------------------------------------------------------------------------------------------


def _render_image(task: _ImageTask, drawn: dict | None = None) -> Image.Image:
    """Draw one camera-trap image, every random choice from (seed, image index).

    ``drawn``, when given, receives facts about the drawing (the animal's box).
    """
    rng = np.random.default_rng([task.seed, task.stream, task.index])
    style = _site_style(task.seed, task.site)
    scene = _site_scene(task.seed, task.site, task.width, task.height)
    image = _frame(scene, rng, task.width, task.height)
    exposure = style.flash * rng.uniform(1.5, 2.4) if task.night else None
    eyes: list[tuple[float, float]] = []
    if task.species in _BODY_PLANS:
        notes = {} if drawn is None else drawn
        eyes = _add_animal(image, task.species, rng, scene, style, exposure, notes)
    elif rng.random() < 0.35:
        _false_trigger(image, rng)
    if scene.foreground is not None:
        image.paste(scene.foreground, (0, 0), scene.foreground)
    if exposure is not None:
        image = _infrared(image, rng, scene, exposure, eyes)
    else:
        image = _daylight(image, rng, style)
    image = _add_noise(image, rng, task.seed, sigma=9.0 if task.night else 3.0)
    if task.band != "none":
        _draw_band(image, rng, style, task)
    return image.convert("RGB")


def _frame(scene: _Scene, rng: np.random.Generator, width: int, height: int) -> Image.Image:
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


def _daylight(image: Image.Image, rng: np.random.Generator, style: _SiteStyle) -> Image.Image:
    """Daylight under the canopy: brightness, colour cast, sun flecks, sometimes over-exposure."""
    gain = style.light * rng.uniform(0.8, 1.2) * np.asarray(style.cast)
    if rng.random() < 0.07:  # the sun broke through: a washed-out frame
        gain = gain * rng.uniform(1.5, 2.0)
    image = image.point(_gain_lut(gain, rng.uniform(0.85, 1.15)))
    if rng.random() < 0.6:
        width, height = image.size
        cells = rng.random((max(2, height // 30), max(2, width // 30)))
        spots = Image.fromarray((np.clip((cells - 0.75) * 6, 0, 1) * 255).astype(np.uint8))
        spots = spots.filter(_blur(0.6)).resize(image.size, Image.Resampling.BICUBIC)
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
    rng = np.random.default_rng([seed, _NOISE_STREAM, width, height, round(sigma * 10)])
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


def _draw_band(image: Image.Image, rng: np.random.Generator, style: _SiteStyle, task: _ImageTask):
    """The camera's info band: date and time on the left, temperature on the right."""
    width, height = image.size
    band = max(6, round(height * 0.06))
    top = 0 if task.band == "top" else height - band
    if style.band_dark:
        paper, ink = (0, 0, 0), (235, 235, 235)
    else:
        paper, ink = (205, 205, 205), (10, 10, 10)
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


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> SampleReport | None:
    """``python -m conserviz_utils.sample``: build a sample dataset, or render the example grid."""
    parser = argparse.ArgumentParser(
        prog="python -m conserviz_utils.sample",
        description="Build the synthetic Taï-like camera-trap sample in the competition layout.",
    )
    parser.add_argument(
        "--out", type=Path, help="folder to write: missing, empty or a previous sample"
    )
    parser.add_argument("--n-train", type=int, default=2000, help="train images (default 2000)")
    parser.add_argument("--n-test", type=int, default=500, help="test images (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--image-scale", type=float, default=1.0, help="size factor (default 1)")
    parser.add_argument("--workers", type=int, help="processes (default: one per core)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--grid", type=Path, help="instead, write a day and a night image per class to this PNG"
    )
    args = parser.parse_args(argv)
    if args.grid is not None:
        # A 256-colour palette keeps the PNG under 1 MB with no visible loss at this size.
        sample_grid(seed=args.seed).quantize(256).save(args.grid, optimize=True)
        print(f"wrote {args.grid}")
        return None
    if args.out is None:
        parser.error("--out is required (or --grid PATH)")
    try:
        report = generate_sample(
            args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
            image_scale=args.image_scale, workers=args.workers, progress=not args.no_progress,
        )
    except ConservizError as error:
        parser.exit(2, f"error: {error}\n")
    print(report)
    return report


if __name__ == "__main__":
    # Run the importable module's main, so worker processes unpickle the same functions.
    from conserviz_utils.sample import main as _main

    _main()
