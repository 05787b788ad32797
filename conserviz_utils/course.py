"""Glue for the six notebooks: settings, shared artifacts, and the headless runner of ``make course``.

Every notebook starts with ``settings = CourseSettings.from_env()`` (its parameters cell) and finds
what earlier notebooks wrote through ``CourseArtifacts``. When an artifact is missing — a learner
opened notebook 05 first — the ``ensure_*`` helpers rebuild it quietly, so each notebook runs alone.

``python -m conserviz_utils.course`` (``make course``) executes the six notebooks in order in fresh
kernels, keeps the executed copies under ``outputs/executed/`` and prints the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_explore", "02_split", "03_model", "04_train", "05_evaluate", "06_submit")
DEFAULT_OUTPUT_DIR = PROJECT_ROOT / "outputs"


def _flag(value: str | None) -> bool:
    """Read an environment flag: 1/true/yes/on mean yes, anything else no."""
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class CourseSettings:
    """The knobs of a course run, with defaults meant for a real run on a laptop CPU.

    Each field has an environment variable (``CONSERVIZ_<NAME>``) so that ``make course``, CI and
    workshops can change a run without editing notebooks.
    """

    data_dir: Path | None = None  # CONSERVIZ_DATA: None → resolve_data_dir() picks
    quick: bool = False  # CONSERVIZ_QUICK: small sample, one short epoch (CI)
    output_dir: Path = DEFAULT_OUTPUT_DIR  # CONSERVIZ_OUTPUTS
    arch: str = "efficientnet_lite0"  # CONSERVIZ_ARCH: offline-pretrained, fast on a CPU
    epochs: int = 1  # CONSERVIZ_EPOCHS: full fine-tuning epochs after the head is trained
    head_epochs: int = 30  # CONSERVIZ_HEAD_EPOCHS: epochs of the head on cached embeddings
    batch_size: int = 32  # CONSERVIZ_BATCH_SIZE
    seed: int = 0  # CONSERVIZ_SEED
    max_train_images: int | None = None  # CONSERVIZ_MAX_TRAIN_IMAGES: cap for quick looks
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CourseSettings:
        """Build settings from ``CONSERVIZ_*`` environment variables; quick mode shrinks the run."""
        env = os.environ if environ is None else environ
        quick = _flag(env.get("CONSERVIZ_QUICK"))

        def number(name: str, default: int | None) -> int | None:
            raw = env.get(f"CONSERVIZ_{name}")
            if raw is None or raw.strip() == "":
                return default
            try:
                return int(raw)
            except ValueError:
                raise ValueError(
                    f"environment variable CONSERVIZ_{name}={raw!r} is not a whole number. "
                    f"Fix: set it to e.g. {default if default is not None else 1000}, or unset it."
                ) from None

        data = env.get("CONSERVIZ_DATA")
        return cls(
            data_dir=Path(data).expanduser() if data else None,
            quick=quick,
            output_dir=Path(env.get("CONSERVIZ_OUTPUTS") or DEFAULT_OUTPUT_DIR).expanduser(),
            arch=env.get("CONSERVIZ_ARCH") or cls.arch,
            epochs=number("EPOCHS", 1 if quick else cls.epochs),
            head_epochs=number("HEAD_EPOCHS", cls.head_epochs),  # seconds either way
            batch_size=number("BATCH_SIZE", cls.batch_size),
            seed=number("SEED", cls.seed),
            max_train_images=number("MAX_TRAIN_IMAGES", 240 if quick else None),
        )

    @property
    def artifacts(self) -> CourseArtifacts:
        """Where this run's notebooks read and write their shared files."""
        return CourseArtifacts(self.output_dir)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{f.name}</code></td><td>{getattr(self, f.name)}</td></tr>"
            for f in fields(self)
            if f.repr
        )
        return f"<table><tr><th>setting</th><th>value</th></tr>{rows}</table>"


@dataclass(frozen=True)
class CourseArtifacts:
    """The files the notebooks pass along, all under one output folder."""

    output_dir: Path

    @property
    def splits(self) -> Path:
        return self.output_dir / "splits.csv"

    @property
    def checkpoint(self) -> Path:
        return self.output_dir / "model.pt"

    @property
    def resume(self) -> Path:
        """Fine-tuning's resumable state, written after every epoch and when interrupted."""
        return self.output_dir / "fine_tune_resume.pt"

    @property
    def metrics(self) -> Path:
        return self.output_dir / "metrics.json"

    @property
    def submission(self) -> Path:
        return self.output_dir / "submission.csv"

    @property
    def features(self) -> Path:
        return self.output_dir / "features"

    @property
    def executed(self) -> Path:
        return self.output_dir / "executed"


# --- shared steps of the notebooks -----------------------------------------------------------


def load_course_data(settings: CourseSettings, verbose: bool = True):
    """Find and load the data of this run: the real competition data, or the synthetic sample."""
    from conserviz_utils.data import load_competition, resolve_data_dir

    root = settings.data_dir or resolve_data_dir(quick=settings.quick, verbose=verbose)
    return load_competition(root)


def ensure_splits(data, settings: CourseSettings):
    """The site-grouped split notebook 02 saved, rebuilt (and saved) when missing or stale.

    Returns:
        (train_ids, eval_ids).
    """
    from conserviz_utils.split import load_splits, save_splits, split_by_site

    path = settings.artifacts.splits
    if path.is_file():
        train_ids, eval_ids = load_splits(path)
        # A split written for other data (the quick sample, say) must not be reused.
        if train_ids.union(eval_ids).sort_values().equals(data.train_features.index.sort_values()):
            return train_ids, eval_ids
    train_ids, eval_ids = split_by_site(
        data.train_features, data.train_labels, test_size=0.25, seed=settings.seed
    )
    save_splits(path, train_ids, eval_ids)
    return train_ids, eval_ids


def training_ids(train_ids, settings: CourseSettings):
    """The training ids of this run: all of them, or a seeded subset when capped."""
    cap = settings.max_train_images
    if cap is None or len(train_ids) <= cap:
        return train_ids
    return train_ids.to_series().sample(n=cap, random_state=settings.seed).index.sort_values()


def make_loaders(data, splits, settings: CourseSettings, model):
    """Training loader (augmented, shuffled) and evaluation loader for ``model``'s input format."""
    from conserviz_utils.data import ImagesDataset, default_transform, make_loader, train_transform
    from conserviz_utils.models import model_info

    info = model_info(model.arch)
    train_ids, eval_ids = splits
    train_ids = training_ids(train_ids, settings)
    train_set = ImagesDataset(
        data.train_features.loc[train_ids],
        data.train_labels,
        transform=train_transform(info.input_size, info.mean, info.std),
    )
    eval_set = ImagesDataset(
        data.train_features.loc[eval_ids],
        data.train_labels,
        transform=default_transform(info.input_size, info.mean, info.std),
    )
    train_loader = make_loader(
        train_set, batch_size=settings.batch_size, shuffle=True, seed=settings.seed
    )
    return train_loader, make_loader(eval_set, batch_size=2 * settings.batch_size)


def embed_images(model, features, settings: CourseSettings, progress: bool = True):
    """Freeze ``model``'s backbone and embed ``features``' images once, cached under outputs/."""
    from conserviz_utils.data import default_transform
    from conserviz_utils.embeddings import compute_embeddings
    from conserviz_utils.models import freeze_backbone, model_info

    freeze_backbone(model)
    info = model_info(model.arch)
    return compute_embeddings(
        model,
        features,
        transform=default_transform(info.input_size, info.mean, info.std),
        cache_dir=settings.artifacts.features,
        batch_size=2 * settings.batch_size,
        progress=progress,
    )


def _fit_head_on_split(head, embeddings, data, split, settings: CourseSettings, progress: bool):
    from conserviz_utils.features import fit_head

    train_ids, eval_ids = split
    train_ids = training_ids(train_ids, settings)
    return fit_head(
        head,
        embeddings.select(train_ids),
        data.train_labels.loc[train_ids],
        embeddings.select(eval_ids),
        data.train_labels.loc[eval_ids],
        epochs=settings.head_epochs,
        # Small batches: many more steps per epoch, which a small sample needs, at no real cost.
        batch_size=64,
        # The head overfits a few thousand embeddings within a few epochs; keep the best epoch.
        early_stopping=3,
        seed=settings.seed,
        progress=progress,
    )


def best_epoch(history):
    """The eval row of the epoch with the lowest eval log loss (the weights early stopping kept)."""
    evals = history.dropna(subset=["eval_log_loss"])
    return evals.loc[evals["eval_log_loss"].idxmin()]


def train_head(model, embeddings, data, splits, settings: CourseSettings, progress: bool = True):
    """Stage 1, the fast path: train ``model.head`` on cached embeddings of the split's images.

    Returns:
        The head's training history (one row per batch, eval columns per epoch).
    """
    return _fit_head_on_split(model.head, embeddings, data, splits, settings, progress)


def compare_splits(model, embeddings, data, splits_by_name, settings: CourseSettings):
    """Train a fresh copy of ``model``'s head on each split and score it on that split's eval side.

    The same images, the same head, the same epochs: only the split differs, so any gap in the
    eval scores is what the split itself adds — for a random split, leakage between sites.

    Returns:
        One row per split: eval accuracy and eval log loss after the last epoch.
    """
    import copy

    import pandas as pd

    rows = {}
    for name, split in splits_by_name.items():
        head = copy.deepcopy(model.head)
        for layer in head.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        history = _fit_head_on_split(head, embeddings, data, split, settings, progress=False)
        best = best_epoch(history)
        rows[name] = {"eval accuracy": best["eval_accuracy"], "eval log loss": best["eval_log_loss"]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("split")


def fine_tune(model, train_loader, eval_loader, settings: CourseSettings, lr: float = 1e-4,
              progress: bool = True, resume: bool = False):
    """Stage 2: unfreeze the whole network and train it end to end at a low learning rate.

    The low rate keeps the pretrained features from being wrecked in the first batches; early
    stopping on eval log loss keeps the best epoch. Stopped (Ctrl-C, the notebook's stop button,
    SIGTERM), it saves its state at the next batch boundary; ``resume=True`` continues from there.
    """
    import torch

    from conserviz_utils.models import unfreeze
    from conserviz_utils.train import fit

    unfreeze(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    return fit(
        model,
        train_loader,
        eval_loader,
        epochs=settings.epochs,
        optimizer=optimizer,
        early_stopping=1,
        checkpoint_path=settings.artifacts.resume,
        resume_from=settings.artifacts.resume if resume and settings.artifacts.resume.is_file() else None,
        seed=settings.seed,
        progress=progress,
    )


def train_default_recipe(
    data, splits, settings: CourseSettings, progress: bool = True, pretrained: bool = True
):
    """The course's default recipe: head on cached embeddings, then (if asked) a short fine-tune.

    Keeps whichever stage scored the lower eval log loss, and saves it as the run's checkpoint.

    Returns:
        (model, {"head": head history, "fine_tune": fine-tune history or None}).
    """
    import copy

    from conserviz_utils.checkpoint import save_checkpoint
    from conserviz_utils.models import build_model

    model = build_model(settings.arch, pretrained=pretrained, progress=progress)
    embeddings = embed_images(model, data.train_features, settings, progress=progress)
    head_history = train_head(model, embeddings, data, splits, settings, progress=progress)
    best_loss = best_epoch(head_history)["eval_log_loss"]
    tuned_history = None
    if settings.epochs > 0:
        head_only = copy.deepcopy(model.state_dict())
        train_loader, eval_loader = make_loaders(data, splits, settings, model)
        tuned_history = fine_tune(model, train_loader, eval_loader, settings, progress=progress)
        tuned_loss = tuned_history["eval_log_loss"].dropna().min()
        if not tuned_loss < best_loss:
            model.load_state_dict(head_only)
        best_loss = min(best_loss, tuned_loss)
    save_checkpoint(settings.artifacts.checkpoint, model, metrics={"eval_log_loss": float(best_loss)})
    return model, {"head": head_history, "fine_tune": tuned_history}


def ensure_checkpoint(data, splits, settings: CourseSettings) -> Path:
    """The checkpoint notebook 04 saved; trained quietly with the default recipe when missing."""
    path = settings.artifacts.checkpoint
    if not path.is_file():
        train_default_recipe(data, splits, settings, progress=False)
    return path


def prediction_loader(model, features, settings: CourseSettings):
    """A loader over ``features``' images in ``model``'s input format, without augmentation."""
    from conserviz_utils.data import ImagesDataset, default_transform, make_loader
    from conserviz_utils.models import model_info

    info = model_info(model.arch)
    dataset = ImagesDataset(features, transform=default_transform(info.input_size, info.mean, info.std))
    return make_loader(dataset, batch_size=2 * settings.batch_size)


def headline_metrics(logits, data, splits) -> dict:
    """Accuracy and log loss of eval logits, before and after temperature scaling, with baselines.

    The temperature is fitted on these same eval images, so the calibrated log loss is slightly
    optimistic; the test set gets the temperature, not the optimism.
    """
    from conserviz_utils.metrics import (
        accuracy,
        apply_temperature,
        fit_temperature,
        log_loss,
        majority_baseline,
        uniform_baseline,
    )

    train_ids, _ = splits
    eval_labels = data.train_labels.loc[logits.index]
    probs = apply_temperature(logits, 1.0)
    temperature = fit_temperature(logits, eval_labels)
    majority = majority_baseline(data.train_labels.loc[train_ids], eval_labels)
    return {
        "data": "synthetic sample" if data.is_sample else "competition data",
        "eval_images": int(len(eval_labels)),
        "accuracy": accuracy(probs, eval_labels),
        "log_loss": log_loss(probs, eval_labels),
        "temperature": temperature,
        "calibrated_log_loss": log_loss(apply_temperature(logits, temperature), eval_labels),
        "majority_accuracy": majority["accuracy"],
        "majority_log_loss": majority["log_loss"],
        "uniform_log_loss": uniform_baseline(eval_labels)["log_loss"],
    }


def evaluate_checkpoint(data, splits, settings: CourseSettings, progress: bool = True) -> dict:
    """Reload the saved checkpoint (never an in-memory model) and compute `headline_metrics`."""
    from conserviz_utils.checkpoint import load_checkpoint
    from conserviz_utils.train import predict_logits

    model, _ = load_checkpoint(ensure_checkpoint(data, splits, settings))
    loader = prediction_loader(model, data.train_features.loc[splits[1]], settings)
    return headline_metrics(predict_logits(model, loader, progress=progress), data, splits)


def save_metrics(settings: CourseSettings, metrics: dict) -> Path:
    """Write the headline figures for notebook 06 and ``make course``."""
    path = settings.artifacts.metrics
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path


def ensure_metrics(data, splits, settings: CourseSettings) -> dict:
    """The figures notebook 05 saved; recomputed quietly when missing or older than the model."""
    path, checkpoint = settings.artifacts.metrics, settings.artifacts.checkpoint
    if path.is_file() and checkpoint.is_file() and path.stat().st_mtime >= checkpoint.stat().st_mtime:
        return json.loads(path.read_text())
    metrics = evaluate_checkpoint(data, splits, settings, progress=False)
    save_metrics(settings, metrics)
    return metrics


def run_notebooks(
    notebooks_dir: Path,
    executed_dir: Path,
    names: tuple[str, ...] = NOTEBOOKS,
    timeout: int = 1800,
) -> list[tuple[str, float]]:
    """Execute each notebook in a fresh kernel, in order, and save the executed copy.

    Returns:
        (notebook name, seconds) for each notebook run.
    """
    import tempfile

    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    executed_dir.mkdir(parents=True, exist_ok=True)
    sockets = tempfile.TemporaryDirectory(prefix="conserviz-kernels-")
    timings = []
    for name in names:
        source = notebooks_dir / f"{name}.ipynb"
        notebook = nbformat.read(source, as_version=4)
        # Local sockets, not TCP: nothing listens on the network, and the kernel does not warn.
        kernel = KernelManager(
            kernel_name="python3", transport="ipc", ip=str(Path(sockets.name) / name)
        )
        client = NotebookClient(
            notebook,
            km=kernel,
            timeout=timeout,
            resources={"metadata": {"path": str(notebooks_dir)}},
        )
        started = time.perf_counter()
        print(f"[course] running {source.name} …", flush=True)
        try:
            client.execute()
        except CellExecutionError as error:
            nbformat.write(notebook, executed_dir / f"{name}.ipynb")
            raise SystemExit(
                f"[course] {source.name} failed; the executed copy with the error is in "
                f"{executed_dir / (name + '.ipynb')}.\n{error}"
            ) from None
        seconds = time.perf_counter() - started
        nbformat.write(notebook, executed_dir / f"{name}.ipynb")
        print(f"[course] {source.name} done in {seconds:.0f} s", flush=True)
        timings.append((name, seconds))
    sockets.cleanup()
    return timings


def main(argv: list[str] | None = None) -> int:
    """Run the whole course headless and print eval accuracy, log loss and the submission path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sample, one short epoch")
    parser.add_argument("--data", type=Path, help="competition data folder (else the sample)")
    parser.add_argument("--outputs", type=Path, help="output folder (default: outputs/)")
    args = parser.parse_args(argv)

    # The kernels inherit this process's environment: that is how the notebooks see the choices.
    if args.quick:
        os.environ["CONSERVIZ_QUICK"] = "1"
    if args.data:
        os.environ["CONSERVIZ_DATA"] = str(args.data.resolve())
    if args.outputs:
        os.environ["CONSERVIZ_OUTPUTS"] = str(args.outputs.resolve())
    settings = CourseSettings.from_env()
    artifacts = settings.artifacts

    started = time.perf_counter()
    run_notebooks(PROJECT_ROOT / "notebooks", artifacts.executed)
    minutes = (time.perf_counter() - started) / 60

    metrics = json.loads(artifacts.metrics.read_text())
    print()
    print(f"conserviz course finished in {minutes:.1f} min on {metrics['data']}")
    print(f"  eval accuracy : {metrics['accuracy']:.3f} (majority baseline {metrics['majority_accuracy']:.3f})")
    print(f"  eval log loss : {metrics['log_loss']:.3f} (uniform baseline {metrics['uniform_log_loss']:.3f})")
    print(f"  submission    : {artifacts.submission}")
    print(f"  notebooks     : {artifacts.executed}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
