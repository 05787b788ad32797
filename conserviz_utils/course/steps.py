"""The notebooks' shared steps: split, embed, train the head, fine-tune, keep the better stage, score.

Every notebook starts with its parameters cell and ``settings = CourseSettings.from_env(...)``
(:mod:`conserviz_utils.course.settings`) and finds what earlier notebooks wrote through
``settings.artifacts`` (:mod:`conserviz_utils.course.artifacts`). Training takes its hyperparameters from a
:class:`~conserviz_utils.course.recipe.Recipe`. When an artifact is missing — a learner opened notebook
05 first — the ``ensure_*`` helpers rebuild it with the default recipe, so each notebook runs
alone.

Every artifact written here gets a provenance sidecar (:mod:`conserviz_utils.course.provenance`): the
fingerprint of the data it was made from, the settings that matter and the artifacts it used.
An ``ensure_*`` step reuses an artifact only while its record matches what it would write now,
and otherwise rebuilds it, saying why in one line ("model.pt was made from other data (sample,
2,000 train + 500 test images); retraining"). So switching ``CONSERVIZ_DATA`` or
``CONSERVIZ_ARCH`` under one output folder, or editing a label, never mixes old and new.
Notebooks that write an artifact themselves use the ``save_course_*`` helpers, which write the
sidecar too.

The headless runner of ``make course`` is :mod:`conserviz_utils.tools.runner`; ``python -m
conserviz_utils.course.steps`` still starts it.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from conserviz_utils.errors import DataValidationError, ImageLoadError
from conserviz_utils.files.fileio import atomic_write_json
from conserviz_utils.course.recipe import Recipe
from conserviz_utils.course.settings import MIN_IMAGES_PER_SPECIES

if TYPE_CHECKING:
    from conserviz_utils.course.settings import CourseSettings

#: Share of the training sites notebook 02 keeps for evaluation.
EVAL_SHARE = 0.25

#: The recipe fields the ``CONSERVIZ_*`` settings decide (``Recipe.from_settings``). A checkpoint
#: is retrained when one of them changes; the other fields are the learner's choices in notebook
#: 04 (a learning rate, say), which a later notebook keeps rather than undoes.
SETTINGS_RECIPE_FIELDS = ("arch", "seed", "max_train_images", "head_epochs", "fine_tune_epochs", "batch_size")


def note(message: str, verbose: bool = True) -> None:
    """Say in one line what an ``ensure_*`` step does about a stale artifact (stdout, not a warning)."""
    if verbose:
        print(message)


def load_course_data(settings: CourseSettings, verbose: bool = True):
    """Find and load the data of this run: the real competition data, or the synthetic sample.

    Leftovers of killed runs in the output folder (partial caches, temporary files) are removed
    first, so they neither fill the disk nor pass for artifacts.
    """
    from conserviz_utils.data import load_competition, resolve_data_dir
    from conserviz_utils.course.embeddings import remove_stale_partials

    remove_stale_partials(settings.output_dir, recursive=True)
    root = settings.data_dir or resolve_data_dir(quick=settings.quick, verbose=verbose)
    return load_competition(root)


def split_fingerprint(split) -> str:
    """A short digest of a train/eval split (which ids on which side, in order)."""
    train_ids, eval_ids = split
    digest = hashlib.blake2b(digest_size=8)
    for side, ids in (("train", train_ids), ("eval", eval_ids)):
        digest.update(f"{side}\n".encode())
        digest.update("\n".join(map(str, ids)).encode())
    return digest.hexdigest()


def splits_provenance(data, seed: int, test_size: float = EVAL_SHARE) -> dict:
    """The provenance record of ``splits.csv``: the ids, sites and labels, and the split's seed and size."""
    from conserviz_utils.course.provenance import make_provenance

    return make_provenance(data=data, data_part="labels", settings={"seed": seed, "test_size": test_size})


def save_course_splits(data, settings: CourseSettings, split, test_size: float = EVAL_SHARE) -> Path:
    """Save notebook 02's split as ``splits.csv`` with its provenance sidecar; returns the path.

    Args:
        split: ``(train_ids, eval_ids)``, e.g. ``split_by_site(..., seed=settings.seed)``.
        test_size: The eval share it was drawn with.
    """
    from conserviz_utils.course.provenance import write_sidecar
    from conserviz_utils.split import save_splits

    path = save_splits(settings.artifacts.splits, *split)
    write_sidecar(path, splits_provenance(data, settings.seed, test_size))
    return path


def _edited_split(path: Path, data, expected: dict):
    """A split the learner edited after it was saved for this very data, or None.

    Raises:
        DataValidationError: the edited split does not list exactly the data's training ids;
            rebuilding would silently throw the edit away, so it is refused instead.
    """
    from conserviz_utils.course.provenance import file_digest, read_sidecar
    from conserviz_utils.split import load_splits

    record = read_sidecar(path)
    if record is None or record.get("format") != expected.get("format"):
        return None
    same_data = (record.get("data") or {}).get("fingerprint") == expected["data"]["fingerprint"]
    edited = record.get("artifact_digest") not in (None, file_digest(path))
    if not (same_data and edited and record.get("settings") == expected["settings"]):
        return None
    split = load_splits(path)  # a broken edit fails here, naming the file and the fix
    listed = split.train.append(split.eval)
    wanted = data.train_features.index
    missing, unknown = wanted.difference(listed), listed.difference(wanted)
    if len(missing) or len(unknown):
        problem = (f"{len(missing)} training images are on neither side" if len(missing)
                   else f"{len(unknown)} ids are not training images of this data")
        raise DataValidationError(
            f"{path.name} was edited after it was saved, and now {problem}",
            path=path,
            column="id",
            rows=list(missing if len(missing) else unknown),
            fix=f"correct the edit so that every training id is on one side, or delete {path.name} "
            "and rerun notebook 02 to draw the site split again",
        )
    return split


def ensure_splits(data, settings: CourseSettings, verbose: bool = True):
    """The site-grouped split notebook 02 saved; drawn again (and saved) when missing or made for other data.

    The split is reused while its provenance record matches this data (the training CSVs'
    content), the seed and the eval share. A split edited by hand after it was saved for this
    data is kept (and recorded as it is now); a split for other data — even data that shares
    its ids — is drawn again, saying so in one line.

    Returns:
        A ``Split`` (``split.train``, ``split.eval``: id indexes).

    Raises:
        DataValidationError: an edited split no longer lists exactly this data's training ids.
    """
    from conserviz_utils.course.provenance import check_matches, write_sidecar
    from conserviz_utils.split import load_splits, split_by_site

    path = settings.artifacts.splits
    expected = splits_provenance(data, settings.seed)
    ok, reason = check_matches(path, expected)
    if ok:
        return load_splits(path)
    if path.is_file():
        edited = _edited_split(path, data, expected)
        if edited is not None:
            note(f"{path.name} was edited after notebook 02 saved it; using the edited split", verbose)
            write_sidecar(path, expected)
            return edited
        note(f"{reason}; drawing the site split again", verbose)
    split = split_by_site(data.train_features, data.train_labels, test_size=EVAL_SHARE, seed=settings.seed)
    save_course_splits(data, settings, split)
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


def embedding_transform(arch: str):
    """The transform the course embeds (and predicts) images with: the architecture's evaluation transform."""
    from conserviz_utils.data import default_transform
    from conserviz_utils.models import model_info

    info = model_info(arch)
    return default_transform(info.input_size, info.mean, info.std)


def embed_images(model, features, settings: CourseSettings, progress: bool = True):
    """Freeze ``model``'s backbone and embed ``features``' images once, cached under outputs/."""
    from conserviz_utils.course.embeddings import compute_embeddings
    from conserviz_utils.models import freeze_backbone

    freeze_backbone(model)
    return compute_embeddings(
        model,
        features,
        transform=embedding_transform(model.arch),
        cache_dir=settings.artifacts.features,
        batch_size=2 * settings.batch_size,
        progress=progress,
    )


def _fit_head(head, embeddings, data, train_ids, recipe: Recipe, by_site: bool, progress: bool):
    """Train ``head`` on the recipe's training images, early-stopping on held-out training sites."""
    import torch

    from conserviz_utils.course.features import fit_head

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
    it as the run's checkpoint with the recipe and the provenance record beside it
    (:func:`save_course_checkpoint`).

    Args:
        pretrained: Start from ImageNet weights (False: random weights, for fast tests).
        recipe: The hyperparameters; default ``Recipe.from_settings(settings)``.

    Returns:
        (model, {"head": head history, "fine_tune": fine-tune history or None, "choice": StageChoice}).
    """
    import copy

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
    save_course_checkpoint(model, choice, data, splits, settings, recipe, pretrained=pretrained)
    return model, {"head": head_history, "fine_tune": tuned_history, "choice": choice}


def checkpoint_provenance(data, splits, recipe: Recipe, pretrained: bool = True, *, extra: dict | None = None) -> dict:
    """The provenance record of ``model.pt``: the training data, the split, the settings' recipe fields.

    Compared: the fingerprint of the training CSVs and images (an edited label or a replaced
    image retrains), the split (:func:`split_fingerprint`), the recipe fields the settings
    decide (:data:`SETTINGS_RECIPE_FIELDS`, e.g. the architecture) and ``pretrained``. The whole
    recipe and the kept stage go in ``extra``: recorded, not compared.
    """
    from conserviz_utils.course.provenance import make_provenance

    compared = {name: getattr(recipe, name) for name in SETTINGS_RECIPE_FIELDS}
    compared.update(pretrained=bool(pretrained), split=split_fingerprint(splits))
    return make_provenance(data=data, data_part="train", settings=compared, extra=extra)


def save_course_checkpoint(
    model,
    choice: StageChoice,
    data,
    splits,
    settings: CourseSettings,
    recipe: Recipe,
    *,
    pretrained: bool = True,
) -> Path:
    """Save the kept model as the run's ``model.pt``, its ``recipe.json``, and the provenance record.

    What notebook 04 saves and 05 and 06 read: the checkpoint's ``extra`` holds the recipe and
    the kept stage (which tells 05 and 06 whether cached embeddings still apply), its metrics
    the eval log loss the stage was chosen by.

    Returns:
        The checkpoint's path.
    """
    from conserviz_utils.runtime.checkpoint import save_checkpoint
    from conserviz_utils.course.provenance import write_sidecar

    artifacts = settings.artifacts
    path = save_checkpoint(
        artifacts.checkpoint,
        model,
        metrics={"eval_log_loss": choice.log_loss},
        extra={"recipe": recipe.to_dict(), "stage": choice.stage, "pretrained": bool(pretrained)},
    )
    recipe.save(artifacts.recipe)
    record = checkpoint_provenance(
        data, splits, recipe, pretrained, extra={"recipe": recipe.to_dict(), "stage": choice.stage}
    )
    write_sidecar(path, record)
    return path


def _checkpoint_is_current(path: Path, expected: dict, recipe: Recipe | None) -> tuple[bool, str]:
    """Whether ``model.pt`` matches ``expected`` (and, for an explicit recipe, was trained with all of it)."""
    from conserviz_utils.course.provenance import check_matches, read_sidecar

    ok, reason = check_matches(path, expected)
    if ok and recipe is not None:
        saved = ((read_sidecar(path) or {}).get("extra") or {}).get("recipe")
        if saved != recipe.to_dict():
            changed = sorted(k for k, v in recipe.to_dict().items() if (saved or {}).get(k) != v)
            return False, f"{path.name} was trained with another recipe ({', '.join(changed)} differ)"
    return ok, reason


def ensure_checkpoint(
    data,
    splits,
    settings: CourseSettings,
    recipe: Recipe | None = None,
    *,
    pretrained: bool = True,
    verbose: bool = True,
) -> Path:
    """The checkpoint notebook 04 saved; trained with the default recipe when missing or made from other inputs.

    ``model.pt`` is reused while its provenance record matches (:func:`checkpoint_provenance`):
    this data, this split, the recipe fields the settings decide. Otherwise it is trained again,
    saying why in one line. A model that notebook 04 trained with a changed learning rate (or
    any other field the settings do not decide) is kept; pass ``recipe`` to require all of it.

    Args:
        recipe: Train with (and require) this recipe; default ``Recipe.from_settings(settings)``,
            of which only :data:`SETTINGS_RECIPE_FIELDS` are compared.
        pretrained: Start from ImageNet weights (False for fast tests).
        verbose: Print the one line that says why the model is (re)trained.
    """
    path = settings.artifacts.checkpoint
    compared_recipe = Recipe.from_settings(settings) if recipe is None else recipe
    expected = checkpoint_provenance(data, splits, compared_recipe, pretrained)
    ok, reason = _checkpoint_is_current(path, expected, recipe)
    if ok:
        return path
    if path.is_file():
        note(f"{reason}; retraining", verbose)
    else:
        note(f"{path.name} does not exist yet (notebook 04 not run here); training the default recipe", verbose)
    train_default_recipe(data, splits, settings, progress=False, pretrained=pretrained, recipe=recipe)
    return path


def prediction_loader(model, features, settings: CourseSettings):
    """A loader over ``features``' images in ``model``'s input format, without augmentation."""
    from conserviz_utils.data import ImagesDataset, make_loader

    dataset = ImagesDataset(features, transform=embedding_transform(model.arch))
    return make_loader(dataset, batch_size=2 * settings.batch_size)


def _species_of(checkpoint: dict | None, data) -> list[str]:
    """The species order of a checkpoint's logits (the data's when the checkpoint does not say)."""
    return list((checkpoint or {}).get("species") or data.species)


def _checkpoint_note(settings: CourseSettings, checkpoint: dict | None) -> dict:
    """What a predictions record says about the checkpoint it came from (informative only)."""
    checkpoint = checkpoint or {}
    return {
        "checkpoint": str(settings.artifacts.checkpoint),
        "checkpoint_saved_at": checkpoint.get("saved_at"),
        "stage": (checkpoint.get("extra") or {}).get("stage"),
    }


def eval_logits(model, checkpoint: dict | None, data, splits, settings: CourseSettings, *, progress: bool = True,
                verbose: bool = True):
    """The kept model's logits on the eval images, computed once.

    Read from ``outputs/predictions/eval_logits.csv`` while its record matches this model's
    weights, these images and this data. Otherwise computed: when the checkpoint kept the
    head-only stage, its backbone is the frozen one notebook 04 embedded every training image
    with, so the logits are the head over those cached embeddings (milliseconds); else the model
    runs over the eval images. Either way the result is written for the next run.

    Args:
        model: The model of the checkpoint (``load_checkpoint``'s first value).
        checkpoint: Its dictionary (``load_checkpoint``'s second value): the stage and species.
        splits: The split whose eval side is predicted.

    Returns:
        Float64 logits indexed by id, one column per species.
    """
    from conserviz_utils.course.predictions import (
        cached_logits,
        embed_and_predict,
        find_cached_embeddings,
        head_logits,
        uses_frozen_backbone,
    )
    from conserviz_utils.train import predict_logits

    eval_ids = splits[1]
    species = _species_of(checkpoint, data)
    features = data.train_features.loc[eval_ids]
    transform = embedding_transform(model.arch)

    def compute():
        if uses_frozen_backbone(checkpoint):
            found = find_cached_embeddings(model, data.train_features, eval_ids,
                                           cache_dir=settings.artifacts.features, transform=transform)
            if found is not None:
                return head_logits(model, found, species), "the head over cached embeddings"
            logits = embed_and_predict(model, features, species, cache_dir=settings.artifacts.features,
                                       transform=transform, batch_size=2 * settings.batch_size, progress=progress)
            return logits, "the head over newly cached embeddings"
        loader = prediction_loader(model, features, settings)
        return predict_logits(model, loader, species=species, progress=progress), "the model over the images"

    return cached_logits(settings.artifacts.eval_logits, model, data, "train", eval_ids, species, compute,
                         extra=_checkpoint_note(settings, checkpoint), say=print if verbose else None)


def test_logits(model, checkpoint: dict | None, data, settings: CourseSettings, *, progress: bool = True,
                verbose: bool = True):
    """The kept model's logits on the test images, computed once (see :func:`eval_logits`).

    Cached in ``outputs/predictions/test_logits.csv``; a head-only checkpoint embeds the test
    images once with its frozen backbone (cached under ``outputs/features``) and applies the head.
    """
    from conserviz_utils.course.predictions import (
        cached_logits,
        embed_and_predict,
        uses_frozen_backbone,
    )
    from conserviz_utils.train import predict_logits

    features = data.test_features
    species = _species_of(checkpoint, data)

    def predict_test_images():
        if uses_frozen_backbone(checkpoint):
            logits = embed_and_predict(model, features, species, cache_dir=settings.artifacts.features,
                                       transform=embedding_transform(model.arch),
                                       batch_size=2 * settings.batch_size, progress=progress)
            return logits, "the head over cached embeddings"
        loader = prediction_loader(model, features, settings)
        return predict_logits(model, loader, species=species, progress=progress), "the model over the images"

    def compute():
        try:
            return predict_test_images()
        except ImageLoadError as exc:
            # The generic fix offers to drop the image's CSV row; a submission needs every test row.
            raise ImageLoadError(
                f"a test image cannot be read: {exc.problem}", path=exc.path, rows=exc.rows,
                fix="extract it again from competition.zip (or rebuild the sample with `make sample`); every "
                "test image needs a row in the submission, so its row cannot be left out",
            ) from None

    return cached_logits(settings.artifacts.test_logits, model, data, "test", features.index, species, compute,
                         extra=_checkpoint_note(settings, checkpoint), say=print if verbose else None)


# Named for the test images, not a test: pytest must not collect it where a test module imports it.
test_logits.__test__ = False


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


def _evaluate(checkpoint_path: Path, data, splits, settings: CourseSettings, progress: bool) -> dict:
    """`headline_metrics` of the checkpoint at ``checkpoint_path``, reloaded from disk."""
    from conserviz_utils.runtime.checkpoint import load_checkpoint

    model, checkpoint = load_checkpoint(checkpoint_path)
    logits = eval_logits(model, checkpoint, data, splits, settings, progress=progress, verbose=False)
    return headline_metrics(logits, data, splits)


def evaluate_checkpoint(data, splits, settings: CourseSettings, progress: bool = True) -> dict:
    """Reload the saved checkpoint (never an in-memory model) and compute `headline_metrics`."""
    return _evaluate(ensure_checkpoint(data, splits, settings), data, splits, settings, progress)


def metrics_provenance(data, splits, checkpoint_path: Path) -> dict:
    """The provenance record of ``metrics.json``: the data, the split and the checkpoint it scored."""
    from conserviz_utils.course.provenance import make_provenance

    return make_provenance(data=data, data_part="train", settings={"split": split_fingerprint(splits)},
                           inputs={"model.pt": checkpoint_path})


def save_metrics(settings: CourseSettings, metrics: dict, *, data=None, splits=None) -> Path:
    """Write the headline figures for notebook 06 and ``make course``, atomically.

    With ``data`` and ``splits`` (what notebook 05 scored ``settings.artifacts.checkpoint`` on),
    the provenance record goes beside it, so notebook 06 reuses the figures (and their
    temperature) only while they belong to this checkpoint and this data.
    """
    if (data is None) != (splits is None):
        raise ValueError("pass data and splits together (what the metrics were computed on), or neither")
    path = atomic_write_json(settings.artifacts.metrics, metrics, what="metrics")
    if data is not None:
        from conserviz_utils.course.provenance import write_sidecar

        write_sidecar(path, metrics_provenance(data, splits, settings.artifacts.checkpoint))
    return path


def _read_metrics(path: Path) -> dict | None:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return metrics if isinstance(metrics, dict) and "temperature" in metrics else None


def ensure_metrics(data, splits, settings: CourseSettings, verbose: bool = True) -> dict:
    """The figures notebook 05 saved; computed again when missing, unreadable, or made from another checkpoint or data.

    The checkpoint is ensured first (:func:`ensure_checkpoint`), so the figures, and the
    temperature notebook 06 divides by, always belong to the model 06 predicts with.
    """
    from conserviz_utils.course.provenance import check_matches

    checkpoint = ensure_checkpoint(data, splits, settings, verbose=verbose)
    path = settings.artifacts.metrics
    ok, reason = check_matches(path, metrics_provenance(data, splits, checkpoint))
    if ok:
        metrics = _read_metrics(path)
        if metrics is not None:
            return metrics
        reason = f"{path.name} cannot be read"
    if path.exists():
        note(f"{reason}; computing it again", verbose)
    metrics = _evaluate(checkpoint, data, splits, settings, progress=False)
    save_metrics(settings, metrics, data=data, splits=splits)
    return metrics


def submission_provenance(data, settings: CourseSettings, temperature: float, checkpoint: dict | None = None) -> dict:
    """The provenance record of ``submission.csv``: the test data, the checkpoint and the temperature."""
    from conserviz_utils.course.provenance import (
        artifact_fingerprint,
        describe_data,
        make_provenance,
    )

    checkpoint_path = settings.artifacts.checkpoint
    inputs = {"model.pt": checkpoint_path} if checkpoint_path.is_file() else {}
    about = {
        "path": str(checkpoint_path),
        "digest": artifact_fingerprint(checkpoint_path) if checkpoint_path.is_file() else None,
        **{key: (checkpoint or {}).get(key) for key in ("arch", "saved_at")},
        "stage": ((checkpoint or {}).get("extra") or {}).get("stage"),
    }
    return make_provenance(
        data=data,
        data_part="test",
        settings={"temperature": float(temperature)},
        inputs=inputs,
        extra={"checkpoint": about, "temperature": float(temperature), "data": describe_data(data)},
    )


def save_submission(submission, data, settings: CourseSettings, *, temperature: float,
                    checkpoint: dict | None = None) -> Path:
    """Validate and write ``submission.csv``, with a sidecar naming the checkpoint, temperature and data.

    Args:
        submission: The frame ``make_submission`` built.
        temperature: The calibration temperature its probabilities were divided by.
        checkpoint: The checkpoint dictionary (``load_checkpoint``'s second value), for the
            architecture and stage the sidecar records.

    Returns:
        The path written (``settings.artifacts.submission``).
    """
    from conserviz_utils.course.provenance import write_sidecar
    from conserviz_utils.submission import write_submission

    path = write_submission(submission, settings.artifacts.submission, data.submission_format)
    write_sidecar(path, submission_provenance(data, settings, temperature, checkpoint))
    return path


if __name__ == "__main__":
    # ``python -m conserviz_utils.course.steps`` still runs the course: the runner has its own module now.
    from conserviz_utils.tools.runner import main

    sys.exit(main())
