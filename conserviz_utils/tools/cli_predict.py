"""The ``conserviz`` commands that use a trained model: evaluate, predict and submit."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from conserviz_utils.course.recipe import Recipe
from conserviz_utils.errors import CheckpointError
from conserviz_utils.tools.cli_common import EXIT_OK, Console, course_settings, data_folder, load_data


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


def _inference_inputs(args: argparse.Namespace, console: Console):
    """The data, the course settings (with --batch-size) and the checkpoint's path of a command that predicts."""
    data_dir = data_folder(args)
    checkpoint = checkpoint_path(args)
    data = load_data(data_dir, console)
    recipe = run_recipe(args.out, checkpoint)
    if args.inference_batch_size is not None:
        # prediction_loader uses twice the training batch: halve to get what was asked for.
        recipe = recipe.replace(batch_size=max(1, math.ceil(args.inference_batch_size / 2)))
    return data, course_settings(args.out, data_dir, recipe), checkpoint


def _temperature(args: argparse.Namespace, checkpoint: Path, console: Console) -> float:
    """--temperature, else the one `conserviz evaluate` fitted for this very checkpoint, else 1."""
    from conserviz_utils.tools.run_folder import model_temperature

    if args.temperature is not None:
        return args.temperature
    temperature, where = model_temperature(checkpoint, [args.out / "metrics.json", checkpoint.parent / "metrics.json"])
    if temperature == 1.0:
        console.say(f"temperature 1: {where}")
    else:
        console.detail(f"temperature {temperature:.3f} from {where}")
    return temperature


def _predict_test(args: argparse.Namespace, console: Console):
    """Probabilities for every test image (submission layout) and the data they came from."""
    from conserviz_utils.runtime.checkpoint import load_checkpoint
    from conserviz_utils.course.predictions import prediction_loader
    from conserviz_utils.inference import predict

    data, settings, checkpoint = _inference_inputs(args, console)
    model, _ = load_checkpoint(checkpoint, device="auto", species=data.species)
    temperature = _temperature(args, checkpoint, console)
    loader = prediction_loader(model, data.test_features, settings)
    probs = predict(model, loader, tta=args.tta, temperature=temperature, species=data.species,
                    progress=console.progress)
    if probs.attrs.get("note"):
        console.say(f"warning: {probs.attrs['note']}")
    return probs, data


def run_evaluate(args: argparse.Namespace, console: Console) -> int:
    """``conserviz evaluate``: headline metrics of the model on the eval split, to OUT/metrics.json."""
    from conserviz_utils.runtime.checkpoint import load_checkpoint
    from conserviz_utils.course.predictions import prediction_loader
    from conserviz_utils.course.results import headline_metrics, save_metrics
    from conserviz_utils.course.provenance import write_sidecar
    from conserviz_utils.course.splits import ensure_splits
    from conserviz_utils.inference import predict_logits
    from conserviz_utils.tools.run_folder import metrics_record

    data, settings, checkpoint = _inference_inputs(args, console)
    split = ensure_splits(data, settings)
    model, _ = load_checkpoint(checkpoint, device="auto", species=data.species)
    loader = prediction_loader(model, data.train_features.loc[split.eval], settings)
    metrics = headline_metrics(predict_logits(model, loader, species=data.species, progress=console.progress),
                               data, split)
    path = save_metrics(settings, metrics)
    # The record names the checkpoint scored (--checkpoint may be another run's), by content.
    write_sidecar(path, metrics_record(data, split, checkpoint))
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
    from conserviz_utils.submission import make_submission, read_submission, write_submission

    if args.predictions is not None:
        data = load_data(data_folder(args), console)
        probs = read_submission(args.predictions)
    else:
        probs, data = _predict_test(args, console)
    submission = make_submission(probs, data.submission_format)
    path = write_submission(submission, args.out / "submission.csv", data.submission_format)
    console.say(f"wrote {path}: {len(submission):,} rows x {submission.shape[1]} species, validated")
    return EXIT_OK
