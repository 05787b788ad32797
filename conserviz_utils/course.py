"""The notebooks' shared steps: split, embed, train the head, fine-tune, keep the better stage, score.

Every notebook starts with ``settings = CourseSettings.from_env()`` (:mod:`conserviz_utils.settings`)
and finds what earlier notebooks wrote through ``settings.artifacts``
(:mod:`conserviz_utils.artifacts`). Training takes its hyperparameters from a
:class:`~conserviz_utils.recipe.Recipe`. When an artifact is missing — a learner opened notebook
05 first — the ``ensure_*`` helpers rebuild it quietly with the default recipe, so each notebook
runs alone.

The headless runner of ``make course`` is :mod:`conserviz_utils.runner`; ``python -m
conserviz_utils.course`` still starts it.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from conserviz_utils.errors import DataValidationError
from conserviz_utils.fileio import atomic_write_json
from conserviz_utils.recipe import Recipe
from conserviz_utils.settings import MIN_IMAGES_PER_SPECIES

if TYPE_CHECKING:
    from conserviz_utils.settings import CourseSettings

#: Share of the training sites notebook 02 keeps for evaluation.
EVAL_SHARE = 0.25


def load_course_data(settings: CourseSettings, verbose: bool = True):
    """Find and load the data of this run: the real competition data, or the synthetic sample."""
    from conserviz_utils.data import load_competition, resolve_data_dir

    root = settings.data_dir or resolve_data_dir(quick=settings.quick, verbose=verbose)
    return load_competition(root)


def ensure_splits(data, settings: CourseSettings):
    """The site-grouped split notebook 02 saved, rebuilt (and saved) when missing or stale.

    Returns:
        A ``Split`` (``split.train``, ``split.eval``: id indexes).
    """
    from conserviz_utils.split import load_splits, save_splits, split_by_site

    path = settings.artifacts.splits
    if path.is_file():
        split = load_splits(path)
        # A split written for other data (the quick sample, say) must not be reused.
        if split.train.union(split.eval).sort_values().equals(data.train_features.index.sort_values()):
            return split
    split = split_by_site(data.train_features, data.train_labels, test_size=EVAL_SHARE, seed=settings.seed)
    save_splits(path, split.train, split.eval)
    return split


def check_training_set(labels, *, species=None) -> None:
    """Refuse a training set too small to learn from: a species missing, or under 8 images each.

    Args:
        labels: The labels of the training images (one-hot frame or species names).
        species: The classes the model predicts; default the competition's eight.

    Raises:
        DataValidationError: naming the missing species (or the count) and the fix.
    """
    from conserviz_utils import SPECIES
    from conserviz_utils.labels import species_names

    species = list(SPECIES if species is None else species)
    counts = species_names(labels, species).value_counts()
    fix = "train on more images: raise CONSERVIZ_MAX_TRAIN_IMAGES (or unset it), or use more data"
    missing = [name for name in species if counts.get(name, 0) == 0]
    if missing:
        raise DataValidationError(
            f"the {int(counts.sum())} training images have no image of {len(missing)} species, so "
            "the model could never predict them (and log loss punishes that hard)",
            column="species",
            rows=missing,
            fix=fix,
        )
    smallest = MIN_IMAGES_PER_SPECIES * len(species)
    if counts.sum() < smallest:
        raise DataValidationError(
            f"{int(counts.sum())} training images are too few to learn {len(species)} species from "
            f"(at least {smallest}: {MIN_IMAGES_PER_SPECIES} per species on average)",
            fix=fix,
        )


def training_ids(train_ids, labels, recipe: Recipe):
    """The training ids of this run, checked: all of them, or a seeded subset when capped.

    Raises:
        DataValidationError: the (capped) training set is too small to learn from.
    """
    cap = recipe.max_train_images
    if cap is not None and len(train_ids) > cap:
        train_ids = train_ids.to_series().sample(n=cap, random_state=recipe.seed).index.sort_values()
    check_training_set(labels.loc[train_ids])
    return train_ids


def holdout_split(data, train_ids, recipe: Recipe, by_site: bool = True):
    """Hold out a slice of the training images for early stopping, never the eval images.

    Early stopping picks the epoch with the best held-out log loss; picked on the eval images,
    the eval score would flatter the model. The slice is whole training sites (``by_site``), as
    the eval split is, or a stratified sample for a split that ignores sites.

    Returns:
        A ``Split``: ``.train`` to fit on, ``.eval`` to watch.
    """
    from conserviz_utils.split import split_by_site, split_stratified

    labels = data.train_labels.loc[train_ids]
    if by_site:
        features = data.train_features.loc[train_ids]
        return split_by_site(features, labels, test_size=recipe.head_holdout, seed=recipe.seed)
    return split_stratified(labels, test_size=recipe.head_holdout, seed=recipe.seed)


def make_optimizer(parameters, name: str, lr: float, weight_decay: float):
    """The optimizer a recipe names: "adamw" or "sgd" (momentum 0.9, the walkthrough's)."""
    import torch

    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: adamw, sgd")


def make_loaders(data, splits, recipe: Recipe, model):
    """Training loader (augmented unless the recipe says not, shuffled) and evaluation loader."""
    from conserviz_utils.data import (
        ImagesDataset,
        default_transform,
        make_loader,
        train_transform,
    )
    from conserviz_utils.models import model_info

    info = model_info(model.arch)
    train_ids, eval_ids = splits
    train_ids = training_ids(train_ids, data.train_labels, recipe)
    transform = train_transform if recipe.augment else default_transform
    train_set = ImagesDataset(
        data.train_features.loc[train_ids],
        data.train_labels,
        transform=transform(info.input_size, info.mean, info.std),
    )
    eval_set = ImagesDataset(
        data.train_features.loc[eval_ids],
        data.train_labels,
        transform=default_transform(info.input_size, info.mean, info.std),
    )
    train_loader = make_loader(train_set, batch_size=recipe.batch_size, shuffle=True, seed=recipe.seed)
    return train_loader, make_loader(eval_set, batch_size=2 * recipe.batch_size)


def embed_images(model, features, settings: CourseSettings, progress: bool = True):
    """Freeze ``model``'s backbone and embed ``features``' images once, cached under outputs/."""
    from conserviz_utils.data import default_transform
    from conserviz_utils.embeddings import compute_embeddings
    from conserviz_utils.models import freeze_backbone, model_info

    freeze_backbone(model)
    info = model_info(model.arch)
    return compute_embeddings(
        model,
        features,
        transform=default_transform(info.input_size, info.mean, info.std),
        cache_dir=settings.artifacts.features,
        batch_size=2 * settings.batch_size,
        progress=progress,
    )


def _fit_head(head, embeddings, data, train_ids, recipe: Recipe, by_site: bool, progress: bool):
    """Train ``head`` on the recipe's training images, early-stopping on held-out training sites."""
    import torch

    from conserviz_utils.features import fit_head

    train_ids = training_ids(train_ids, data.train_labels, recipe)
    fit_ids, watch_ids = holdout_split(data, train_ids, recipe, by_site)
    optimizer = torch.optim.AdamW(head.parameters(), lr=recipe.head_lr, weight_decay=recipe.head_weight_decay)
    return fit_head(
        head,
        embeddings.select(fit_ids),
        data.train_labels.loc[fit_ids],
        embeddings.select(watch_ids),
        data.train_labels.loc[watch_ids],
        optimizer=optimizer,
        epochs=recipe.head_epochs,
        batch_size=recipe.head_batch_size,
        early_stopping=recipe.head_patience,
        seed=recipe.seed,
        progress=progress,
    )


def train_head(model, embeddings, data, splits, recipe: Recipe, progress: bool = True):
    """Stage 1, the fast path: train ``model.head`` on cached embeddings of the training sites.

    Early stopping watches a held-out slice of the training sites (:func:`holdout_split`), so
    the eval images stay unseen until :func:`score_head` scores the kept head on them.

    Returns:
        The head's training history (one row per batch; "eval" rows per epoch are the held-out
        training sites).
    """
    return _fit_head(model.head, embeddings, data, splits[0], recipe, by_site=True, progress=progress)


def score_head(head, embeddings, data, ids) -> dict:
    """Accuracy and log loss of ``head`` on the embeddings of ``ids`` (e.g. the eval images)."""
    from conserviz_utils.features import predict_from_embeddings
    from conserviz_utils.metrics import accuracy, log_loss

    probs = predict_from_embeddings(head, embeddings.select(ids))
    labels = data.train_labels.loc[ids]
    return {"accuracy": accuracy(labels, probs), "log_loss": log_loss(labels, probs)}


def best_epoch(history):
    """The "eval" row of the epoch with the lowest log loss there (the epoch early stopping kept)."""
    evals = history.dropna(subset=["eval_log_loss"])
    return evals.loc[evals["eval_log_loss"].idxmin()]


def keeps_sites_apart(features, split) -> bool:
    """Whether no site has images on both sides of ``split``."""
    train_ids, eval_ids = split
    return set(features.loc[train_ids, "site"]).isdisjoint(features.loc[eval_ids, "site"])


def compare_splits(model, embeddings, data, splits_by_name, recipe: Recipe):
    """Train a fresh copy of ``model``'s head on each split and score it on that split's eval side.

    The same images, the same head, the same recipe: only the split differs, so any gap in the
    eval scores is what the split itself adds — for a random split, leakage between sites. Each
    head early-stops on a held-out slice of its split's training side, drawn the way that split
    was drawn (whole sites when it keeps sites apart), and never sees its eval images.

    Returns:
        One row per split: eval accuracy and eval log loss of the kept head.
    """
    import copy

    import pandas as pd
    import torch

    rows = {}
    for name, split in splits_by_name.items():
        train_ids, eval_ids = split
        head = copy.deepcopy(model.head)
        # The same seeded start for every split (and every run), leaving the caller's RNG as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            for layer in head.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        by_site = keeps_sites_apart(data.train_features, split)
        _fit_head(head, embeddings, data, train_ids, recipe, by_site=by_site, progress=False)
        scores = score_head(head, embeddings, data, eval_ids)
        rows[name] = {"eval accuracy": scores["accuracy"], "eval log loss": scores["log_loss"]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("split")


def fine_tune(
    model,
    train_loader,
    eval_loader,
    recipe: Recipe,
    *,
    resume_path: Path | None = None,
    resume: bool = False,
    progress: bool = True,
):
    """Stage 2: unfreeze the whole network and train it end to end at the recipe's low rate.

    The low rate keeps the pretrained features from being wrecked in the first batches; early
    stopping on eval log loss keeps the best epoch. Stopped (Ctrl-C, the notebook's stop button,
    SIGTERM), it saves its state to ``resume_path`` at the next batch boundary; ``resume=True``
    continues from there.
    """
    from conserviz_utils.models import unfreeze
    from conserviz_utils.train import fit

    unfreeze(model)
    optimizer = make_optimizer(
        model.parameters(), recipe.fine_tune_optimizer, recipe.fine_tune_lr, recipe.fine_tune_weight_decay
    )
    return fit(
        model,
        train_loader,
        eval_loader,
        epochs=recipe.fine_tune_epochs,
        optimizer=optimizer,
        early_stopping=recipe.fine_tune_patience,
        checkpoint_path=resume_path,
        resume_from=resume_path if resume and resume_path and Path(resume_path).is_file() else None,
        seed=recipe.seed,
        progress=progress,
    )


@dataclass(frozen=True)
class StageChoice:
    """Which stage of the default recipe was kept, and the eval log losses it was chosen by."""

    stage: str  # "head-only" or "fine-tuned"
    head_log_loss: float
    fine_tuned_log_loss: float | None  # None: no fine-tuning ran (CONSERVIZ_EPOCHS=0)

    @property
    def log_loss(self) -> float:
        """The eval log loss of the kept model."""
        return self.fine_tuned_log_loss if self.stage == "fine-tuned" else self.head_log_loss

    def __str__(self) -> str:
        tuned = "not run" if self.fine_tuned_log_loss is None else f"{self.fine_tuned_log_loss:.3f}"
        return (
            f"eval log loss: head only {self.head_log_loss:.3f}, fine-tuned {tuned} "
            f"→ keeping the {self.stage} model"
        )


def keep_better_stage(model, head_state, head_log_loss: float, fine_tune_history=None) -> StageChoice:
    """Keep whichever stage scored the lower eval log loss; restore the head-only weights if that.

    Args:
        model: The model after fine-tuning (or after the head alone); changed in place.
        head_state: ``model.state_dict()`` copied after stage 1, before fine-tuning.
        head_log_loss: The head's eval log loss (:func:`score_head`).
        fine_tune_history: What ``fit`` returned, or None when fine-tuning did not run.

    Returns:
        The :class:`StageChoice`; fine-tuning is kept only when strictly better.
    """
    tuned = None
    if fine_tune_history is not None and "eval_log_loss" in fine_tune_history:
        losses = fine_tune_history["eval_log_loss"].dropna()
        # Early stopping restored the weights of the best epoch: its loss is the model's.
        tuned = float(losses.min()) if len(losses) else None
    keep_tuned = tuned is not None and math.isfinite(tuned) and tuned < head_log_loss
    if not keep_tuned:
        model.load_state_dict(head_state)
    return StageChoice("fine-tuned" if keep_tuned else "head-only", float(head_log_loss), tuned)


def train_default_recipe(
    data,
    splits,
    settings: CourseSettings,
    progress: bool = True,
    pretrained: bool = True,
    recipe: Recipe | None = None,
):
    """The course's default recipe: head on cached embeddings, then (if asked) a short fine-tune.

    Keeps whichever stage scored the lower eval log loss (:func:`keep_better_stage`), and saves
    it as the run's checkpoint with the recipe beside it.

    Args:
        recipe: The hyperparameters; default ``Recipe.from_settings(settings)``.

    Returns:
        (model, {"head": head history, "fine_tune": fine-tune history or None, "choice": StageChoice}).
    """
    import copy

    from conserviz_utils.checkpoint import save_checkpoint
    from conserviz_utils.models import build_model

    recipe = Recipe.from_settings(settings) if recipe is None else recipe
    artifacts = settings.artifacts
    model = build_model(recipe.arch, pretrained=pretrained, seed=recipe.seed, progress=progress)
    embeddings = embed_images(model, data.train_features, settings, progress=progress)
    head_history = train_head(model, embeddings, data, splits, recipe, progress=progress)
    head_scores = score_head(model.head, embeddings, data, splits[1])
    head_state = copy.deepcopy(model.state_dict())
    tuned_history = None
    if recipe.fine_tune_epochs > 0:
        train_loader, eval_loader = make_loaders(data, splits, recipe, model)
        tuned_history = fine_tune(
            model, train_loader, eval_loader, recipe, resume_path=artifacts.resume, progress=progress
        )
    choice = keep_better_stage(model, head_state, head_scores["log_loss"], tuned_history)
    save_checkpoint(
        artifacts.checkpoint,
        model,
        metrics={"eval_log_loss": choice.log_loss},
        extra={"recipe": recipe.to_dict(), "stage": choice.stage},
    )
    recipe.save(artifacts.recipe)
    return model, {"head": head_history, "fine_tune": tuned_history, "choice": choice}


def ensure_checkpoint(data, splits, settings: CourseSettings, recipe: Recipe | None = None) -> Path:
    """The checkpoint notebook 04 saved; trained quietly with the default recipe when missing."""
    path = settings.artifacts.checkpoint
    if not path.is_file():
        train_default_recipe(data, splits, settings, progress=False, recipe=recipe)
    return path


def prediction_loader(model, features, settings: CourseSettings):
    """A loader over ``features``' images in ``model``'s input format, without augmentation."""
    from conserviz_utils.data import ImagesDataset, default_transform, make_loader
    from conserviz_utils.models import model_info

    info = model_info(model.arch)
    dataset = ImagesDataset(features, transform=default_transform(info.input_size, info.mean, info.std))
    return make_loader(dataset, batch_size=2 * settings.batch_size)


def headline_metrics(logits, data, splits) -> dict:
    """Accuracy and log loss of eval logits, before and after temperature scaling, with baselines.

    The temperature is fitted on these same eval images, so the calibrated log loss is slightly
    optimistic; the test set gets the temperature, not the optimism.
    """
    from conserviz_utils.metrics import (
        accuracy,
        apply_temperature,
        fit_temperature,
        log_loss,
        majority_baseline,
        uniform_baseline,
    )

    train_ids, _ = splits
    eval_labels = data.train_labels.loc[logits.index]
    probs = apply_temperature(logits, 1.0)
    temperature = fit_temperature(eval_labels, logits)
    majority = majority_baseline(data.train_labels.loc[train_ids], eval_labels)
    return {
        "data": "synthetic sample" if data.is_sample else "competition data",
        "eval_images": len(eval_labels),
        "accuracy": accuracy(eval_labels, probs),
        "log_loss": log_loss(eval_labels, probs),
        "temperature": temperature,
        "calibrated_log_loss": log_loss(eval_labels, apply_temperature(logits, temperature)),
        "majority_accuracy": majority["accuracy"],
        "majority_log_loss": majority["log_loss"],
        "uniform_log_loss": uniform_baseline(eval_labels)["log_loss"],
    }


def evaluate_checkpoint(data, splits, settings: CourseSettings, progress: bool = True) -> dict:
    """Reload the saved checkpoint (never an in-memory model) and compute `headline_metrics`."""
    from conserviz_utils.checkpoint import load_checkpoint
    from conserviz_utils.train import predict_logits

    model, _ = load_checkpoint(ensure_checkpoint(data, splits, settings))
    loader = prediction_loader(model, data.train_features.loc[splits[1]], settings)
    return headline_metrics(predict_logits(model, loader, progress=progress), data, splits)


def save_metrics(settings: CourseSettings, metrics: dict) -> Path:
    """Write the headline figures for notebook 06 and ``make course``, atomically."""
    return atomic_write_json(settings.artifacts.metrics, metrics, what="metrics")


def ensure_metrics(data, splits, settings: CourseSettings) -> dict:
    """The figures notebook 05 saved; recomputed quietly when missing, unreadable or older than the model."""
    path, checkpoint = settings.artifacts.metrics, settings.artifacts.checkpoint
    if path.is_file() and checkpoint.is_file() and path.stat().st_mtime >= checkpoint.stat().st_mtime:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass  # e.g. cut short by a full disk before writes were atomic: compute it again
    metrics = evaluate_checkpoint(data, splits, settings, progress=False)
    save_metrics(settings, metrics)
    return metrics


if __name__ == "__main__":
    # ``python -m conserviz_utils.course`` still runs the course: the runner has its own module now.
    from conserviz_utils.runner import main

    sys.exit(main())
