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
import re
import sys
import traceback
from collections.abc import Sequence

from conserviz_utils.errors import ConservizError
from conserviz_utils.tools.cli_common import EXIT_BY_SIGNAL, EXIT_ERROR, EXIT_OK, EXIT_USAGE, Console, UsageError
from conserviz_utils.tools.cli_parser import build_parser

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]


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
