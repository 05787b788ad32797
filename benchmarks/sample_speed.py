"""How fast does the sample generator draw images? Prints images/s for a given count and size.

The sample must build 2,000 train images at real sizes in under a minute on two CPU cores, so
that a learner's first ``make course`` (and CI) does not wait. This is a benchmark, not a test:
it reports wall time and CPU time (on a shared machine the wall time also counts other users).
It also summarises the simulated detector's ``detections.json`` of the generated sample: the
share of animals found at the usual 0.2 threshold, by day and night and by class, and the false
boxes on blank images.

    .venv/bin/python benchmarks/sample_speed.py                       # 2,000 images, real size
    .venv/bin/python benchmarks/sample_speed.py --n-train 500 --workers 1
    .venv/bin/python benchmarks/sample_speed.py --image-scale 0.25    # the test suite's size
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conserviz_utils.tools.sample import DETECTIONS_NAME, generate_sample, plan_sample  # noqa: E402

#: MegaDetector 5's recommended threshold: a box at or above it counts as a found animal.
THRESHOLD = 0.2


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pool)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def detection_summary(folder: Path, n_train: int, n_test: int, seed: int) -> str:
    """Lines on how often the simulated detector found the drawn animals, and its false boxes."""
    plan = plan_sample(n_train, n_test, seed)
    document = json.loads((folder / DETECTIONS_NAME).read_text(encoding="utf-8"))
    best = {
        entry["file"]: max((d["conf"] for d in entry["detections"]), default=0.0)
        for entry in document["images"]
    }
    boxes = {entry["file"]: len(entry["detections"]) for entry in document["images"]}
    plan = plan.assign(
        found=[best[f] >= THRESHOLD for f in plan.filepath],
        boxes=[boxes[f] for f in plan.filepath],
        best=[best[f] for f in plan.filepath],
    )
    animals, blanks = plan[plan.species != "blank"], plan[plan.species == "blank"]
    by_light = animals.groupby("night").found.mean()
    by_class = animals.groupby("species").found.mean()
    lines = [
        f"simulated detector: {animals.found.mean():.1%} of {len(animals)} animals found at "
        f"conf >= {THRESHOLD} (day {by_light.get(False, float('nan')):.1%}, "
        f"night {by_light.get(True, float('nan')):.1%})",
        "  by class: " + ", ".join(f"{name} {share:.0%}" for name, share in by_class.items()),
        f"  {len(blanks)} blanks: {blanks.boxes.mean():.2f} boxes each, "
        f"{(blanks.best >= THRESHOLD).mean():.1%} with a box >= {THRESHOLD}, "
        f"highest conf {blanks.best.max():.2f}",
    ]
    return "\n".join(lines)


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
        detections = detection_summary(out, args.n_train, args.n_test, args.seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(report)
    print(
        f"{report.n_images} images in {wall:.1f} s wall, {cpu:.1f} s CPU, "
        f"{report.workers} worker(s): "
        f"{report.images_per_second:.1f} images/s ({report.n_images / cpu:.1f} per CPU-second); "
        f"median JPEG {statistics.median(sizes) / 1000:.1f} KB; "
        f"load average before the end {load:.1f}"
    )
    print(detections)
    return {"seconds": wall, "cpu_seconds": cpu, "images_per_second": report.images_per_second}


if __name__ == "__main__":
    main()
