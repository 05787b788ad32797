"""Each pass of the course against the model's own speed, side by side in one run on this machine.

A pass (embeddings, fine-tuning, evaluation, prediction) is the course's code over real image
files: the dataset, the loader and its workers, the model. Its *raw* speed is the same model at
the same batch size and precision on random tensors already in memory: what the pass would reach
if reading images cost nothing. The ratio pass / raw says how much of the model's speed the
input pipeline leaves; the target is at least 0.85.

Every pass runs twice: decoding each JPEG (``source=decode``) and reading the pre-resized image
cache (``source=cache``, ``files.image_cache``, built beforehand and timed on its own). The
loader alone (no model) is timed for both sources too: when it is slower than the raw model,
the input pipeline is the limit on this CPU, whatever the loop does.

Each pass runs over half its images, then over all of them, each time with a new loader (and new
worker processes), as the course runs it. *Whole* is the full pass, start-up included, what the
course pays; *marginal* is the second half alone (the difference of the two timings), start-up
excluded, what a long pass (the full-size course's thousands of images) approaches. The raw
figures are steady state (the best of two timings after three warm-up batches), taken just before
and just after each pass, the faster kept. Images/s, all.

    python benchmarks/passes.py                  # CPU, the default sample's images (data/sample)
    python benchmarks/passes.py --quick          # a few batches: checks that it works
    python benchmarks/passes.py --device cuda    # the same passes on a GPU, plus decoding on it

On a CUDA device it adds ``source=gpu-decode``: the JPEG bytes decoded by
``torchvision.io.decode_jpeg`` on the GPU, resized and normalised there, then the model.

It prints one table under the CPU's model name (as ``lscpu`` shows it) and the load average, and
writes ``benchmarks/results-passes.json`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd
import torch
from torch import nn

from run import machine_info  # noqa: E402  (the sibling script: one description of the machine)

from conserviz_utils.course.embeddings import compute_embeddings
from conserviz_utils.course.recipe import Recipe
from conserviz_utils.course.steps import make_optimizer
from conserviz_utils.data import ImagesDataset, default_transform, load_competition, make_loader, train_transform
from conserviz_utils.files.image_cache import ImageCache
from conserviz_utils.inference import evaluate, predict_logits
from conserviz_utils.models import build_model, model_info
from conserviz_utils.runtime.device import autocast, choose_precision, pick_device
from conserviz_utils.train import fit

DEFAULT_DATA = PROJECT_ROOT / "data" / "sample"
DEFAULT_OUT = Path(__file__).resolve().parent / "results-passes.json"
#: The pass/raw ratio every pass should reach.
TARGET_RATIO = 0.85
PASSES = ("embeddings", "fine-tuning", "evaluation", "prediction")
WARMUP_BATCHES = 3
RAW_REPEATS = 2


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_rate(model: nn.Module, batch: int, side: int, precision: str, device: torch.device, *, train: bool,
             batches: int, recipe: Recipe) -> float:
    """Images/s of ``model`` on random tensors: forward (and backward and step when ``train``)."""
    model.to(device=device, memory_format=torch.channels_last)
    model.train(train)
    images = torch.randn(batch, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 8, (batch,), device=device)
    optimizer = make_optimizer(model.parameters(), recipe) if train else None
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        if train:
            with autocast(device, precision):
                loss = criterion(model(images).float(), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast(device, precision):
                model(images)

    for _ in range(WARMUP_BATCHES):
        step()
    best = 0.0
    for _ in range(RAW_REPEATS):  # the best of a few: the model's own speed, not a moment of contention
        sync(device)
        started = time.perf_counter()
        for _ in range(batches):
            step()
        sync(device)
        best = max(best, batches * batch / (time.perf_counter() - started))
    model.eval()
    return best


def loader_rate(loader) -> float:
    """Images/s of the loader alone, no model: how fast this CPU can feed a pass."""
    started, images = time.perf_counter(), 0
    for batch in loader:
        images += len(batch["image_id"])
    return images / (time.perf_counter() - started)


def timed(run) -> float:
    """Seconds ``run()`` took."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def gpu_decode_rate(model: nn.Module, paths: list[str], batch: int, side: int, mean, std, precision: str,
                    device: torch.device) -> float:
    """Images/s of prediction with JPEGs decoded, resized and normalised on the GPU (torchvision.io)."""
    from torchvision.io import decode_jpeg, read_file

    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    model.to(device=device, memory_format=torch.channels_last).eval()
    started = time.perf_counter()
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, len(paths), batch):
            data = [read_file(path) for path in paths[start:start + batch]]
            decoded = decode_jpeg(data, device=device)
            images = torch.stack([
                nn.functional.interpolate(image[None].float(), size=(side, side), mode="bilinear",
                                          antialias=True)[0]
                for image in decoded
            ]) / 255
            model(((images - mean_t) / std_t).contiguous(memory_format=torch.channels_last))
    sync(device)
    return len(paths) / (time.perf_counter() - started)


def measure(data_dir: Path, n_train: int, n_infer: int, device_name: str, arch: str, cache_root: Path,
            progress: bool, precision: str = "auto", log=print) -> dict:
    """Every pass from both sources, its raw speed, and the loader alone; one row per pass and source."""
    device = pick_device(device_name)
    recipe = Recipe(arch=arch)
    data = load_competition(data_dir, check_images=False)
    features, labels = data.train_features, data.train_labels
    train_rows = features.iloc[:n_train]
    infer_rows = features.iloc[n_train:n_train + n_infer] if len(features) >= n_train + n_infer else features.iloc[:n_infer]
    info = model_info(arch)
    side = info.input_size if isinstance(info.input_size, int) else info.input_size[0]
    evaluation = default_transform(info.input_size, info.mean, info.std)
    augment = train_transform(info.input_size, info.mean, info.std)
    # The pretrained weights, as in the course: random ones give activations of other sizes (and
    # denormal numbers are slow on a CPU), so they would time another computation.
    model = build_model(arch, pretrained=True, seed=0, progress=False)
    infer_batch, train_batch = 2 * recipe.batch_size, recipe.batch_size
    # What the course's "auto" picks for each pass (measured once per CPU), or what --precision says.
    wanted = precision
    precision = {
        "inference": choose_precision(wanted, device, model, infer_batch, "inference", arch=arch).precision,
        "train": choose_precision(wanted, device, model, train_batch, "train", arch=arch).precision,
    }
    backbone_precision = choose_precision(wanted, device, model.backbone, infer_batch, "inference",
                                          arch=arch).precision
    batches = max(3, min(8, n_infer // infer_batch))
    train_batches = max(3, min(8, n_train // train_batch))

    def raw_speed(name: str) -> float:
        """The raw images/s of the model ``name`` runs, in the model's present state."""
        if name == "fine-tuning":
            return raw_rate(model, train_batch, side, precision["train"], device, train=True, batches=train_batches,
                            recipe=recipe)
        module = model.backbone if name == "embeddings" else model
        chosen = backbone_precision if name == "embeddings" else precision["inference"]
        return raw_rate(module, infer_batch, side, chosen, device, train=False, batches=batches, recipe=recipe)

    cache = ImageCache(info.input_size, root=cache_root)
    log("building the image cache ...")
    report = cache.build(pd.concat([train_rows, infer_rows])["path"].drop_duplicates(), progress=progress)
    rows, feeds = [], {}
    for source in ("decode", "cache"):
        cache_dir = cache_root if source == "cache" else None
        eval_set = ImagesDataset(infer_rows, labels, transform=evaluation, cache_dir=cache_dir)
        feeds[source] = loader_rate(make_loader(eval_set, batch_size=infer_batch, device=device))

        def run_pass(name: str, n: int) -> float:
            """Seconds of one pass over the first ``n`` images, its loader (and workers) new, as in the course."""
            if name == "fine-tuning":
                dataset = ImagesDataset(train_rows.iloc[:n], labels, transform=augment, cache_dir=cache_dir)
                loader = make_loader(dataset, batch_size=train_batch, shuffle=True, seed=0, device=device)
                optimizer = make_optimizer(model.parameters(), recipe)
                return timed(lambda: fit(model, loader, epochs=1, optimizer=optimizer, device=device,
                                         precision=precision["train"], seed=0, progress=progress))
            rows_n = infer_rows.iloc[:n]
            if name == "embeddings":
                return timed(lambda: compute_embeddings(
                    model, rows_n, transform=evaluation, cache_dir=None, image_cache_dir=cache_dir,
                    batch_size=infer_batch, device=device, precision=backbone_precision, progress=progress))
            loader = make_loader(ImagesDataset(rows_n, labels, transform=evaluation, cache_dir=cache_dir),
                                 batch_size=infer_batch, device=device)
            if name == "evaluation":
                return timed(lambda: evaluate(model, loader, device=device, precision=precision["inference"],
                                              progress=progress))
            return timed(lambda: predict_logits(model, loader, device=device, precision=precision["inference"],
                                                progress=progress))

        for name in PASSES:
            log(f"{source}: {name} ...")
            n = len(train_rows) if name == "fine-tuning" else len(infer_rows)
            # The raw speed just before and just after the pass, the faster kept: on the CPUs measured,
            # the same model inferred up to 1.4x faster once it had been fine-tuned, so a raw figure
            # taken at another moment would not compare like with like.
            before = raw_speed(name)
            half = run_pass(name, n // 2)
            whole = run_pass(name, n)
            raw = {name: max(before, raw_speed(name))}
            # Whole: what the course pays, start-up included. Marginal: the images/s of the second
            # half alone (the difference of the two passes), start-up excluded: what a long pass reaches.
            marginal = (n - n // 2) / (whole - half) if whole > half else float("nan")
            rows.append({"pass": name, "source": source, "images_per_s": n / whole, "raw_images_per_s": raw[name],
                         "ratio": n / whole / raw[name], "marginal_images_per_s": marginal,
                         "marginal_ratio": marginal / raw[name]})
    if device.type == "cuda":
        raw_now = raw_speed("prediction")
        rate = gpu_decode_rate(model, list(infer_rows["path"]), infer_batch, side, info.mean, info.std,
                               precision["inference"], device)
        rows.append({"pass": "prediction", "source": "gpu-decode", "images_per_s": rate,
                     "raw_images_per_s": raw_now, "ratio": rate / raw_now})
    return {
        "settings": {"data": str(data_dir), "arch": arch, "device": str(device), "train_images": len(train_rows),
                     "inference_images": len(infer_rows), "train_batch": train_batch, "inference_batch": infer_batch,
                     "precision": {**precision, "embeddings": backbone_precision},
                     "loader_workers": make_loader(eval_set, batch_size=infer_batch).num_workers},
        "cache_build": {"images": report.total, "built": report.built, "seconds": report.seconds,
                        "workers": report.workers, "images_per_s": report.images_per_second},
        "loader_alone_images_per_s": feeds,
        "passes": rows,
    }


def table(results: dict) -> str:
    """The ratios, as printed."""
    machine = results["machine"]
    settings = results["settings"]
    lines = [
        f"CPU: {machine['cpu']} ({machine['cores']} cores), GPU: {machine['gpu'] or 'none'}; "
        f"load average at start {machine['load_average_at_start']}",
        f"{settings['arch']} on {settings['device']}, precision {settings['precision']}, "
        f"{settings['train_images']} training and {settings['inference_images']} inference images, "
        f"{settings['loader_workers']} loader worker(s)",
        "",
        f"{'pass':<12} {'source':<11} {'raw':>7} {'whole pass':>11} {'ratio':>6} {'marginal':>9} {'ratio':>6}",
    ]
    for row in results["passes"]:
        marginal = row.get("marginal_ratio", float("nan"))
        flag = "" if max(row["ratio"], marginal if marginal == marginal else 0) >= TARGET_RATIO else f"  < {TARGET_RATIO}"
        lines.append(f"{row['pass']:<12} {row['source']:<11} {row['raw_images_per_s']:>7.1f} "
                     f"{row['images_per_s']:>11.1f} {row['ratio']:>6.2f} "
                     f"{row.get('marginal_images_per_s', float('nan')):>9.1f} {marginal:>6.2f}{flag}")
    feeds = results["loader_alone_images_per_s"]
    build = results["cache_build"]
    lines += [
        "",
        "the loader alone (no model), images/s: " + ", ".join(f"{k} {v:.0f}" for k, v in feeds.items()),
        f"image cache build: {build['built']} decoded in {build['seconds']:.1f} s with {build['workers']} "
        f"thread(s), {build['images_per_s']:.0f} images/s ({build['images'] - build['built']} already there)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a competition-layout folder (default data/sample)")
    parser.add_argument("--train-images", type=int, default=384, help="images of the fine-tuning pass")
    parser.add_argument("--inference-images", type=int, default=768, help="images of each inference pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--arch", default="efficientnet_lite0", help="the backbone (the course's default on a CPU)")
    parser.add_argument("--precision", default="auto", help="auto (what the course picks), fp32, bf16 or fp16")
    parser.add_argument("--quick", action="store_true", help="a few batches, to check that it works")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes")
    parser.add_argument("--cache", type=Path, default=None, help="image cache folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if not (args.data / "train_features.csv").is_file():
        parser.error(f"{args.data} holds no train_features.csv: run `make sample` first, or pass --data a "
                     "competition-layout folder")
    if args.quick:
        args.train_images, args.inference_images = min(args.train_images, 64), min(args.inference_images, 128)
    with tempfile.TemporaryDirectory(prefix="conserviz-passes-") as scratch:
        results = {"machine": machine_info()}
        results.update(measure(args.data, args.train_images, args.inference_images, args.device, args.arch,
                               args.cache or Path(scratch) / "image-cache", progress=False,
                               precision=args.precision))
    print(table(results))
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
