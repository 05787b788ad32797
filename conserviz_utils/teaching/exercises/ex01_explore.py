"""Checkers of notebook 01's exercises: the busiest site, and its species mix."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from conserviz_utils.teaching.exercises.results import (
    as_name,
    as_number,
    busiest_sites,
    checker,
    correct,
    hint,
    not_a_name,
    same,
    species_of,
    species_order,
)

BUSIEST = "Exercise 1 · the busiest site"
MIX = "Exercise 2 · the busiest site's species mix"


@checker(BUSIEST, "the name of the site with the most training images, a string",
         placeholder="the name of the site with the most training images")
def check_busiest_site(site, features: pd.DataFrame, test_features: pd.DataFrame | None = None):
    """Exercise 01·1: the name of the site with the most training images (``test_features`` spot a test site)."""
    busiest, counts = busiest_sites(features)
    name = as_name(site)
    if name is None:
        number = as_number(site)
        if number is not None:
            if number == counts.max():
                return hint(BUSIEST, "that is how many images the busiest site has; answer with "
                                     "the site's name (a string)")
            return hint(BUSIEST, "that is a number; answer with a site's name, a string like "
                                 "those in data.train_features['site']")
        return not_a_name(BUSIEST, site, "the busiest site's name")
    total = int(counts.sum())
    if name in busiest:
        n = int(counts[name])
        return correct(BUSIEST, f"site {name} took {n:,} of the {total:,} training images "
                                f"({n / total:.0%}); a handful of sites hold much of the data")
    if name not in counts.index:
        same_letters = [s for s in counts.index if s.lower() == name.lower()]
        if same_letters:
            return hint(BUSIEST, f"check the upper and lower case: site names are written like {counts.index[-1]!r}")
        if test_features is not None and name in set(test_features["site"].astype(str)):
            return hint(BUSIEST, f"{name} is a test site; the question asks about the training images")
        return hint(BUSIEST, f"no training image comes from site {name!r}; check the spelling "
                             f"(site names look like {counts.index[-1]!r})")
    n = int(counts[name])
    if n == counts.min():
        return hint(BUSIEST, f"site {name} has the fewest training images ({n}); the busiest one "
                             "is at the other end of the counts")
    more = int((counts > n).sum())
    return hint(BUSIEST, f"site {name} has {n} training images, but {more} site(s) have more; "
                         "count the images per site with value_counts()")


def _shares_vector(answer, order: list[str]) -> tuple[np.ndarray | None, list[str]]:
    """(the answer's values in ``order``, names in the answer that are not species)."""
    if isinstance(answer, Mapping):
        answer = pd.Series(dict(answer), dtype=object)
    if isinstance(answer, pd.DataFrame) and answer.shape[1] == 1:
        answer = answer.iloc[:, 0]
    if not isinstance(answer, pd.Series):
        return None, []
    try:
        values = pd.to_numeric(answer, errors="raise").astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        return None, []
    values.index = values.index.astype(str)
    if values.index.has_duplicates:
        return None, []
    unknown = [s for s in values.index if s not in order]
    return values.reindex(order, fill_value=0.0).to_numpy(dtype=float), unknown


@checker(MIX, "a Series of species shares for the busiest site",
         placeholder="a Series of species shares for the busiest site")
def check_site_species_shares(shares, features: pd.DataFrame, labels):
    """Exercise 01·2: the busiest site's species mix, a Series (or dict) species → share adding up to 1."""
    species = species_of(labels)
    order = species_order(species, labels)
    sites = features["site"].astype(str).reindex(species.index)
    busiest, _ = busiest_sites(features.loc[species.index])
    table = pd.crosstab(sites, species).reindex(columns=order, fill_value=0)
    values, unknown = _shares_vector(shares, order)
    if values is None:
        if isinstance(shares, pd.DataFrame):
            return hint(MIX, f"that is a table with {shares.shape[1]} columns; give one Series of "
                             "shares indexed by species")
        if isinstance(shares, list | tuple | np.ndarray) or hasattr(shares, "detach"):
            return hint(MIX, "numbers alone do not say which species is which; give a Series "
                             "indexed by species, e.g. what value_counts(normalize=True) returns")
        return hint(MIX, "give a Series of shares indexed by species, e.g. what value_counts(normalize=True) returns")
    if unknown:
        return hint(MIX, f"{', '.join(unknown[:3])} is not a species; index the shares by the species names")
    if not np.isfinite(values).all():
        return hint(MIX, "some of your shares are NaN or infinite: a share is a count divided by "
                         "the site's image count")
    tolerance = 5e-3  # shares rounded to two decimals still count
    mixes = {site: (table.loc[site] / table.loc[site].sum()).to_numpy(float) for site in table.index}
    # Sites tied for the most images are all "the busiest"; the closest one is meant.
    site = min(busiest, key=lambda s: np.abs(values - mixes[s]).sum())
    right = mixes[site]
    n_site = int(table.loc[site].sum())
    if same(values, right, tolerance):
        top = order[int(np.argmax(right))]
        overall = float((species == top).mean())
        return correct(MIX, f"{top} makes up {right.max():.0%} of site {site}'s {n_site} images, against "
                            f"{overall:.0%} of all training images: each site has its own mix")
    if same(values, right * n_site, 0.5):
        return hint(MIX, f"these are counts (they add up to {values.sum():.0f}); divide by the "
                         "number of images at the site, or use value_counts(normalize=True)")
    if same(values, right * 100, 0.5):
        return hint(MIX, "these look like percentages (they add up to 100); give shares between 0 and 1")
    overall = species.value_counts(normalize=True).reindex(order, fill_value=0.0).to_numpy(float)
    if same(values, overall, tolerance):
        return hint(MIX, "these are the shares of all training images; keep only the rows of the busiest site first")
    per_species = (table / table.sum(axis=0).replace(0, np.nan)).fillna(0.0)
    if same(values, per_species.loc[site].to_numpy(float), tolerance):
        return hint(MIX, "these are the shares of each species' images that were taken at this "
                         "site (normalised per species); the mix asks the other way round: of the "
                         "site's images, what share is each species")
    for other, mix in mixes.items():
        if other not in busiest and same(values, mix, tolerance):
            return hint(MIX, f"these are the shares of site {other}; use the busiest site of exercise 1")
    if not math.isclose(values.sum(), 1.0, abs_tol=0.02):
        return hint(MIX, f"shares of one site add up to 1, yours add up to {values.sum():.3f}")
    return hint(MIX, "not quite: select the busiest site's images, then take the share of each species among them")
