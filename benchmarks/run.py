"""The seed walkthrough's pipeline against conserviz's, side by side, in one run on this machine.

What it measures, on the same generated sample images at the competition's two main sizes
(640×360 and 960×540):

(a) training images/s of ResNet50: the seed pipeline (Pillow open → Resize((224, 224)) →
    ToTensor → Normalize, DataLoader(batch_size=32) without workers, fp32, SGD(lr=0.001,
    momentum=0.9)) against conserviz's (``ImagesDataset`` with JPEG draft-mode decoding,
    ``make_loader`` workers, ``train.fit``: channels-last, bf16 autocast where the CPU has it);
(b) the same for inference (the seed's no_grad loop against ``train.predict``);
(c) the input pipeline alone, images/s on one core (and from the pre-resized image cache);
(d) end to end on the sample with a site-grouped eval split: the seed recipe (its loop, one
    epoch on a 50 % subset split 75/25 at random; EfficientNet-Lite0 pretrained backbone under
    the seed head) against the course's default (embeddings computed once with the frozen
    backbone, then the head trained on them), wall time and eval log loss on the same eval set;
(e) peak memory (RSS) of ResNet50 training at batch 32, each pipeline in a fresh process;
(f) head training over 16,000 cached 1,280-dim embeddings, in seconds.

ResNet50 runs with random weights (its ImageNet weights need a download; speed does not depend
on the values). Each training and end-to-end measurement runs in a fresh child process, so
memory peaks and caches do not leak from one into the next. Throughputs are steady-state: the
first batch (worker start-up, kernel selection) is left out.

    python benchmarks/run.py                 # the full run: ~15 min on a 2-core CPU
    python benchmarks/run.py --quick         # a reduced run in under 2 minutes (checks it works)
    python benchmarks/run.py --data data/sample --out /tmp/results.json

It prints a table and writes ``benchmarks/results.json`` (with the machine it ran on).
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from conserviz_utils import SPECIES  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"
REAL_SIZES = ((640, 360), (960, 540))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Every section results.json holds (tests/test_benchmark.py checks them all).
SECTIONS = ("machine", "settings", "train", "inference", "input_pipeline", "end_to_end", "memory", "head_training", "targets")


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


FULL = Settings(n_train=2000, batch_size=32, predict_batch_size=64, train_batches=5, inference_batches=6,
                pipeline_images=400, head_rows=16_000, head_epochs=30, finetune=True)
QUICK = Settings(n_train=160, batch_size=4, predict_batch_size=8, train_batches=3, inference_batches=3,
                 pipeline_images=24, head_rows=16_000, head_epochs=1, finetune=False)


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
        precision = history.attrs["precision"]
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
    own_train, own_val = split_stratified(data.train_labels.loc[train_ids], test_size=0.25, frac=0.5, seed=0)
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
        "eval_log_loss": log_loss(probs, eval_labels),
        "eval_accuracy": accuracy(probs, eval_labels),
        "peak_rss": peak_rss_mb(),
    }


def child_course_recipe(args: dict) -> dict:
    """(d) the course's default, through the very helpers notebook 04 calls.

    ``embed_images`` freezes the backbone and embeds every training image once (cached),
    ``train_head`` trains the head on the train embeddings of the site split; optionally
    ``fine_tune`` then trains the whole network for one epoch.
    """
    from conserviz_utils.course import CourseSettings, embed_images, fine_tune, make_loaders, train_head
    from conserviz_utils.features import fit_head, predict_from_embeddings
    from conserviz_utils.metrics import accuracy, log_loss
    from conserviz_utils.models import build_model

    data, _ = _load(args)
    splits = (pd.Index(args["train_ids"], name="id"), pd.Index(args["eval_ids"], name="id"))
    settings = CourseSettings(output_dir=Path(args["workdir"]) / "course", arch="efficientnet_lite0", epochs=1, seed=0)
    shutil.rmtree(settings.output_dir, ignore_errors=True)  # a cold start: nothing computed yet
    eval_labels = data.train_labels.loc[splits[1]]

    def recipe() -> dict:
        started = time.perf_counter()
        model = build_model(settings.arch, progress=False)
        built = time.perf_counter()
        embeddings = embed_images(model, data.train_features, settings, progress=False)
        embedded = time.perf_counter()
        history = train_head(model, embeddings, data, splits, settings, progress=False)
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
            "eval_log_loss": log_loss(probs, eval_labels),
            "eval_accuracy": accuracy(probs, eval_labels),
        }

    first = recipe()
    rss = peak_rss_mb()
    # notebook 04's train_head keeps the epoch with the best eval log loss, chosen on the eval images
    # themselves; the seed recipe has no such choice. The same head trained for all its epochs
    # without looking at the eval set shows what that choice is worth.
    embeddings = embed_images(first["model"], data.train_features, settings, progress=False)
    unselected = {}
    for batch_size in (64, 256):  # the course's batch, and fit_head's default
        head = build_model(settings.arch, pretrained=False, seed=0).head
        fit_head(head, embeddings.select(splits[0]), data.train_labels, epochs=settings.head_epochs,
                 batch_size=batch_size, seed=settings.seed, progress=False)
        probs = predict_from_embeddings(head, embeddings.select(splits[1]))
        unselected[f"batch_{batch_size}"] = {"eval_log_loss": log_loss(probs, eval_labels),
                                             "eval_accuracy": accuracy(probs, eval_labels)}
    again = recipe()  # the same cell run again later: the embeddings come from the cache
    result = {key: value for key, value in first.items() if key != "model"}
    result.update(
        recipe=f"course default: {settings.arch} (pretrained, frozen) embeddings of all {len(data.train_features)} "
        f"training images computed once, seed head trained on the {len(splits[0])} train-side embeddings "
        f"for up to {settings.head_epochs} epochs with early stopping on eval log loss "
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
        train_loader, eval_loader = make_loaders(data, splits, settings, model)
        history = fine_tune(model, train_loader, eval_loader, settings, progress=False)
        last = history.dropna(subset=["eval_log_loss"]).iloc[-1]
        result["finetune"] = {
            "recipe": "+ course.fine_tune: 1 epoch of the whole network (AdamW lr 1e-4, train_transform)",
            "wall_seconds": time.perf_counter() - started,
            "eval_log_loss": float(last.eval_log_loss),
            "eval_accuracy": float(last.eval_accuracy),
        }
    return result


CHILDREN = {"train": child_train, "seed_recipe": child_seed_recipe, "course_recipe": child_course_recipe}


def run_child(name: str, args: dict) -> dict:
    """Run one measurement in a fresh Python process and return its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-args", json.dumps(args)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark step {name!r} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# In-process measurements
# --------------------------------------------------------------------------------------------


def measure_inference(features: pd.DataFrame, settings: Settings) -> dict:
    """(b) ResNet50 inference images/s: the seed's no_grad loop against ``train.predict``."""
    from conserviz_utils.data import ImagesDataset, default_transform, make_loader
    from conserviz_utils.models import build_model
    from conserviz_utils.train import pick_precision, predict

    model = build_model("resnet50", pretrained=False, head="seed", seed=0)
    seed_rows = repeated(features, settings.inference_batches * settings.batch_size)
    seed_timed = Timed(DataLoader(SeedImagesDataset(seed_rows), batch_size=settings.batch_size), settings.inference_batches)
    seed_predict(model, seed_timed)  # first: predict() below turns the model channels-last
    ours_rows = repeated(features, settings.inference_batches * settings.predict_batch_size)
    loader = make_loader(ImagesDataset(ours_rows, transform=default_transform()), batch_size=settings.predict_batch_size)
    ours_timed = Timed(loader, settings.inference_batches)
    predict(model, ours_timed, device="cpu", precision="auto", progress=False)
    del loader, ours_timed.loader
    return {
        "seed": {"images_per_second": seed_timed.steady_rate(), "batch_size": settings.batch_size, "precision": "fp32"},
        "conserviz": {"images_per_second": ours_timed.steady_rate(), "batch_size": settings.predict_batch_size,
                      "precision": pick_precision("auto", "cpu")},
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
    from conserviz_utils.data import ImagesDataset, default_num_workers, default_transform, make_loader

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
    from conserviz_utils.features import fit_head
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


def machine_info() -> dict:
    """What the figures were measured on."""
    from conserviz_utils.train import cpu_supports_bf16, pick_precision

    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model_name = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    import torchvision
    import PIL

    return {
        "cpu": model_name,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
        "precision_chosen": pick_precision("auto", "cpu"),
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
    from conserviz_utils.sample import generate_sample

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
        "train_speedup": {"value": results["train"]["speedup"], "target": ">= 5"},
        "inference_speedup": {"value": results["inference"]["speedup"], "target": ">= 3"},
        "input_pipeline_speedup_per_core": {"value": results["input_pipeline"]["speedup_per_core"], "target": ">= 2"},
        "end_to_end_time_fraction": {"value": e2e["time_fraction"], "target": "<= 0.2"},
        "end_to_end_lower_log_loss": {"value": e2e["log_loss_gain"], "target": "> 0 (seed minus course)"},
        "head_training_seconds": {"value": results["head_training"]["seconds"], "target": "< 30"},
        "training_rss_reported": {"value": results["memory"]["conserviz"]["main_mb"], "target": "reported"},
    }
    checks = {
        "train_speedup": lambda v: v >= 5,
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


def run(settings: Settings, quick: bool, data_dir: Path | None, workdir: Path, progress: bool, log=print) -> dict:
    """Every measurement, in order; returns the results dictionary."""
    from conserviz_utils.data import load_competition
    from conserviz_utils.split import split_by_site

    results: dict = {"machine": machine_info(), "settings": {"quick": quick, **asdict(settings)}}
    started = time.perf_counter()
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

    # The machine may be shared: note how busy it was around each section, next to its figures.
    load = results["machine"]["load_average_by_section"] = {}

    def note_load(section: str) -> None:
        load[section] = round(os.getloadavg()[0], 2)

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
    note_load("end")
    results["targets"] = evaluate_targets(results)
    results["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["settings"]["total_seconds"] = time.perf_counter() - started
    return results


def table(results: dict) -> str:
    """The results as a plain-text table, seed and conserviz side by side."""
    t, inf, pipe, e2e = results["train"], results["inference"], results["input_pipeline"], results["end_to_end"]
    mem, head, targets = results["memory"], results["head_training"], results["targets"]

    def mark(name: str) -> str:
        return "met" if targets[name]["met"] else "MISSED"

    rows = [
        ("(a) ResNet50 training, images/s", f"{t['seed']['images_per_second']:.1f}", f"{t['conserviz']['images_per_second']:.1f}",
         f"{t['speedup']:.1f}x", f">= 5x {mark('train_speedup')}"),
        ("(b) ResNet50 inference, images/s", f"{inf['seed']['images_per_second']:.1f}",
         f"{inf['conserviz']['images_per_second']:.1f}", f"{inf['speedup']:.1f}x", f">= 3x {mark('inference_speedup')}"),
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
    header = ("", "seed", "conserviz", "ratio", "target")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(5)]
    lines = ["  ".join(str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i]) for i, cell in enumerate(row))
             for row in [header, *rows]]
    machine = results["machine"]
    lines.insert(0, f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, precision "
                    f"{machine['precision_chosen']}, load average {machine['load_average_at_start']} at start")
    lines.insert(1, "")
    if results["settings"]["quick"]:
        lines.append("\nquick run: fewer and smaller batches and a small sample, to check that the benchmark "
                     "works; its ratios are not the measurement")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run (fewer images and batches)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    parser.add_argument("--data", type=Path, default=None, help="an existing sample (default: generate one)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.child_args))))
        return 0

    settings = QUICK if args.quick else FULL
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="conserviz-benchmark-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = run(settings, args.quick, args.data, workdir, progress=not args.quick)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
