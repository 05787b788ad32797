"""Why the head peaks in its first epoch at full size, and which head recipe works at both sizes.

Embeds the training images of each dataset once with EfficientNet-Lite0 (pretrained, offline;
cached under ``--workdir``, so only the first run pays the minutes), then trains the course's
head on those embeddings with a few recipes, exactly as ``course.train_head`` does: the site
split of notebook 02 (``split_by_site``, eval share 0.25, seed 0), early stopping on a held-out
slice of the training sites (``holdout_split``), and the kept head scored on the eval sites.
For every epoch it prints the held-out and the eval log loss, so the shape of each curve can be
read, not only the kept epoch.

    python benchmarks/head_recipe.py --workdir /tmp/head-recipe            # both sizes
    python benchmarks/head_recipe.py --workdir /tmp/head-recipe --only sample

The sample (2,000 train images) is generated into the workdir when it is missing; the full-size
folder (16,488 train images) defaults to ``data/sample-full-size``. Log losses do not depend on
the machine; the seconds do (the CPU model and load are printed).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conserviz_utils.callbacks import Callback
from conserviz_utils.course.splits import EVAL_SHARE
from conserviz_utils.course.steps import (
    embedding_transform,
    holdout_split,
    training_ids,
)
from conserviz_utils.data import load_competition
from conserviz_utils.course.embeddings import compute_embeddings
from conserviz_utils.course.features import (
    fit_head,
    predict_from_embeddings,
    predict_logits_from_embeddings,
)
from conserviz_utils.metrics import (
    accuracy,
    apply_temperature,
    fit_temperature,
    log_loss,
)
from conserviz_utils.models import build_model
from conserviz_utils.course.recipe import Recipe
from conserviz_utils.split import split_by_site

#: Head recipes to compare: name → Recipe fields changed from the baseline (issue 11's defaults:
#: lr 1e-3, weight decay 1e-4, batch 64, patience 3). ``STEPS_BATCH`` sizes the batch from the
#: data, so an epoch is about ``TARGET_STEPS`` steps at every size (64 on the sample, 512 at full size).
BASELINE = {"head_lr": 1e-3, "head_weight_decay": 1e-4, "head_batch_size": 64, "head_patience": 3,
            "head_epochs": 30}
STEPS_BATCH = "steps"
TARGET_STEPS = 20
RECIPES: dict[str, dict] = {
    "baseline lr1e-3 b64": {},
    "lr3e-4 b64": {"head_lr": 3e-4},
    "lr1e-4 b64": {"head_lr": 1e-4},
    "lr1e-3 b256": {"head_batch_size": 256},
    "lr1e-3 b512": {"head_batch_size": 512},
    "lr3e-4 b256": {"head_lr": 3e-4, "head_batch_size": 256},
    "lr1e-3 b64 wd1e-1": {"head_weight_decay": 1e-1},
    "lr1e-3 b64 wd1": {"head_weight_decay": 1.0},
    "lr1e-3 b64 wd3": {"head_weight_decay": 3.0},
    "lr1e-3 b64 wd1 p6": {"head_weight_decay": 1.0, "head_patience": 6},
    "lr1e-3 b256 wd1": {"head_batch_size": 256, "head_weight_decay": 1.0},
    "lr1e-3 b~n/20 wd1": {"head_batch_size": STEPS_BATCH, "head_weight_decay": 1.0},
    "lr1e-3 b64 wd1 hold.25": {"head_weight_decay": 1.0, "head_holdout": 0.25},
    "lr1e-3 b64 p6": {"head_patience": 6},
    "lr1e-3 b~n/20": {"head_batch_size": STEPS_BATCH},
    "lr1e-3 b~n/20 p6": {"head_batch_size": STEPS_BATCH, "head_patience": 6},
}


def steps_batch(n_fit: int) -> int:
    """The power-of-two batch that gives about ``TARGET_STEPS`` steps per epoch over ``n_fit`` embeddings."""
    return 2 ** max(4, round(math.log2(max(1, n_fit) / TARGET_STEPS)))


class EvalEveryEpoch(Callback):
    """Scores the head on the eval images after every epoch (for the table only; nothing reads it back).

    Besides the raw eval log loss it records the accuracy and the log loss after temperature
    scaling: with the temperature fitted on the held-out training sites (what a run could do
    honestly) and fitted on the eval images themselves (what notebook 05 reports, optimistic).
    """

    def __init__(self, head, embeddings, labels, watch_embeddings, watch_labels) -> None:
        self.head, self.embeddings, self.labels = head, embeddings, labels
        self.watch_embeddings, self.watch_labels = watch_embeddings, watch_labels
        self.losses: list[float] = []
        self.accuracies: list[float] = []
        self.calibrated_on_held_out: list[float] = []
        self.calibrated_on_eval: list[float] = []

    def on_epoch_end(self, trainer) -> None:
        # Inference mode, no random numbers drawn: training goes on exactly as without this callback.
        logits = predict_logits_from_embeddings(self.head, self.embeddings)
        self.losses.append(log_loss(self.labels, apply_temperature(logits, 1.0)))
        self.accuracies.append(accuracy(self.labels, apply_temperature(logits, 1.0)))
        watch_t = fit_temperature(self.watch_labels, predict_logits_from_embeddings(self.head, self.watch_embeddings))
        self.calibrated_on_held_out.append(log_loss(self.labels, apply_temperature(logits, watch_t)))
        eval_t = fit_temperature(self.labels, logits)
        self.calibrated_on_eval.append(log_loss(self.labels, apply_temperature(logits, eval_t)))


def cpu_and_load() -> str:
    """The CPU model (lscpu) and the load average, for the record."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{model}, {os.cpu_count()} CPUs, load average {load}, torch {torch.__version__}"


def dataset(name: str, args) -> Path:
    """The data folder of one size (the sample is generated into the workdir when missing)."""
    if name == "full":
        return Path(args.full_data)
    folder = Path(args.sample_data) if args.sample_data else Path(args.workdir) / "sample"
    if not (folder / "conserviz-sample.json").is_file():
        from conserviz_utils.tools.sample import generate_sample

        print(f"generating the 2,000-image sample into {folder} …", flush=True)
        generate_sample(folder, n_train=2000, n_test=500, seed=0, progress=False)
    return folder


def sweep(name: str, args) -> list[dict]:
    """Embed one dataset (cached) and train the head with every recipe; one row per recipe."""
    data = load_competition(dataset(name, args))
    split = split_by_site(data.train_features, data.train_labels, test_size=EVAL_SHARE, seed=0)
    model = build_model("efficientnet_lite0", seed=0, progress=False)
    started = time.perf_counter()
    embeddings = compute_embeddings(model, data.train_features, transform=embedding_transform(model.arch),
                                    cache_dir=Path(args.workdir) / "features", batch_size=64,
                                    precision=args.precision, progress=True)
    print(f"[{name}] {len(data.train_features):,} train images embedded ({args.precision}) in "
          f"{time.perf_counter() - started:.0f} s ({'reused' if embeddings.reused else 'computed'}); "
          f"{cpu_and_load()}", flush=True)
    eval_ids = split.eval
    eval_embeddings, eval_labels = embeddings.select(eval_ids), data.train_labels.loc[eval_ids]
    start_head = copy.deepcopy(model.head.state_dict())
    rows = []
    for recipe_name, changes in RECIPES.items():
        if args.recipes and recipe_name not in args.recipes:
            continue
        fields = {**BASELINE, **changes}
        by_steps = fields["head_batch_size"] == STEPS_BATCH
        recipe = Recipe(**{**fields, "head_batch_size": 64 if by_steps else fields["head_batch_size"]})
        model.head.load_state_dict(start_head)  # the same seeded start for every recipe
        train_ids = training_ids(split.train, data.train_labels, recipe)
        fit_ids, watch_ids = holdout_split(data, train_ids, recipe)
        if by_steps:
            recipe = recipe.replace(head_batch_size=steps_batch(len(fit_ids)))
        scorer = EvalEveryEpoch(model.head, eval_embeddings, eval_labels, embeddings.select(watch_ids),
                                data.train_labels.loc[watch_ids])
        optimizer = torch.optim.AdamW(model.head.parameters(), lr=recipe.head_lr,
                                      weight_decay=recipe.head_weight_decay)
        began = time.perf_counter()
        history = fit_head(model.head, embeddings.select(fit_ids), data.train_labels.loc[fit_ids],
                           embeddings.select(watch_ids), data.train_labels.loc[watch_ids],
                           optimizer=optimizer, epochs=recipe.head_epochs, batch_size=recipe.head_batch_size,
                           early_stopping=recipe.head_patience, seed=recipe.seed, progress=False,
                           callbacks=[scorer])
        seconds = time.perf_counter() - began
        held_out = history.dropna(subset=["eval_log_loss"]).groupby("epoch")["eval_log_loss"].last()
        kept = int(held_out.idxmin())
        kept_eval = log_loss(eval_labels, predict_from_embeddings(model.head, eval_embeddings))
        steps = -(-len(fit_ids) // recipe.head_batch_size)
        row = {
            "data": name, "recipe": recipe_name, "batch": recipe.head_batch_size, "fit images": len(fit_ids),
            "watch images": len(watch_ids), "steps/epoch": steps,
            "epochs run": len(held_out), "kept epoch": kept, "held-out LL": round(float(held_out.min()), 4),
            "eval LL (kept)": round(kept_eval, 4), "best eval LL (any epoch)": round(min(scorer.losses), 4),
            "best eval epoch": 1 + scorer.losses.index(min(scorer.losses)),
            "eval acc (kept)": round(scorer.accuracies[kept - 1], 4),
            "eval LL, T from held-out (kept)": round(scorer.calibrated_on_held_out[kept - 1], 4),
            "eval LL, T from eval (kept)": round(scorer.calibrated_on_eval[kept - 1], 4),
            "seconds": round(seconds, 1),
            "held-out per epoch": [round(float(v), 3) for v in held_out],
            "eval per epoch": [round(v, 3) for v in scorer.losses],
            "eval acc per epoch": [round(v, 3) for v in scorer.accuracies],
            "eval T-held-out per epoch": [round(v, 3) for v in scorer.calibrated_on_held_out],
            "eval T-eval per epoch": [round(v, 3) for v in scorer.calibrated_on_eval],
        }
        row["precision"] = args.precision
        rows.append(row)
        print(f"[{name}] {recipe_name:22s} steps/epoch {steps:4d}  kept epoch {kept:2d}/{len(held_out):2d}  "
              f"held-out {row['held-out LL']:.3f}  eval {kept_eval:.3f}  "
              f"(best eval {row['best eval LL (any epoch)']:.3f} at epoch {row['best eval epoch']})", flush=True)
        print(f"      {'held-out per epoch:':27s}{row['held-out per epoch']}", flush=True)
        for key in ("eval per epoch", "eval acc per epoch", "eval T-held-out per epoch", "eval T-eval per epoch"):
            print(f"      {key + ':':27s}{row[key]}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="cache of embeddings (and the sample)")
    parser.add_argument("--full-data", default=str(ROOT / "data" / "sample-full-size"),
                        help="the competition-size folder (16,488 train images)")
    parser.add_argument("--sample-data", default=None, help="the 2,000-image sample (default: generated)")
    parser.add_argument("--only", choices=("sample", "full"), default=None, help="one size only")
    parser.add_argument("--recipes", nargs="*", default=None, help="names of RECIPES to run (default all)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                        help="of the embeddings (bf16 is 2-3x faster on CPUs with AVX512_BF16)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for name in ("sample", "full"):
        if args.only in (None, name):
            rows += sweep(name, args)
    table = pd.DataFrame(rows).drop(columns=[c for c in rows[0] if c.endswith("per epoch")])
    print()
    print(cpu_and_load())
    print(table.to_string(index=False))
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_and_load(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
