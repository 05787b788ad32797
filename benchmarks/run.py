"""The seed walkthrough's pipeline against conserviz's, side by side, in one run on this machine.

What it measures, on the same generated sample images at the competition's two main sizes
(640×360 and 960×540):

(a) training images/s of ResNet50: the seed pipeline (Pillow open → Resize((224, 224)) →
    ToTensor → Normalize, DataLoader(batch_size=32) without workers, fp32, SGD(lr=0.001,
    momentum=0.9)) against conserviz's (``ImagesDataset`` with JPEG draft-mode decoding,
    ``make_loader`` workers, ``train.fit``: channels-last, ``precision="auto"``);
(b) the same for inference (the seed's no_grad loop against ``inference.predict``);
(c) the input pipeline alone, images/s on one core (and from the pre-resized image cache);
(d) end to end on the sample with a site-grouped eval split: the seed recipe (its loop, one
    epoch on a 50 % subset split 75/25 at random; EfficientNet-Lite0 pretrained backbone under
    the seed head) against the course's default (embeddings computed once with the frozen
    backbone, then the head trained on them), wall time and eval log loss on the same eval set;
(e) peak memory (RSS) of ResNet50 training at batch 32, each pipeline in a fresh process;
(f) head training over 16,000 cached 1,280-dim embeddings, in seconds;
(g) the precision table: ResNet50 training and inference (batch 32) and EfficientNet-Lite0
    inference (batch 64) on random tensors, images/s in NCHW fp32 (the walkthrough's layout),
    channels-last fp32 and channels-last bf16, and what ``precision="auto"`` picks from its own
    measurement (``device.choose_precision`` with the cache off);
(h) with ``--full-size``: every notebook of the course, through the course runner in fresh
    kernels from a cold start, timed on the default 2,000 / 500 sample and on a
    competition-size one (16,488 / 4,464 images, generated once and kept in ``data/``).

ResNet50 runs with random weights (its ImageNet weights need a download; speed does not depend
on the values). Each training, end-to-end and precision measurement runs in a fresh child
process, so memory peaks and caches do not leak from one into the next. Throughputs are
steady-state: the first batch (worker start-up, kernel selection) is left out.

    python benchmarks/run.py                  # (a)-(g)
    python benchmarks/run.py --quick          # a reduced run in a few minutes (checks it works)
    python benchmarks/run.py --precision-only # (g) alone
    python benchmarks/run.py --compile        # + torch.compile of Lite0 inference, cold and warm
    python benchmarks/run.py --full-size      # + (h); the first run generates 21,000 images
    python benchmarks/run.py --full-size --course-only   # (h) alone
    python benchmarks/run.py --data data/sample --out /tmp/results.json

It prints the tables, each under the CPU's model name (as ``lscpu`` shows it) and the load
average, and writes ``benchmarks/results.json`` (``results-precision.json`` with
``--precision-only``, ``results-full-size.json`` with ``--full-size``) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from conserviz_utils import SPECIES

DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"
REAL_SIZES = ((640, 360), (960, 540))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Every section results.json holds (tests/test_benchmark.py checks them all).
SECTIONS = ("machine", "settings", "train", "inference", "input_pipeline", "end_to_end", "memory", "head_training",
            "embeddings", "targets")


@dataclass(frozen=True)
class Settings:
    """How big a run is. The full run measures; the quick one proves the benchmark still works."""

    n_train: int  # training images of the generated sample
    batch_size: int  # training and seed-inference batch (the walkthrough's 32)
    predict_batch_size: int  # conserviz's prediction batch
    train_batches: int  # batches timed per training pipeline (plus one warm-up)
    inference_batches: int
    pipeline_images: int  # images decoded per input-pipeline measurement
    head_rows: int  # cached embeddings the head trains on in (f)
    head_epochs: int  # epochs of (f); (d) uses the course's own setting
    finetune: bool  # also measure one epoch of full fine-tuning after the head in (d)
    precision_image_size: int  # image side of the precision table's random tensors in (g)
    precision_steps: int  # timed steps per precision and layout in (g), after one warm-up step
    embedding_images: int  # images each pipeline embeds in (i)


FULL = Settings(n_train=2000, batch_size=32, predict_batch_size=64, train_batches=5, inference_batches=6,
                pipeline_images=400, head_rows=16_000, head_epochs=30, finetune=True,
                precision_image_size=224, precision_steps=3, embedding_images=640)
QUICK = Settings(n_train=160, batch_size=4, predict_batch_size=8, train_batches=3, inference_batches=3,
                 pipeline_images=24, head_rows=16_000, head_epochs=1, finetune=False,
                 precision_image_size=64, precision_steps=1, embedding_images=48)

#: (g) the precision table's rows: architecture, purpose, and which Settings batch it runs at.
PRECISION_WORKLOADS = (
    ("resnet50", "train", "batch_size"),
    ("resnet50", "inference", "batch_size"),
    ("efficientnet_lite0", "inference", "predict_batch_size"),
)


# --------------------------------------------------------------------------------------------
# The seed walkthrough's pipeline, as it was written
# --------------------------------------------------------------------------------------------


class SeedImagesDataset(Dataset):
    """The walkthrough's dataset: Pillow open, Resize((224, 224)), ToTensor, Normalize."""

    def __init__(self, x_df: pd.DataFrame, y_df: pd.DataFrame | None = None) -> None:
        self.data = x_df
        self.label = y_df
        self.transform = transforms.Compose(
            [transforms.Resize((224, 224)), transforms.ToTensor(), transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]
        )

    def __getitem__(self, index: int) -> dict:
        image = Image.open(self.data.iloc[index]["path"]).convert("RGB")
        image = self.transform(image)
        image_id = self.data.index[index]
        if self.label is None:
            return {"image_id": image_id, "image": image}
        label = torch.tensor(self.label.iloc[index].values, dtype=torch.float)
        return {"image_id": image_id, "image": image, "label": label}

    def __len__(self) -> int:
        return len(self.data)


def seed_train_epoch(model: nn.Module, loader) -> list[float]:
    """The walkthrough's training loop for one epoch: SGD(lr=0.001, momentum=0.9), fp32."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    model.train()
    losses = []
    for batch in loader:
        optimizer.zero_grad()
        outputs = model(batch["image"])
        loss = criterion(outputs, batch["label"])
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
    return losses


def seed_predict(model: nn.Module, loader) -> pd.DataFrame:
    """The walkthrough's prediction loop: eval mode, no_grad, softmax, one frame per batch."""
    collected = []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            logits = model.forward(batch["image"])
            preds = nn.functional.softmax(logits, dim=1)
            collected.append(pd.DataFrame(preds.detach().numpy(), index=batch["image_id"], columns=list(SPECIES)))
    return pd.concat(collected)


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


class Timed:
    """Wraps a loader: yields its first ``limit`` batches and notes when each was handed out."""

    def __init__(self, loader, limit: int) -> None:
        self.loader = loader
        self.limit = limit
        # precision="auto" reads the loader's batch size to probe the workload; without it, it
        # cannot measure and keeps the fp32 rule.
        self.batch_size = getattr(loader, "batch_size", None)
        self.stamps: list[float] = []
        self.sizes: list[int] = []

    def __len__(self) -> int:
        return self.limit

    def __iter__(self):
        for number, batch in enumerate(self.loader):
            if number == self.limit:
                break
            self.stamps.append(time.perf_counter())
            self.sizes.append(len(batch["image"]))
            yield batch

    def steady_rate(self) -> float:
        """Images per second from the second batch handed out to the last one.

        That window holds the work on batches 2 .. n-1 and the loading of batches 3 .. n, so
        the first batch's start-up costs (workers, kernel selection) stay out of it.
        """
        if len(self.stamps) < 3:
            raise RuntimeError("steady_rate needs at least 3 batches")
        return sum(self.sizes[1:-1]) / (self.stamps[-1] - self.stamps[1])


def peak_rss_mb() -> dict:
    """Peak resident memory of this process and of its finished children (loader workers), MB."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # KiB on Linux, bytes on macOS
    return {
        "main_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
        "workers_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1),
    }


def repeated(features: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` rows cycling through ``features``, with unique ids (so any count can be timed)."""
    rows = features.iloc[np.arange(n) % len(features)].copy()
    rows.index = pd.Index([f"{image_id}-{i}" for i, image_id in enumerate(rows.index)], name="id")
    return rows


# --------------------------------------------------------------------------------------------
# Child processes: one fresh process per training or end-to-end measurement
# --------------------------------------------------------------------------------------------


def _load(args: dict):
    from conserviz_utils.data import load_competition

    data = load_competition(args["data"])
    return data, pd.read_csv(args["timing_ids"]).squeeze("columns").tolist()


def child_train(args: dict) -> dict:
    """(a) and (e): steady-state training images/s of ResNet50 and the process's peak RSS."""
    from conserviz_utils.data import ImagesDataset, default_transform, make_loader
    from conserviz_utils.models import build_model
    from conserviz_utils.train import fit

    data, ids = _load(args)
    n = args["batches"] * args["batch_size"]
    features = repeated(data.train_features.loc[ids], n)
    labels = data.train_labels.loc[[i.rsplit("-", 1)[0] for i in features.index]].set_axis(features.index)
    model = build_model("resnet50", pretrained=False, head="seed", seed=0)
    if args["pipeline"] == "seed":
        timed = Timed(DataLoader(SeedImagesDataset(features, labels), batch_size=args["batch_size"]), args["batches"])
        seed_train_epoch(model, timed)
        precision = "fp32"
    else:
        loader = make_loader(ImagesDataset(features, labels, default_transform()), batch_size=args["batch_size"], shuffle=True)
        timed = Timed(loader, args["batches"])
        history = fit(model, timed, epochs=1, device="cpu", precision="auto", seed=0, progress=False)
        precision = f"{history.attrs['precision']}, {history.attrs['precision_source']}"
        del loader, timed.loader
    gc.collect()  # lets persistent loader workers exit, so their peak memory is counted
    return {"images_per_second": timed.steady_rate(), "precision": precision, "batch_size": args["batch_size"],
            "timed_batches": len(timed.stamps) - 2, "peak_rss": peak_rss_mb()}


def child_seed_recipe(args: dict) -> dict:
    """(d) the seed recipe: 50 % subset, random 75/25 split, one epoch of its loop, predict eval."""
    from conserviz_utils.metrics import accuracy, log_loss
    from conserviz_utils.models import build_model
    from conserviz_utils.split import split_stratified

    data, _ = _load(args)
    train_ids = pd.Index(args["train_ids"])
    eval_ids = pd.Index(args["eval_ids"])
    started = time.perf_counter()
    model = build_model("efficientnet_lite0", pretrained=True, head="seed", seed=0)
    own_train, _ = split_stratified(data.train_labels.loc[train_ids], test_size=0.25, frac=0.5, seed=0)
    loader = DataLoader(SeedImagesDataset(data.train_features.loc[own_train], data.train_labels.loc[own_train]), batch_size=32)
    seed_train_epoch(model, loader)
    trained = time.perf_counter()
    probs = seed_predict(model, DataLoader(SeedImagesDataset(data.train_features.loc[eval_ids]), batch_size=32))
    done = time.perf_counter()
    eval_labels = data.train_labels.loc[eval_ids]
    return {
        "recipe": "seed: 50% subset, random stratified 75/25 split, 1 epoch SGD fp32 on "
        f"{len(own_train)} images, EfficientNet-Lite0 (pretrained) + seed head",
        "train_images": len(own_train),
        "wall_seconds": done - started,
        "phases": {"build_and_train": trained - started, "predict_eval": done - trained},
        "eval_log_loss": log_loss(eval_labels, probs),
        "eval_accuracy": accuracy(eval_labels, probs),
        "peak_rss": peak_rss_mb(),
    }


def child_course_recipe(args: dict) -> dict:
    """(d) the course's default, through the very helpers notebook 04 calls.

    ``embed_images`` freezes the backbone and embeds every training image once (cached),
    ``train_head`` trains the head on the train embeddings of the site split; optionally
    ``fine_tune`` then trains the whole network for one epoch.
    """
    from conserviz_utils.course.steps import (
        embed_images,
        fine_tune,
        make_loaders,
        train_head,
    )
    from conserviz_utils.course.features import fit_head, predict_from_embeddings
    from conserviz_utils.metrics import accuracy, log_loss
    from conserviz_utils.models import build_model
    from conserviz_utils.course.recipe import Recipe
    from conserviz_utils.course.settings import CourseSettings

    data, _ = _load(args)
    splits = (pd.Index(args["train_ids"], name="id"), pd.Index(args["eval_ids"], name="id"))
    settings = CourseSettings(output_dir=Path(args["workdir"]) / "course", arch="efficientnet_lite0", epochs=1, seed=0)
    course_recipe = Recipe.from_settings(settings)
    shutil.rmtree(settings.output_dir, ignore_errors=True)  # a cold start: nothing computed yet
    eval_labels = data.train_labels.loc[splits[1]]

    def recipe() -> dict:
        started = time.perf_counter()
        model = build_model(settings.arch, progress=False)
        built = time.perf_counter()
        embeddings = embed_images(model, data.train_features, settings, progress=False)
        embedded = time.perf_counter()
        history = train_head(model.head, embeddings, data, splits[0], course_recipe, progress=False)
        trained = time.perf_counter()
        probs = predict_from_embeddings(model.head, embeddings.select(splits[1]))
        done = time.perf_counter()
        return {
            "model": model,
            "reused": embeddings.reused,
            "wall_seconds": done - started,
            "phases": {"build": built - started, "embeddings": embedded - built, "head": trained - embedded,
                       "predict_eval": done - trained},
            "head_batches": int(history.step.max()),
            "eval_log_loss": log_loss(eval_labels, probs),
            "eval_accuracy": accuracy(eval_labels, probs),
        }

    first = recipe()
    rss = peak_rss_mb()
    # notebook 04's train_head keeps the epoch with the best log loss on held-out training sites (never
    # the eval images); the seed recipe has no such choice. The same head trained for all its epochs
    # shows what that choice is worth.
    embeddings = embed_images(first["model"], data.train_features, settings, progress=False)
    unselected = {}
    for batch_size in (64, 256):  # the course's batch, and fit_head's default
        head = build_model(settings.arch, pretrained=False, seed=0).head
        fit_head(head, embeddings.select(splits[0]), data.train_labels, epochs=settings.head_epochs,
                 batch_size=batch_size, seed=settings.seed, progress=False)
        probs = predict_from_embeddings(head, embeddings.select(splits[1]))
        unselected[f"batch_{batch_size}"] = {"eval_log_loss": log_loss(eval_labels, probs),
                                             "eval_accuracy": accuracy(eval_labels, probs)}
    again = recipe()  # the same cell run again later: the embeddings come from the cache
    result = {key: value for key, value in first.items() if key != "model"}
    result.update(
        recipe=f"course default: {settings.arch} (pretrained, frozen) embeddings of all {len(data.train_features)} "
        f"training images computed once, seed head trained on the {len(splits[0])} train-side embeddings "
        f"for up to {settings.head_epochs} epochs with early stopping on held-out training sites "
        "(course.embed_images + course.train_head, as in notebook 04)",
        train_images=len(splits[0]),
        peak_rss=rss,
        full_image_tensor_mb=round(len(data.train_features) * 3 * 224 * 224 * 4 / 2**20, 1),
        rerun_with_cached_embeddings={"wall_seconds": again["wall_seconds"], "reused": again["reused"],
                                      "eval_log_loss": again["eval_log_loss"]},
        head_without_early_stopping={"epochs": settings.head_epochs, **unselected},
    )
    if args["finetune"]:
        started = time.perf_counter()
        model = first["model"]
        train_loader, eval_loader = make_loaders(data, splits, course_recipe, model)
        history = fine_tune(model, train_loader, eval_loader, course_recipe, progress=False)
        last = history.dropna(subset=["eval_log_loss"]).iloc[-1]
        result["finetune"] = {
            "recipe": "+ course.fine_tune: 1 epoch of the whole network (AdamW lr 1e-4, train_transform)",
            "wall_seconds": time.perf_counter() - started,
            "eval_log_loss": float(last.eval_log_loss),
            "eval_accuracy": float(last.eval_accuracy),
        }
    return result


def child_precision(args: dict) -> dict:
    """(g) one row of the precision table: NCHW fp32, channels-last fp32 and bf16, and auto's pick.

    Random tensors, no data loading, steady state (one warm-up step per column left out).
    ``choose_precision`` with the cache off makes the channels-last measurement itself — it is
    exactly what ``precision="auto"`` would measure on first use — and its pick is the last column.
    """
    from conserviz_utils.models import build_model
    from conserviz_utils.runtime.cpu import time_precisions
    from conserviz_utils.runtime.device import choose_precision

    model = build_model(args["arch"], pretrained=False, head="seed", seed=0)
    batch, purpose, size, steps = args["batch_size"], args["purpose"], args["image_size"], args["steps"]
    nchw = time_precisions(model, batch, purpose, ("fp32",), size, channels_last=False, steps=steps)
    auto = choose_precision("auto", "cpu", model, batch, purpose, size, cache=False, steps=steps)
    if auto.fp32_seconds is None:  # auto did not measure (no native bf16): time the columns anyway
        seconds = time_precisions(model, batch, purpose, ("fp32", "bf16"), size, steps=steps)
    else:
        seconds = {"fp32": auto.fp32_seconds, "bf16": auto.bf16_seconds}
    rates = {"nchw_fp32": batch / nchw["fp32"], "channels_last_fp32": batch / seconds["fp32"],
             "channels_last_bf16": batch / seconds["bf16"]}
    picked = rates["channels_last_bf16" if auto.precision == "bf16" else "channels_last_fp32"]
    return {"arch": args["arch"], "purpose": purpose, "batch_size": batch, "image_size": size, "steps": steps,
            "images_per_second": rates, "auto": {"precision": auto.precision, "source": auto.source,
                                                 "reason": auto.reason, "images_per_second": picked,
                                                 "probe_seconds": auto.probe_seconds},
            "threads": torch.get_num_threads(), "load_average": round(os.getloadavg()[0], 2)}


def child_compile(args: dict) -> dict:
    """torch.compile of EfficientNet-Lite0 inference: first-batch cost and steady images/s.

    Runs in a process whose inductor cache folder is given (fresh: a cold compile, as on a
    learner's first run; reused: a warm one, as on a re-run).
    """
    from conserviz_utils.runtime.device import autocast
    from conserviz_utils.models import build_model

    cpu = torch.device("cpu")
    backbone = build_model("efficientnet_lite0", pretrained=False, seed=0).backbone.eval()
    backbone = backbone.to(memory_format=torch.channels_last)
    size, batch = args["image_size"], args["batch_size"]
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    images = images.contiguous(memory_format=torch.channels_last)
    forward, note = torch.compile(backbone), None
    seconds = []
    with torch.inference_mode(), autocast(cpu, args["precision"]):
        for _ in range(1 + args["steps"]):
            started = time.perf_counter()
            try:
                forward(images)
            except Exception as error:  # noqa: BLE001 - no C++ compiler, an unsupported operator: time eager
                if forward is backbone:
                    raise
                first_line = (str(error).strip().splitlines() or [""])[0][:200]
                forward, note = backbone, f"torch.compile failed ({type(error).__name__}: {first_line}); ran eagerly"
                forward(images)
            seconds.append(time.perf_counter() - started)
    return {"precision": args["precision"], "batch_size": batch, "compiled": note is None, "note": note,
            "first_batch_seconds": seconds[0], "images_per_second": batch / float(np.median(seconds[1:])),
            "load_average": round(os.getloadavg()[0], 2)}


def child_course(args: dict) -> dict:
    """(h) every notebook of the course, each in a fresh kernel through the course runner, timed.

    The kernels see the data and output folders through the ``CONSERVIZ_*`` environment that
    ``run_child`` set; the runner's progress lines go to stderr (the terminal).
    """
    from conserviz_utils.runtime.cpu import precision_cache_path
    from conserviz_utils.tools.runner import run_notebooks

    outputs = Path(args["outputs"])
    shutil.rmtree(outputs, ignore_errors=True)  # a cold start: nothing computed yet
    outputs.mkdir(parents=True)
    precision_cached = precision_cache_path().is_file()
    started = time.perf_counter()
    try:
        timings = run_notebooks(PROJECT_ROOT / "notebooks", outputs / "executed", args["notebooks"], output_dir=outputs,
                                write=lambda line: print(line, file=sys.stderr, flush=True))
    except Exception as error:  # noqa: BLE001 - a failed notebook is a result to report, not a crash
        return {"error": f"{type(error).__name__}: {error}"[:4000], "seconds": time.perf_counter() - started,
                "notebooks": {}, "precision_cache_existed": precision_cached}
    return {"notebooks": {name: seconds for name, seconds in timings}, "seconds": time.perf_counter() - started,
            "precision_cache_existed": precision_cached, "error": None}


def child_embeddings(args: dict) -> dict:
    """(i) embedding the same images: a walkthrough-style fp32 loop against ``compute_embeddings``.

    Both run the course's backbone (EfficientNet-Lite0) in eval mode over the same images, from
    a cold start (loader, first batch) to the last embedding. The walkthrough style: its dataset
    (Pillow, Resize, ToTensor, Normalize), a DataLoader of 32 without workers, fp32, NCHW,
    ``torch.no_grad``. conserviz: ``compute_embeddings`` as notebook 04 calls it, precision "auto"
    (its once-per-machine probe is made first and not timed) and an empty cache folder.
    """
    from conserviz_utils.runtime.device import choose_precision
    from conserviz_utils.course.embeddings import compute_embeddings
    from conserviz_utils.models import build_model

    data, ids = _load(args)
    features = repeated(data.train_features.loc[ids], args["images"])
    model = build_model("efficientnet_lite0", pretrained=False, seed=0)
    if args["pipeline"] == "seed":
        loader = DataLoader(SeedImagesDataset(features), batch_size=32)
        backbone = model.backbone.eval()
        started = time.perf_counter()
        with torch.no_grad():
            rows = sum(len(backbone(batch["image"])) for batch in loader)
        seconds = time.perf_counter() - started
        precision = "fp32"
    else:
        # The very call compute_embeddings makes, so its decision is remembered and not timed below.
        choice = choose_precision("auto", "auto", model.backbone, 64, "inference", arch=model.arch)
        cache = Path(tempfile.mkdtemp(dir=args["workdir"], prefix="embeddings-"))
        started = time.perf_counter()
        embeddings = compute_embeddings(model, features, cache_dir=cache, progress=False)
        seconds = time.perf_counter() - started
        rows, precision = len(embeddings.values), choice.precision
    return {"images_per_second": rows / seconds, "seconds": seconds, "images": rows, "precision": precision}


CHILDREN = {"train": child_train, "seed_recipe": child_seed_recipe, "course_recipe": child_course_recipe,
            "precision": child_precision, "compile": child_compile, "course": child_course,
            "embeddings": child_embeddings}


def run_child(name: str, args: dict, env: dict | None = None, stream: bool = False) -> dict:
    """Run one measurement in a fresh Python process and return its JSON result.

    Args:
        env: Environment variables to set (a value of None removes the variable).
        stream: Let the child's stderr through to the terminal (long runs show their progress).
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-args", json.dumps(args)]
    environment = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=None if stream else subprocess.PIPE, text=True,
                          check=False, env=environment)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark step {name!r} failed:\n{(done.stderr or '')[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# In-process measurements
# --------------------------------------------------------------------------------------------


def measure_inference(features: pd.DataFrame, settings: Settings) -> dict:
    """(b) ResNet50 inference images/s: the seed's no_grad loop against ``inference.predict``."""
    from conserviz_utils.data import ImagesDataset, default_transform, make_loader
    from conserviz_utils.runtime.device import choose_precision
    from conserviz_utils.models import build_model
    from conserviz_utils.inference import predict

    model = build_model("resnet50", pretrained=False, head="seed", seed=0)
    seed_rows = repeated(features, settings.inference_batches * settings.batch_size)
    seed_timed = Timed(DataLoader(SeedImagesDataset(seed_rows), batch_size=settings.batch_size), settings.inference_batches)
    seed_predict(model, seed_timed)  # first: predict() below turns the model channels-last
    ours_rows = repeated(features, settings.inference_batches * settings.predict_batch_size)
    loader = make_loader(ImagesDataset(ours_rows, transform=default_transform()), batch_size=settings.predict_batch_size)
    ours_timed = Timed(loader, settings.inference_batches)
    predicted = predict(model, ours_timed, device="cpu", precision="auto", progress=False)
    del loader, ours_timed.loader
    # predict notes its precision in .attrs once it is wired to the measured choice; until then it
    # asks choose_precision without a model, as below.
    precision = predicted.attrs.get("precision") or choose_precision("auto", "cpu", purpose="inference").precision
    if predicted.attrs.get("precision_source"):
        precision = f"{precision}, {predicted.attrs['precision_source']}"
    return {
        "seed": {"images_per_second": seed_timed.steady_rate(), "batch_size": settings.batch_size, "precision": "fp32"},
        "conserviz": {"images_per_second": ours_timed.steady_rate(), "batch_size": settings.predict_batch_size,
                      "precision": precision},
    }


def _items_per_second(dataset, n: int) -> float:
    """Items per second of ``dataset[i]`` for i = 1 .. n-1 in this one process (item 0 warms up)."""
    dataset[0]
    started = time.perf_counter()
    for index in range(1, n):
        dataset[index]
    return (n - 1) / (time.perf_counter() - started)


def measure_input_pipeline(features: pd.DataFrame, settings: Settings, workdir: Path) -> dict:
    """(c) decode → tensor images/s on one core, and through loader workers and the image cache."""
    from conserviz_utils.data import (
        ImagesDataset,
        default_num_workers,
        default_transform,
        make_loader,
    )

    rows = features.iloc[: settings.pipeline_images]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as in a loader worker (which torch also limits to one thread)
    try:
        seed = _items_per_second(SeedImagesDataset(rows), len(rows))
        ours = _items_per_second(ImagesDataset(rows, transform=default_transform()), len(rows))
        cached = ImagesDataset(rows, transform=default_transform(), cache_dir=workdir / "image-cache")
        build = cached.cache.build(rows["path"], progress=False)
        from_cache = _items_per_second(cached, len(rows))
    finally:
        torch.set_num_threads(threads)

    workers = default_num_workers()
    loader = make_loader(ImagesDataset(rows, transform=default_transform()), batch_size=settings.batch_size)
    timed = Timed(loader, len(loader))
    for _ in timed:
        pass
    with_workers = timed.steady_rate() if len(timed.stamps) >= 3 else float("nan")
    del loader, timed.loader
    return {
        "images": len(rows),
        "sizes": sorted({f"{w}x{h}" for w, h in rows[["width", "height"]].itertuples(index=False)}),
        "seed_per_core": seed,
        "conserviz_per_core": ours,
        "conserviz_cached_per_core": from_cache,
        "cache_build": {"images_per_second": build.images_per_second, "workers": build.workers},
        "conserviz_loader": {"images_per_second": with_workers, "workers": workers},
    }


def measure_head_training(settings: Settings) -> dict:
    """(f) seconds to train the seed head on ``head_rows`` random 1,280-dim embeddings."""
    from conserviz_utils.course.features import fit_head
    from conserviz_utils.models import build_model

    rng = np.random.default_rng(0)
    x = rng.standard_normal((settings.head_rows, 1280), dtype=np.float32)
    y = rng.integers(0, len(SPECIES), settings.head_rows)
    head = build_model("efficientnet_lite0", pretrained=False, head="seed", seed=0).head
    batch_size = 64  # what course.train_head uses: the slowest setting of fit_head the course runs
    started = time.perf_counter()
    history = fit_head(head, x, y, epochs=settings.head_epochs, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - started
    return {"rows": settings.head_rows, "dim": 1280, "epochs": settings.head_epochs, "batch_size": batch_size,
            "steps": int(history.step.max()), "seconds": seconds}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def lscpu_model_name() -> str:
    """The CPU's model name as ``lscpu`` prints it (the package's reading where lscpu is missing)."""
    from conserviz_utils.runtime.cpu import cpu_model_name

    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False,
                                 env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    for line in listing.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Model name" and value.strip():
            return value.strip()
    return cpu_model_name()


def machine_info() -> dict:
    """What the figures were measured on."""
    from conserviz_utils.runtime.cpu import available_cpus, cpu_bf16_support, cpu_identity
    from conserviz_utils.runtime.device import choose_precision

    import PIL
    import torchvision

    # Without a model "auto" gives the decision remembered on this machine, if any (else fp32).
    remembered = {purpose: choose_precision("auto", "cpu", purpose=purpose) for purpose in ("train", "inference")}
    return {
        "cpu": lscpu_model_name(),
        "cpu_identity": cpu_identity(),
        "cores": available_cpus(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_bf16_support(),
        "precision_chosen": remembered["train"].precision,
        "precision_remembered": {purpose: choice.label for purpose, choice in remembered.items()},
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def prepare_data(data_dir: Path | None, workdir: Path, settings: Settings, progress: bool) -> tuple[Path, float]:
    """The sample to measure on: the one given, or a fresh one generated in the work folder."""
    from conserviz_utils.tools.sample import generate_sample

    if data_dir is not None:
        return data_dir, 0.0
    out = workdir / "sample"
    # A few test images only: load_competition wants a test set, nothing here predicts it.
    report = generate_sample(out, n_train=settings.n_train, n_test=16, seed=0, image_scale=1.0, progress=progress)
    return out, report.seconds


def image_sizes(features: pd.DataFrame) -> pd.DataFrame:
    """``features`` with ``width`` and ``height`` columns read from the image headers."""
    sizes = [Image.open(path).size for path in features["path"]]
    return features.assign(width=[w for w, _ in sizes], height=[h for _, h in sizes])


def ratio(ours: float, seed: float) -> float:
    return ours / seed if seed > 0 else float("nan")


def evaluate_targets(results: dict) -> dict:
    """The issue's targets, each with its measured value and whether this run met it."""
    e2e = results["end_to_end"]
    targets = {
        # Issue 11's target where bf16 is the faster precision (issue 5 asked 5x, which assumed AMX).
        "train_speedup": {"value": results["train"]["speedup"], "target": ">= 2.5"},
        "embeddings_speedup": {"value": results["embeddings"]["speedup"], "target": ">= 3"},
        "inference_speedup": {"value": results["inference"]["speedup"], "target": ">= 3"},
        "input_pipeline_speedup_per_core": {"value": results["input_pipeline"]["speedup_per_core"], "target": ">= 2"},
        "end_to_end_time_fraction": {"value": e2e["time_fraction"], "target": "<= 0.2"},
        "end_to_end_lower_log_loss": {"value": e2e["log_loss_gain"], "target": "> 0 (seed minus course)"},
        "head_training_seconds": {"value": results["head_training"]["seconds"], "target": "< 30"},
        "training_rss_reported": {"value": results["memory"]["conserviz"]["main_mb"], "target": "reported"},
    }
    checks = {
        "train_speedup": lambda v: v >= 2.5,
        "embeddings_speedup": lambda v: v >= 3,
        "inference_speedup": lambda v: v >= 3,
        "input_pipeline_speedup_per_core": lambda v: v >= 2,
        "end_to_end_time_fraction": lambda v: v <= 0.2,
        "end_to_end_lower_log_loss": lambda v: v > 0,
        "head_training_seconds": lambda v: v < 30,
        "training_rss_reported": lambda v: v > 0,
    }
    for name, target in targets.items():
        target["met"] = bool(checks[name](target["value"]))
    return targets


def run_tables(results: dict, settings: Settings, data_dir: Path | None, workdir: Path, progress: bool,
               note_load, log=print) -> None:
    """(a)-(f): the seed walkthrough's pipeline against conserviz's, into ``results``."""
    from conserviz_utils.data import load_competition
    from conserviz_utils.split import split_by_site

    data_path, generated_in = prepare_data(data_dir, workdir, settings, progress)
    results["settings"].update(data=str(data_path) if data_dir else "generated sample", sample_seconds=generated_in)
    data = load_competition(data_path)
    sized = image_sizes(data.train_features)
    real = sized[[(w, h) in REAL_SIZES for w, h in sized[["width", "height"]].itertuples(index=False)]]
    # Alternate the two sizes, so every timed batch holds both.
    by_size = [group for _, group in real.groupby(["width", "height"])]
    interleaved = pd.concat(by_size).iloc[np.argsort(np.concatenate([np.arange(len(g)) * len(by_size) + k for k, g in enumerate(by_size)]), kind="stable")]
    timing_ids = workdir / "timing_ids.csv"
    pd.Series(interleaved.index, name="id").to_csv(timing_ids, index=False)
    common = {"data": str(data_path), "timing_ids": str(timing_ids), "workdir": str(workdir)}

    log(f"(a) ResNet50 training, {settings.train_batches} batches of {settings.batch_size} per pipeline …")
    note_load("train")
    seed_train = run_child("train", {**common, "pipeline": "seed", "batches": settings.train_batches, "batch_size": settings.batch_size})
    ours_train = run_child("train", {**common, "pipeline": "conserviz", "batches": settings.train_batches, "batch_size": settings.batch_size})
    results["train"] = {"seed": seed_train, "conserviz": ours_train,
                        "speedup": ratio(ours_train["images_per_second"], seed_train["images_per_second"])}
    results["memory"] = {"batch_size": settings.batch_size, "seed": seed_train["peak_rss"], "conserviz": ours_train["peak_rss"]}

    log("(b) ResNet50 inference …")
    note_load("inference")
    inference = measure_inference(interleaved, settings)
    inference["speedup"] = ratio(inference["conserviz"]["images_per_second"], inference["seed"]["images_per_second"])
    results["inference"] = inference

    log("(c) input pipeline …")
    note_load("input_pipeline")
    pipeline = measure_input_pipeline(interleaved, settings, workdir)
    pipeline["speedup_per_core"] = ratio(pipeline["conserviz_per_core"], pipeline["seed_per_core"])
    pipeline["cached_speedup_per_core"] = ratio(pipeline["conserviz_cached_per_core"], pipeline["seed_per_core"])
    results["input_pipeline"] = pipeline

    log("(d) end to end on a site-grouped split …")
    note_load("end_to_end")
    train_ids, eval_ids = split_by_site(data.train_features, data.train_labels, test_size=0.25, seed=0)
    split = {**common, "train_ids": list(train_ids), "eval_ids": list(eval_ids), "finetune": settings.finetune}
    seed_recipe = run_child("seed_recipe", split)
    course_recipe = run_child("course_recipe", split)
    results["end_to_end"] = {
        "eval_images": len(eval_ids),
        "eval_sites": int(data.train_features.loc[eval_ids, "site"].nunique()),
        "seed": seed_recipe,
        "course": course_recipe,
        "time_fraction": course_recipe["wall_seconds"] / seed_recipe["wall_seconds"],
        "log_loss_gain": seed_recipe["eval_log_loss"] - course_recipe["eval_log_loss"],
    }

    log("(f) head training on cached embeddings …")
    note_load("head_training")
    results["head_training"] = measure_head_training(settings)

    log(f"(i) embedding {settings.embedding_images} images: walkthrough-style loop and compute_embeddings …")
    note_load("embeddings")
    options = {**common, "images": settings.embedding_images}
    seed_embed = run_child("embeddings", {**options, "pipeline": "seed"})
    ours_embed = run_child("embeddings", {**options, "pipeline": "conserviz"})
    results["embeddings"] = {"seed": seed_embed, "conserviz": ours_embed,
                             "speedup": ratio(ours_embed["images_per_second"], seed_embed["images_per_second"])}
    results["targets"] = evaluate_targets(results)


def add_precision_target(results: dict) -> None:
    """Issue 11's target: fit's training (a) at >= 0.9x the faster of (g)'s channels-last fp32 / bf16."""
    (row,) = [r for r in results["precision"] if (r["arch"], r["purpose"]) == ("resnet50", "train")]
    faster = max(row["images_per_second"]["channels_last_fp32"], row["images_per_second"]["channels_last_bf16"])
    value = results["train"]["conserviz"]["images_per_second"] / faster
    results["targets"]["train_vs_faster_precision"] = {"value": value, "target": ">= 0.9", "met": bool(value >= 0.9)}


def measure_precision_table(settings: Settings, log=print) -> list[dict]:
    """(g) the precision table, one fresh process per row."""
    rows = []
    for arch, purpose, batch_field in PRECISION_WORKLOADS:
        batch = getattr(settings, batch_field)
        log(f"    {arch} {purpose} at batch {batch} …")
        rows.append(run_child("precision", {"arch": arch, "purpose": purpose, "batch_size": batch,
                                            "image_size": settings.precision_image_size,
                                            "steps": settings.precision_steps}))
    return rows


def measure_compile(settings: Settings, workdir: Path) -> dict:
    """torch.compile of EfficientNet-Lite0 inference against eager, fp32 and bf16, cold and warm.

    Returns, per precision: eager and compiled images/s, the compiled first batch with a cold
    and a warm inductor cache, and the images a run needs before compiling pays (cold).
    """
    base = {"batch_size": settings.predict_batch_size, "image_size": settings.precision_image_size,
            "steps": max(settings.precision_steps, 2)}
    eager = run_child("precision", {**base, "arch": "efficientnet_lite0", "purpose": "inference"})
    out = {"batch_size": base["batch_size"], "image_size": base["image_size"]}
    for precision in ("fp32", "bf16"):
        cache = workdir / f"inductor-cache-{precision}"
        shutil.rmtree(cache, ignore_errors=True)
        env = {"TORCHINDUCTOR_CACHE_DIR": str(cache)}
        cold = run_child("compile", {**base, "precision": precision}, env=env)
        warm = run_child("compile", {**base, "precision": precision}, env=env)
        eager_rate = eager["images_per_second"][f"channels_last_{precision}"]
        compiled_rate = cold["images_per_second"]
        extra = cold["first_batch_seconds"] - base["batch_size"] / compiled_rate
        saved_per_image = 1 / eager_rate - 1 / compiled_rate
        out[precision] = {
            "eager_images_per_second": eager_rate,
            "compiled_images_per_second": compiled_rate,
            "compiled": cold["compiled"], "note": cold["note"],
            "first_batch_seconds_cold": cold["first_batch_seconds"],
            "first_batch_seconds_warm": warm["first_batch_seconds"],
            "pays_after_images": extra / saved_per_image if saved_per_image > 0 else None,
        }
    return out


@dataclass(frozen=True)
class CoursePlan:
    """(h): which samples the course is timed on, and how."""

    samples: tuple[tuple[str, int, int], ...]  # (label, train images, test images)
    data_root: Path  # where the generated samples are kept between runs
    notebooks: tuple[str, ...] | None  # None: every notebook the course runner runs
    quick: bool  # run the notebooks in CONSERVIZ_QUICK mode (a check that the plumbing works)


def cached_sample(folder: Path, n_train: int, n_test: int, progress: bool) -> tuple[Path, float, bool]:
    """A generated sample of that size in ``folder``: reused when complete, else generated.

    Returns:
        (folder, seconds spent generating, whether an existing one was reused).
    """
    from conserviz_utils.tools.sample import GENERATOR_VERSION, generate_sample, sample_marker

    marker = sample_marker(folder) or {}
    wanted = {"generator_version": GENERATOR_VERSION, "n_train": n_train, "n_test": n_test, "seed": 0,
              "image_scale": 1.0}
    if all(marker.get(key) == value for key, value in wanted.items()):
        return folder, 0.0, True
    report = generate_sample(folder, n_train=n_train, n_test=n_test, seed=0, image_scale=1.0, progress=progress)
    return folder, report.seconds, False


def sample_folder(root: Path, n_train: int, n_test: int) -> Path:
    """Where a sample of that size is kept: data/sample is the course's own 2,000 / 500 one."""
    from conserviz_utils.tools.sample import REAL_N_TEST, REAL_N_TRAIN

    if (n_train, n_test) == (2000, 500):
        return root / "sample"
    if (n_train, n_test) == (REAL_N_TRAIN, REAL_N_TEST):
        return root / "sample-full-size"
    return root / f"sample-{n_train}-{n_test}"


def measure_course(plan: CoursePlan, workdir: Path, progress: bool, log=print) -> dict:
    """(h) every notebook of the course on each sample of the plan, timed, each a cold start."""
    results = {"quick": plan.quick, "runs": []}
    for label, n_train, n_test in plan.samples:
        folder = sample_folder(plan.data_root, n_train, n_test)
        log(f"    {label}: the sample of {n_train:,} train / {n_test:,} test images in {folder} …")
        folder, generated_in, reused = cached_sample(folder, n_train, n_test, progress)
        env = {"CONSERVIZ_DATA": str(folder.resolve()), "CONSERVIZ_OUTPUTS": str((workdir / f"course-{n_train}").resolve()),
               "CONSERVIZ_QUICK": "1" if plan.quick else None}
        load_before = round(os.getloadavg()[0], 2)
        timed = run_child("course", {"outputs": env["CONSERVIZ_OUTPUTS"], "notebooks": plan.notebooks}, env=env,
                          stream=True)
        results["runs"].append({"label": label, "n_train": n_train, "n_test": n_test, "data": str(folder),
                                "sample_reused": reused, "sample_seconds": generated_in,
                                "load_average": [load_before, round(os.getloadavg()[0], 2)], **timed})
    return results


def run(settings: Settings, quick: bool, data_dir: Path | None, workdir: Path, progress: bool, log=print, *,
        tables: bool = True, precision: bool = True, compile_probe: bool = False,
        course: CoursePlan | None = None) -> dict:
    """Every measurement asked for, in order; returns the results dictionary."""
    results: dict = {"machine": machine_info(), "settings": {"quick": quick, **asdict(settings)}}
    started = time.perf_counter()
    # The machine may be shared: note how busy it was around each section, next to its figures.
    load = results["machine"]["load_average_by_section"] = {}

    def note_load(section: str) -> None:
        load[section] = round(os.getloadavg()[0], 2)

    if tables:
        run_tables(results, settings, data_dir, workdir, progress, note_load, log)
    if precision:
        log("(g) precision: NCHW fp32, channels-last fp32 and bf16, and what auto picks …")
        note_load("precision")
        results["precision"] = measure_precision_table(settings, log)
        if tables:
            add_precision_target(results)
    if compile_probe:
        log("torch.compile of EfficientNet-Lite0 inference, cold and warm …")
        note_load("compile")
        results["compile"] = measure_compile(settings, workdir)
    if course is not None:
        log("(h) the course, every notebook, on each sample …")
        note_load("course")
        results["course"] = measure_course(course, workdir, progress, log)
    note_load("end")
    results["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["settings"]["total_seconds"] = time.perf_counter() - started
    return results




def aligned(header: tuple, rows: list[tuple]) -> list[str]:
    """Rows of cells as text lines: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i]) for i, cell in enumerate(row))
            for row in [header, *rows]]


def comparison_table(results: dict) -> str:
    """(a)-(f) as a plain-text table, seed and conserviz side by side."""
    t, inf, pipe, e2e = results["train"], results["inference"], results["input_pipeline"], results["end_to_end"]
    mem, head, targets = results["memory"], results["head_training"], results["targets"]

    def mark(name: str) -> str:
        return "met" if targets[name]["met"] else "MISSED"

    rows = [
        ("(a) ResNet50 training, images/s", f"{t['seed']['images_per_second']:.1f}",
         f"{t['conserviz']['images_per_second']:.1f} ({t['conserviz']['precision']})",
         f"{t['speedup']:.1f}x", f">= 2.5x {mark('train_speedup')}"),
        ("(b) ResNet50 inference, images/s", f"{inf['seed']['images_per_second']:.1f}",
         f"{inf['conserviz']['images_per_second']:.1f} ({inf['conserviz']['precision']})", f"{inf['speedup']:.1f}x", f">= 3x {mark('inference_speedup')}"),
        ("(c) input pipeline, images/s per core", f"{pipe['seed_per_core']:.0f}", f"{pipe['conserviz_per_core']:.0f}",
         f"{pipe['speedup_per_core']:.1f}x", f">= 2x {mark('input_pipeline_speedup_per_core')}"),
        ("    ... from the image cache", "", f"{pipe['conserviz_cached_per_core']:.0f}", f"{pipe['cached_speedup_per_core']:.1f}x", ""),
        ("(d) end to end, wall time s", f"{e2e['seed']['wall_seconds']:.1f}", f"{e2e['course']['wall_seconds']:.1f}",
         f"{e2e['time_fraction']:.2f}", f"<= 0.2 {mark('end_to_end_time_fraction')}"),
        ("    eval log loss (site-grouped)", f"{e2e['seed']['eval_log_loss']:.3f}", f"{e2e['course']['eval_log_loss']:.3f}",
         f"{-e2e['log_loss_gain']:+.3f}", f"lower {mark('end_to_end_lower_log_loss')}"),
        ("    eval accuracy", f"{e2e['seed']['eval_accuracy']:.3f}", f"{e2e['course']['eval_accuracy']:.3f}", "", ""),
        ("    re-run, embeddings cached, s", "", f"{e2e['course']['rerun_with_cached_embeddings']['wall_seconds']:.1f}", "", ""),
        ("    no early stopping, batch 64 / 256: log loss", "",
         "{:.3f} / {:.3f}".format(*(e2e["course"]["head_without_early_stopping"][f"batch_{b}"]["eval_log_loss"]
                                    for b in (64, 256))), "", ""),
    ]
    if "finetune" in e2e["course"]:
        ft = e2e["course"]["finetune"]
        rows.append(("    + 1 epoch fine-tune: s / log loss", "", f"{ft['wall_seconds']:.0f} / {ft['eval_log_loss']:.3f}", "", ""))
    rows += [
        (f"(e) training peak RSS @{mem['batch_size']}, MB", f"{mem['seed']['main_mb']:.0f}",
         f"{mem['conserviz']['main_mb']:.0f} + {mem['conserviz']['workers_mb']:.0f} worker", "", "reported"),
        (f"(f) head, {head['rows']:,} embeddings x {head['epochs']} epochs, s", "", f"{head['seconds']:.1f}", "",
         f"< 30 s {mark('head_training_seconds')}"),
    ]
    emb = results["embeddings"]
    rows.append((f"(i) embeddings, {emb['seed']['images']} images, images/s", f"{emb['seed']['images_per_second']:.1f}",
                 f"{emb['conserviz']['images_per_second']:.1f} ({emb['conserviz']['precision']})",
                 f"{emb['speedup']:.1f}x", f">= 3x {mark('embeddings_speedup')}"))
    if "train_vs_faster_precision" in targets:
        rows.append(("    (a) against the faster of (g)'s channels-last fp32 / bf16", "",
                     f"{targets['train_vs_faster_precision']['value']:.2f}x", "",
                     f">= 0.9x {mark('train_vs_faster_precision')}"))
    return "\n".join(aligned(("", "seed", "conserviz", "ratio", "target"), rows))


PRECISION_LABELS = {("resnet50", "train"): "ResNet50 training", ("resnet50", "inference"): "ResNet50 inference",
                    ("efficientnet_lite0", "inference"): "EfficientNet-Lite0 inference"}


def precision_table(rows: list[dict]) -> str:
    """(g) as a plain-text table: images/s per layout and precision, and what auto picks."""
    cells = []
    for row in rows:
        rates = row["images_per_second"]
        label = PRECISION_LABELS.get((row["arch"], row["purpose"]), f"{row['arch']} {row['purpose']}")
        auto = row["auto"]
        cells.append((f"{label} @{row['batch_size']}, images/s", f"{rates['nchw_fp32']:.1f}",
                      f"{rates['channels_last_fp32']:.1f}", f"{rates['channels_last_bf16']:.1f}",
                      f"{auto['precision']} ({auto['source']}) {auto['images_per_second']:.1f}",
                      f"{auto['images_per_second'] / rates['nchw_fp32']:.1f}x"))
    header = ("(g) precision, random tensors", "NCHW fp32", "CL fp32", "CL bf16", "auto picks", "auto/NCHW")
    size = rows[0]["image_size"] if rows else 224
    note = (f"    {size} px, steady state (1 warm-up step, median of {rows[0]['steps'] if rows else 0}); NCHW fp32 is "
            "the walkthrough's layout, CL = channels-last (conserviz); auto measured the CL columns itself")
    return "\n".join([*aligned(header, cells), note])


def compile_table(compiled: dict) -> str:
    """torch.compile of EfficientNet-Lite0 inference as a plain-text table."""
    cells = []
    for precision in ("fp32", "bf16"):
        row = compiled[precision]
        pays = row["pays_after_images"]
        cells.append((f"Lite0 inference @{compiled['batch_size']}, {precision}", f"{row['eager_images_per_second']:.1f}",
                      f"{row['compiled_images_per_second']:.1f}" + ("" if row["compiled"] else " (eager: " + str(row["note"]) + ")"),
                      f"{row['first_batch_seconds_cold']:.1f} / {row['first_batch_seconds_warm']:.1f}",
                      f"{pays:,.0f}" if pays is not None else "never"))
    header = ("torch.compile", "eager img/s", "compiled img/s", "1st batch s cold / warm", "pays after images")
    return "\n".join(aligned(header, cells))


def course_table(course: dict) -> str:
    """(h) as a plain-text table: seconds per notebook, one column per sample."""
    runs = course["runs"]
    names = list(dict.fromkeys(name for run_ in runs for name in run_["notebooks"]))
    header = ("(h) the course, seconds", *(f"{r['label']} ({r['n_train']:,} / {r['n_test']:,})" for r in runs))
    cells = [(f"    {name}", *(f"{r['notebooks'][name]:.0f}" if name in r["notebooks"] else "-" for r in runs))
             for name in names]
    cells.append(("    all notebooks (make course), min", *(f"{r['seconds'] / 60:.1f}" for r in runs)))
    cells.append(("    sample generated first, s", *(("reused" if r["sample_reused"] else f"{r['sample_seconds']:.0f}")
                                                      for r in runs)))
    cells.append(("    load average before / after", *(" / ".join(f"{v:.1f}" for v in r["load_average"]) for r in runs)))
    lines = aligned(header, cells)
    for r in runs:
        if r.get("error"):
            lines.append(f"    FAILED on {r['label']}: {r['error'].splitlines()[0][:300]}")
    if course["quick"]:
        lines.append("    (notebooks in CONSERVIZ_QUICK mode: a check of the plumbing, not the measurement)")
    return "\n".join(lines)


def table(results: dict) -> str:
    """Every section the results hold, as plain-text tables under a line naming the machine."""
    machine = results["machine"]
    remembered = machine["precision_remembered"]
    identity = machine["cpu_identity"].removeprefix(machine["cpu"]).lstrip(", ")  # family, model, bf16 support
    lines = [
        (f"{machine['cpu']} ({identity}), {machine['cores']} cores, torch {machine['torch']}, "
         f"load average {machine['load_average_at_start']} at start, {machine['load_average_at_end']} at end"),
        f"precision remembered on this machine: train {remembered['train']}; inference {remembered['inference']}",
        "",
    ]
    if "train" in results:
        lines += [comparison_table(results), ""]
    if "precision" in results:
        lines += [precision_table(results["precision"]), ""]
    if "compile" in results:
        lines += [compile_table(results["compile"]), ""]
    if "course" in results:
        lines += [course_table(results["course"]), ""]
    if results["settings"]["quick"]:
        lines.append("quick run: fewer and smaller batches and a small sample, to check that the benchmark "
                     "works; its ratios are not the measurement")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    from conserviz_utils.tools.sample import REAL_N_TEST, REAL_N_TRAIN

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run (fewer images and batches)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON results (default: benchmarks/results.json; "
                        "results-precision.json with --precision-only, results-full-size.json with --full-size)")
    parser.add_argument("--data", type=Path, default=None, help="an existing sample (default: generate one)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch folder (default: a temporary one); with --full-size it also keeps the samples")
    parser.add_argument("--precision-only", action="store_true", help="only the precision table (g)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of EfficientNet-Lite0 inference (a few minutes more)")
    parser.add_argument("--full-size", action="store_true",
                        help=f"also time every notebook of the course on the default sample and on a competition-size "
                        f"one ({REAL_N_TRAIN:,} / {REAL_N_TEST:,} images, generated once into data/; "
                        "needs a quiet machine for about an hour the first time)")
    parser.add_argument("--course-only", action="store_true", help="with --full-size: only the course timings")
    # A small stand-in for the competition-size sample, to check --full-size works (tests, a first look).
    parser.add_argument("--n-train", type=int, default=REAL_N_TRAIN, help=argparse.SUPPRESS)
    parser.add_argument("--n-test", type=int, default=REAL_N_TEST, help=argparse.SUPPRESS)
    parser.add_argument("--notebooks", default=None, help=argparse.SUPPRESS)  # comma-separated names
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.child_args))))
        return 0
    if args.course_only and not args.full_size:
        parser.error("--course-only needs --full-size")
    if args.precision_only and args.full_size:
        parser.error("--precision-only and --full-size cannot go together")

    settings = QUICK if args.quick else FULL
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="conserviz-benchmark-"))
    workdir.mkdir(parents=True, exist_ok=True)
    course = None
    if args.full_size:
        full = ("full size", args.n_train, args.n_test)
        # Quick mode checks the plumbing on the stand-in alone; a real run re-times the default sample next to it.
        samples = (full,) if args.quick else (("sample", 2000, 500), full)
        notebooks = tuple(args.notebooks.split(",")) if args.notebooks else None
        course = CoursePlan(samples=samples, data_root=args.workdir or PROJECT_ROOT / "data", notebooks=notebooks,
                            quick=args.quick)
    out = args.out or DEFAULT_OUT.with_name("results-precision.json" if args.precision_only
                                            else "results-full-size.json" if args.full_size else DEFAULT_OUT.name)
    try:
        results = run(settings, args.quick, args.data, workdir, progress=not args.quick,
                      tables=not (args.precision_only or args.course_only),
                      precision=not args.course_only, compile_probe=args.compile, course=course)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"written to {out}")
    failed = [r["label"] for r in results.get("course", {}).get("runs", []) if r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
