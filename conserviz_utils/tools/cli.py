"""The ``conserviz`` command: the course's pipeline as commands to script, on a laptop or on GPUs.

Each command does one notebook's job on a folder in the competition layout (``--data``) and writes
into one output folder (``--out``), with the helpers the notebooks call. Hyperparameters are the
fields of :class:`~conserviz_utils.course.recipe.Recipe`, as flags or from ``--config recipe.toml``
(flags win); ``train`` writes the recipe back beside the checkpoint, so ``--config runs/a/recipe.toml``
repeats a run. Several GPUs: ``conserviz train --devices 4`` (or torchrun). Exit status: 0 on success,
1 on a data or model problem (one line naming the file, the rows and the fix; ``--verbose`` adds the
traceback), 2 on a usage error, 130/143 when Ctrl-C or SIGTERM stopped training (``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from conserviz_utils import __version__
from conserviz_utils.course.recipe import MAX_BATCH_SIZE, MAX_SEED, Recipe
from conserviz_utils.errors import ConservizError
from conserviz_utils.tools.cli_common import (
    EXIT_BY_SIGNAL, EXIT_ERROR, EXIT_OK, EXIT_USAGE, Console, UsageError, course_settings, data_folder, load_data,
    recipe_from_args,
)
from conserviz_utils.tools.cli_predict import run_evaluate, run_predict, run_submit
from conserviz_utils.tools.cli_train import run_train

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

#: Largest --temperature: beyond it every probability is uniform to many digits.
MAX_TEMPERATURE = 100.0
#: Largest --n-train / --n-test of a sample, --folds, and --devices / --workers.
MAX_SAMPLE_IMAGES, MAX_FOLDS, MAX_PROCESSES = 1_000_000, 100, 1024


def whole_number(minimum: int, maximum: int, example: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` to ``maximum``, refused with the range and an example."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {minimum:,} to {maximum:,} "
                                             f"(e.g. {example})")
        return value

    return parse


def temperature_value(text: str) -> float:
    """An argparse type: a temperature above 0 and at most :data:`MAX_TEMPERATURE`."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TEMPERATURE):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0 and at most {MAX_TEMPERATURE:g} (e.g. 1.2)")
    return value


# --- the commands that prepare a run's inputs or run the whole course ------------------------------


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
        console.say(f"embedded {len(embeddings):,} {name} images with {recipe.arch} ({embeddings.dim} numbers each) "
                    f"in {time.perf_counter() - started:.0f} s → {settings.artifacts.features}")
    return EXIT_OK


def run_course(args: argparse.Namespace, console: Console) -> int:
    """``conserviz course``: the headless notebook runner of ``make course``."""
    from conserviz_utils.tools import runner

    forwarded = (["--quick"] if args.quick else []) + (["--data", str(args.data)] if args.data else [])
    forwarded += ["--outputs", str(args.outputs)] if args.outputs else []
    return int(runner.main(forwarded) or EXIT_OK)


# --- the parser ------------------------------------------------------------------------------------


def _example(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def _add_recipe_options(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """--config and one flag per Recipe field (``head_lr`` → ``--head-lr``), all optional."""
    group = parser.add_argument_group(
        "recipe", "hyperparameters: defaults < --config file < flags (written back beside the checkpoint)"
    )
    group.add_argument("--config", type=Path, metavar="TOML",
                       help="a recipe file of `field = value` lines, e.g. the recipe.toml a run wrote")
    # The argparse type and metavar of a field, by its annotation; a bool gets an on/off flag.
    kinds = {"int": (int, "N"), "int | None": (int, "N"), "float": (float, "X"), "str": (str, "NAME")}
    for field in dataclasses.fields(Recipe):
        if only is not None and field.name not in only:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = field.default  # not Recipe(): checking it imports torch, slow for --help
        help_text = f"{field.metadata['help']} (default: {default if default is not None else 'unset'})"
        if str(field.type) == "bool":
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            kind, metavar = kinds[str(field.type)]
            group.add_argument(flag, dest=field.name, type=kind, metavar=metavar, default=argparse.SUPPRESS,
                               help=help_text)


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


def _add_model_options(parser: argparse.ArgumentParser, predictions: bool) -> None:
    """--checkpoint and --batch-size; with ``predictions``, --tta and --temperature too."""
    parser.add_argument("--checkpoint", type=Path, metavar="PT",
                        help="the model to use (default: OUT/model.pt, what `conserviz train` wrote)")
    parser.add_argument("--batch-size", type=whole_number(1, MAX_BATCH_SIZE, 64), metavar="N",
                        dest="inference_batch_size",
                        help="images per batch when predicting (default: 2 x the recipe's batch_size)")
    if predictions:
        parser.add_argument("--tta", action="store_true", help="average each image with its mirror image")
        parser.add_argument("--temperature", type=temperature_value, metavar="T",
                            help="divide the logits by T before the softmax (default: OUT/metrics.json's, else 1)")


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
    sample.add_argument("--n-train", type=whole_number(1, MAX_SAMPLE_IMAGES, 2000), default=2000, metavar="N",
                        help="train images (default: 2000)")
    sample.add_argument("--n-test", type=whole_number(0, MAX_SAMPLE_IMAGES, 500), default=500, metavar="N",
                        help="test images (default: 500)")
    sample.add_argument("--seed", type=whole_number(0, MAX_SEED, 0), default=0, metavar="N",
                        help="random seed (default: 0)")
    sample.add_argument("--image-scale", type=float, default=1.0, metavar="X",
                        help="size factor of the images, e.g. 0.25 for fast tests (default: 1)")
    sample.add_argument("--workers", type=whole_number(1, MAX_PROCESSES, 4), metavar="N",
                        help="drawing processes (default: one per core)")

    embed = command(
        "embed", "embed the images once with the frozen backbone (cached)",
        "Run the frozen pretrained backbone over the images once and cache the embeddings under "
        "OUT/features (notebooks 03-04). `conserviz train` reuses the cache.",
        _example("conserviz embed --data data/competition --out runs/a --arch efficientnet_lite0"),
        run_embed,
    )
    _add_folders(embed, "output folder; the cache goes to OUT/features")
    embed.add_argument("--split", choices=("train", "test", "all"), default="train",
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
    train.add_argument("--stage", choices=("head", "finetune", "both"),
                       help="head: head on embeddings only; finetune: fine-tune OUT/model.pt (or a "
                            "fresh head); both: head then fine-tuning (default)")
    train.add_argument("--folds", type=whole_number(1, MAX_FOLDS, 5), metavar="K",
                       help="instead of one split: K-fold cross-validation of heads by site, with the "
                            "test predictions of all K heads (OUT/cv_*.csv)")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted fine-tuning from OUT/fine_tune_resume.pt")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="where to fine-tune (default: auto, a GPU when there is one)")
    train.add_argument("--devices", type=whole_number(1, MAX_PROCESSES, 4), metavar="N",
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
    _add_model_options(evaluate, predictions=False)

    predict = command(
        "predict", "predict probabilities for the test images",
        "Predict every test image with OUT/model.pt and write OUT/predictions.csv (one row per id, "
        "one column per species). The temperature comes from OUT/metrics.json when `conserviz "
        "evaluate` wrote it.",
        _example("conserviz predict --data data/competition --out runs/a --tta"),
        run_predict,
    )
    _add_folders(predict, "the training run's folder; predictions.csv is written there")
    _add_model_options(predict, predictions=True)

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
    _add_model_options(submit, predictions=True)
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


# --- running it -------------------------------------------------------------------------------------


def for_command_line(err: ConservizError, args: argparse.Namespace) -> ConservizError:
    """The error with its fix in flags where the library wrote it for a notebook's settings."""
    fix = err.reader_fixes.get("cli", err.fix) or ""
    if "CONSERVIZ_MAX_TRAIN_IMAGES" in fix:
        cap = getattr(args, "max_train_images", None)
        fix = (f"raise --max-train-images (now {cap:,}) or leave it out, or use more data" if cap is not None
               else "use a --data folder with more labelled training images (no --max-train-images cap is set)")
    elif "on_error='raise'" in fix:
        fix = (f"predict every test image: conserviz predict --data DIR --out {args.out} predicts them all, "
               "then pass its predictions.csv to --predictions")
    fix = re.sub(r"n_folds=(\d+)", r"--folds \1", fix)
    fix = fix.replace("set CONSERVIZ_OUTPUTS", "pass another --out").replace("CONSERVIZ_DATA", "--data")
    return err.for_reader("cli", fix) if fix else err


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
        print(f"{prefix}: error: {for_command_line(err, args).render('cli')}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prefix}: stopped (Ctrl-C)", file=sys.stderr)
        return EXIT_BY_SIGNAL["SIGINT"]


if __name__ == "__main__":
    sys.exit(main())
