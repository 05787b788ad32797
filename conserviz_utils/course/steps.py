"""The two training stages the notebooks, ``make course``, the ``conserviz`` command and torchrun share.

Stage 1 (:func:`train_head`) trains the model's head on cached embeddings of the training sites,
early-stopping on a held-out slice of them. Stage 2 (:func:`fine_tune`) unfreezes the whole network
and trains it with ``fit`` (``conserviz_utils/train.py``). Both take their numbers from a
:class:`~conserviz_utils.course.recipe.Recipe`, and both build their optimizer with
:func:`make_optimizer`, so a recipe's optimizer, rates and patience hold in notebook 04, in
``make course`` (which runs it), in ``conserviz train`` and under torchrun alike.
:func:`keep_better_stage` then keeps whichever stage scored better on the eval images.

``python -m conserviz_utils.course.steps`` still starts the headless runner of ``make course``
(:mod:`conserviz_utils.tools.runner`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from conserviz_utils.errors import DataValidationError
from conserviz_utils.course.recipe import Recipe
from conserviz_utils.course.settings import MIN_IMAGES_PER_SPECIES

if TYPE_CHECKING:
    from conserviz_utils.course.settings import CourseSettings

__all__ = [
    "StageChoice",
    "best_epoch",
    "cache_images",
    "check_training_set",
    "compare_splits",
    "embed_images",
    "embedding_transform",
    "fine_tune",
    "holdout_split",
    "keep_better_stage",
    "keeps_sites_apart",
    "make_loaders",
    "make_optimizer",
    "score_head",
    "train_head",
    "training_ids",
]

#: What :func:`make_optimizer` builds for each stage.
STAGES = ("head", "fine_tune")


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


def make_optimizer(parameters, recipe: Recipe, stage: str = "fine_tune"):
    """The optimizer ``recipe`` names for ``stage``: the one place either stage gets its optimizer.

    Args:
        parameters: What to optimise, e.g. ``model.parameters()`` or ``model.head.parameters()``.
        recipe: Its rate and weight decay; for fine-tuning also its optimizer, "adamw" or "sgd"
            (momentum 0.9, the walkthrough's). The head always trains with AdamW.
        stage: "head" or "fine_tune".
    """
    import torch

    if stage == "head":
        return torch.optim.AdamW(parameters, lr=recipe.head_lr, weight_decay=recipe.head_weight_decay)
    if stage != "fine_tune":
        raise ValueError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    lr, weight_decay = recipe.fine_tune_lr, recipe.fine_tune_weight_decay
    if recipe.fine_tune_optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)  # Recipe allows only these two


def make_loaders(data, splits, recipe: Recipe, model, image_cache=None):
    """Training loader (augmented unless the recipe says not, shuffled) and evaluation loader.

    ``image_cache`` (e.g. ``settings.artifacts.images``) makes both read the pre-resized copies
    :func:`embed_images` decoded, instead of decoding every JPEG again each epoch. Notebook 04
    builds the same two loaders in a cell of its own, to show the learner the ``ImagesDataset``
    and ``make_loader`` calls; keep the two in step.
    """
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
        cache_dir=image_cache,
    )
    eval_set = ImagesDataset(
        data.train_features.loc[eval_ids],
        data.train_labels,
        transform=default_transform(info.input_size, info.mean, info.std),
        cache_dir=image_cache,
    )
    train_loader = make_loader(train_set, batch_size=recipe.batch_size, shuffle=True, seed=recipe.seed)
    return train_loader, make_loader(eval_set, batch_size=2 * recipe.batch_size)


def embedding_transform(arch: str):
    """The transform the course embeds (and predicts) images with: the architecture's evaluation transform."""
    from conserviz_utils.data import default_transform
    from conserviz_utils.models import model_info

    info = model_info(arch)
    return default_transform(info.input_size, info.mean, info.std)


def cache_images(features, arch: str, settings: CourseSettings, progress: bool = True):
    """Decode ``features``' images once, on every core, into the run's pre-resized image cache.

    Every later pass over them (embeddings, each fine-tuning epoch, evaluation, prediction) then
    reads the same pixels back without decoding a JPEG (``files.image_cache``). The cache keeps
    the model's input size: every transform of the course squashes the frame to it first (the
    augmentation crops the squashed frame), so nothing is lost. Returns the cache's report.
    """
    from conserviz_utils.files.image_cache import ImageCache
    from conserviz_utils.models import model_info

    from conserviz_utils.data import path_column

    cache = ImageCache(model_info(arch).input_size, root=settings.artifacts.images)
    return cache.build(features[path_column(features)], progress=progress)


def embed_images(model, features, settings: CourseSettings, progress: bool = True):
    """Freeze ``model``'s backbone and embed ``features``' images once, cached under outputs/.

    The images are decoded once into the image cache first (:func:`cache_images`), which the
    later passes over them read.
    """
    from conserviz_utils.course.embeddings import compute_embeddings
    from conserviz_utils.models import freeze_backbone

    freeze_backbone(model)
    cache_images(features, model.arch, settings, progress=progress)
    return compute_embeddings(
        model,
        features,
        transform=embedding_transform(model.arch),
        cache_dir=settings.artifacts.features,
        image_cache_dir=settings.artifacts.images,
        batch_size=2 * settings.batch_size,
        progress=progress,
    )


def train_head(head, embeddings, data, train_ids, recipe: Recipe, *, by_site: bool = True, progress: bool = True):
    """Stage 1, the fast path: train ``head`` on the cached embeddings of ``train_ids``, in place.

    The recipe caps and checks the training images (:func:`training_ids`); early stopping
    (``recipe.head_patience``) watches a held-out slice of them (:func:`holdout_split`), so the
    eval images stay unseen until :func:`score_head` scores the kept head on them. The optimizer is
    the recipe's (:func:`make_optimizer`), the loop ``fit_head`` (``conserviz_utils/course/features.py``).

    Args:
        head: The head to train, e.g. ``model.head``.
        train_ids: The training side of the split, e.g. ``split.train``.
        by_site: Hold out whole training sites (as the site split does); False: a stratified
            slice, for a split that ignores sites.

    Returns:
        The head's training history (one row per batch; "eval" rows per epoch are the held-out
        training images).
    """
    from conserviz_utils.course.features import fit_head

    train_ids = training_ids(train_ids, data.train_labels, recipe)
    fit_ids, watch_ids = holdout_split(data, train_ids, recipe, by_site)
    return fit_head(
        head,
        embeddings.select(fit_ids),
        data.train_labels.loc[fit_ids],
        embeddings.select(watch_ids),
        data.train_labels.loc[watch_ids],
        optimizer=make_optimizer(head.parameters(), recipe, stage="head"),
        epochs=recipe.head_epochs,
        batch_size=recipe.head_batch_size,
        early_stopping=recipe.head_patience,
        seed=recipe.seed,
        progress=progress,
    )


def score_head(head, embeddings, data, ids) -> dict:
    """Accuracy and log loss of ``head`` on the embeddings of ``ids`` (e.g. the eval images)."""
    from conserviz_utils.course.features import predict_from_embeddings
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
        by_site = keeps_sites_apart(data.train_features, split)
        train_head(head, embeddings, data, train_ids, recipe, by_site=by_site, progress=False)
        scores = score_head(head, embeddings, data, eval_ids)
        rows[name] = {"eval accuracy": scores["accuracy"], "eval log loss": scores["log_loss"]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("split")


def fine_tune(
    model,
    train_loader,
    eval_loader,
    recipe: Recipe,
    *,
    device="auto",
    resume_path: Path | None = None,
    resume: bool = False,
    progress: bool = True,
):
    """Stage 2: unfreeze the whole network and train it with ``fit`` at the recipe's low rate.

    The optimizer is the recipe's (:func:`make_optimizer`: AdamW, or SGD), its rate low so the
    pretrained features are adjusted rather than wrecked; early stopping
    (``recipe.fine_tune_patience``) on eval log loss keeps the best epoch. Stopped (Ctrl-C, the
    notebook's stop button, SIGTERM), it saves its state to ``resume_path`` at the next batch
    boundary; ``resume=True`` continues from there. The loop is ``fit`` in ``conserviz_utils/train.py``.

    Args:
        model: The model to train, or under torchrun the model wrapped by
            ``distributed.wrap_model`` (unfrozen before wrapping, since DistributedDataParallel
            syncs only the parameters that train when it is built).
        device: Where to train ("auto", "cpu", "cuda", or the device ``setup_distributed`` gave).

    Returns:
        ``fit``'s history.
    """
    from conserviz_utils.callbacks import EarlyStopping
    from conserviz_utils.models import unfreeze
    from conserviz_utils.runtime.distributed import unwrap_model
    from conserviz_utils.train import fit

    bare = unwrap_model(model)
    if bare is not model and not all(parameter.requires_grad for parameter in model.parameters()):
        raise ValueError("unfreeze(model) before wrapping it: DistributedDataParallel syncs only the "
                         "parameters that train when it is built")
    unfreeze(bare)
    stopper = EarlyStopping(patience=recipe.fine_tune_patience)
    history = fit(
        model,
        train_loader,
        eval_loader,
        epochs=recipe.fine_tune_epochs,
        optimizer=make_optimizer(model.parameters(), recipe),
        device=device,
        early_stopping=stopper,
        checkpoint_path=resume_path,
        resume_from=resume_path if resume and resume_path and Path(resume_path).is_file() else None,
        seed=recipe.seed,
        progress=progress,
    )
    if stopper.best_logits is not None and not history.attrs.get("interrupted"):
        # The restored best epoch's eval logits, as plain lists (history.attrs stays comparable and
        # JSON-friendly): keep_better_stage hands them on, so notebook 05 does not predict them again.
        logits = stopper.best_logits
        history.attrs["eval_logits"] = {"ids": [str(i) for i in logits.index], "columns": [str(c) for c in logits.columns],
                                        "values": logits.to_numpy(dtype=float).tolist(),
                                        "precision": history.attrs.get("precision")}
    return history


@dataclass(frozen=True)
class StageChoice:
    """Which stage of the default recipe was kept, and the eval log losses it was chosen by."""

    stage: str  # "head-only" or "fine-tuned"
    head_log_loss: float
    fine_tuned_log_loss: float | None  # None: no fine-tuning ran (CONSERVIZ_EPOCHS=0)
    # The kept fine-tuned model's eval logits, as fine_tune recorded them (history.attrs["eval_logits"]).
    eval_logits: dict | None = field(default=None, repr=False, compare=False)

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
        return StageChoice("head-only", float(head_log_loss), tuned)
    return StageChoice("fine-tuned", float(head_log_loss), tuned, fine_tune_history.attrs.get("eval_logits"))


if __name__ == "__main__":
    # ``python -m conserviz_utils.course.steps`` still runs the course: the runner has its own module now.
    from conserviz_utils.tools.runner import main

    sys.exit(main())
