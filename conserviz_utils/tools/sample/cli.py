"""The command line: ``python -m conserviz_utils.tools.sample --out DIR`` builds a sample dataset."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from conserviz_utils.errors import ConservizError
from conserviz_utils.tools.sample.draw import sample_grid
from conserviz_utils.tools.sample.write import SampleReport, generate_sample

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> SampleReport | None:
    """``python -m conserviz_utils.tools.sample``: build a sample dataset, or render the example grid."""
    parser = argparse.ArgumentParser(
        prog="python -m conserviz_utils.tools.sample",
        description="Build the synthetic Taï-like camera-trap sample in the competition layout.",
    )
    parser.add_argument("--out", type=Path, help="folder to write: missing, empty or a previous sample")
    parser.add_argument("--n-train", type=int, default=2000, help="train images (default 2000)")
    parser.add_argument("--n-test", type=int, default=500, help="test images (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--image-scale", type=float, default=1.0, help="size factor (default 1)")
    parser.add_argument("--workers", type=int, help="processes (default: one per core)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--grid", type=Path, help="instead, write a day and a night image per class to this PNG")
    args = parser.parse_args(argv)
    if args.grid is not None:
        # A 256-colour palette keeps the PNG under 1 MB with no visible loss at this size.
        sample_grid(seed=args.seed).quantize(256).save(args.grid, optimize=True)
        print(f"wrote {args.grid}")
        return None
    if args.out is None:
        parser.error("--out is required (or --grid PATH)")
    try:
        report = generate_sample(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                                 image_scale=args.image_scale, workers=args.workers, progress=not args.no_progress)
    except ConservizError as error:
        parser.exit(2, f"error: {error}\n")
    print(report)
    return report
