"""Self-checks for the notebooks' exercises: "correct" and why, or a hint that fits the slip.

Each hands-on exercise of the course has one ``check_...(answer, ...)`` here. A checker
computes the right answer from the data it is given (the sample or the real competition data
alike), compares, and returns a `CheckResult`: *correct* with one line on why it is right, *not
yet* with a hint aimed at the usual wrong answer (off by a factor, the sides of a split swapped,
a probability where a log loss was asked, the base-10 logarithm, ...) that never gives the answer
away, or *not answered yet* while the learner's cell still holds its placeholder ``None``.

The result shows itself in a notebook (``_repr_html_``) and prints as one line; ``result.passed``
is what the solved notebooks assert.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from conserviz_utils.errors import SubmissionError
from conserviz_utils.labels import species_names
from conserviz_utils.metrics import EPS, as_float_table

__all__ = [
    "CORRECT",
    "NOT_ANSWERED",
    "NOT_YET",
    "CheckResult",
    "check_best_epoch",
    "check_best_learning_rate",
    "check_broken_submission",
    "check_busiest_site",
    "check_confidently_wrong",
    "check_frozen_trainable",
    "check_geometric_blend",
    "check_member_weights",
    "check_most_common_confusion",
    "check_one_log_loss",
    "check_share_shift",
    "check_site_holdout",
    "check_site_species_shares",
    "check_softmax",
    "check_worst_case_cost",
    "fresh_head",
]

CORRECT, NOT_YET, NOT_ANSWERED = "correct", "not yet", "not answered yet"

_STYLE = {  # status → (symbol, colour of the box's edge)
    CORRECT: ("✓", "#2e7d32"),
    NOT_YET: ("✗", "#c62828"),
    NOT_ANSWERED: ("…", "#757575"),
}

# Learners type numbers rounded to 3 decimals; both sides of a comparison get this slack.
_RELATIVE = 2e-3
_ABSOLUTE = 5e-4


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one exercise: its status and a one-line reason or hint."""

    exercise: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        """True when the answer is correct."""
        return self.status == CORRECT

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        symbol, _ = _STYLE[self.status]
        return f"{symbol} {self.exercise}: {self.status} — {self.message}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        symbol, colour = _STYLE[self.status]
        return (
            f'<div style="border-left: 4px solid {colour}; padding: 4px 10px; margin: 2px 0">'
            f'<b style="color: {colour}">{symbol} {html.escape(self.exercise)}: '
            f"{html.escape(self.status)}</b> — {html.escape(self.message)}</div>"
        )


def _correct(exercise: str, why: str) -> CheckResult:
    return CheckResult(exercise, CORRECT, why)


def _hint(exercise: str, hint: str) -> CheckResult:
    return CheckResult(exercise, NOT_YET, hint)


def _unanswered(exercise: str, what: str) -> CheckResult:
    return CheckResult(exercise, NOT_ANSWERED, f"replace None with {what}, then run the cell again")


def _close(value: float, target: float) -> bool:
    """Equal up to the rounding a learner may have applied."""
    return math.isclose(value, target, rel_tol=_RELATIVE, abs_tol=_ABSOLUTE)


def _as_number(answer) -> float | None:
    """The answer as one float, or None when it is not a single number."""
    if isinstance(answer, bool | str) or answer is None:
        return None
    if hasattr(answer, "detach"):  # a 0-d torch tensor
        answer = answer.detach().cpu().numpy()
    array = np.asarray(answer)
    if array.size != 1 or array.dtype.kind not in "iuf":
        return None
    return float(array.reshape(()))


def _not_a_number(exercise: str, answer, what: str) -> CheckResult:
    kind = type(answer).__name__
    return _hint(exercise, f"give {what} as one number (got a {kind}); e.g. float(...) of your result")


def _species(labels) -> pd.Series:
    """Species name of each labelled image, indexed by id (the labels module's one rule)."""
    return species_names(labels, species=None)


def _species_order(species: pd.Series, columns=None) -> list[str]:
    """The species to compare shares over: the label columns when known, else those present."""
    if columns is not None:
        return [str(c) for c in columns]
    return sorted(species.unique())


def _site_counts(features: pd.DataFrame) -> pd.Series:
    return features["site"].astype(str).value_counts()


def _busiest(features: pd.DataFrame) -> tuple[list[str], pd.Series]:
    """(the sites with the most images, sorted; the image count of every site)."""
    counts = _site_counts(features)
    return sorted(counts.index[counts == counts.max()]), counts


# --- 01 · explore ----------------------------------------------------------------------------


def check_busiest_site(site, features: pd.DataFrame, test_features: pd.DataFrame | None = None):
    """Exercise 01·1: the name of the site with the most training images.

    Args:
        site: The learner's answer, a site name such as ``"S0017"``.
        features: The training features (``data.train_features``).
        test_features: The test features, to recognise a test site given by mistake.
    """
    name = "Exercise 1 · the busiest site"
    if site is None:
        return _unanswered(name, "the name of the site with the most training images")
    busiest, counts = _busiest(features)
    total = int(counts.sum())
    if isinstance(site, pd.Series | pd.DataFrame):
        return _hint(name, f"that is a whole table ({len(site)} rows); the answer is one site's "
                           "name, the one with the largest count")
    number = _as_number(site)
    if number is not None:
        if number == counts.max():
            return _hint(name, "that is how many images the busiest site has; answer with the "
                               "site's name (a string)")
        return _hint(name, "that is a number; answer with a site's name, a string like those in "
                           "data.train_features['site']")
    site = str(site).strip()
    if site in busiest:
        n = int(counts[site])
        return _correct(name, f"site {site} took {n:,} of the {total:,} training images "
                              f"({n / total:.0%}); a handful of sites hold much of the data")
    if site not in counts.index:
        if test_features is not None and site in set(test_features["site"].astype(str)):
            return _hint(name, f"{site} is a test site; the question asks about the training images")
        return _hint(name, f"no training image comes from site {site!r}; check the spelling "
                           f"(site names look like {counts.index[-1]!r})")
    n = int(counts[site])
    if n == counts.min():
        return _hint(name, f"site {site} has the fewest training images ({n}); the busiest one is "
                           "at the other end of the counts")
    more = int((counts > n).sum())
    return _hint(name, f"site {site} has {n} training images, but {more} site(s) have more; "
                       "count the images per site with value_counts()")


def _shares_vector(answer, order: list[str]) -> tuple[np.ndarray | None, list[str]]:
    """(the answer's values in ``order``, names in the answer that are not species)."""
    if isinstance(answer, Mapping):
        answer = pd.Series(dict(answer))
    if isinstance(answer, pd.DataFrame) and answer.shape[1] == 1:
        answer = answer.iloc[:, 0]
    if not isinstance(answer, pd.Series) or not pd.api.types.is_numeric_dtype(answer):
        return None, []
    answer = answer.copy()
    answer.index = answer.index.astype(str)
    unknown = [s for s in answer.index if s not in order]
    return answer.reindex(order, fill_value=0.0).to_numpy(dtype=float), unknown


def _same(values: np.ndarray, target: np.ndarray, tolerance: float) -> bool:
    return values.shape == target.shape and bool(np.allclose(values, target, atol=tolerance, rtol=0))


def check_site_species_shares(shares, features: pd.DataFrame, labels):
    """Exercise 01·2: the species mix of the busiest site, as shares that add up to 1.

    Args:
        shares: The learner's answer: a Series (or dict) species → share of that site's images.
        features: The training features (``data.train_features``).
        labels: Their labels (``data.train_labels``, or species names).
    """
    name = "Exercise 2 · the busiest site's species mix"
    if shares is None:
        return _unanswered(name, "a Series of species shares for the busiest site")
    species = _species(labels)
    order = _species_order(species, labels.columns if isinstance(labels, pd.DataFrame) else None)
    sites = features["site"].astype(str).reindex(species.index)
    busiest, _ = _busiest(features.loc[species.index])
    table = pd.crosstab(sites, species).reindex(columns=order, fill_value=0)
    values, unknown = _shares_vector(shares, order)
    if values is None:
        return _hint(name, "give a Series of shares indexed by species, e.g. what "
                           "value_counts(normalize=True) returns")
    if unknown:
        return _hint(name, f"{', '.join(unknown[:3])} is not a species; index the shares by the "
                           "species names")
    tolerance = 5e-3  # shares rounded to two decimals still count
    mixes = {site: (table.loc[site] / table.loc[site].sum()).to_numpy(float) for site in table.index}
    # Sites tied for the most images are all "the busiest"; the closest one is meant.
    site = min(busiest, key=lambda s: np.abs(values - mixes[s]).sum())
    right = mixes[site]
    n_site = int(table.loc[site].sum())
    if _same(values, right, tolerance):
        top = order[int(np.argmax(right))]
        overall = float((species == top).mean())
        return _correct(name, f"{top} makes up {right.max():.0%} of site {site}'s {n_site} images, "
                              f"against {overall:.0%} of all training images: each site has its "
                              "own mix")
    if _same(values, right * n_site, 0.5):
        return _hint(name, f"these are counts (they add up to {values.sum():.0f}); divide by the "
                           "number of images at the site, or use value_counts(normalize=True)")
    if _same(values, right * 100, 0.5):
        return _hint(name, "these look like percentages (they add up to 100); give shares "
                           "between 0 and 1")
    overall = species.value_counts(normalize=True).reindex(order, fill_value=0.0).to_numpy(float)
    if _same(values, overall, tolerance):
        return _hint(name, "these are the shares of all training images; keep only the rows of "
                           "the busiest site first")
    per_species = (table / table.sum(axis=0).replace(0, np.nan)).fillna(0.0)
    if _same(values, per_species.loc[site].to_numpy(float), tolerance):
        return _hint(name, "these are the shares of each species' images that were taken at this "
                           "site (normalised per species); the mix asks the other way round: of "
                           "the site's images, what share is each species")
    for other, mix in mixes.items():
        if other not in busiest and _same(values, mix, tolerance):
            return _hint(name, f"these are the shares of site {other}; use the busiest site of "
                               "exercise 1")
    if not math.isclose(values.sum(), 1.0, abs_tol=0.02):
        return _hint(name, f"shares of one site add up to 1, yours add up to {values.sum():.3f}")
    return _hint(name, "not quite: select the busiest site's images, then take the share of "
                       "each species among them")


# --- 02 · split ------------------------------------------------------------------------------


def _ids(values) -> pd.Index | None:
    """An id collection as an Index, or None when it is not one."""
    if isinstance(values, str) or values is None:
        return None
    if isinstance(values, pd.DataFrame | pd.Series):
        return pd.Index(values.index)
    try:
        return pd.Index(list(values))
    except TypeError:
        return None


def check_site_holdout(split, features: pd.DataFrame):
    """Exercise 02·1: hold out the biggest site: ``(train_ids, eval_ids)`` with eval = that site.

    Args:
        split: The learner's answer: a ``(train_ids, eval_ids)`` pair (a Split, a tuple of id
            indexes or lists).
        features: The features the split was made from (``data.train_features``).
    """
    name = "Exercise 1 · hold out the biggest site"
    if split is None:
        return _unanswered(name, "(train_ids, eval_ids), the biggest site held out")
    if isinstance(split, str) or not hasattr(split, "__len__") or len(split) != 2:
        return _hint(name, "give a pair (train_ids, eval_ids): two lists of image ids")
    train, held = _ids(split[0]), _ids(split[1])
    if train is None or held is None:
        return _hint(name, "give a pair (train_ids, eval_ids): two lists of image ids")
    busiest, counts = _busiest(features)
    sites = features["site"].astype(str)
    unknown = train.append(held).difference(features.index)
    if len(unknown):
        return _hint(name, f"{len(unknown)} id(s) are not training images (e.g. {unknown[0]!r}); "
                           "split the index of data.train_features")
    both = train.intersection(held)
    if len(both):
        return _hint(name, f"{len(both)} image(s) are on both sides; every image goes to exactly "
                           "one side")
    held_sites = sorted(set(sites.loc[held]))
    train_sites = set(sites.loc[train])
    if len(train_sites) == 1 and train_sites <= set(busiest) and len(held_sites) > 1:
        return _hint(name, "the sides are swapped: your train side is the held-out site; give "
                           "(train_ids, eval_ids) with the held-out site second")
    if len(held_sites) > 1:
        return _hint(name, f"your eval side mixes {len(held_sites)} sites; hold out one whole site")
    if not held_sites:
        return _hint(name, "your eval side is empty")
    site = held_sites[0]
    if site not in busiest:
        return _hint(name, f"your eval side is site {site} ({int(counts[site])} images); hold out "
                           "the site with the most images")
    if len(held) < int(counts[site]):
        return _hint(name, f"only {len(held)} of site {site}'s {int(counts[site])} images are held "
                           "out; the site goes to eval whole")
    missing = features.index.difference(train.append(held))
    if len(missing):
        return _hint(name, f"{len(missing)} image(s) of the other sites are on neither side; all "
                           "of them train")
    return _correct(name, f"site {site}'s {len(held):,} images are held out and the other "
                          f"{len(train):,} images, from {len(train_sites)} sites, train; no site "
                          "is on both sides")


def _side_shares(ids: pd.Index, species: pd.Series, order: list[str]) -> pd.Series:
    return species.loc[ids].value_counts(normalize=True).reindex(order, fill_value=0.0)


def check_share_shift(most_moved, shift, split, labels):
    """Exercise 02·2: which species' share moves most with one site held out, and by how much.

    Args:
        most_moved: The learner's species name.
        shift: Its eval share minus its train share (a signed share, e.g. ``0.12``).
        split: The ``(train_ids, eval_ids)`` of exercise 1.
        labels: The labels (``data.train_labels``).
    """
    name = "Exercise 2 · the species shares move"
    if most_moved is None or shift is None:
        return _unanswered(name, "the species whose share moves most, and its shift")
    if split is None:
        return _hint(name, "answer exercise 1 first: this one compares the two sides of its split")
    species = _species(labels)
    order = _species_order(species, labels.columns if isinstance(labels, pd.DataFrame) else None)
    train, held = pd.Index(split[0]), pd.Index(split[1])
    train_shares = _side_shares(train, species, order)
    eval_shares = _side_shares(held, species, order)
    moves = eval_shares - train_shares
    largest = moves.abs().max()
    top = [s for s in order if math.isclose(abs(moves[s]), largest, abs_tol=1e-12)]
    most_moved = str(most_moved).strip()
    if most_moved not in order:
        return _hint(name, f"{most_moved!r} is not a species; use one of the label columns")
    value = _as_number(shift)
    if value is None:
        return _not_a_number(name, shift, "the shift")
    if most_moved not in top:
        return _hint(name, f"{most_moved}'s share moves by {moves[most_moved]:+.3f}, but another "
                           "species moves more; compare the absolute shift of every species")
    move = float(moves[most_moved])
    if _close(value, move):
        return _correct(name, f"{most_moved} is {eval_shares[most_moved]:.0%} of the held-out site "
                              f"but {train_shares[most_moved]:.0%} of the rest: one site alone is "
                              "no stratified sample, which is why split_by_site balances its sites")
    if _close(value, -move):
        return _hint(name, "right species, but the sign is the other way round: eval share minus "
                           "train share")
    if _close(value, 100 * move) or _close(value, -100 * move):
        return _hint(name, "right species; give the shift as a share (like 0.12), not in "
                           "percentage points")
    if _close(value, eval_shares[most_moved]) or _close(value, train_shares[most_moved]):
        return _hint(name, "right species; that is its share on one side, give the difference "
                           "(eval minus train)")
    overall = species.value_counts(normalize=True).reindex(order, fill_value=0.0)
    if _close(value, eval_shares[most_moved] - overall[most_moved]):
        return _hint(name, "right species; you compared with the shares of all images, compare "
                           "with the train side")
    return _hint(name, "right species; check the number: its eval share minus its train share")


# --- 03 · model ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _parameter_counts(arch: str, head: str) -> dict[str, int]:
    """Parameter counts of a frozen ``build_model(arch, head=head)``, built without weights."""
    from torch import nn

    from conserviz_utils.models import build_model, count_parameters, freeze_backbone

    model = freeze_backbone(build_model(arch, pretrained=False, head=head, seed=0))
    total, trainable = count_parameters(model)
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    return {
        "total": total,
        "trainable": trainable,
        "weights_only": sum(m.weight.numel() for m in linears),
        "last_layer": sum(p.numel() for p in linears[-1].parameters()),
    }


def check_frozen_trainable(answer, arch: str = "resnet50", head: str = "seed"):
    """Exercise 03·1: how many parameters a frozen ResNet50 with the seed head still trains.

    The checker builds the model itself (``pretrained=False``: same shapes, no download).
    """
    name = f"Exercise 1 · what a frozen {arch} trains"
    if answer is None:
        return _unanswered(name, "the number of trainable parameters")
    value = _as_number(answer)
    if value is None:
        return _not_a_number(name, answer, "the count")
    counts = _parameter_counts(arch, head)
    total, trainable = counts["total"], counts["trainable"]
    if value == trainable:
        return _correct(name, f"only the head trains: {trainable:,} of {total:,} parameters "
                              f"({trainable / total:.1%}); the backbone's {total - trainable:,} "
                              "stay as ImageNet left them")
    if value == total:
        return _hint(name, "that is every parameter, the frozen backbone's too; count only those "
                           "that still require gradients")
    if value == total - trainable:
        return _hint(name, "that is the frozen backbone; the question asks what still trains")
    if value == counts["weights_only"]:
        return _hint(name, "close: you counted the weights of the head's layers but not their biases")
    if value == counts["last_layer"]:
        return _hint(name, "that is only the head's last Linear layer; the seed head has two")
    for factor, unit in ((1e6, "millions"), (1e3, "thousands")):
        if _close(value * factor, trainable):
            return _hint(name, f"give the count itself, not in {unit}")
    if arch != "efficientnet_lite0" and value == _parameter_counts("efficientnet_lite0", head)["trainable"]:
        return _hint(name, f"that is the frozen EfficientNet-Lite0 of this notebook; build a {arch}")
    return _hint(name, f"not quite: build the {arch} with pretrained=False, freeze its backbone, "
                       "then count the parameters that still train")


def check_softmax(probs, logits):
    """Exercise 03·2: softmax by hand, exp(logits) divided by each image's row sum.

    Args:
        probs: The learner's probabilities: a tensor, array or frame shaped like ``logits``.
        logits: The batch's logits, (images, species).
    """
    name = "Exercise 2 · softmax by hand"
    if probs is None:
        return _unanswered(name, "your probabilities (one row per image)")
    z = as_float_table(logits)
    p = as_float_table(probs)
    if p is None:
        return _hint(name, "give a table of numbers, one row per image and one column per species")
    if p.shape != z.shape:
        return _hint(name, f"give one row per image and one column per species: shape {z.shape}, "
                           f"not {p.shape}")
    exp = np.exp(z - z.max(axis=1, keepdims=True))
    right = exp / exp.sum(axis=1, keepdims=True)
    tolerance = 1e-4  # float32 arithmetic
    if _same(p, right, tolerance):
        return _correct(name, "each row is exp(logits) over its sum: positive, adding up to 1, and "
                              "ranking the species exactly as the logits do")
    by_column = np.exp(z) / np.exp(z).sum(axis=0, keepdims=True)
    if _same(p, by_column, tolerance):
        return _hint(name, "each column adds up to 1: you normalised over the images (dim 0); "
                           "normalise each image's row (dim 1)")
    if _same(p, np.exp(z), tolerance * np.exp(z).max()):
        return _hint(name, "you took exp but did not divide by each row's sum")
    with np.errstate(divide="ignore", invalid="ignore"):
        plain = z / z.sum(axis=1, keepdims=True)
    if np.isfinite(plain).all() and _same(p, plain, tolerance):
        return _hint(name, "divide exp(logits) by its row sum, not the logits themselves: logits "
                           "can be negative")
    if _same(p, np.log(right), tolerance):
        return _hint(name, "these are log-probabilities (all negative); take their exp")
    if _same(p, z, tolerance):
        return _hint(name, "these are the logits unchanged")
    return _hint(name, "not quite: each row should be positive and add up to 1 — exp first, then "
                       "divide by the row's sum")


# --- 04 · train ------------------------------------------------------------------------------


def fresh_head(head, seed: int = 0):
    """A new, untrained copy of ``head``: the same layers with freshly drawn, seeded weights.

    For the learning-rate exercise: each rate trains its own head, and the model's trained
    ``model.head`` stays as it is.
    """
    import copy

    import torch

    new = copy.deepcopy(head)
    with torch.random.fork_rng(devices=[]):  # leave the global random state as it was
        torch.manual_seed(seed)
        for layer in new.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    return new


def _best_eval(history: pd.DataFrame) -> pd.Series:
    """The eval row with the lowest eval log loss (the epoch early stopping keeps)."""
    evals = history.dropna(subset=["eval_log_loss"])
    return evals.loc[evals["eval_log_loss"].idxmin()]


def check_best_learning_rate(answer, histories: Mapping[float, pd.DataFrame]):
    """Exercise 04·1: which head learning rate reached the lowest held-out log loss.

    The histories' ``eval_log_loss`` is the loss on whatever ``fit_head`` was given to watch: in
    notebook 04, a held-out slice of the training sites.

    Args:
        answer: The learner's learning rate (one of the keys of ``histories``).
        histories: learning rate → the head's training history from ``fit_head``.
    """
    name = "Exercise 1 · the head's learning rate"
    if answer is None:
        return _unanswered(name, "the learning rate whose head scored best")
    value = _as_number(answer)
    if value is None:
        return _not_a_number(name, answer, "the learning rate")
    rates = sorted(histories)
    chosen = [lr for lr in rates if math.isclose(lr, value, rel_tol=1e-6)]
    if not chosen:
        return _hint(name, f"{value:g} is not one of the rates you tried "
                           f"({', '.join(f'{lr:g}' for lr in rates)})")
    best = {lr: float(_best_eval(histories[lr])["eval_log_loss"]) for lr in rates}
    winner = min(best.values())
    lr = chosen[0]
    if math.isclose(best[lr], winner, abs_tol=1e-12):
        others = ", ".join(f"{r:g}: {best[r]:.3f}" for r in rates if r != lr)
        return _correct(name, f"lr {lr:g} reached a held-out log loss of {best[lr]:.3f} (others: "
                              f"{others}); "
                              "too high a rate overshoots and overfits within an epoch or two, "
                              "too low a rate is still descending when training stops")
    train_loss = {}
    for r in rates:
        rows = histories[r].dropna(subset=["train_loss"]) if "train_loss" in histories[r] else None
        if rows is not None and len(rows):
            train_loss[r] = float(rows["train_loss"].iloc[-1])
    if train_loss and math.isclose(train_loss.get(lr, math.nan), min(train_loss.values())):
        return _hint(name, f"lr {lr:g} ends with the lowest training loss: it fits the training "
                           "sites best; judge by the held-out log loss (eval_log_loss)")
    return _hint(name, f"lr {lr:g}'s best held-out log loss is {best[lr]:.3f}; another rate did "
                       "better; compare the lowest eval_log_loss of each run")


def check_best_epoch(answer, history: pd.DataFrame):
    """Exercise 04·2: the epoch whose head early stopping kept (the lowest held-out log loss).

    Args:
        answer: The learner's epoch number, as counted in the history's ``epoch`` column.
        history: The head's training history from ``fit_head``.
    """
    name = "Exercise 2 · the epoch early stopping kept"
    if answer is None:
        return _unanswered(name, "the epoch whose weights early stopping kept")
    value = _as_number(answer)
    if value is None:
        return _not_a_number(name, answer, "the epoch")
    if history is None:
        return _hint(name, "answer exercise 1 first: this one reads the history of its lr × 10 run")
    best = _best_eval(history)
    epoch = int(best["epoch"])
    last = int(history["epoch"].max())
    if value == epoch:
        return _correct(name, f"epoch {epoch} had the lowest held-out log loss "
                              f"({best['eval_log_loss']:.3f}); training went on to epoch {last} "
                              "to be sure it would not improve, then kept epoch "
                              f"{epoch}'s weights")
    if value == last:
        return _hint(name, "that is the last epoch trained; early stopping keeps the one with the "
                           "lowest held-out log loss (eval_log_loss)")
    if value in (epoch - 1, epoch + 1):
        return _hint(name, "off by one: count epochs as the history's epoch column does")
    return _hint(name, "look for the row with the lowest eval_log_loss in the history")


# --- 05 · evaluate ---------------------------------------------------------------------------


def _clipped_row(probs: pd.DataFrame, image_id) -> pd.Series:
    """One image's probabilities after the competition's clip and renormalisation."""
    row = probs.loc[image_id].astype(float).clip(EPS, 1 - EPS)
    return row / row.sum()


def check_one_log_loss(answer, labels, probs: pd.DataFrame, image_id):
    """Exercise 05·1: the log loss of one prediction by hand, −ln p(true species).

    Args:
        answer: The learner's number.
        labels: The eval labels.
        probs: Their probabilities (a frame indexed by id, one column per species).
        image_id: The image the exercise is about.
    """
    name = "Exercise 1 · one prediction's log loss"
    if answer is None:
        return _unanswered(name, f"the log loss of image {image_id}")
    value = _as_number(answer)
    if value is None:
        return _not_a_number(name, answer, "the log loss")
    true = str(_species(labels).loc[image_id])
    row = _clipped_row(probs, image_id)
    p = float(row[true])
    right = -math.log(p)
    if _close(value, right):
        return _correct(name, f"the model gave the true species, {true}, p = {p:.3f}, so this "
                              f"image costs −ln {p:.3f} = {right:.3f}; a sure right answer costs 0 "
                              f"and an honest 1/{len(row)} costs {math.log(len(row)):.3f}")
    if _close(value, right / math.log(10)):
        return _hint(name, "that is the base-10 logarithm; log loss uses the natural one (np.log, "
                           "math.log)")
    if _close(value, -right):
        return _hint(name, "log loss is −log p: yours is negative, flip the sign")
    if _close(value, p):
        return _hint(name, "that is the probability of the true species itself; log loss is "
                           "−log of it")
    if _close(value, -math.log(max(1 - p, EPS))):
        return _hint(name, "that is −log(1 − p); log loss is −log p of the true species")
    predicted = str(row.idxmax())
    if predicted != true and _close(value, -math.log(row[predicted])):
        return _hint(name, f"that is −log of the most probable species' probability; use the "
                           f"true species, {true}")
    for other in row.index:
        if other not in (true, predicted) and _close(value, -math.log(row[other])):
            return _hint(name, f"that is −log of {other}'s probability; use the true species, {true}")
    ids = probs.index.intersection(_species(labels).index)
    if len(ids) > 1:
        species = _species(labels).loc[ids]
        rows = probs.loc[ids].astype(float).clip(EPS, 1 - EPS)
        rows = rows.div(rows.sum(axis=1), axis=0)
        mean = float(np.mean([-math.log(rows.at[i, species[i]]) for i in ids]))
        if _close(value, mean):
            return _hint(name, "that is the mean over all eval images; take the one image")
    return _hint(name, f"not quite: find the probability the model gave image {image_id}'s true "
                       "species, then take −ln of it")


def check_confidently_wrong(answer, labels):
    """Exercise 05·2: the log loss of a submission sure of a wrong species for every image.

    The right answer is what the competition's metric gives: every probability clipped to
    [1e-15, 1 − 1e-15] and each row renormalised, so each image costs about −ln 1e-15 ≈ 34.5.

    Args:
        answer: The learner's number.
        labels: The labels of the images scored (``eval_labels``).
    """
    name = "Exercise 2 · a confidently wrong submission"
    if answer is None:
        return _unanswered(name, "the log loss of the confidently wrong submission")
    value = _as_number(answer)
    if value is None:
        return _not_a_number(name, answer, "the log loss")
    classes = labels.shape[1] if isinstance(labels, pd.DataFrame) else _species(labels).nunique()
    classes = max(int(classes), 2)
    right = -math.log(EPS / (1 - EPS + (classes - 1) * EPS))
    uniform = math.log(classes)
    if math.isinf(value) or math.isnan(value):
        return _hint(name, "the competition clips every probability to [1e-15, 1 − 1e-15] before "
                           "the log, so one zero cannot make the score infinite; clip first, or "
                           "use log_loss(eval_labels, probs)")
    if _close(value, right):
        return _correct(name, f"every image costs −ln 1e-15 ≈ {right:.1f} after clipping, "
                              f"{right / uniform:.0f} times the uniform baseline's "
                              f"{uniform:.3f}: one confident mistake outweighs dozens of good "
                              "guesses")
    if _close(value, right / math.log(10)):
        return _hint(name, "that is the base-10 logarithm; log loss uses the natural one")
    if value < 0:
        return _hint(name, "log loss is −log p, never negative: flip the sign")
    if _close(value, 0.0):
        return _hint(name, "0 is a perfect score; a confidently wrong submission is the worst one")
    if _close(value, 1.0):
        return _hint(name, "that is the error rate (every image wrong); the question asks for the "
                           "log loss")
    if _close(value, uniform):
        return _hint(name, "that is the uniform baseline, an honest 'don't know'; put all the "
                           "probability on a wrong species")
    if uniform < value < right:
        return _hint(name, "your submission still gives the true species some probability; put "
                           "1 on a wrong species and 0 on every other, the true one included")
    return _hint(name, "not quite: build the probabilities (1 on a wrong species, 0 elsewhere) "
                       "and score them with log_loss(eval_labels, wrong)")


def _predicted_species(probs: pd.DataFrame) -> pd.Series:
    return probs.astype(float).idxmax(axis=1).astype(str)


def check_most_common_confusion(answer, labels, probs: pd.DataFrame, true_species: str):
    """Exercise 05·3: the wrong species the model most often picks for images of ``true_species``.

    Answer ``"none"`` when the model never gets that species wrong.
    """
    name = f"Exercise 3 · what {true_species} is mistaken for"
    if answer is None:
        return _unanswered(name, f"the species most often predicted for true {true_species} images")
    species = _species(labels).reindex(probs.index)
    predicted = _predicted_species(probs)
    mistakes = predicted[(species == true_species) & (predicted != true_species)]
    answer = str(answer).strip()
    if answer != "none" and answer not in probs.columns:
        return _hint(name, f"{answer!r} is not a species; use one of the probability columns")
    n_true = int((species == true_species).sum())
    if mistakes.empty:
        if answer == "none":
            return _correct(name, f"the model gets every one of the {n_true} {true_species} "
                                  "images right")
        return _hint(name, f"the model never gets {true_species} wrong here; answer 'none'")
    counts = mistakes.value_counts()
    top = sorted(counts.index[counts == counts.max()])
    if answer in top:
        return _correct(name, f"{int(counts[answer])} of the {n_true} {true_species} images are "
                              f"predicted {answer}; the explorer shows which of them it was "
                              "surest about")
    if answer == true_species:
        return _hint(name, f"predicting {true_species} is right for those images; the question "
                           "asks which wrong species the model picks most")
    if answer == "none":
        return _hint(name, f"the model does get some {true_species} images wrong; look at that "
                           "row of the confusion matrix")
    column = species[(predicted == true_species) & (species != true_species)].value_counts()
    if len(column) and answer in column.index[column == column.max()]:
        return _hint(name, f"you read a column of the confusion matrix: those images are "
                           f"predicted {true_species}; the question is about images that are "
                           f"{true_species} (its row)")
    return _hint(name, f"the model puts {int(counts.get(answer, 0))} of them in {answer}; another "
                       f"species gets more: filter the explorer by true species {true_species}")


# --- 06 · submit -----------------------------------------------------------------------------


def check_broken_submission(broken, submission_format: pd.DataFrame):
    """Exercise 06·1: a submission broken on purpose, which ``validate_submission`` must refuse."""
    from conserviz_utils.submission import validate_submission

    name = "Exercise 1 · break a submission"
    if broken is None:
        return _unanswered(name, "a broken copy of the submission")
    try:
        validate_submission(broken, submission_format)
    except SubmissionError as refusal:
        fix = f" The fix it suggests: {refusal.fix}" if refusal.fix else ""
        return _correct(name, f"validate_submission refused it: {refusal.problem}.{fix}")
    return _hint(name, "validate_submission still accepts it, so the competition would too; "
                       "break it more: drop a row, swap two columns, or set one probability to 2")


def check_worst_case_cost(answer, submission: pd.DataFrame, weight: float = 0.9):
    """Exercise 06·2: after blending with the uniform 1/8, the most one image can cost.

    The blend is ``weight * submission + (1 - weight) / species``; an image costs −ln of the
    probability given to its true species, so the worst case is −ln of the blend's smallest value.
    """
    name = "Exercise 2 · the worst case after blending"
    if answer is None:
        return _unanswered(name, "the largest log loss one image can cost after blending")
    value = _as_number(answer)
    if value is None:
        return _not_a_number(name, answer, "the cost")
    values = submission.to_numpy(dtype=float)
    classes = values.shape[1]
    smallest = float(values.min())
    blended = weight * smallest + (1 - weight) / classes
    right = -math.log(blended)
    before = -math.log(max(smallest, EPS))
    if _close(value, right):
        return _correct(name, f"the smallest probability is now {blended:.4f}, so no image can "
                              f"cost more than −ln {blended:.4f} = {right:.2f}, against "
                              f"{before:.1f} before blending; confident right answers pay a little "
                              "for that insurance")
    if _close(value, right / math.log(10)):
        return _hint(name, "that is the base-10 logarithm; log loss uses the natural one")
    if _close(value, -right):
        return _hint(name, "a cost is −log p, positive: flip the sign")
    if _close(value, blended):
        return _hint(name, "that is the smallest probability itself; an image given it costs "
                           "−log of it")
    if _close(value, before):
        return _hint(name, "that is the worst case of the submission before blending")
    if _close(value, -math.log(weight * smallest + (1 - weight))):
        return _hint(name, f"the uniform part gives each species (1 − {weight:g}) / {classes}, not "
                           f"(1 − {weight:g})")
    return _hint(name, "not quite: blend, find the smallest probability anywhere in it, and take "
                       "−ln of it")


# --- 07 · improve ----------------------------------------------------------------------------


def _vector(values) -> np.ndarray | None:
    """A 1-D float array of a list, array, tensor or Series; None when it is not one."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.ndim == 2 and 1 in array.shape:  # one row or one column of a table
        array = array.reshape(-1)
    return array if array.ndim == 1 else None


def check_geometric_blend(answer, member_probs):
    """Exercise 07·1: the geometric blend of one image's member probabilities, by hand.

    The geometric blend averages the members' log-probabilities, takes exp, and renormalises the
    row to sum to 1 (probabilities clipped at 1e-15 first, as the metric does).

    Args:
        answer: The learner's blended row (one probability per species).
        member_probs: (members, species) probabilities of one image.
    """
    name = "Exercise 1 · a geometric blend by hand"
    if answer is None:
        return _unanswered(name, "the blended probabilities of the image")
    members = np.asarray(member_probs, dtype=np.float64)
    row = _vector(answer)
    if row is None or row.shape != (members.shape[1],):
        return _hint(name, f"give one probability per species: {members.shape[1]} numbers")
    logs = np.log(np.clip(members, EPS, 1.0))
    mean_logs = logs.mean(axis=0)
    geometric = np.exp(mean_logs)
    right = geometric / geometric.sum()
    tolerance = 1e-4
    if _same(row, right, tolerance):
        arithmetic = members.mean(axis=0)
        top = int(np.argmax(right))
        return _correct(name, f"the geometric blend gives the top species {right[top]:.3f} "
                              f"against {arithmetic[top]:.3f} for the arithmetic mean: a class one "
                              "member finds unlikely is pulled down hard")
    if _same(row, members.mean(axis=0), tolerance):
        return _hint(name, "that is the arithmetic mean of the probabilities; the geometric blend "
                           "averages their logarithms")
    if _same(row, geometric, tolerance):
        return _hint(name, "close: now divide by the row's sum, so the probabilities add up to 1")
    if _same(row, mean_logs, tolerance):
        return _hint(name, "these are mean log-probabilities (all negative); take their exp, then "
                           "renormalise")
    product = np.exp(logs.sum(axis=0))
    if _same(row, product / product.sum(), tolerance):
        return _hint(name, "you multiplied the probabilities; the geometric mean takes the mean of "
                           "their logarithms (the M-th root of the product), not the sum")
    return _hint(name, "not quite: mean of the log-probabilities over the members, exp, then "
                       "divide by the row's sum")


def check_member_weights(answer, val_losses, power: float = 2.0, max_ratio: float | None = 1.2):
    """Exercise 07·2: the weights of the weighted geometric blend, by hand.

    Each member weighs (1 / validation log loss) ** power; members more than ``max_ratio`` times
    the best one's loss weigh 0; the weights are scaled to sum to 1.

    Args:
        answer: The learner's weights, one per member.
        val_losses: Each member's validation log loss (one fold's members).
    """
    from conserviz_utils.climb.ensemble import member_weights

    name = "Exercise 2 · the blend's weights"
    if answer is None:
        return _unanswered(name, "one weight per member")
    losses = np.asarray(val_losses, dtype=np.float64).reshape(-1)
    weights = _vector(answer)
    if weights is None or weights.shape != losses.shape:
        return _hint(name, f"give one weight per member: {losses.size} numbers")
    right = member_weights(losses, power=power, max_ratio=max_ratio)
    tolerance = 1e-4
    if _same(weights, right, tolerance):
        dropped = int((right == 0).sum())
        note = f"{dropped} member(s) dropped as too weak, " if dropped else "no member dropped, "
        return _correct(name, f"{note}the best member weighs {right.max():.3f}: squaring 1 / loss "
                              "favours the better heads without silencing the others")
    raw = (1.0 / losses) ** power
    if _same(weights, raw, tolerance * raw.max()) or _same(weights, np.where(right > 0, raw, 0.0), tolerance * raw.max()):
        return _hint(name, "the weights must add up to 1: divide each by their sum")
    kept_all = raw / raw.sum()
    if max_ratio is not None and not _same(kept_all, right, tolerance) and _same(weights, kept_all, tolerance):
        return _hint(name, f"drop the members whose loss is above {max_ratio:g} × the best "
                           "member's (weight 0) before scaling to 1")
    linear = 1.0 / losses
    linear = np.where(right > 0, linear, 0.0)
    if _same(weights, linear / linear.sum(), tolerance):
        return _hint(name, f"the weights are (1 / loss) to the power {power:g}, not 1 / loss")
    by_loss = np.where(right > 0, losses ** power, 0.0)
    if _same(weights, by_loss / by_loss.sum(), tolerance) or _same(weights, losses / losses.sum(), tolerance):
        return _hint(name, "the better member (lower loss) must weigh more: use 1 / loss")
    return _hint(name, f"not quite: (1 / loss) ** {power:g}, 0 for the dropped members, then "
                       "divide by the sum")
