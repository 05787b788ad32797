"""Cross-validation on the fast path: heads trained on cached embeddings, one set per site-grouped fold.

Cross-validation grouped by site (`climb.folds.site_folds`) has every train image predicted once
by a head that never saw its site: the out-of-fold (OOF) predictions, whose log loss and spread
over the folds are the course's honest estimate of the leaderboard score. Each head stops early on
held-out *training* sites of its fold, never on the fold's eval images. :func:`random_folds` shows
how much a split that ignores sites flatters the score. With ``heads_per_fold > 1`` each fold's
heads are members to blend (:mod:`conserviz_utils.climb.ensemble`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn
from tqdm.auto import tqdm

from conserviz_utils import SPECIES
from conserviz_utils.course.embeddings import Embeddings
from conserviz_utils.climb.ensemble import FoldPredictions, out_of_fold_scores
from conserviz_utils.errors import DataValidationError
from conserviz_utils.course.features import fit_head, predict_from_embeddings
from conserviz_utils.labels import species_names
from conserviz_utils.metrics import accuracy
from conserviz_utils.course.recipe import Recipe
from conserviz_utils.climb.folds import site_folds
from conserviz_utils.split import split_by_site, split_stratified

__all__ = ["INNER_SPLITS", "CrossValidation", "FoldHead", "cross_validate", "random_folds"]

#: How a fold's training part is split for early stopping: whole sites, or random images.
INNER_SPLITS = ("site", "random")


def random_folds(labels, n_folds: int = 5, seed: int = 0) -> pd.Series:
    """Random stratified folds that ignore sites (the leaky comparison for `site_folds`): a Series ``fold`` by id."""
    species = species_names(labels, species=None)
    _check_n_folds(n_folds, len(species))
    with warnings.catch_warnings():  # a species with fewer images than folds is fine here
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        fold = np.zeros(len(species), dtype=np.int64)
        for k, (_, rows) in enumerate(splitter.split(np.zeros(len(species)), species.to_numpy())):
            fold[rows] = k
    return pd.Series(fold, index=pd.Index(species.index, name="id"), name="fold")


def _check_n_folds(n_folds: int, n_images: int) -> None:
    """Refuse a number of folds that is not a whole number from 2 to the number of images."""
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or not 2 <= n_folds <= n_images:
        raise DataValidationError(
            f"n_folds must be a whole number from 2 to the number of images ({n_images}), got {n_folds!r}",
            fix="pass e.g. n_folds=5",
        )


@dataclass(frozen=True)
class FoldHead:
    """A cross-validation's head: the ``fold`` it predicts, trained on ``fit_ids``, stopped on ``watch_ids``.

    ``val_log_loss`` is its log loss on ``watch_ids`` at ``best_epoch``, the epoch it kept.
    """

    fold: int
    member: int
    head: nn.Module
    fit_ids: pd.Index
    watch_ids: pd.Index
    val_log_loss: float
    best_epoch: int


@dataclass(frozen=True)
class CrossValidation:
    """The heads of a cross-validation, their folds and their out-of-fold scores.

    ``scores`` has one row per fold: images, sites, heads, their mean ``val_log_loss``, and the
    OOF ``log_loss`` and ``accuracy`` of its heads averaged; ``inner`` is "site" or "random".
    """

    folds: pd.Series
    heads: tuple[FoldHead, ...]
    species: tuple[str, ...]
    scores: pd.DataFrame
    inner: str

    @property
    def n_folds(self) -> int:
        """The number of folds."""
        return int(self.folds.max()) + 1

    @property
    def heads_per_fold(self) -> int:
        """Heads trained per fold."""
        return len(self.heads) // self.n_folds

    @property
    def log_loss(self) -> float:
        """The OOF log loss over every train image (the heads of a fold averaged)."""
        return float(self.scores.attrs["log_loss"])

    @property
    def fold_std(self) -> float:
        """The spread (standard deviation) of the per-fold OOF log losses."""
        return float(self.scores["log_loss"].std(ddof=1))

    def summary(self) -> dict:
        """The headline figures: OOF log loss, its per-fold mean and spread, accuracy."""
        return {
            "log_loss": self.log_loss,
            "fold_mean": float(self.scores["log_loss"].mean()),
            "fold_std": self.fold_std,
            "accuracy": float(self.scores.attrs["accuracy"]),
            "folds": self.n_folds,
            "heads_per_fold": self.heads_per_fold,
        }

    def predict(self, embeddings, test_embeddings=None, names: str = "head") -> FoldPredictions:
        """Every head's probabilities, out of fold for the train images and for the test images.

        Several views of the embeddings (a list or a dict name → Embeddings, as many for test as
        for train) average each head's probabilities over them (test-time augmentation).
        ``names`` prefixes the member names ("whole", "crops", ...).
        """
        views = _views(embeddings, "embeddings")
        ids = pd.Index(self.folds.index, name="id")
        fold_of = self.folds.to_numpy()
        m, c = self.heads_per_fold, len(self.species)
        oof = np.full((len(ids), m, c), np.nan)
        val_loss = np.empty((self.n_folds, m))
        test_views = None if test_embeddings is None else _views(test_embeddings, "test embeddings")
        if test_views is not None and len(test_views) != len(views):
            raise DataValidationError(
                f"{len(views)} views of the train images but {len(test_views)} of the test images",
                fix="embed the test images with the same views as the train images",
            )
        test_ids = None if test_views is None else pd.Index(test_views[0].ids, name="id")
        test = None if test_views is None else np.empty((len(test_ids), self.n_folds, m, c))
        for fold_head in self.heads:
            rows = np.flatnonzero(fold_of == fold_head.fold)
            oof[rows, fold_head.member] = _mean_over_views(fold_head.head, views, ids[rows], self.species)
            val_loss[fold_head.fold, fold_head.member] = fold_head.val_log_loss
            if test_views is not None:
                test[:, fold_head.fold, fold_head.member] = _mean_over_views(
                    fold_head.head, test_views, test_ids, self.species
                )
        return FoldPredictions(
            ids=ids,
            folds=fold_of,
            oof=oof,
            val_loss=val_loss,
            species=self.species,
            test_ids=test_ids,
            test=test,
            names=tuple(f"{names} {j}" for j in range(m)),
        )


def _views(embeddings, what: str) -> list[Embeddings]:
    """One or several Embeddings (a list, or a dict name → Embeddings) as a list."""
    if isinstance(embeddings, Embeddings):
        embeddings = [embeddings]
    views = list(embeddings.values() if isinstance(embeddings, Mapping) else embeddings)
    if not views or not all(isinstance(view, Embeddings) for view in views):
        raise DataValidationError(
            f"{what} must be Embeddings, or a list or dict of Embeddings (one per view)",
            fix="pass what compute_embeddings (or tta.embed_views) returned",
        )
    return views


def _mean_over_views(head: nn.Module, views: Sequence[Embeddings], ids: pd.Index, species) -> np.ndarray:
    """The head's probabilities for ``ids``, averaged over the views (rows in ``ids`` order)."""
    probs = [predict_from_embeddings(head, view.select(ids), list(species)).to_numpy() for view in views]
    return np.mean(probs, axis=0)


def _fresh_head(template: nn.Module, seed: int) -> nn.Module:
    """A copy of ``template`` with every layer re-initialised from ``seed`` (same seed, same head)."""
    head = copy.deepcopy(template)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in head.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    return head


def _inner_splits(features, labels: pd.Series, train_ids: pd.Index, inner: str, heads: int, recipe: Recipe):
    """(fit ids, watch ids) of each head of a fold: held-out parts of the fold's training images."""
    part = labels.loc[train_ids]
    with warnings.catch_warnings():
        # A species at one site of this fold's training part is expected now and then; the
        # outer folds already report the species that are local to a single site.
        warnings.simplefilter("ignore", UserWarning)
        if heads == 1:
            if inner == "site":
                return [split_by_site(features.loc[train_ids], part, test_size=recipe.head_holdout, seed=recipe.seed)]
            return [split_stratified(part, test_size=recipe.head_holdout, seed=recipe.seed)]
        if inner == "site":
            folds = site_folds(features.loc[train_ids], part, n_folds=heads, seed=recipe.seed)
        else:
            folds = random_folds(part, n_folds=heads, seed=recipe.seed)
    return [(train_ids[folds.to_numpy() != j], train_ids[folds.to_numpy() == j]) for j in range(heads)]


def cross_validate(
    head: nn.Module,
    embeddings: Embeddings,
    labels,
    folds: pd.Series,
    *,
    features: pd.DataFrame | None = None,
    recipe: Recipe | None = None,
    heads_per_fold: int = 1,
    inner: str = "site",
    species: Sequence[str] = SPECIES,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> CrossValidation:
    """Train copies of ``head`` fold by fold on cached embeddings and score them out of fold.

    Fold k's training part is the other folds' images. Each head trains on part of it and stops
    early (``recipe.head_patience``) on the rest: with one head per fold a ``recipe.head_holdout``
    share of the training sites (`split_by_site`), with more one site fold each (`site_folds`);
    ``inner="random"`` holds out random images instead. ``features`` (a ``site`` column) is needed
    by ``inner="site"``; ``recipe.max_train_images`` is not applied here.
    """
    recipe = Recipe() if recipe is None else recipe
    if inner not in INNER_SPLITS:
        raise ValueError(f"inner must be one of {INNER_SPLITS}, got {inner!r}")
    if isinstance(heads_per_fold, bool) or not isinstance(heads_per_fold, int) or heads_per_fold < 1:
        raise ValueError(f"heads_per_fold must be a positive whole number, got {heads_per_fold!r}")
    if inner == "site" and features is None:
        raise ValueError('inner="site" holds out whole training sites: pass features= with a site column')
    species = tuple(species)
    if not isinstance(folds, pd.Series) or folds.index.has_duplicates:
        raise DataValidationError(
            "folds must be a Series of fold numbers indexed by unique image ids",
            fix="make them with folds.site_folds or cv.random_folds",
        )
    fold_numbers = sorted(int(k) for k in folds.unique())
    if fold_numbers != list(range(len(fold_numbers))) or len(fold_numbers) < 2:
        raise DataValidationError(
            f"fold numbers must be 0, 1, … with at least 2 folds, got {fold_numbers}",
            fix="make the folds with folds.site_folds or cv.random_folds",
        )
    names = species_names(labels, list(species), what="train labels")
    missing = folds.index.difference(names.index)
    if len(missing):
        raise DataValidationError(
            "images of the folds without a label", rows=list(missing), fix="pass the labels of every train image"
        )
    names = names.loc[folds.index]
    ids = pd.Index(folds.index, name="id")
    jobs = [(fold, member) for fold in fold_numbers for member in range(heads_per_fold)]
    heads: list[FoldHead] = []
    bar = tqdm(total=len(jobs), desc="cv heads", unit="head", disable=not progress, leave=False)
    with bar:
        for fold in fold_numbers:
            train_ids = ids[folds.to_numpy() != fold]
            for member, (fit_ids, watch_ids) in enumerate(
                _inner_splits(features, names, train_ids, inner, heads_per_fold, recipe)
            ):
                fresh = _fresh_head(head, seed=recipe.seed * 10_000 + fold * 100 + member)
                history = fit_head(
                    fresh,
                    embeddings.select(fit_ids),
                    names.loc[fit_ids],
                    embeddings.select(watch_ids),
                    names.loc[watch_ids],
                    epochs=recipe.head_epochs,
                    lr=recipe.head_lr,
                    batch_size=recipe.head_batch_size,
                    weight_decay=recipe.head_weight_decay,
                    seed=recipe.seed + member,
                    species=species,
                    device=device,
                    early_stopping=recipe.head_patience,
                    progress=False,
                )
                heads.append(
                    FoldHead(
                        fold=fold,
                        member=member,
                        head=fresh,
                        fit_ids=pd.Index(fit_ids, name="id"),
                        watch_ids=pd.Index(watch_ids, name="id"),
                        val_log_loss=float(history.attrs["best_eval_log_loss"]),
                        best_epoch=int(history.attrs["best_epoch"]),
                    )
                )
                bar.update()
    result = CrossValidation(
        folds=folds.rename("fold"), heads=tuple(heads), species=species, scores=pd.DataFrame(), inner=inner
    )
    return _with_scores(result, embeddings, names, features)


def _with_scores(result: CrossValidation, embeddings, names: pd.Series, features) -> CrossValidation:
    """The result with its per-fold score table (OOF log loss of the fold's averaged heads)."""
    predictions = result.predict(embeddings)
    probs = predictions.oof_probs("arithmetic")
    overall = out_of_fold_scores(names, probs, predictions.folds)
    fold_of = predictions.folds
    rows = {}
    for fold in range(result.n_folds):
        in_fold = fold_of == fold
        fold_ids = predictions.ids[in_fold]
        rows[fold] = {
            "images": int(in_fold.sum()),
            "sites": int(features["site"].reindex(fold_ids).nunique()) if features is not None else math.nan,
            "heads": result.heads_per_fold,
            "val_log_loss": float(predictions.val_loss[fold].mean()),
            "log_loss": float(overall["per_fold"][fold]),
            "accuracy": accuracy(names.loc[fold_ids], probs.loc[fold_ids]),
        }
    scores = pd.DataFrame.from_dict(rows, orient="index").rename_axis("fold")
    scores.attrs.update(log_loss=overall["log_loss"], accuracy=overall["accuracy"])
    return CrossValidation(
        folds=result.folds, heads=result.heads, species=result.species, scores=scores, inner=result.inner
    )
