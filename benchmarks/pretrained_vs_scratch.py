"""What ImageNet pretraining buys: the course's default recipe with and without pretrained weights.

Runs `course.results.train_default_recipe` (head on cached embeddings, then one fine-tuning epoch,
keeping the better stage) twice on the same data and the same site-grouped split — once from the offline
ImageNet weights, once from random weights — and scores each saved checkpoint on the eval sites
against the majority and uniform baselines.

    .venv/bin/python benchmarks/pretrained_vs_scratch.py            # data/sample (2,000 train)
    CONSERVIZ_DATA=/path/to/competition .venv/bin/python benchmarks/pretrained_vs_scratch.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from conserviz_utils.course.predictions import eval_logits
from conserviz_utils.course.results import ensure_checkpoint, headline_metrics, train_default_recipe
from conserviz_utils.course.settings import CourseSettings
from conserviz_utils.course.splits import ensure_splits, load_course_data
from conserviz_utils.runtime.checkpoint import load_checkpoint


def evaluate_checkpoint(data, splits, settings: CourseSettings, progress: bool = True) -> dict:
    """Reload the saved checkpoint (never an in-memory model) and compute `headline_metrics`."""
    model, checkpoint = load_checkpoint(ensure_checkpoint(data, splits, settings))
    logits = eval_logits(model, checkpoint, data, splits, settings, progress=progress, verbose=False)
    return headline_metrics(logits, data, splits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/pretrained_vs_scratch"))
    args = parser.parse_args()

    settings = dataclasses.replace(CourseSettings.from_env(), output_dir=args.out)
    data = load_course_data(settings)
    splits = ensure_splits(data, settings)
    print(f"{data!r}\nsite split: {len(splits[0]):,} train / {len(splits[1]):,} eval images")
    results = {}
    for pretrained in (True, False):
        run = dataclasses.replace(settings, output_dir=args.out / f"pretrained-{pretrained}")
        run.output_dir.mkdir(parents=True, exist_ok=True)
        (run.output_dir / "splits.csv").write_bytes(settings.artifacts.splits.read_bytes())
        started = time.perf_counter()
        train_default_recipe(data, splits, run, progress=False, pretrained=pretrained)
        metrics = evaluate_checkpoint(data, splits, run, progress=False)
        metrics["seconds"] = time.perf_counter() - started
        results["pretrained" if pretrained else "random init"] = metrics

    first = next(iter(results.values()))
    print(f"\n{'':14s} {'accuracy':>9s} {'log loss':>9s} {'calibrated':>11s} {'seconds':>8s}")
    for name, m in results.items():
        print(f"{name:14s} {m['accuracy']:9.3f} {m['log_loss']:9.3f} {m['calibrated_log_loss']:11.3f} {m['seconds']:8.0f}")
    print(f"{'majority':14s} {first['majority_accuracy']:9.3f} {first['majority_log_loss']:9.3f}")
    print(f"{'uniform':14s} {0.125:9.3f} {first['uniform_log_loss']:9.3f}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
