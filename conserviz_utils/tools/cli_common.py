"""What every ``conserviz`` command shares: exit statuses, usage errors, the console, and reading the flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from conserviz_utils.course.recipe import Recipe, RecipeError


EXIT_OK = 0
EXIT_ERROR = 1  # the data, a file or the model: the message says what to fix
EXIT_USAGE = 2  # the command line itself (argparse's convention)
#: Shell convention for "stopped by signal N": 128 + N.
EXIT_BY_SIGNAL = {"SIGINT": 130, "KeyboardInterrupt": 130, "SIGTERM": 143}


class UsageError(Exception):
    """A command line that cannot run as given (exit status 2, like argparse's own errors)."""


@dataclasses.dataclass
class Console:
    """Where the command's messages go: stdout unless --quiet, and only on rank 0 under torchrun."""

    quiet: bool = False
    verbose: bool = False
    main_process: bool = True

    @property
    def progress(self) -> bool:
        """Show progress bars (on stderr, tqdm's default)."""
        return not self.quiet and self.main_process

    def say(self, text: str = "") -> None:
        if not self.quiet and self.main_process:
            print(text, flush=True)

    def detail(self, text: str) -> None:
        """A line shown with --verbose only."""
        if self.verbose and self.main_process:
            print(text, flush=True)


def data_folder(args: argparse.Namespace) -> Path:
    """--data, else $CONSERVIZ_DATA; a usage error when neither is given."""
    if args.data is not None:
        return args.data
    from_env = (os.environ.get("CONSERVIZ_DATA") or "").strip()
    if from_env:
        return Path(from_env).expanduser()
    raise UsageError("--data DIR is required (or set CONSERVIZ_DATA): the folder with train_features.csv")


def recipe_from_args(args: argparse.Namespace, base: Recipe | None = None) -> Recipe:
    """The recipe of this command: ``base`` (or defaults) < ``--config`` < flags."""
    config = getattr(args, "config", None)
    recipe = Recipe.from_toml(config) if config is not None else (base or Recipe())
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if hasattr(args, f.name)}
    try:
        return recipe.replace(**changes)
    except RecipeError as err:
        flag = "--" + (err.field or "").replace("_", "-")
        example = f"e.g. {flag} {err.example}" if err.example is not None else err.fix
        raise UsageError(f"argument {flag}: {err.problem}" + (f" ({example})" if example else "")) from None


def course_settings(out: Path, data: Path | None, recipe: Recipe):
    """The CourseSettings the course's helpers expect, for this output folder and recipe."""
    from conserviz_utils.course.settings import CourseSettings

    return CourseSettings(data_dir=data, output_dir=out, arch=recipe.arch, epochs=recipe.fine_tune_epochs,
                          head_epochs=recipe.head_epochs, batch_size=recipe.batch_size, seed=recipe.seed,
                          max_train_images=recipe.max_train_images)


def load_data(folder: Path, console: Console):
    """The validated competition data of ``folder``."""
    from conserviz_utils.data import load_competition

    started = time.perf_counter()
    data = load_competition(folder)
    console.detail(f"read {folder}: {len(data.train_features):,} train and {len(data.test_features):,} "
                   f"test images ({time.perf_counter() - started:.1f} s)")
    return data
