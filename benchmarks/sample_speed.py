"""How fast does the sample generator draw images? Prints images/s for a given count and size.

The sample must build 2,000 train images at real sizes in under a minute on two CPU cores, so
that a learner's first ``make course`` (and CI) does not wait. This is a benchmark, not a test:
it reports wall time and CPU time (on a shared machine the wall time also counts other users).

    .venv/bin/python benchmarks/sample_speed.py                       # 2,000 images, real size
    .venv/bin/python benchmarks/sample_speed.py --n-train 500 --workers 1
    .venv/bin/python benchmarks/sample_speed.py --image-scale 0.25    # the test suite's size
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conserviz_utils.sample import generate_sample  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pool)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Generate a sample into a temporary folder and print the generator's speed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=0)
    parser.add_argument("--image-scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sample"
        cpu_before, wall_before = cpu_seconds(), time.perf_counter()
        report = generate_sample(
            out, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
            image_scale=args.image_scale, workers=args.workers, progress=False,
        )
        wall = time.perf_counter() - wall_before
        cpu = cpu_seconds() - cpu_before
        sizes = [p.stat().st_size for p in out.glob("*_features/*.jpg")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(report)
    print(
        f"{report.n_images} images in {wall:.1f} s wall, {cpu:.1f} s CPU, "
        f"{report.workers} worker(s): "
        f"{report.images_per_second:.1f} images/s ({report.n_images / cpu:.1f} per CPU-second); "
        f"median JPEG {statistics.median(sizes) / 1000:.1f} KB; "
        f"load average before the end {load:.1f}"
    )
    return {"seconds": wall, "cpu_seconds": cpu, "images_per_second": report.images_per_second}


if __name__ == "__main__":
    main()
