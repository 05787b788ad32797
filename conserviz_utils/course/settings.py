"""The knobs of a course run: notebook parameters and ``CONSERVIZ_*`` variables, checked where read.

Every notebook starts with a parameters cell of plain values (``epochs = None``, …; papermill's
``-p epochs 3`` replaces them) and then builds ``settings = CourseSettings.from_env(epochs=epochs,
…)``, so that ``make course``, CI, papermill and workshops can change a run without editing
notebooks. A parameter that is not None wins over its ``CONSERVIZ_*`` variable, which wins over the
default. Each value is range-checked where it is read: a bad one stops that cell with an error that
names the parameter or variable, its value and an example, instead of failing later deep inside
torch or pandas.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from conserviz_utils.course.artifacts import CourseArtifacts
from conserviz_utils.course.recipe import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_IMAGES, MAX_SEED
from conserviz_utils.errors import ConservizError

__all__ = [
    "DEFAULT_OUTPUT_DIR",
    "MIN_IMAGES_PER_SPECIES",
    "PROJECT_ROOT",
    "CourseSettings",
    "SettingsError",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT_DIR = PROJECT_ROOT / "outputs"

#: Fewer training images than this per species, on average, and a head has nothing to learn from.
MIN_IMAGES_PER_SPECIES = 8

_YES = {"1", "true", "yes", "on"}
_NO = {"", "0", "false", "no", "off"}


class SettingsError(ConservizError, ValueError):
    """A notebook parameter or ``CONSERVIZ_*`` variable holds a value the course cannot run with."""


def _lookup(env: Mapping[str, str], parameters: Mapping[str, object] | None, name: str) -> tuple[str | None, object]:
    """The text of setting ``name`` and where it came from: a parameter that is not None, else the variable.

    Returns:
        (text or None when unset, the parameter's own value, or None when it came from ``env``).
    """
    value = (parameters or {}).get(name.lower())
    if value is not None:
        return str(value), value
    return env.get(f"CONSERVIZ_{name}"), None


def _refuse(name: str, raw: str, problem: str, example: str, parameter: object = None) -> SettingsError:
    """The error for a bad setting: what is wrong, where it was set, and an example that works."""
    if parameter is not None:
        key = name.lower()
        return SettingsError(
            f"notebook parameter {key}={parameter!r} {problem}",
            fix=f"set it to e.g. {key} = {example} in the parameters cell (papermill: -p {key} {example}), "
            f"or to None for the default",
        )
    return SettingsError(
        f"environment variable CONSERVIZ_{name}={raw!r} {problem}",
        fix=f"set it to e.g. CONSERVIZ_{name}={example}, or unset it for the default",
    )


def read_flag(env: Mapping[str, str], name: str, parameters: Mapping[str, object] | None = None) -> bool:
    """Read a yes/no flag (1/true/yes/on or 0/false/no/off/empty): parameter, else ``CONSERVIZ_<name>``."""
    raw, parameter = _lookup(env, parameters, name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise _refuse(name, raw, "is not a yes/no flag (1, true, yes, on or 0, false, no, off)", "1", parameter)


def read_whole_number(
    env: Mapping[str, str],
    name: str,
    default: int | None,
    *,
    minimum: int,
    example: int,
    maximum: int | None = None,
    parameters: Mapping[str, object] | None = None,
) -> int | None:
    """Read a whole number from ``minimum`` to ``maximum``: parameter, else ``CONSERVIZ_<name>``, else ``default``."""
    raw, parameter = _lookup(env, parameters, name)
    if raw is None or raw.strip() == "":
        return default
    # A bool is an int to Python, but `epochs = True` is a slip, not one epoch.
    if isinstance(parameter, bool):
        raise _refuse(name, raw, "is not a whole number", str(example), parameter)
    try:
        value = int(raw.strip())
    except ValueError:
        raise _refuse(name, raw, "is not a whole number", str(example), parameter) from None
    if value < minimum:
        raise _refuse(name, raw, f"must be at least {minimum}", str(example), parameter)
    if maximum is not None and value > maximum:
        raise _refuse(name, raw, f"must be at most {maximum:,}", str(example), parameter)
    return value


def read_architecture(env: Mapping[str, str], default: str, parameters: Mapping[str, object] | None = None) -> str:
    """Read the architecture (parameter, else ``CONSERVIZ_ARCH``): one ``models.build_model`` knows."""
    raw, parameter = _lookup(env, parameters, "ARCH")
    if raw is None or raw.strip() == "":
        return default
    # Imports torch: only when an ARCH is given.
    from conserviz_utils.models import ARCHITECTURES

    value = raw.strip()
    if value not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise _refuse("ARCH", raw, f"is not a known architecture (one of: {known})", default, parameter)
    return value


def read_train_image_cap(
    env: Mapping[str, str], default: int | None, parameters: Mapping[str, object] | None = None
) -> int | None:
    """Read the training-image cap (``max_train_images``), refusing one too small to learn 8 species from."""
    from conserviz_utils import SPECIES

    cap = read_whole_number(env, "MAX_TRAIN_IMAGES", default, minimum=1, maximum=MAX_IMAGES, example=240,
                            parameters=parameters)
    smallest = MIN_IMAGES_PER_SPECIES * len(SPECIES)
    if cap is not None and cap < smallest:
        raw, parameter = _lookup(env, parameters, "MAX_TRAIN_IMAGES")
        raise _refuse(
            "MAX_TRAIN_IMAGES",
            raw,
            f"is too small to learn from: {len(SPECIES)} species need at least {smallest} training "
            f"images ({MIN_IMAGES_PER_SPECIES} per species on average)",
            "240",
            parameter,
        )
    return cap


@dataclass(frozen=True)
class CourseSettings:
    """The knobs of a course run, with defaults meant for a real run on a laptop CPU.

    Each field has an environment variable (``CONSERVIZ_<NAME>``); the hyperparameters among them
    seed the run's :class:`~conserviz_utils.course.recipe.Recipe` (``Recipe.from_settings``).
    """

    data_dir: Path | None = None  # CONSERVIZ_DATA: None → resolve_data_dir() picks
    quick: bool = False  # CONSERVIZ_QUICK: small sample, one short epoch (CI)
    output_dir: Path = DEFAULT_OUTPUT_DIR  # CONSERVIZ_OUTPUTS
    arch: str = "efficientnet_lite0"  # CONSERVIZ_ARCH: offline-pretrained, fast on a CPU
    epochs: int = 1  # CONSERVIZ_EPOCHS: fine-tuning epochs after the head; 0 = head only
    head_epochs: int = 30  # CONSERVIZ_HEAD_EPOCHS: epochs of the head on cached embeddings
    batch_size: int = 32  # CONSERVIZ_BATCH_SIZE: images per step of fine-tuning
    seed: int = 0  # CONSERVIZ_SEED
    max_train_images: int | None = None  # CONSERVIZ_MAX_TRAIN_IMAGES: cap for quick looks
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        quick: bool | None = None,
        data_dir: str | Path | None = None,
        output_dir: str | Path | None = None,
        arch: str | None = None,
        epochs: int | None = None,
        head_epochs: int | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        max_train_images: int | None = None,
    ) -> CourseSettings:
        """Build settings from the notebook's parameters and ``CONSERVIZ_*`` variables; quick mode shrinks the run.

        Each keyword is a notebook parameter: None (the parameters cell's default) falls back to
        its ``CONSERVIZ_<NAME>`` variable, then to the default, so ``make course`` (variables) and
        ``papermill … -p epochs 3`` (parameters) both change the run.

        Raises:
            SettingsError: a value is not a number or flag, is out of range, or names an unknown
                architecture; the message names the parameter or variable, its value and an example.
        """
        env = os.environ if environ is None else environ
        given = {
            "quick": quick, "data": data_dir, "outputs": output_dir, "arch": arch, "epochs": epochs,
            "head_epochs": head_epochs, "batch_size": batch_size, "seed": seed, "max_train_images": max_train_images,
        }
        quick = read_flag(env, "QUICK", given)
        data, _ = _lookup(env, given, "DATA")
        outputs, _ = _lookup(env, given, "OUTPUTS")
        data = (data or "").strip()
        return cls(
            data_dir=Path(data).expanduser() if data else None,
            quick=quick,
            output_dir=Path((outputs or "").strip() or DEFAULT_OUTPUT_DIR).expanduser(),
            arch=read_architecture(env, cls.arch, given),
            epochs=read_whole_number(env, "EPOCHS", 1 if quick else cls.epochs, minimum=0, maximum=MAX_EPOCHS,
                                     example=1, parameters=given),
            head_epochs=read_whole_number(env, "HEAD_EPOCHS", cls.head_epochs, minimum=1, maximum=MAX_EPOCHS,
                                          example=30, parameters=given),
            batch_size=read_whole_number(env, "BATCH_SIZE", cls.batch_size, minimum=1, maximum=MAX_BATCH_SIZE,
                                         example=32, parameters=given),
            seed=read_whole_number(env, "SEED", cls.seed, minimum=0, maximum=MAX_SEED, example=0, parameters=given),
            max_train_images=read_train_image_cap(env, 240 if quick else None, given),
        )

    @property
    def artifacts(self) -> CourseArtifacts:
        """Where this run's notebooks read and write their shared files."""
        return CourseArtifacts(self.output_dir)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{f.name}</code></td><td>{getattr(self, f.name)}</td></tr>"
            for f in fields(self)
            if f.repr
        )
        return f"<table><tr><th>setting</th><th>value</th></tr>{rows}</table>"
