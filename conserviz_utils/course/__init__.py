"""The course glue the notebooks import, in one place: ``from conserviz_utils.course import fine_tune``.

Each name lives in a module of this folder, by role:

* ``settings.py``: ``CourseSettings``, the notebook parameters over the ``CONSERVIZ_*`` variables;
* ``recipe.py``: ``Recipe``, every hyperparameter of the training;
* ``splits.py``: load this run's data, ensure notebook 02's site split;
* ``steps.py``: the two training stages (``train_head``, ``fine_tune``) and keeping the better one;
* ``results.py``: the saved model, figures and submission, and the ``ensure_*`` that rebuild them;
* ``predictions.py``: the model's logits on the eval and test images, computed once;
* ``checks.py``: the checks a notebook stops on (``require_better_than_baseline``, …).

A name is imported on first use, so ``import conserviz_utils.course.settings`` (the command
line's ``--help``) does not load torch.
"""

from __future__ import annotations

import importlib

#: Where each name of this facade is defined.
HOMES = {
    "CourseSettings": "conserviz_utils.course.settings",
    "Recipe": "conserviz_utils.course.recipe",
    "ensure_splits": "conserviz_utils.course.splits",
    "load_course_data": "conserviz_utils.course.splits",
    "save_course_splits": "conserviz_utils.course.splits",
    "best_epoch": "conserviz_utils.course.steps",
    "compare_splits": "conserviz_utils.course.steps",
    "embed_images": "conserviz_utils.course.steps",
    "fine_tune": "conserviz_utils.course.steps",
    "holdout_split": "conserviz_utils.course.steps",
    "keep_better_stage": "conserviz_utils.course.steps",
    "make_optimizer": "conserviz_utils.course.steps",
    "score_head": "conserviz_utils.course.steps",
    "train_head": "conserviz_utils.course.steps",
    "training_ids": "conserviz_utils.course.steps",
    "ensure_checkpoint": "conserviz_utils.course.results",
    "ensure_metrics": "conserviz_utils.course.results",
    "headline_metrics": "conserviz_utils.course.results",
    "save_course_checkpoint": "conserviz_utils.course.results",
    "save_metrics": "conserviz_utils.course.results",
    "save_submission": "conserviz_utils.course.results",
    "eval_logits": "conserviz_utils.course.predictions",
    "prediction_loader": "conserviz_utils.course.predictions",
    "test_logits": "conserviz_utils.course.predictions",
    "require": "conserviz_utils.course.checks",
    "require_better_than_baseline": "conserviz_utils.course.checks",
    "require_sites_apart": "conserviz_utils.course.checks",
    "warn_if_sites_shared": "conserviz_utils.course.checks",
    # Reading back what notebook 04 saved, and notebook 01's look at the image files.
    "load_checkpoint": "conserviz_utils.runtime.checkpoint",
    "describe_images": "conserviz_utils.files.images",
}

__all__ = sorted(HOMES)


def __getattr__(name: str):
    """Import ``name`` from its module on first use (module attributes, PEP 562)."""
    home = HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
