"""Checkers of notebook 02's exercises: hold out the biggest site, and watch the shares move."""

from __future__ import annotations

import math

import pandas as pd

from conserviz_utils.teaching.exercises.results import (
    as_name,
    busiest_sites,
    checker,
    close,
    correct,
    hint,
    not_a_name,
    read_number,
    read_split,
    species_of,
    species_order,
    unanswered,
)

HOLDOUT = "Exercise 1 · hold out the biggest site"
SHIFT = "Exercise 2 · the species shares move"
PAIR = "give a pair (train_ids, eval_ids): two collections of image ids"
# Shares are read off a table rounded to 3 decimals; a difference of two such roundings is off
# by up to 0.001.
SHIFT_TOLERANCE = 1e-3 + 1e-9


@checker(HOLDOUT, "a pair (train_ids, eval_ids)", placeholder="(train_ids, eval_ids), the biggest site held out")
def check_site_holdout(split, features: pd.DataFrame):
    """Exercise 02·1: hold out the biggest site: ``(train_ids, eval_ids)`` (ids, or frames indexed by id)."""
    sides, problem = read_split(split, features.index)
    if problem is not None:
        if "mask" in problem:
            return hint(HOLDOUT, f"your split {problem}; turn each mask into ids with "
                                 "data.train_features.index[mask]")
        return hint(HOLDOUT, f"your split {problem}; {PAIR}")
    train, held = sides
    busiest, counts = busiest_sites(features)
    sites = features["site"].astype(str)
    unknown = train.append(held).difference(features.index)
    if len(unknown):
        return hint(HOLDOUT, f"{len(unknown)} id(s) are not training images (e.g. "
                             f"{unknown[0]!r}); split the index of data.train_features")
    both = train.intersection(held)
    if len(both):
        return hint(HOLDOUT, f"{len(both)} image(s) are on both sides; every image goes to exactly one side")
    held_sites = sorted(set(sites.loc[held]))
    train_sites = set(sites.loc[train])
    if len(train_sites) == 1 and train_sites <= set(busiest) and len(held_sites) > 1:
        return hint(HOLDOUT, "the sides are swapped: your train side is the held-out site; give "
                             "(train_ids, eval_ids) with the held-out site second")
    if len(held_sites) > 1:
        return hint(HOLDOUT, f"your eval side mixes {len(held_sites)} sites; hold out one whole site")
    if not held_sites:
        return hint(HOLDOUT, "your eval side is empty; it holds every image of the biggest site")
    site = held_sites[0]
    if site not in busiest:
        return hint(HOLDOUT, f"your eval side is site {site} ({int(counts[site])} images); hold "
                             "out the site with the most images")
    if len(held) < int(counts[site]):
        return hint(HOLDOUT, f"only {len(held)} of site {site}'s {int(counts[site])} images are "
                             "held out; the site goes to eval whole")
    missing = features.index.difference(train.append(held))
    if len(missing):
        return hint(HOLDOUT, f"{len(missing)} image(s) of the other sites are on neither side; all of them train")
    return correct(HOLDOUT, f"site {site}'s {len(held):,} images are held out and the other {len(train):,} images, "
                            f"from {len(train_sites)} sites, train; no site is on both sides")


@checker(SHIFT, "a species name and its shift, one number")
def check_share_shift(most_moved, shift, split, labels):
    """Exercise 02·2: the species whose share moves most over exercise 1's ``split``, and its shift (eval − train)."""
    if most_moved is None or shift is None:
        missing = " and ".join(n for n, v in (("most_moved", most_moved), ("shift", shift)) if v is None)
        return unanswered(SHIFT, f"{missing}: the species whose share moves most, and its shift")
    if split is None:
        return hint(SHIFT, "answer exercise 1 first: this one compares the two sides of its split")
    species = species_of(labels)
    sides, problem = read_split(split, species.index)
    if problem is not None:
        return hint(SHIFT, f"exercise 1's holdout {problem}; get exercise 1 right first")
    train, held = sides
    unknown = train.append(held).difference(species.index)
    if len(unknown):
        return hint(SHIFT, f"exercise 1's holdout holds {len(unknown)} id(s) that are not "
                           "labelled training images; get exercise 1 right first")
    if not len(train) or not len(held):
        return hint(SHIFT, "one side of exercise 1's holdout is empty; get exercise 1 right first")
    order = species_order(species, labels)
    train_shares, eval_shares = (species.loc[ids].value_counts(normalize=True).reindex(order, fill_value=0.0)
                                 for ids in (train, held))
    moves = eval_shares - train_shares
    largest = moves.abs().max()
    top = [s for s in order if math.isclose(abs(moves[s]), largest, abs_tol=1e-12)]
    name = as_name(most_moved)
    if name is None:
        return not_a_name(SHIFT, most_moved, "the species' name")
    if name not in order:
        return hint(SHIFT, f"{name!r} is not a species; use one of the label columns")
    value = read_number(SHIFT, shift, "shift")
    if name not in top:
        return hint(SHIFT, f"{name}'s share moves by {moves[name]:+.3f}, but another species "
                           "moves more; compare the absolute shift of every species")
    move = float(moves[name])
    if math.isclose(value, move, rel_tol=2e-3, abs_tol=SHIFT_TOLERANCE):
        return correct(SHIFT, f"{name} is {eval_shares[name]:.0%} of the held-out site but "
                              f"{train_shares[name]:.0%} of the rest: one site alone is no "
                              "stratified sample, which is why split_by_site balances its sites")
    if math.isclose(value, -move, rel_tol=2e-3, abs_tol=SHIFT_TOLERANCE):
        return hint(SHIFT, "right species, but the sign is the other way round: eval share minus train share")
    if close(value, 100 * move) or close(value, -100 * move):
        return hint(SHIFT, "right species; give the shift as a share (like 0.12), not in percentage points")
    if close(value, eval_shares[name]) or close(value, train_shares[name]):
        return hint(SHIFT, "right species; that is its share on one side, give the difference (eval minus train)")
    counts = species.loc[held].eq(name).sum(), species.loc[train].eq(name).sum()
    if close(abs(value), abs(float(counts[0] - counts[1]))):
        return hint(SHIFT, "right species; that is a difference of image counts, give the "
                           "difference of shares (each side's count over that side's size)")
    if train_shares[name] > 0 and close(value, eval_shares[name] / train_shares[name]):
        return hint(SHIFT, "right species; that is a ratio (eval share / train share), give the "
                           "difference (eval minus train)")
    overall = species.value_counts(normalize=True).reindex(order, fill_value=0.0)
    if close(value, eval_shares[name] - overall[name]):
        return hint(SHIFT, "right species; you compared with the shares of all images, compare with the train side")
    return hint(SHIFT, "right species; check the number: its eval share minus its train share")
