"""The default recipe's hyperparameters in one typed, validated, serialisable object.

A :class:`Recipe` holds every number the course's training uses: the head on cached embeddings
(AdamW's learning rate and weight decay, batch, epochs, early-stopping patience and the share of
training sites it watches) and the fine-tuning that follows (optimizer, learning rate, weight
decay, epochs, patience, augmentation, batch). Notebook 04 passes its fields to the training
calls in plain sight; the checkpoint gets a ``recipe.json`` beside it, so a model always says how
it was made. A recipe is built from the run's settings (``Recipe.from_settings``), changed with
``recipe.replace(head_lr=3e-3)``, or read from a TOML file (``Recipe.from_toml("recipe.toml")``)
that ``Recipe().to_toml()`` writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from conserviz_utils.errors import ConservizError
from conserviz_utils.files.fileio import atomic_write_json, atomic_write_text

__all__ = ["MAX_BATCH_SIZE", "MAX_EPOCHS", "MAX_IMAGES", "MAX_SEED", "OPTIMIZERS", "Recipe", "RecipeError"]

#: Optimizers the fine-tuning stage can use (``course.steps.make_optimizer`` builds them).
OPTIMIZERS = ("adamw", "sgd")

#: Largest seed: numpy and torch's generators take 32 bits of it.
MAX_SEED = 2**32 - 1
#: Largest batch (images or embeddings per step); far beyond any GPU's memory for images.
MAX_BATCH_SIZE = 65_536
#: Largest number of epochs or of patience epochs.
MAX_EPOCHS = 10_000
#: Largest training-image cap: beyond any dataset this course meets.
MAX_IMAGES = 100_000_000


class RecipeError(ConservizError, ValueError):
    """A recipe field (or a recipe file) holds a value training cannot use.

    Attributes:
        field: The name of the offending field, when one is to blame.
        example: A value that works for that field.
    """

    def __init__(self, problem: str, *, field: str | None = None, example: Any = None, **where: Any) -> None:
        super().__init__(problem, **where)
        self.field = field
        self.example = example


def _help(default: Any, text: str) -> Any:
    """A dataclass field with its default and a one-line explanation (``to_toml``'s comment)."""
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class Recipe:
    """Every hyperparameter of the course's default recipe (head first, then fine-tuning).

    Frozen, so that a recipe saved beside a checkpoint is the one that trained it; make a
    changed copy with :meth:`replace`. Invalid values raise :class:`RecipeError` naming the field.
    """

    arch: str = _help("efficientnet_lite0", "backbone architecture (conserviz_utils.models.ARCHITECTURES)")
    seed: int = _help(0, "seeds the training subset, the early-stopping holdout, shuffling and dropout")
    max_train_images: int | None = _help(None, "train on a seeded subset of this many images (unset: all)")
    # Stage 1: the head on cached embeddings (AdamW).
    head_lr: float = _help(1e-3, "AdamW learning rate of the head on cached embeddings")
    # 1.0, not 1e-4 (benchmarks/head_recipe.py, issue 11): at 16,488 images the head's accuracy and
    # calibrated log loss on the eval sites keep improving for ~10 epochs while its raw log loss is
    # best at epoch 2 — the head grows over-confident on unseen sites. AdamW's decoupled decay
    # (lr x wd = 0.1 % per step) reins the logits in, harder where an epoch has more steps: kept-head
    # eval log loss 1.635 → 1.622 (accuracy 0.418 → 0.459) at full size, 1.515 → 1.514 on the
    # 2,000-image sample, and there no longer 1.730 when bf16 embeddings move early stopping (1.521).
    head_weight_decay: float = _help(1.0, "AdamW weight decay of the head (decoupled: lr x this per step)")
    head_batch_size: int = _help(64, "embeddings per step; small batches give a small sample many steps")
    head_epochs: int = _help(30, "most epochs of the head (early stopping usually ends sooner)")
    head_patience: int = _help(3, "stop after this many epochs without a better held-out log loss")
    head_holdout: float = _help(0.15, "share of training sites early stopping watches (never eval images)")
    # Stage 2: fine-tuning the whole network.
    fine_tune_optimizer: str = _help("adamw", f"optimizer of fine-tuning: {' or '.join(OPTIMIZERS)}")
    fine_tune_lr: float = _help(1e-4, "learning rate of fine-tuning: low, so pretrained features adjust")
    fine_tune_weight_decay: float = _help(1e-4, "weight decay of fine-tuning")
    fine_tune_epochs: int = _help(1, "epochs of fine-tuning after the head; 0 = head only")
    fine_tune_patience: int = _help(1, "stop after this many epochs without a better eval log loss")
    augment: bool = _help(True, "augment training images while fine-tuning (crop, flip, colour jitter)")
    batch_size: int = _help(32, "images per step of fine-tuning")

    def __post_init__(self) -> None:
        self._check_text("arch", _known_architectures(), example="efficientnet_lite0")
        self._check_whole("seed", minimum=0, maximum=MAX_SEED, example=0)
        if self.max_train_images is not None:
            self._check_whole("max_train_images", minimum=1, maximum=MAX_IMAGES, example=240)
        self._check_rate("head_lr", example=1e-3)
        self._check_rate("head_weight_decay", example=1.0, zero_ok=True)
        self._check_whole("head_batch_size", minimum=1, maximum=MAX_BATCH_SIZE, example=64)
        self._check_whole("head_epochs", minimum=1, maximum=MAX_EPOCHS, example=30)
        self._check_whole("head_patience", minimum=1, maximum=MAX_EPOCHS, example=3)
        self._check_share("head_holdout", example=0.15)
        self._check_text("fine_tune_optimizer", OPTIMIZERS, example="adamw")
        self._check_rate("fine_tune_lr", example=1e-4)
        self._check_rate("fine_tune_weight_decay", example=1e-4, zero_ok=True)
        self._check_whole("fine_tune_epochs", minimum=0, maximum=MAX_EPOCHS, example=1)
        self._check_whole("fine_tune_patience", minimum=1, maximum=MAX_EPOCHS, example=1)
        if not isinstance(self.augment, bool):
            raise self._refuse("augment", "must be true or false", example="true")
        self._check_whole("batch_size", minimum=1, maximum=MAX_BATCH_SIZE, example=32)

    # --- validation -------------------------------------------------------------------------

    def _refuse(self, name: str, problem: str, example: Any) -> RecipeError:
        value = getattr(self, name)
        return RecipeError(
            f"recipe field {name}={value!r} {problem}", field=name, example=example,
            fix=f"set {name} to e.g. {example}",
        )

    def _check_whole(self, name: str, *, minimum: int, maximum: int, example: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._refuse(name, f"is not a whole number (allowed: {minimum} to {maximum:,})", example)
        if value < minimum:
            raise self._refuse(name, f"must be at least {minimum}", example)
        if value > maximum:
            raise self._refuse(name, f"must be at most {maximum:,}", example)

    def _check_rate(self, name: str, *, example: float, zero_ok: bool = False) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._refuse(name, "is not a finite number", example)
        if value < 0 or (value == 0 and not zero_ok):
            raise self._refuse(name, "must be at least 0" if zero_ok else "must be above 0", example)
        object.__setattr__(self, name, float(value))  # 0 from a TOML file reads as an int

    def _check_share(self, name: str, *, example: float) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise self._refuse(name, "must be a share between 0 and 1 (both excluded)", example)
        object.__setattr__(self, name, float(value))

    def _check_text(self, name: str, allowed, *, example: str) -> None:
        value = getattr(self, name)
        if not isinstance(value, str) or value not in allowed:
            raise self._refuse(name, f"is not one of: {', '.join(allowed)}", repr(example))

    # --- building and changing ---------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings) -> Recipe:
        """The default recipe with the run's settings applied (arch, epochs, batch, seed, cap)."""
        return cls(
            arch=settings.arch,
            seed=settings.seed,
            max_train_images=settings.max_train_images,
            head_epochs=settings.head_epochs,
            fine_tune_epochs=settings.epochs,
            batch_size=settings.batch_size,
        )

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` applied and validated, e.g. ``recipe.replace(head_lr=3e-3)``."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise _unknown_fields(unknown)
        return dataclasses.replace(self, **changes)

    # --- serialising -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, as plain JSON/TOML values."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Recipe:
        """The recipe of ``values`` (missing fields keep their defaults; unknown ones are refused)."""
        if not isinstance(values, Mapping):
            raise RecipeError(
                f"a recipe must be a table of fields, got {type(values).__name__}",
                fix="write it with Recipe.save or Recipe.to_toml",
            )
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise _unknown_fields(unknown)
        return cls(**values)

    def save(self, path: str | Path) -> Path:
        """Write the recipe as JSON (atomically), e.g. beside the checkpoint it trained."""
        return atomic_write_json(path, self.to_dict(), what="recipe")

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe written by :meth:`save`."""
        return _read_recipe(Path(path), json.loads, json.JSONDecodeError,
                            lambda err: f"not a readable recipe JSON ({err.msg}, line {err.lineno})",
                            fix="write it again with Recipe.save")

    def to_toml(self) -> str:
        """The recipe as a commented TOML file (unset fields are left out, as TOML has no null)."""
        lines = ["# conserviz training recipe: Recipe.from_toml(path) reads it back", ""]
        for f in fields(self):
            lines.append(f"# {f.metadata['help']}")
            value = getattr(self, f.name)
            lines.append(f"{f.name} = {_toml_value(value)}" if value is not None else f"# {f.name} = (unset)")
        return "\n".join(lines) + "\n"

    def save_toml(self, path: str | Path) -> Path:
        """Write :meth:`to_toml` to ``path`` atomically (a starting point for ``--config``)."""
        return atomic_write_text(path, self.to_toml(), what="recipe")

    @classmethod
    def from_toml(cls, path: str | Path) -> Recipe:
        """Read a recipe from a TOML file of ``field = value`` lines (e.g. a CLI's ``--config``)."""
        return _read_recipe(Path(path), tomllib.loads, tomllib.TOMLDecodeError,
                            lambda err: f"not a readable TOML file ({err})",
                            fix="write it as `field = value` lines; Recipe().to_toml() gives a template")

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{name}</code></td><td>{value}</td></tr>" for name, value in self.to_dict().items()
        )
        return f"<table><tr><th>recipe</th><th>value</th></tr>{rows}</table>"


def _known_architectures() -> tuple[str, ...]:
    """The architectures ``models.build_model`` knows (imports torch when first asked)."""
    from conserviz_utils.models import ARCHITECTURES

    return ARCHITECTURES


def _unknown_fields(unknown: list[str]) -> RecipeError:
    known = ", ".join(f.name for f in fields(Recipe))
    return RecipeError(
        f"unknown recipe field(s): {', '.join(unknown)}",
        field=unknown[0],
        fix=f"remove or rename them; the fields are: {known}",
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(
            "recipe file not found", path=path, fix="check the path, or write one with Recipe().save_toml(path)"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"cannot read this recipe file ({err})", path=path, fix="check the file") from None


def _read_recipe(path: Path, parse, parse_error: type[Exception], problem, *, fix: str) -> Recipe:
    """Read, parse and validate one recipe file; a file that does not parse names itself and the fix."""
    text = _read_text(path)
    try:
        values = parse(text)
    except parse_error as err:
        raise RecipeError(problem(err), path=path, fix=fix) from None
    return _with_path(path, values)


def _with_path(path: Path, values: Any) -> Recipe:
    """``Recipe.from_dict(values)``, with ``path`` named in any error."""
    try:
        return Recipe.from_dict(values)
    except RecipeError as err:
        raise RecipeError(err.problem, field=err.field, example=err.example, path=path, fix=err.fix) from None
    except TypeError as err:  # pragma: no cover - from_dict refuses unknown keys first
        raise RecipeError(str(err), path=path) from None


def _toml_value(value: Any) -> str:
    """A TOML literal for a bool, int, float or str."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a TOML basic string: same quoting and escapes for these values
