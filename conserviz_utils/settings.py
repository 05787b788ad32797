"""The knobs of a course run, read from ``CONSERVIZ_*`` environment variables and checked there.

Every notebook starts with ``settings = CourseSettings.from_env()`` (its parameters cell), so that
``make course``, CI and workshops can change a run without editing notebooks. Each value is
range-checked where it is read: a bad one stops the parameters cell with an error that names the
variable, its value and an example, instead of failing later deep inside torch or pandas.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from conserviz_utils.artifacts import CourseArtifacts
from conserviz_utils.errors import ConservizError

__all__ = [
    "DEFAULT_OUTPUT_DIR",
    "MIN_IMAGES_PER_SPECIES",
    "PROJECT_ROOT",
    "CourseSettings",
    "SettingsError",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_DIR = PROJECT_ROOT / "outputs"

#: Fewer training images than this per species, on average, and a head has nothing to learn from.
MIN_IMAGES_PER_SPECIES = 8

_YES = {"1", "true", "yes", "on"}
_NO = {"", "0", "false", "no", "off"}


class SettingsError(ConservizError, ValueError):
    """A ``CONSERVIZ_*`` environment variable holds a value the course cannot run with."""


def _refuse(name: str, raw: str, problem: str, example: str) -> SettingsError:
    """The error for ``CONSERVIZ_<name>=raw``: what is wrong, and an example that works."""
    return SettingsError(
        f"environment variable CONSERVIZ_{name}={raw!r} {problem}",
        fix=f"set it to e.g. CONSERVIZ_{name}={example}, or unset it for the default",
    )


def read_flag(env: Mapping[str, str], name: str) -> bool:
    """Read ``CONSERVIZ_<name>`` as a yes/no flag (1/true/yes/on or 0/false/no/off/empty)."""
    raw = env.get(f"CONSERVIZ_{name}")
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise _refuse(name, raw, "is not a yes/no flag (1, true, yes, on or 0, false, no, off)", "1")


def read_whole_number(
    env: Mapping[str, str], name: str, default: int | None, *, minimum: int, example: int
) -> int | None:
    """Read ``CONSERVIZ_<name>`` as a whole number of at least ``minimum``; unset → ``default``."""
    raw = env.get(f"CONSERVIZ_{name}")
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise _refuse(name, raw, "is not a whole number", str(example)) from None
    if value < minimum:
        raise _refuse(name, raw, f"must be at least {minimum}", str(example))
    return value


def read_architecture(env: Mapping[str, str], default: str) -> str:
    """Read ``CONSERVIZ_ARCH``: one of the architectures ``models.build_model`` knows."""
    raw = env.get("CONSERVIZ_ARCH")
    if raw is None or raw.strip() == "":
        return default
    # Imports torch: only when an ARCH is given.
    from conserviz_utils.models import ARCHITECTURES

    value = raw.strip()
    if value not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise _refuse("ARCH", raw, f"is not a known architecture (one of: {known})", default)
    return value


def read_train_image_cap(env: Mapping[str, str], default: int | None) -> int | None:
    """Read ``CONSERVIZ_MAX_TRAIN_IMAGES``, refusing a cap too small to learn 8 species from."""
    from conserviz_utils import SPECIES

    cap = read_whole_number(env, "MAX_TRAIN_IMAGES", default, minimum=1, example=240)
    smallest = MIN_IMAGES_PER_SPECIES * len(SPECIES)
    if cap is not None and cap < smallest:
        raise _refuse(
            "MAX_TRAIN_IMAGES",
            env["CONSERVIZ_MAX_TRAIN_IMAGES"],
            f"is too small to learn from: {len(SPECIES)} species need at least {smallest} training "
            f"images ({MIN_IMAGES_PER_SPECIES} per species on average)",
            "240",
        )
    return cap


@dataclass(frozen=True)
class CourseSettings:
    """The knobs of a course run, with defaults meant for a real run on a laptop CPU.

    Each field has an environment variable (``CONSERVIZ_<NAME>``); the hyperparameters among them
    seed the run's :class:`~conserviz_utils.recipe.Recipe` (``Recipe.from_settings``).
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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CourseSettings:
        """Build settings from ``CONSERVIZ_*`` environment variables; quick mode shrinks the run.

        Raises:
            SettingsError: a variable is not a number or flag, is out of range, or names an
                unknown architecture; the message names the variable, its value and an example.
        """
        env = os.environ if environ is None else environ
        quick = read_flag(env, "QUICK")
        data = (env.get("CONSERVIZ_DATA") or "").strip()
        return cls(
            data_dir=Path(data).expanduser() if data else None,
            quick=quick,
            output_dir=Path(env.get("CONSERVIZ_OUTPUTS") or DEFAULT_OUTPUT_DIR).expanduser(),
            arch=read_architecture(env, cls.arch),
            epochs=read_whole_number(env, "EPOCHS", 1 if quick else cls.epochs, minimum=0, example=1),
            head_epochs=read_whole_number(env, "HEAD_EPOCHS", cls.head_epochs, minimum=1, example=30),
            batch_size=read_whole_number(env, "BATCH_SIZE", cls.batch_size, minimum=1, example=32),
            seed=read_whole_number(env, "SEED", cls.seed, minimum=0, example=0),
            max_train_images=read_train_image_cap(env, 240 if quick else None),
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
