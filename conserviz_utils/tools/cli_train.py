"""The ``conserviz train`` command: head on embeddings, fine-tuning (on several processes), cross-validation."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from conserviz_utils.course.recipe import Recipe
from conserviz_utils.errors import CheckpointError
from conserviz_utils.tools.cli_common import (
    EXIT_BY_SIGNAL, EXIT_OK, Console, UsageError, course_settings, data_folder, load_data, recipe_from_args,
)


def save_recipe(out: Path, recipe: Recipe) -> None:
    """The recipe beside the checkpoint: TOML to edit and pass to --config, JSON for the course."""
    recipe.save_toml(out / "recipe.toml")
    recipe.save(out / "recipe.json")


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
    from conserviz_utils.course.results import train_default_recipe
    from conserviz_utils.course.splits import ensure_splits

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
    from conserviz_utils.course.results import save_course_checkpoint
    from conserviz_utils.course.steps import fine_tune, keep_better_stage, make_loaders
    from conserviz_utils.models import build_model, unfreeze
    from conserviz_utils.runtime.item_seeds import seeded_loader
    from conserviz_utils.tools.run_folder import check_start_model, finish_resume, prepare_resume, resume_provenance

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
        check_start_model(artifacts.checkpoint, data, split, recipe, args.pretrained,
                          f"conserviz train --data {settings.data_dir} --out {args.out}")
        head_log_loss = float((payload.get("metrics") or {}).get("eval_log_loss", math.inf))
    else:
        console.say(f"no {artifacts.checkpoint.name} in {args.out}: fine-tuning from an untrained head "
                    "(--stage both trains the head first)")
        model = build_model(recipe.arch, pretrained=args.pretrained, progress=console.progress)
    head_state = copy.deepcopy(model.state_dict())
    train_loader, eval_loader = make_loaders(data, split, recipe, model, image_cache=artifacts.images)
    resume = args.resume and artifacts.resume.is_file()
    if args.resume and not resume:
        console.say(f"nothing to resume ({artifacts.resume} is missing): starting fine-tuning afresh")
    # The state is resumed only while its record names this run; a fresh start replaces it.
    expected = resume_provenance(data, split, recipe, args.pretrained, artifacts.checkpoint)
    resume = prepare_resume(artifacts.resume, expected, resume, write=distributed.is_main_process())
    distributed.barrier()

    if distributed.world_size() > 1:
        # Every process trains on its share of each epoch: the same datasets, dealt out by rank.
        train_loader = distributed.distributed_loader(train_loader.dataset, recipe.batch_size, shuffle=True,
                                                      seed=recipe.seed, device=device)
        eval_loader = distributed.distributed_loader(eval_loader.dataset, 2 * recipe.batch_size, device=device)
        unfreeze(model)  # before wrapping: DDP syncs only the parameters that train when it is built
        trained = distributed.wrap_model(model, device, sync_batchnorm=args.sync_batchnorm)
        if resume:
            console.say(f"resuming on {distributed.world_size()} processes: the workers' augmentation is drawn "
                        "anew, so the weights will differ slightly from an uninterrupted run")
    else:
        if args.sync_batchnorm:
            console.detail("--sync-batchnorm has no effect on one process")
        # Augmentation seeded per image, not per loader worker: a resumed run redraws it exactly.
        train_loader = seeded_loader(train_loader)
        trained = model
    # The stage notebook 04 and `make course` run: the recipe's optimizer, rates and patience.
    history = fine_tune(trained, train_loader, eval_loader, recipe, device=device, resume_path=artifacts.resume,
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
        finish_resume(artifacts.resume)  # finished: nothing is left that a later --resume could take
    distributed.barrier()
    console.say(f"{choice} → {artifacts.checkpoint}")
    return EXIT_OK


def _cross_validate(args: argparse.Namespace, console: Console, recipe: Recipe, data_dir: Path) -> int:
    """``train --folds K``: one head per site-grouped fold on cached embeddings (conserviz_utils.climb.cv)."""
    if args.folds < 2:
        raise UsageError("argument --folds: needs at least 2 folds")
    if args.stage not in (None, "head"):
        raise UsageError("argument --folds: cross-validation trains heads on embeddings, not --stage "
                         f"{args.stage} (leave --stage out, or use --stage head)")
    from conserviz_utils.course.steps import embed_images
    from conserviz_utils.climb.cv import cross_validate
    from conserviz_utils.files.fileio import atomic_write_csv, atomic_write_json
    from conserviz_utils.models import build_model
    from conserviz_utils.climb.folds import site_folds

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
    out, summary = args.out, result.summary()
    atomic_write_csv(out / "cv_scores.csv", result.scores, what="cross-validation scores")
    atomic_write_json(out / "cv_summary.json", summary, what="cross-validation summary")
    atomic_write_csv(out / "cv_oof_predictions.csv", predictions.oof_probs(), what="out-of-fold predictions")
    test_path = atomic_write_csv(out / "cv_test_predictions.csv", predictions.test_probs(), what="test predictions")
    # No checkpoint here: the recipe goes beside the CV's files, not over a trained model's recipe.toml.
    recipe.save_toml(out / "cv_recipe.toml")
    console.say(f"{summary['folds']}-fold cross-validation by site: out-of-fold log loss {summary['log_loss']:.4f} "
                f"(folds {summary['fold_mean']:.4f} ± {summary['fold_std']:.4f}), accuracy {summary['accuracy']:.3f}")
    console.say(f"test predictions of all {len(result.heads)} heads, averaged → {test_path}")
    console.say(f"submit them: conserviz submit --data {data_dir} --out {out} --predictions {test_path}")
    console.say(f"done in {time.perf_counter() - started:.0f} s; recipe → {out / 'cv_recipe.toml'}")
    return EXIT_OK


def _relaunch_under_torchrun(devices: int, argv: Sequence[str], device: str, console: Console) -> int:
    """Run this same command under ``torchrun --standalone --nproc-per-node=devices``."""
    import torch

    from conserviz_utils.runtime.cpu import available_cpus

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
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // devices)))
    console.detail("running: " + " ".join(command))
    return subprocess.call(command, env=env)
