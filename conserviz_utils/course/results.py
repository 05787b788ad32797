"""What notebooks 04-06 save — the model, its figures, the submission — and the ``ensure_*`` that rebuild them.

Every artifact written here gets a provenance sidecar (:mod:`conserviz_utils.course.provenance`): the
fingerprint of the data it was made from, the settings that matter and the artifacts it used.
An ``ensure_*`` step reuses an artifact only while its record matches what it would write now,
and otherwise rebuilds it, saying why in one line ("model.pt was made from other data (sample,
2,000 train + 500 test images); retraining"). So a learner can open notebook 05 first, and
switching ``CONSERVIZ_DATA`` or ``CONSERVIZ_ARCH`` under one output folder, or editing a label,
never mixes old and new. A missing model is trained with the default recipe
(:func:`train_default_recipe`: the two stages of :mod:`conserviz_utils.course.steps`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from conserviz_utils.course.recipe import Recipe
from conserviz_utils.course.splits import note, split_fingerprint
from conserviz_utils.course.steps import (
    StageChoice,
    embed_images,
    fine_tune,
    keep_better_stage,
    make_loaders,
    score_head,
    train_head,
)
from conserviz_utils.files.fileio import atomic_write_json

if TYPE_CHECKING:
    from conserviz_utils.course.settings import CourseSettings

__all__ = [
    "SETTINGS_RECIPE_FIELDS",
    "checkpoint_provenance",
    "ensure_checkpoint",
    "ensure_metrics",
    "headline_metrics",
    "metrics_provenance",
    "save_course_checkpoint",
    "save_metrics",
    "save_submission",
    "submission_provenance",
    "train_default_recipe",
]

#: The recipe fields the ``CONSERVIZ_*`` settings decide (``Recipe.from_settings``). A checkpoint
#: is retrained when one of them changes; the other fields are the learner's choices in notebook
#: 04 (a learning rate, say), which a later notebook keeps rather than undoes.
SETTINGS_RECIPE_FIELDS = ("arch", "seed", "max_train_images", "head_epochs", "fine_tune_epochs", "batch_size")


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
    model = build_model(recipe.arch, pretrained=pretrained, seed=recipe.seed, progress=progress)
    embeddings = embed_images(model, data.train_features, settings, progress=progress)
    head_history = train_head(model.head, embeddings, data, splits[0], recipe, progress=progress)
    head_scores = score_head(model.head, embeddings, data, splits[1])
    head_state = copy.deepcopy(model.state_dict())
    tuned_history = None
    if recipe.fine_tune_epochs > 0:
        train_loader, eval_loader = make_loaders(data, splits, recipe, model, image_cache=settings.artifacts.images)
        tuned_history = fine_tune(model, train_loader, eval_loader, recipe, resume_path=settings.artifacts.resume,
                                  progress=progress)
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
    if choice.eval_logits is not None:
        keep_eval_logits(model, choice.eval_logits, data, splits, settings)
    return path


def keep_eval_logits(model, recorded: dict, data, splits, settings: CourseSettings) -> Path | None:
    """Write the eval logits ``fit`` computed at the kept epoch where notebook 05 reads them.

    ``fine_tune`` recorded them when early stopping restored that epoch's weights, so they are
    ``model``'s own logits: written with the same provenance ``eval_logits`` checks (these
    weights, these images, this data), they spare 05 a pass over the eval images. Nothing is
    written when they do not cover exactly the eval images (an unreadable image was skipped).
    """
    import numpy as np
    import pandas as pd

    from conserviz_utils.course.predictions import logits_provenance, write_logits

    eval_ids = pd.Index(splits[1], name="id")
    logits = pd.DataFrame(np.asarray(recorded["values"], dtype=np.float64), columns=recorded["columns"],
                          index=pd.Index(recorded["ids"], name="id"))
    wanted = [str(i) for i in eval_ids]
    if logits.index.has_duplicates or sorted(logits.index) != sorted(wanted) or list(logits.columns) != list(data.species):
        return None
    logits = logits.loc[wanted]
    logits.index = eval_ids
    how = f"fit's evaluation at the kept epoch, in {recorded.get('precision') or 'fp32'}"
    record = logits_provenance(model, data, "train", eval_ids, list(data.species),
                               extra={"how": how, "checkpoint": str(settings.artifacts.checkpoint)})
    return write_logits(settings.artifacts.eval_logits, logits, record)


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
    """`headline_metrics` of the checkpoint at ``checkpoint_path``, reloaded from disk (never an in-memory model)."""
    from conserviz_utils.course.predictions import eval_logits
    from conserviz_utils.runtime.checkpoint import load_checkpoint

    model, checkpoint = load_checkpoint(checkpoint_path)
    logits = eval_logits(model, checkpoint, data, splits, settings, progress=progress, verbose=False)
    return headline_metrics(logits, data, splits)


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
