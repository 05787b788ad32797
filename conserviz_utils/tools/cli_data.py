"""The ``conserviz`` commands that prepare a run's inputs or run the whole course: sample, embed, course."""

from __future__ import annotations

import argparse
import time

from conserviz_utils.tools.cli_common import (
    EXIT_OK,
    Console,
    course_settings,
    data_folder,
    load_data,
    recipe_from_args,
)


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


def run_course(args: argparse.Namespace, console: Console) -> int:
    """``conserviz course``: the headless notebook runner of ``make course``."""
    from conserviz_utils.tools import runner

    forwarded = (["--quick"] if args.quick else []) + (["--data", str(args.data)] if args.data else [])
    forwarded += ["--outputs", str(args.outputs)] if args.outputs else []
    return int(runner.main(forwarded) or EXIT_OK)
