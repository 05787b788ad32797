"""Fine-tune only EfficientNet-Lite0's last blocks: the eval log loss and the epoch's wall time, on one split.

The course fine-tunes the whole network, the longest step of notebook 04 at the competition's
size. `fine_tune_speed.py` measured that freezing the first blocks makes a training step up to
3.3x faster; this measures what it costs in accuracy. It runs the course's own steps (the site
split, the embeddings, the head, `fit` with the recipe's optimizer and rate) on a data folder and
fine-tunes from the head-only model with the first ``--frozen-blocks`` of the 16 blocks frozen.
A callback keeps the frozen part in eval mode, so its BatchNorm statistics stay the pretrained
ones, as the course's frozen backbone's do.

    python benchmarks/partial_fine_tune.py --data data/sample-full-size --out /tmp/partial --frozen-blocks 12
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conserviz_utils.callbacks import Callback  # noqa: E402
from conserviz_utils.course.splits import ensure_splits, load_course_data  # noqa: E402
from conserviz_utils.course.steps import (  # noqa: E402
    embed_images,
    make_loaders,
    make_optimizer,
    score_head,
    train_head,
)
from conserviz_utils.models import build_model, unfreeze  # noqa: E402
from conserviz_utils.course.recipe import Recipe  # noqa: E402
from conserviz_utils.course.settings import CourseSettings  # noqa: E402
from conserviz_utils.train import fit  # noqa: E402


class KeepPrefixFrozen(Callback):
    """Hold the frozen first modules of the backbone in eval mode at every epoch's start."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.modules = modules

    def on_epoch_start(self, trainer) -> None:
        for module in self.modules:
            module.eval()


def freeze_prefix(model, frozen_blocks: int) -> list[torch.nn.Module]:
    """Train everything but the stem and the first ``frozen_blocks`` blocks; returns the frozen modules."""
    backbone = model.backbone
    frozen = [backbone._conv_stem, backbone._bn0, *backbone._blocks[:frozen_blocks]]
    unfreeze(model)  # the course's stage-2 switch, then part of the backbone is frozen again
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the run's output folder (embeddings are cached there)")
    parser.add_argument("--frozen-blocks", type=int, default=12, help="of EfficientNet-Lite0's 16 blocks")
    args = parser.parse_args(argv)

    settings = dataclasses.replace(CourseSettings.from_env({}), data_dir=args.data, output_dir=args.out)
    recipe = Recipe.from_settings(settings)
    data = load_course_data(settings, verbose=False)
    split = ensure_splits(data, settings, verbose=False)
    model = build_model(recipe.arch, seed=recipe.seed)
    embeddings = embed_images(model, data.train_features, settings)
    train_head(model.head, embeddings, data, split.train, recipe, progress=False)
    head = score_head(model.head, embeddings, data, split.eval)
    print(f"head only: eval log loss {head['log_loss']:.3f}, accuracy {head['accuracy']:.3f}", flush=True)

    frozen = freeze_prefix(model, args.frozen_blocks)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, recipe)
    train_loader, eval_loader = make_loaders(data, split, recipe, model)
    started = time.perf_counter()
    history = fit(model, train_loader, eval_loader, epochs=recipe.fine_tune_epochs, optimizer=optimizer,
                  early_stopping=recipe.fine_tune_patience, seed=recipe.seed, callbacks=[KeepPrefixFrozen(frozen)])
    seconds = time.perf_counter() - started
    last = history[history["phase"] == "eval"].iloc[-1]
    result = {
        "frozen_blocks": args.frozen_blocks, "trainable_parameters": sum(p.numel() for p in trainable),
        "train_images": len(train_loader.dataset), "eval_images": len(split.eval),
        "head_eval_log_loss": head["log_loss"], "fine_tuned_eval_log_loss": float(last["eval_log_loss"]),
        "fine_tuned_eval_accuracy": float(last["eval_accuracy"]), "fit_seconds": seconds,
        "precision": history.attrs.get("precision"),
    }
    print(json.dumps(result, indent=1))
    (args.out / f"partial_fine_tune_{args.frozen_blocks}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
