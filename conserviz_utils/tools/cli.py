"""The ``conserviz`` command: the course's pipeline as commands to script, on a laptop or on GPUs.

Each command does one notebook's job on a folder in the competition layout (``--data``) and
writes into one output folder (``--out``), with the same helpers the notebooks call::

    conserviz sample data/sample                                   # a synthetic dataset
    conserviz train --data data/competition --out runs/a           # head, then fine-tuning
    conserviz evaluate --data data/competition --out runs/a        # metrics.json
    conserviz submit --data data/competition --out runs/a          # submission.csv

Hyperparameters are the fields of :class:`~conserviz_utils.course.recipe.Recipe`, as flags
(``--head-lr 3e-3``) or from a TOML file (``--config recipe.toml``; flags win). ``train`` writes
the recipe back beside the checkpoint (``recipe.toml`` and ``recipe.json``), so
``conserviz train --config runs/a/recipe.toml`` repeats a run.

Several GPUs: ``torchrun --nproc-per-node=4 -m conserviz_utils train ...``, or
``conserviz train --devices 4 ...``, which starts that command (see :mod:`conserviz_utils.runtime.distributed`).

Exit status: 0 on success, 1 on a data or model problem (one line on stderr naming the file, the
rows and the fix; ``--verbose`` adds the traceback), 2 on a usage error, 130/143 when Ctrl-C or
SIGTERM stopped training (``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from conserviz_utils import __version__
from conserviz_utils.errors import CheckpointError, ConservizError
from conserviz_utils.course.recipe import Recipe, RecipeError

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 1  # the data, a file or the model: the message says what to fix
EXIT_USAGE = 2  # the command line itself (argparse's convention)
#: Shell convention for "stopped by signal N": 128 + N.
EXIT_BY_SIGNAL = {"SIGINT": 130, "KeyboardInterrupt": 130, "SIGTERM": 143}

STAGES = ("head", "finetune", "both")
SPLITS = ("train", "test", "all")


class UsageError(Exception):
    """A command line that cannot run as given (exit status 2, like argparse's own errors)."""


# --------------------------------------------------------------------------------------------
# Output: what the user sees
# --------------------------------------------------------------------------------------------


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
        """One line of the command's report."""
        if not self.quiet and self.main_process:
            print(text, flush=True)

    def detail(self, text: str) -> None:
        """A line shown with --verbose only."""
        if self.verbose and self.main_process:
            print(text, flush=True)


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


def _example(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def _recipe_type(annotation: str) -> type | None:
    """The argparse type of a Recipe field from its annotation (``bool`` gets an on/off flag)."""
    return {"int": int, "int | None": int, "float": float, "str": str, "bool": None}[annotation]


def _add_recipe_options(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """--config and one flag per Recipe field (``head_lr`` → ``--head-lr``), all optional."""
    group = parser.add_argument_group(
        "recipe", "hyperparameters: defaults < --config file < flags (written back beside the checkpoint)"
    )
    group.add_argument("--config", type=Path, metavar="TOML",
                       help="a recipe file of `field = value` lines, e.g. the recipe.toml a run wrote")
    for field in dataclasses.fields(Recipe):
        if only is not None and field.name not in only:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = field.default  # not Recipe(): checking it imports torch, slow for --help
        help_text = f"{field.metadata['help']} (default: {default if default is not None else 'unset'})"
        kind = _recipe_type(str(field.type))
        if kind is None:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            metavar = {int: "N", float: "X", str: "NAME"}[kind]
            group.add_argument(flag, dest=field.name, type=kind, metavar=metavar,
                               default=argparse.SUPPRESS, help=help_text)


def _add_output_options(parser: argparse.ArgumentParser, top_level: bool) -> None:
    """--quiet and --verbose, accepted before or after the command name."""
    # After the command, an absent flag must not undo one given before it: SUPPRESS there.
    default: Any = False if top_level else argparse.SUPPRESS
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", default=default,
                          help="print nothing but errors (no progress bars)")
    loudness.add_argument("-v", "--verbose", action="store_true", default=default,
                          help="say more, and show the traceback of an error")


def _add_folders(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="folder in the competition layout: train_features.csv, train_labels.csv, "
                             "test_features.csv, submission_format.csv and the images "
                             "(default: $CONSERVIZ_DATA)")
    parser.add_argument("--out", type=Path, metavar="DIR", default=Path("outputs"),
                        help=f"{out_help} (default: outputs)")


def _add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, metavar="PT",
                        help="the model to use (default: OUT/model.pt, what `conserviz train` wrote)")
    parser.add_argument("--batch-size", type=int, metavar="N", dest="inference_batch_size",
                        help="images per batch when predicting (default: 2 x the recipe's batch_size)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the epilog's example lines as written; wider option column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)


def build_parser() -> argparse.ArgumentParser:
    """The ``conserviz`` argument parser, with one subcommand per step of the pipeline."""
    parser = argparse.ArgumentParser(
        prog="conserviz",
        description="Camera-trap species classification on the Conser-vision data: the course's "
                    "pipeline as commands.",
        epilog=_example(
            "conserviz sample data/sample",
            "conserviz train --data data/sample --out runs/sample",
            "conserviz submit --data data/sample --out runs/sample",
            "",
            "Each command's --help shows its own example. Several GPUs:",
            "  torchrun --nproc-per-node=4 -m conserviz_utils train --data DIR --out DIR",
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"conserviz {__version__}")
    _add_output_options(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def command(name: str, help_text: str, description: str, example: str, run: Callable) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=textwrap.fill(description, 88), epilog=example,
                                  formatter_class=_Formatter)
        _add_output_options(sub, top_level=False)
        sub.set_defaults(run=run)
        return sub

    sample = command(
        "sample", "build a synthetic dataset in the competition layout",
        "Build the synthetic Taï-like camera-trap sample (notebook 01 explores it when there is no "
        "real data). OUT must be missing, empty or an earlier sample.",
        _example("conserviz sample data/sample --n-train 2000 --n-test 500"),
        run_sample,
    )
    sample.add_argument("out", type=Path, metavar="OUT", help="folder to write")
    sample.add_argument("--n-train", type=int, default=2000, metavar="N", help="train images (default: 2000)")
    sample.add_argument("--n-test", type=int, default=500, metavar="N", help="test images (default: 500)")
    sample.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: 0)")
    sample.add_argument("--image-scale", type=float, default=1.0, metavar="X",
                        help="size factor of the images, e.g. 0.25 for fast tests (default: 1)")
    sample.add_argument("--workers", type=int, metavar="N", help="drawing processes (default: one per core)")

    embed = command(
        "embed", "embed the images once with the frozen backbone (cached)",
        "Run the frozen pretrained backbone over the images once and cache the embeddings under "
        "OUT/features (notebooks 03-04). `conserviz train` reuses the cache.",
        _example("conserviz embed --data data/competition --out runs/a --arch efficientnet_lite0"),
        run_embed,
    )
    _add_folders(embed, "output folder; the cache goes to OUT/features")
    embed.add_argument("--split", choices=SPLITS, default="train",
                       help="which images: train, test or all (default: train)")
    embed.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                       help="random backbone weights instead of ImageNet's (tests only)")
    _add_recipe_options(embed, only=("arch", "batch_size"))

    train = command(
        "train", "train the head on embeddings, then fine-tune (notebook 04)",
        "Split the training images by site (OUT/splits.csv), train the head on cached embeddings, "
        "fine-tune the whole network, and keep the stage with the lower eval log loss as OUT/model.pt, "
        "with the recipe beside it (recipe.toml, recipe.json). Ctrl-C or SIGTERM stops fine-tuning "
        "at a batch boundary; --resume continues it.",
        _example(
            "conserviz train --data data/competition --out runs/a --stage both --fine-tune-epochs 3",
            "conserviz train --data data/competition --out runs/b --config runs/a/recipe.toml --seed 1",
            "conserviz train --data data/competition --out runs/a --stage finetune --devices 4",
            "torchrun --nproc-per-node=4 -m conserviz_utils train --data data/competition --out runs/a",
        ),
        run_train,
    )
    _add_folders(train, "output folder: splits.csv, model.pt, recipe.toml, fine_tune_resume.pt")
    train.add_argument("--stage", choices=STAGES,
                       help="head: head on embeddings only; finetune: fine-tune OUT/model.pt (or a "
                            "fresh head); both: head then fine-tuning (default)")
    train.add_argument("--folds", type=int, metavar="K",
                       help="instead of one split: K-fold cross-validation of heads by site, with the "
                            "test predictions of all K heads (OUT/cv_*.csv)")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted fine-tuning from OUT/fine_tune_resume.pt")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="where to fine-tune (default: auto, a GPU when there is one)")
    train.add_argument("--devices", type=int, metavar="N",
                       help="fine-tune on N processes (GPUs, or CPU processes): re-runs this command "
                            "under torchrun --nproc-per-node=N; --batch-size is per process")
    train.add_argument("--sync-batchnorm", action="store_true",
                       help="batch statistics over all processes' images (several GPUs only)")
    train.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                       help="random backbone weights instead of ImageNet's (tests only)")
    _add_recipe_options(train)

    evaluate = command(
        "evaluate", "score the model on the eval split (notebook 05)",
        "Reload OUT/model.pt, predict the eval split of OUT/splits.csv, and write accuracy, log loss, "
        "the fitted calibration temperature and the baselines to OUT/metrics.json.",
        _example("conserviz evaluate --data data/competition --out runs/a"),
        run_evaluate,
    )
    _add_folders(evaluate, "the training run's folder; metrics.json is written there")
    _add_checkpoint_options(evaluate)

    predict = command(
        "predict", "predict probabilities for the test images",
        "Predict every test image with OUT/model.pt and write OUT/predictions.csv (one row per id, "
        "one column per species). The temperature comes from OUT/metrics.json when `conserviz "
        "evaluate` wrote it.",
        _example("conserviz predict --data data/competition --out runs/a --tta"),
        run_predict,
    )
    _add_folders(predict, "the training run's folder; predictions.csv is written there")
    _add_checkpoint_options(predict)
    _add_prediction_options(predict)

    submit = command(
        "submit", "write a validated submission.csv (notebook 06)",
        "Predict the test images (or take --predictions), lay them out as submission_format.csv, "
        "validate, and write OUT/submission.csv. An invalid submission is never written.",
        _example(
            "conserviz submit --data data/competition --out runs/a",
            "conserviz submit --data data/competition --out runs/a --predictions runs/a/predictions.csv",
        ),
        run_submit,
    )
    _add_folders(submit, "the training run's folder; submission.csv is written there")
    _add_checkpoint_options(submit)
    _add_prediction_options(submit)
    submit.add_argument("--predictions", type=Path, metavar="CSV",
                        help="submit these probabilities (e.g. from `conserviz predict`) instead of predicting")

    course = command(
        "course", "run every notebook of the course headless (what `make course` runs)",
        "Execute the course notebooks in fresh kernels, in order, keep the executed copies under "
        "OUTPUTS/executed and print the headline figures.",
        _example("conserviz course --quick", "conserviz course --data data/competition --outputs outputs"),
        run_course,
    )
    course.add_argument("--quick", action="store_true", help="small sample, one short epoch")
    course.add_argument("--data", type=Path, metavar="DIR", help="competition data folder (else the sample)")
    course.add_argument("--outputs", type=Path, metavar="DIR", help="output folder (default: outputs/)")
    return parser


def _add_prediction_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", action="store_true", help="average each image with its mirror image")
    parser.add_argument("--temperature", type=float, metavar="T",
                        help="divide the logits by T before the softmax (default: OUT/metrics.json's, else 1)")


# --------------------------------------------------------------------------------------------
# Shared steps
# --------------------------------------------------------------------------------------------


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
        raise UsageError(f"argument {flag}: {err.problem}" + (f" ({err.fix})" if err.fix else "")) from None


def course_settings(out: Path, data: Path | None, recipe: Recipe):
    """The CourseSettings the course's helpers expect, for this output folder and recipe."""
    from conserviz_utils.course.settings import CourseSettings

    return CourseSettings(
        data_dir=data,
        output_dir=out,
        arch=recipe.arch,
        epochs=recipe.fine_tune_epochs,
        head_epochs=recipe.head_epochs,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        max_train_images=recipe.max_train_images,
    )


def load_data(folder: Path, console: Console):
    """The validated competition data of ``folder``."""
    from conserviz_utils.data import load_competition

    started = time.perf_counter()
    data = load_competition(folder)
    console.detail(f"read {folder}: {len(data.train_features):,} train and {len(data.test_features):,} "
                   f"test images ({time.perf_counter() - started:.1f} s)")
    return data


def save_recipe(out: Path, recipe: Recipe) -> None:
    """The recipe beside the checkpoint: TOML to edit and pass to --config, JSON for the course."""
    recipe.save_toml(out / "recipe.toml")
    recipe.save(out / "recipe.json")


def run_recipe(out: Path, checkpoint: Path) -> Recipe:
    """The recipe a training run wrote beside its checkpoint, or the defaults."""
    for candidate in (checkpoint.parent / "recipe.toml", out / "recipe.toml"):
        if candidate.is_file():
            return Recipe.from_toml(candidate)
    return Recipe()


def checkpoint_path(args: argparse.Namespace) -> Path:
    """--checkpoint, else OUT/model.pt; refused when missing, saying which command writes it."""
    path = args.checkpoint if args.checkpoint is not None else args.out / "model.pt"
    if not path.is_file():
        raise CheckpointError(
            "no trained model here",
            path=path,
            fix=f"train one first: conserviz train --data DIR --out {args.out} (or pass --checkpoint)",
        )
    return path


def _inference_settings(args: argparse.Namespace, data_dir: Path, checkpoint: Path):
    recipe = run_recipe(args.out, checkpoint)
    if args.inference_batch_size is not None:
        if args.inference_batch_size < 1:
            raise UsageError("argument --batch-size: must be at least 1")
        # prediction_loader uses twice the training batch: halve to get what was asked for.
        recipe = recipe.replace(batch_size=max(1, math.ceil(args.inference_batch_size / 2)))
    return course_settings(args.out, data_dir, recipe)


def _temperature(args: argparse.Namespace, checkpoint: Path, console: Console) -> float:
    """--temperature, else the one `conserviz evaluate` fitted (when newer than the model), else 1."""
    if args.temperature is not None:
        if not (math.isfinite(args.temperature) and args.temperature > 0):
            raise UsageError("argument --temperature: must be a positive number")
        return args.temperature
    metrics = args.out / "metrics.json"
    if metrics.is_file() and metrics.stat().st_mtime >= checkpoint.stat().st_mtime:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            temperature = float(json.loads(metrics.read_text(encoding="utf-8"))["temperature"])
            if math.isfinite(temperature) and temperature > 0:
                console.detail(f"temperature {temperature:.3f} from {metrics}")
                return temperature
    console.detail("temperature 1 (run `conserviz evaluate` first to calibrate)")
    return 1.0


def _predict_test(args: argparse.Namespace, console: Console):
    """Probabilities for every test image (submission layout) and the data they came from."""
    from conserviz_utils.runtime.checkpoint import load_checkpoint
    from conserviz_utils.course.steps import prediction_loader
    from conserviz_utils.train import predict

    data_dir = data_folder(args)
    checkpoint = checkpoint_path(args)
    data = load_data(data_dir, console)
    settings = _inference_settings(args, data_dir, checkpoint)
    model, _ = load_checkpoint(checkpoint, device="auto", species=data.species)
    temperature = _temperature(args, checkpoint, console)
    loader = prediction_loader(model, data.test_features, settings)
    probs = predict(model, loader, tta=args.tta, temperature=temperature, species=data.species,
                    progress=console.progress)
    if probs.attrs.get("note"):
        console.say(f"warning: {probs.attrs['note']}")
    return probs, data


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def run_sample(args: argparse.Namespace, console: Console) -> int:
    """``conserviz sample OUT``: a synthetic dataset in the competition layout."""
    from conserviz_utils.tools.sample import generate_sample

    report = generate_sample(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                             image_scale=args.image_scale, workers=args.workers, progress=console.progress)
    console.say(str(report))
    return EXIT_OK


def run_embed(args: argparse.Namespace, console: Console) -> int:
    """``conserviz embed``: the frozen backbone's embeddings of the images, cached under OUT/features."""
    from conserviz_utils.course.steps import embed_images
    from conserviz_utils.models import build_model

    data_dir = data_folder(args)
    recipe = recipe_from_args(args)
    settings = course_settings(args.out, data_dir, recipe)
    data = load_data(data_dir, console)
    model = build_model(recipe.arch, pretrained=args.pretrained, progress=console.progress)
    parts = {"train": data.train_features, "test": data.test_features}
    for name in ("train", "test") if args.split == "all" else (args.split,):
        started = time.perf_counter()
        embeddings = embed_images(model, parts[name], settings, progress=console.progress)
        console.say(f"embedded {len(embeddings):,} {name} images with {recipe.arch} "
                    f"({embeddings.dim} numbers each) in {time.perf_counter() - started:.0f} s "
                    f"→ {settings.artifacts.features}")
    return EXIT_OK


def _cross_validate(args: argparse.Namespace, console: Console, recipe: Recipe, data_dir: Path) -> int:
    """``train --folds K``: one head per site-grouped fold on cached embeddings (conserviz_utils.climb.cv)."""
    import importlib.util

    if args.folds < 2:
        raise UsageError("argument --folds: needs at least 2 folds")
    if importlib.util.find_spec("conserviz_utils.climb.cv") is None:
        raise UsageError("argument --folds: cross-validation is not available in this version of "
                         "conserviz (no conserviz_utils.climb.cv); train on one split without --folds")
    if args.stage not in (None, "head"):
        raise UsageError("argument --folds: cross-validation trains heads on embeddings, not --stage "
                         f"{args.stage} (leave --stage out, or use --stage head)")
    from conserviz_utils.course.steps import embed_images
    from conserviz_utils.climb.cv import cross_validate
    from conserviz_utils.files.fileio import atomic_write_csv, atomic_write_json
    from conserviz_utils.models import build_model
    from conserviz_utils.split import site_folds

    started = time.perf_counter()
    settings = course_settings(args.out, data_dir, recipe)
    data = load_data(data_dir, console)
    model = build_model(recipe.arch, pretrained=args.pretrained, progress=console.progress)
    embeddings = embed_images(model, data.train_features, settings, progress=console.progress)
    test_embeddings = embed_images(model, data.test_features, settings, progress=console.progress)
    folds = site_folds(data.train_features, data.train_labels, n_folds=args.folds, seed=recipe.seed)
    result = cross_validate(model.head, embeddings, data.train_labels, folds, features=data.train_features,
                            recipe=recipe, species=data.species, progress=console.progress)
    predictions = result.predict(embeddings, test_embeddings)
    out = args.out
    atomic_write_csv(out / "cv_scores.csv", result.scores, what="cross-validation scores")
    atomic_write_json(out / "cv_summary.json", result.summary(), what="cross-validation summary")
    atomic_write_csv(out / "cv_oof_predictions.csv", predictions.oof_probs(), what="out-of-fold predictions")
    test_path = atomic_write_csv(out / "cv_test_predictions.csv", predictions.test_probs(),
                                 what="test predictions")
    # No checkpoint here: the recipe goes beside the CV's files, not over a trained model's recipe.toml.
    recipe.save_toml(out / "cv_recipe.toml")
    summary = result.summary()
    console.say(f"{summary['folds']}-fold cross-validation by site: out-of-fold log loss {summary['log_loss']:.4f} "
                f"(folds {summary['fold_mean']:.4f} ± {summary['fold_std']:.4f}), accuracy {summary['accuracy']:.3f}")
    console.say(f"test predictions of all {len(result.heads)} heads, averaged → {test_path}")
    console.say(f"submit them: conserviz submit --data {data_dir} --out {out} --predictions {test_path}")
    console.say(f"done in {time.perf_counter() - started:.0f} s; recipe → {out / 'cv_recipe.toml'}")
    return EXIT_OK


def _relaunch_under_torchrun(devices: int, argv: Sequence[str], device: str, console: Console) -> int:
    """Run this same command under ``torchrun --standalone --nproc-per-node=devices``."""
    import torch

    if devices < 1:
        raise UsageError("argument --devices: must be at least 1")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        gpus = torch.cuda.device_count()
        if devices > gpus:
            raise UsageError(f"argument --devices: {devices} processes need {devices} GPUs, this machine has "
                             f"{gpus} (use --devices {gpus}, or --device cpu for CPU processes)")
    rest: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == "--devices":
            skip = True
        elif not item.startswith("--devices="):
            rest.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={devices}", "-m", "conserviz_utils", *rest]
    env = dict(os.environ)
    # torchrun would set 1 thread per process with a warning; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    console.detail("running: " + " ".join(command))
    return subprocess.call(command, env=env)


def run_train(args: argparse.Namespace, console: Console) -> int:
    """``conserviz train``: head on embeddings and/or fine-tuning; OUT/model.pt with its recipe."""
    from conserviz_utils.runtime import distributed

    recipe = recipe_from_args(args)
    data_dir = data_folder(args)
    if args.folds is not None:
        if args.devices is not None:
            raise UsageError("argument --devices: cross-validation (--folds) trains small heads on one process")
        if not distributed.is_main_process():
            return EXIT_OK  # under torchrun: the heads train on rank 0
        return _cross_validate(args, console, recipe, data_dir)
    args.stage = args.stage or "both"
    if args.stage == "finetune" and recipe.fine_tune_epochs == 0:
        raise UsageError("argument --stage finetune: the recipe's fine_tune_epochs is 0 (set --fine-tune-epochs)")
    if args.devices is not None and not distributed.launched_by_torchrun():
        return _relaunch_under_torchrun(args.devices, args.argv, args.device, console)
    if args.devices is not None and args.devices != distributed.world_size():
        raise UsageError(f"argument --devices: {args.devices} given, but torchrun started "
                         f"{distributed.world_size()} processes (drop --devices under torchrun)")

    device = distributed.setup_distributed(device=args.device)
    console.main_process = distributed.is_main_process()
    try:
        return _train(args, console, recipe, data_dir, device)
    finally:
        distributed.teardown_distributed()


def _train(args: argparse.Namespace, console: Console, recipe: Recipe, data_dir: Path, device) -> int:
    from conserviz_utils.runtime import distributed
    from conserviz_utils.course.steps import ensure_splits, train_default_recipe

    started = time.perf_counter()
    settings = course_settings(args.out, data_dir, recipe)
    data = load_data(data_dir, console)
    # Rank 0 writes the split (and the head's checkpoint) while the others wait, then read them.
    if distributed.is_main_process():
        split = ensure_splits(data, settings)
    distributed.barrier()
    if not distributed.is_main_process():
        split = ensure_splits(data, settings)
    console.say(f"split by site: {len(split.train):,} train, {len(split.eval):,} eval images → "
                f"{settings.artifacts.splits}")

    resuming = args.resume and settings.artifacts.resume.is_file() and settings.artifacts.checkpoint.is_file()
    if args.stage == "both" and resuming:
        console.say(f"resuming: the head in {settings.artifacts.checkpoint} is kept, fine-tuning continues")
    elif args.stage in ("head", "both"):
        head_recipe = recipe.replace(fine_tune_epochs=0)
        if distributed.is_main_process():
            _, histories = train_default_recipe(data, split, settings, progress=console.progress,
                                                pretrained=args.pretrained, recipe=head_recipe)
            save_recipe(args.out, head_recipe)
            epochs = int(histories["head"]["epoch"].max())
            console.say(f"head on embeddings ({epochs} epochs): eval log loss "
                        f"{histories['choice'].head_log_loss:.4f} → {settings.artifacts.checkpoint}")
        distributed.barrier()

    if args.stage in ("finetune", "both") and recipe.fine_tune_epochs > 0:
        code = _fine_tune(args, console, recipe, settings, data, split, device)
        if code != EXIT_OK:
            return code
    console.say(f"done in {time.perf_counter() - started:.0f} s; recipe → {args.out / 'recipe.toml'}")
    return EXIT_OK


def _fine_tune(args, console: Console, recipe: Recipe, settings, data, split, device) -> int:
    """Fine-tune OUT/model.pt (or a fresh head), on every process under torchrun; keep the better stage."""
    import copy

    from conserviz_utils.runtime import distributed
    from conserviz_utils.runtime.checkpoint import load_checkpoint
    from conserviz_utils.course.steps import (
        fine_tune,
        keep_better_stage,
        make_loaders,
        make_optimizer,
        save_course_checkpoint,
    )
    from conserviz_utils.models import build_model, unfreeze
    from conserviz_utils.train import fit

    artifacts = settings.artifacts
    head_log_loss = math.inf
    if artifacts.checkpoint.is_file():
        model, payload = load_checkpoint(artifacts.checkpoint, species=data.species)
        if payload.get("arch") != recipe.arch:
            raise CheckpointError(
                f"it holds a {payload.get('arch')} but the recipe says arch={recipe.arch}",
                path=artifacts.checkpoint,
                fix=f"pass --arch {payload.get('arch')}, or train the head first (--stage both) in another --out",
            )
        head_log_loss = float((payload.get("metrics") or {}).get("eval_log_loss", math.inf))
    else:
        console.say(f"no {artifacts.checkpoint.name} in {args.out}: fine-tuning from an untrained head "
                    "(--stage both trains the head first)")
        model = build_model(recipe.arch, pretrained=args.pretrained, progress=console.progress)
    head_state = copy.deepcopy(model.state_dict())
    train_loader, eval_loader = make_loaders(data, split, recipe, model)
    resume = args.resume and artifacts.resume.is_file()
    if args.resume and not resume:
        console.say(f"nothing to resume ({artifacts.resume} is missing): starting fine-tuning afresh")

    if distributed.world_size() > 1:
        # Every process trains on its share of each epoch: the same datasets, dealt out by rank.
        train_loader = distributed.distributed_loader(train_loader.dataset, recipe.batch_size, shuffle=True,
                                                      seed=recipe.seed, device=device)
        eval_loader = distributed.distributed_loader(eval_loader.dataset, 2 * recipe.batch_size, device=device)
        unfreeze(model)  # before wrapping: DDP syncs only the parameters that train when it is built
        wrapped = distributed.wrap_model(model, device, sync_batchnorm=args.sync_batchnorm)
        optimizer = make_optimizer(wrapped.parameters(), recipe.fine_tune_optimizer, recipe.fine_tune_lr,
                                   recipe.fine_tune_weight_decay)
        # course.fine_tune's fit call, with the wrapped model (fine_tune unfreezes a bare model only).
        history = fit(wrapped, train_loader, eval_loader, epochs=recipe.fine_tune_epochs, optimizer=optimizer,
                      device=device, early_stopping=recipe.fine_tune_patience, checkpoint_path=artifacts.resume,
                      resume_from=artifacts.resume if resume else None, seed=recipe.seed,
                      progress=console.progress)
    else:
        if args.sync_batchnorm:
            console.detail("--sync-batchnorm has no effect on one process")
        history = fine_tune(model, train_loader, eval_loader, recipe, resume_path=artifacts.resume,
                            resume=resume, progress=console.progress)

    if history.attrs.get("interrupted"):
        signal_name = history.attrs.get("interrupt_signal") or "SIGINT"
        console.say(f"fine-tuning stopped by {signal_name}; its state is in {artifacts.resume}. "
                    f"Continue with the same command and --resume.")
        return EXIT_BY_SIGNAL.get(signal_name, 130)
    choice = keep_better_stage(model, head_state, head_log_loss, history)
    if distributed.is_main_process():
        # The course's own save: model.pt with the recipe and the kept stage, recipe.json, and the
        # provenance record, so the notebooks can use this output folder without retraining.
        save_course_checkpoint(distributed.unwrap_model(model), choice, data, split, settings, recipe,
                               pretrained=args.pretrained)
        save_recipe(args.out, recipe)
    distributed.barrier()
    console.say(f"{choice} → {artifacts.checkpoint}")
    return EXIT_OK


def run_evaluate(args: argparse.Namespace, console: Console) -> int:
    """``conserviz evaluate``: headline metrics of the model on the eval split, to OUT/metrics.json."""
    from conserviz_utils.runtime.checkpoint import load_checkpoint
    from conserviz_utils.course.steps import (
        ensure_splits,
        headline_metrics,
        prediction_loader,
        save_metrics,
    )
    from conserviz_utils.train import predict_logits

    data_dir = data_folder(args)
    checkpoint = checkpoint_path(args)
    data = load_data(data_dir, console)
    settings = _inference_settings(args, data_dir, checkpoint)
    split = ensure_splits(data, settings)
    model, _ = load_checkpoint(checkpoint, device="auto", species=data.species)
    loader = prediction_loader(model, data.train_features.loc[split.eval], settings)
    metrics = headline_metrics(predict_logits(model, loader, species=data.species, progress=console.progress),
                               data, split)
    path = save_metrics(settings, metrics, data=data, splits=split)
    console.say(f"{metrics['eval_images']:,} eval images of the {metrics['data']}:")
    console.say(f"  accuracy       {metrics['accuracy']:.3f}   (majority baseline {metrics['majority_accuracy']:.3f})")
    console.say(f"  log loss       {metrics['log_loss']:.4f}  (uniform baseline {metrics['uniform_log_loss']:.4f})")
    console.say(f"  calibrated     {metrics['calibrated_log_loss']:.4f}  (temperature {metrics['temperature']:.3f})")
    console.say(f"→ {path}")
    return EXIT_OK


def run_predict(args: argparse.Namespace, console: Console) -> int:
    """``conserviz predict``: test-image probabilities to OUT/predictions.csv."""
    from conserviz_utils.files.fileio import atomic_write_csv

    probs, _ = _predict_test(args, console)
    path = atomic_write_csv(args.out / "predictions.csv", probs, what="predictions")
    console.say(f"predicted {len(probs):,} test images → {path}")
    return EXIT_OK


def run_submit(args: argparse.Namespace, console: Console) -> int:
    """``conserviz submit``: a validated OUT/submission.csv."""
    from conserviz_utils.submission import (
        make_submission,
        read_submission,
        write_submission,
    )

    if args.predictions is not None:
        data = load_data(data_folder(args), console)
        probs = read_submission(args.predictions)
    else:
        probs, data = _predict_test(args, console)
    submission = make_submission(probs, data.submission_format)
    path = write_submission(submission, args.out / "submission.csv", data.submission_format)
    console.say(f"wrote {path}: {len(submission):,} rows x {submission.shape[1]} species, validated")
    return EXIT_OK


def run_course(args: argparse.Namespace, console: Console) -> int:
    """``conserviz course``: the headless notebook runner of ``make course``."""
    from conserviz_utils.tools import runner

    forwarded = (["--quick"] if args.quick else []) + (["--data", str(args.data)] if args.data else [])
    forwarded += ["--outputs", str(args.outputs)] if args.outputs else []
    return int(runner.main(forwarded) or EXIT_OK)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``conserviz`` with ``argv`` (default: the command line); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here, --help and --version 0
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("conserviz: error: choose a command (conserviz --help lists them)", file=sys.stderr)
        return EXIT_USAGE
    args.argv = argv
    console = Console(quiet=args.quiet, verbose=args.verbose)
    prefix = f"conserviz {args.command}"
    try:
        from conserviz_utils.runtime import distributed

        if distributed.launched_by_torchrun():
            # Under torchrun only rank 0 reports (every rank still reports its own errors), and
            # only `train` shares its work out: the other commands run once, on rank 0.
            prefix = f"{prefix} [rank {distributed.rank()}]"
            console.main_process = distributed.rank() == 0
            if args.command != "train" and not console.main_process:
                return EXIT_OK
        return args.run(args, console)
    except UsageError as err:
        print(f"usage: conserviz {args.command} [options] (see conserviz {args.command} --help)", file=sys.stderr)
        print(f"{prefix}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ConservizError as err:
        if console.verbose:
            traceback.print_exc()
        print(f"{prefix}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prefix}: stopped (Ctrl-C)", file=sys.stderr)
        return EXIT_BY_SIGNAL["SIGINT"]


if __name__ == "__main__":
    sys.exit(main())
