"""Planning a sample dataset from the seed alone: sites, their sizes and species, cameras, day or night.

No image is drawn, so :func:`plan_sample` is cheap and the tests check its statistics at full scale.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from conserviz_utils import SPECIES
from conserviz_utils.errors import SampleParameterError

__all__ = [
    "BIGGEST_TEST_SITE_SHARE", "MIN_TEST_SITES", "MIN_TRAIN_SITES", "NIGHT_SHARE", "REAL_CLASS_COUNTS",
    "REAL_IMAGE_SIZES", "REAL_N_TEST", "REAL_N_TRAIN", "REAL_TEST_SITES", "REAL_TRAIN_SITES", "SITE_PRESENCE",
    "SITE_SCALING_EXPONENT", "SITE_SIZE_SIGMA", "check_parameters", "plan_sample",
]

# Facts of the real competition data (../shared/README.md) that the sample reproduces.
#: Train images per class in the real data; the sample keeps their shares.
REAL_CLASS_COUNTS = {"antelope_duiker": 2474, "bird": 1641, "blank": 2213, "civet_genet": 2423, "hog": 978,
                     "leopard": 2254, "monkey_prosimian": 2492, "rodent": 2013}
#: Train image sizes (width, height) of the real data; the rare 360×215 and 160×95 are left out.
REAL_IMAGE_SIZES = {(640, 360): 7490, (960, 540): 6345, (640, 335): 970, (360, 240): 864, (960, 515): 458,
                    (160, 120): 293}
REAL_N_TRAIN, REAL_N_TEST = 16488, 4464
REAL_TRAIN_SITES, REAL_TEST_SITES = 148, 51
#: Share of the train sites where each class is seen. civet_genet, leopard, hog and blank are
#: the real counts (49, 47, 37, 142 of 148); the others are not published and are assumptions.
SITE_PRESENCE = {"antelope_duiker": 0.80, "bird": 0.60, "blank": 142 / 148, "civet_genet": 49 / 148, "hog": 37 / 148,
                 "leopard": 47 / 148, "monkey_prosimian": 0.70, "rodent": 0.70}
#: Chance that a camera fires in infrared (night) mode, by class: civets, genets and rodents
#: are nocturnal, monkeys and birds diurnal. Together about 47 % of images are infrared.
NIGHT_SHARE = {"antelope_duiker": 0.40, "bird": 0.10, "blank": 0.30, "civet_genet": 0.95, "hog": 0.45, "leopard": 0.60,
               "monkey_prosimian": 0.05, "rodent": 0.80}
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

#: Independent random streams: ``np.random.default_rng([seed, stream, ...])``. Each part of the
#: generator draws from its own stream, so adding draws to one part never moves another's.
PLAN_STREAM, SITE_STREAM, IMAGE_STREAM, NOISE_STREAM, GRID_STREAM, DETECTION_STREAM = range(6)


def plan_sample(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> pd.DataFrame:
    """Decide every image of a sample dataset from the seed, without drawing any.

    Returns:
        A DataFrame indexed by ``id`` (train ids first, test ids continuing) with columns
        ``split`` ("train"/"test"), ``filepath``, ``site``, ``species``, ``night`` (bool: infrared
        shot), ``width`` and ``height`` (before ``image_scale``) and ``band`` ("top", "bottom" or
        "none": where the camera prints its info band).
    """
    check_parameters(n_train, n_test, seed, 1.0, None)
    rng = np.random.default_rng([seed, PLAN_STREAM])
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


def check_parameters(n_train, n_test, seed, image_scale, workers) -> None:
    """Refuse parameters the generator cannot honour, naming the parameter and the fix."""

    def integer(value, least):
        whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        return whole and value >= least

    checks = [
        ("n_train", n_train, integer(n_train, 8), "an integer ≥ 8 (one image per class)"),
        ("n_test", n_test, integer(n_test, 0), "an integer ≥ 0"),
        ("seed", seed, integer(seed, 0), "an integer ≥ 0"),
        ("image_scale", image_scale, isinstance(image_scale, (int, float)) and 0.05 <= image_scale <= 4,
         "a number between 0.05 and 4"),
        ("workers", workers, workers is None or integer(workers, 1), "None or an integer ≥ 1"),
    ]
    for name, value, ok, wanted in checks:
        if not ok:
            raise SampleParameterError(f"{name}={value!r} is out of range", fix=f"pass {name} as {wanted}")


def _site_count(n_images: int, real_images: int, real_sites: int, minimum: int) -> int:
    """Sites on one side: the real count scaled by (images / real images)^0.6, within limits."""
    if n_images == 0:
        return 0
    scaled = round(real_sites * (n_images / real_images) ** SITE_SCALING_EXPONENT)
    return int(min(n_images, max(minimum, scaled)))


def _plan_side(split: str, n_images: int, site_numbers: np.ndarray, rng: np.random.Generator,
               biggest_share) -> pd.DataFrame:
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
    side = pd.DataFrame(rows, columns=["split", "site", "species", "night", "width", "height", "band"])
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


def _species_per_site(site_sizes: np.ndarray, class_counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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
    """One image per (site, class) with abundance, within the row and column sums (the least abundant go without)."""
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
    row_left, col_left = rows - counts.sum(axis=1), columns - counts.sum(axis=0)
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
        band = "none" if cropped else str(rng.choice(["top", "bottom", "none"], p=[0.45, 0.45, 0.1]))
        cameras[s] = (width, height, band)
    return cameras
