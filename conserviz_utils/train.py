"""Training and prediction: ``fit`` a model, ``predict`` probabilities, and survive interruptions.

``fit`` is the walkthrough's loop (SGD, cross-entropy, one-hot labels) grown into something
that can run for an hour on a laptop:

* **Device and precision.** ``device="auto"`` picks a CUDA GPU, then Apple's MPS, then the CPU.
  ``precision="auto"`` picks bfloat16 autocast where it is faster (CUDA GPUs from Ampere on,
  CPUs with AMX), float16 with a gradient scaler on older CUDA GPUs, and float32 everywhere
  else (see :func:`pick_precision` for the measurement behind the CPU rule). The choice is in
  ``history.attrs`` and in the progress bar's title. Image batches and the model use the
  channels-last memory layout, which convolution kernels on both CPUs and GPUs run faster.
* **History.** One row per training batch and one per evaluation (see :data:`HISTORY_COLUMNS`),
  ready for a loss-curve plot.
* **Guards.** A NaN or infinite loss stops training with an error naming the epoch, the batch
  and its first images; gradients can be clipped; early stopping watches the eval log loss and
  restores the best weights.
* **Interrupts.** Ctrl-C, the notebook's stop button (both SIGINT) and SIGTERM (``kill`` from a
  shell, a cluster's time limit) do not kill training half-way through an update: training stops
  at the next batch boundary, writes a resumable checkpoint to ``checkpoint_path`` and returns
  the history so far with ``history.attrs["interrupted"] = True``. It does not re-raise, so the
  notebook cell ends cleanly. Pressing Ctrl-C a second time stops at once (still at a
  consistent point: never in the middle of an optimizer step). ``fit(..., resume_from=path)``
  then continues exactly where it stopped.

How an exact resume works. ``fit`` owns the shuffling: for a ``torch.utils.data.DataLoader``
whose sampler shuffles (it has a ``generator``), the order of epoch *e* is drawn from a generator
seeded with ``SeedSequence([seed, e])`` (``seed`` is ``fit``'s, or one drawn from torch's global
generator and recorded when None); the sampler gets its own generator back when ``fit``
returns. A checkpoint written at batch *b* of epoch *e* holds that seed, *b*, the model,
optimizer, scheduler, gradient-scaler and early-stopping state, and the random states (torch,
numpy, Python, CUDA) at that boundary. Resuming re-draws the same order for epoch *e*, skips its
first *b* batches by index, without loading their images, and restores the random states, so
dropout and augmentation draw what they would have drawn. On a CPU with a fixed seed and
``num_workers=0``, an interrupted and resumed run ends with the same weights as an
uninterrupted one. (With worker processes the remaining batches still hold the same images in
the same order; only random augmentations drawn inside workers differ. Loaders that are not
DataLoaders are replayed and their first *b* batches discarded.)
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm

from conserviz_utils import SPECIES
from conserviz_utils.checkpoint import resume_state, save_checkpoint
from conserviz_utils.device import (
    PRECISIONS,
    autocast,
    cpu_bf16_support,
    cpu_supports_bf16,
    grad_scaler,
    pick_device,
    pick_precision,
)
from conserviz_utils.errors import CheckpointError, TrainingError

#: Columns of the history ``fit`` returns. ``phase`` is "train" (one row per batch: ``lr``,
#: ``train_loss``, and ``grad_norm`` when clipping) or "eval" (one row per epoch, placed at the
#: epoch's last batch and step: ``eval_loss``, ``eval_accuracy``, ``eval_log_loss``). Values a
#: row does not measure are NaN. ``epoch`` and ``batch`` count from 1; ``step`` counts batches
#: over the whole run.
HISTORY_COLUMNS = (
    "epoch",
    "batch",
    "step",
    "phase",
    "lr",
    "train_loss",
    "grad_norm",
    "eval_loss",
    "eval_accuracy",
    "eval_log_loss",
)

_BATCH_LAYOUT_FIX = (
    "build the loader with conserviz_utils.data.make_loader (batches are dicts with "
    "'image_id', 'image' and 'label')"
)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def _check_batch(batch: Any, need_labels: bool) -> None:
    """Refuse a batch that is not the dict conserviz loaders produce."""
    if not isinstance(batch, Mapping) or "image" not in batch:
        raise TrainingError(
            f"a loader batch is a {type(batch).__name__} without an 'image' entry", fix=_BATCH_LAYOUT_FIX
        )
    if need_labels and "label" not in batch and _batch_size(batch) > 0:
        raise TrainingError(
            "the loader's batches have no 'label': it was built from features without labels",
            fix="build the training and eval datasets with labels, e.g. ImagesDataset(features, labels)",
        )


def _batch_size(batch: Mapping) -> int:
    """Number of images in a batch (0 when every image of it was skipped)."""
    images = batch.get("image")
    return 0 if images is None else int(images.shape[0])


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move an image batch to ``device``, channels-last when it is (N, C, H, W)."""
    if images.dim() == 4:
        return images.to(device, non_blocking=True, memory_format=torch.channels_last)
    return images.to(device, non_blocking=True)


def _class_positions(labels: torch.Tensor) -> torch.Tensor:
    """Class numbers of one-hot (or probability) label rows, or of class-number labels."""
    return labels.argmax(dim=1) if labels.dim() == 2 else labels.long()


def _first_ids(batch: Mapping) -> list[str]:
    """The image ids of a batch, for error messages."""
    return [str(i) for i in batch.get("image_id", [])]


def _loader_length(loader: Iterable) -> int | None:
    """Number of batches of a loader, when it knows."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


class _SkipBatches:
    """A batch sampler that leaves out the first ``skip`` batches of another one."""

    def __init__(self, batch_sampler: Iterable[list[int]], skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        # A generator function, like torch's samplers: the order is drawn on the first next(),
        # at the same moment as in an uninterrupted epoch.
        batches = iter(self.batch_sampler)
        for _ in itertools.islice(batches, self.skip):
            pass
        yield from batches

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)  # type: ignore[arg-type]


def _epoch_batches(loader: Iterable, skip: int) -> Iterator:
    """Iterate one epoch of ``loader`` without its first ``skip`` batches.

    For a map-style DataLoader the batches are skipped by index, so their images are never
    loaded; any other iterable is replayed and its first batches thrown away.
    """
    if skip == 0:
        return iter(loader)
    map_style = isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)
    if map_style and loader.batch_sampler is not None:
        options: dict[str, Any] = {
            "num_workers": loader.num_workers,
            "collate_fn": loader.collate_fn,
            "pin_memory": loader.pin_memory,
            "timeout": loader.timeout,
            "worker_init_fn": loader.worker_init_fn,
            "multiprocessing_context": loader.multiprocessing_context,
            "generator": loader.generator,
            "prefetch_factor": loader.prefetch_factor,
            "pin_memory_device": loader.pin_memory_device,
        }
        rest = DataLoader(loader.dataset, batch_sampler=_SkipBatches(loader.batch_sampler, skip), **options)
        return iter(rest)
    batches = iter(loader)
    for _ in itertools.islice(batches, skip):
        pass
    return batches


class _ShuffleControl:
    """Seeds a DataLoader's shuffling per epoch from (seed, epoch); puts its generator back after."""

    def __init__(self, loader: Iterable) -> None:
        sampler = getattr(loader, "sampler", None) if isinstance(loader, DataLoader) else None
        self.sampler = sampler if sampler is not None and hasattr(sampler, "generator") else None
        self.distributed = sampler if sampler is not None and hasattr(sampler, "set_epoch") else None
        self.original = self.sampler.generator if self.sampler is not None else None

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Make the coming epoch's order a function of (seed, epoch) only."""
        if self.sampler is not None:
            generator = torch.Generator()
            generator.manual_seed(_epoch_seed(seed, epoch))
            self.sampler.generator = generator
        if self.distributed is not None:
            self.distributed.set_epoch(epoch)

    def restore(self) -> None:
        """Give the loader its own generator back."""
        if self.sampler is not None:
            self.sampler.generator = self.original


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 32-bit seed for one epoch's shuffle."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------
# Random states (for exact resumes)
# --------------------------------------------------------------------------------------------


def _rng_snapshot(device: torch.device) -> tuple:
    """The global random states, cheaply (converted to plain values only when saved)."""
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    return torch.get_rng_state(), np.random.get_state(), random.getstate(), cuda


def _rng_plain(snapshot: tuple) -> dict:
    """A random-state snapshot as checkpoint-safe values."""
    torch_state, numpy_state, python_state, cuda = snapshot
    name, keys, position, has_gauss, cached_gaussian = numpy_state
    version, internal, gauss_next = python_state
    return {
        "torch": torch_state,
        "numpy": {
            "name": name,
            "keys": keys.tolist(),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "cuda": list(cuda) if cuda is not None else None,
    }


def _rng_restore(state: Mapping, device: torch.device) -> None:
    """Put back the random states of a checkpoint."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------------------------
# Interrupts
# --------------------------------------------------------------------------------------------


class _StopSignals:
    """Turns SIGINT (Ctrl-C, the notebook's stop button) and SIGTERM into "stop at the next batch".

    Installed only for the duration of ``fit`` and only in the main thread (Python delivers
    signals there only); the previous handlers are put back afterwards. A second SIGINT raises
    KeyboardInterrupt at once, except during an optimizer step, which always completes so the
    weights stay consistent.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self.in_update = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(signum)
                if previous is None:  # installed outside Python: we could not put it back
                    continue
                signal.signal(signum, self._handle)
                self._previous[signum] = previous
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum).name
        elif signum == signal.SIGINT and not self.in_update:
            raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the eval log loss has not improved for ``patience`` epochs.

    Attributes:
        patience: Epochs without improvement to wait before stopping.
        min_delta: An improvement smaller than this does not count.
        restore_best: At the end of ``fit``, load the weights of the best epoch.
    """

    patience: int = 3
    min_delta: float = 0.0
    restore_best: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"patience must be a positive integer, got {self.patience!r}")
        if not self.min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta!r}")


def _early_stopping(value: int | EarlyStopping | None) -> EarlyStopping | None:
    """Accept a patience (int) or an :class:`EarlyStopping`."""
    if value is None or isinstance(value, EarlyStopping):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return EarlyStopping(patience=value)
    raise ValueError(f"early_stopping must be a patience (int), an EarlyStopping or None; got {value!r}")


# --------------------------------------------------------------------------------------------
# Evaluation and prediction
# --------------------------------------------------------------------------------------------


def _forward_batches(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    precision: str,
    tta: bool,
    need_labels: bool,
    progress: bool,
    desc: str,
) -> tuple[list[str], torch.Tensor, torch.Tensor | None, list[tuple[str, str]]]:
    """Run ``model`` over a loader in inference mode: (ids, float64 logits, labels or None, skipped)."""
    was_training = model.training
    model.to(device=device, memory_format=torch.channels_last)
    model.eval()
    ids: list[str] = []
    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    skipped: list[tuple[str, str]] = []
    try:
        with torch.inference_mode(), autocast(device, precision):
            total = _loader_length(loader)
            bar = tqdm(loader, total=total, desc=desc, unit="batch", leave=False, disable=not progress)
            for batch in bar:
                _check_batch(batch, need_labels)
                skipped.extend((str(i), str(reason)) for i, reason in batch.get("skipped", []))
                if _batch_size(batch) == 0:
                    continue
                images = _to_device(batch["image"], device)
                out = model(images).float()
                if tta:
                    # Average with the mirror image (flip along the width): animals walk both ways.
                    out = (out + model(torch.flip(images, dims=[-1])).float()) / 2
                batch_ids = [str(i) for i in batch.get("image_id", range(len(ids), len(ids) + len(out)))]
                if len(batch_ids) != len(out):
                    raise TrainingError(
                        f"a batch has {len(out)} images but {len(batch_ids)} image ids", fix=_BATCH_LAYOUT_FIX
                    )
                ids.extend(batch_ids)
                logits.append(out.to("cpu", torch.float64))
                if need_labels:
                    labels.append(batch["label"].cpu())
    finally:
        model.train(was_training)
    all_logits = torch.cat(logits) if logits else torch.empty((0, 0), dtype=torch.float64)
    all_labels = torch.cat(labels) if need_labels and labels else None
    return ids, all_logits, all_labels, skipped


def evaluate(
    model: nn.Module,
    loader: Iterable,
    criterion: nn.Module | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``model`` on a labelled loader: mean loss, accuracy and the competition log loss.

    Returns:
        ``{"eval_loss", "eval_accuracy", "eval_log_loss", "images", "skipped"}``; the log
        loss is :func:`conserviz_utils.metrics.log_loss` of the softmax probabilities.

    Raises:
        TrainingError: the loader has no labelled images, or the model outputs NaN/inf.
    """
    from conserviz_utils.metrics import accuracy, log_loss

    device = pick_device(device)
    precision = pick_precision(precision, device)
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    ids, logits, labels, skipped = _forward_batches(
        model, loader, device=device, precision=precision, tta=False, need_labels=True, progress=progress,
        desc="eval",
    )
    if not ids:
        raise TrainingError("the eval loader gave no images", fix="check that the eval split is not empty")
    bad = (~torch.isfinite(logits).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        raise TrainingError(
            "the model outputs NaN or infinite logits on eval images",
            rows=[ids[i] for i in bad],
            fix="the weights diverged: lower the learning rate or clip gradients, and check these images",
        )
    probs = torch.softmax(logits, dim=1).numpy()
    y = _class_positions(labels).numpy()
    return {
        # The criterion sees the labels as the loader gives them, as in training.
        "eval_loss": float(criterion(logits.float(), labels)),
        "eval_accuracy": accuracy(probs, y),
        "eval_log_loss": log_loss(probs, y),
        "images": len(ids),
        "skipped": skipped,
    }


def _skipped_note(skipped: Sequence[tuple[str, str]]) -> str:
    """The note attached to predictions that lack some images."""
    shown = ", ".join(i for i, _ in skipped[:5]) + (" …" if len(skipped) > 5 else "")
    return (
        f"{len(skipped)} image(s) could not be read and have no row: {shown}. A submission needs "
        "every test id, so repair or replace these files (reasons in .attrs['skipped']) and predict again"
    )


def predict_logits(
    model: nn.Module,
    loader: Iterable,
    tta: bool = False,
    device: str | torch.device = "auto",
    precision: str = "auto",
    species: Sequence[str] = SPECIES,
    progress: bool = True,
) -> pd.DataFrame:
    """Raw logits of ``model`` for every image of ``loader`` (what temperature scaling is fitted on).

    Args:
        model: Any classifier returning (N, len(species)) logits.
        loader: Batches as dicts with "image_id" and "image" (labels, if any, are ignored).
        tta: Test-time augmentation: average the logits of each image and its mirror image.
        device: "auto", "cpu", "cuda", ... (see :func:`pick_device`).
        precision: "auto", "fp32", "bf16" or "fp16" (see :func:`pick_precision`).
        species: The column names, in the order of the model's outputs.
        progress: Show a progress bar.

    Returns:
        A float64 DataFrame indexed by image id (index name "id"), one column per species.
        Images the loader skipped (``on_error="skip"``) have no row; they are listed in
        ``.attrs["skipped"]`` as (id, reason) pairs and explained in ``.attrs["note"]``.
    """
    device = pick_device(device)
    precision = pick_precision(precision, device)
    columns = list(species)
    ids, logits, _, skipped = _forward_batches(
        model, loader, device=device, precision=precision, tta=tta, need_labels=False, progress=progress,
        desc="predict",
    )
    if ids and logits.shape[1] != len(columns):
        raise TrainingError(
            f"the model gives {logits.shape[1]} outputs per image but {len(columns)} species were given",
            fix="pass the species the model was trained on (species=...), in its output order",
        )
    values = logits.numpy().reshape(len(ids), len(columns))
    frame = pd.DataFrame(values, index=pd.Index(ids, name="id"), columns=columns)
    frame.attrs["skipped"] = list(skipped)
    if skipped:
        frame.attrs["note"] = _skipped_note(skipped)
    return frame


def predict(
    model: nn.Module,
    loader: Iterable,
    tta: bool = False,
    device: str | torch.device = "auto",
    precision: str = "auto",
    species: Sequence[str] = SPECIES,
    temperature: float = 1.0,
    progress: bool = True,
) -> pd.DataFrame:
    """Softmax probabilities of ``model`` for every image of ``loader``: the submission layout.

    Args:
        model, loader, tta, device, precision, species, progress: as in :func:`predict_logits`.
        temperature: Divide the logits by this before the softmax (1.0: plain softmax); fit it
            with ``metrics.fit_temperature`` on eval logits to undo over-confidence.

    Returns:
        A float64 DataFrame indexed by image id (index name "id"), one column per species, each
        row summing to 1. Skipped images have no row: see ``.attrs["skipped"]`` and
        ``.attrs["note"]``; the submission validator refuses a submission that lacks them.
    """
    from conserviz_utils.metrics import apply_temperature

    is_number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not (is_number and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    logits = predict_logits(
        model, loader, tta=tta, device=device, precision=precision, species=species, progress=progress
    )
    if logits.empty:
        probs = logits.copy()
    else:
        bad = logits.index[~np.isfinite(logits.to_numpy()).all(axis=1)]
        if len(bad):
            raise TrainingError(
                "the model outputs NaN or infinite logits",
                rows=list(bad),
                fix="retrain with a lower learning rate (the weights diverged), or check these images",
            )
        probs = apply_temperature(logits, temperature)
        probs.index.name = "id"
    probs.attrs = dict(logits.attrs)
    return probs


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


@dataclass
class _Position:
    """Where training stands: what an interrupt checkpoint records.

    ``epoch`` epochs are complete and ``batch`` batches of the next one; ``rng`` holds the
    random states to restore, either before the epoch's loader is iterated (``rng_point``
    "epoch_start") or right after (``"batch"``).
    """

    epoch: int = 0
    batch: int = 0
    rng_point: str = "epoch_start"
    rng: tuple | None = None


class _Trainer:
    """The state of one ``fit`` call; see :func:`fit` for what each part does."""

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable,
        eval_loader: Iterable | None,
        epochs: int,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        scheduler: Any,
        device: torch.device,
        precision: str,
        clip_grad_norm: float | None,
        early: EarlyStopping | None,
        checkpoint_path: Path | None,
        progress: bool,
    ) -> None:
        self.model = model
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.epochs = epochs
        self.optimizer = optimizer
        self.criterion = criterion
        self.scheduler = scheduler
        self.plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.device = device
        self.precision = precision
        self.scaler = grad_scaler(device, enabled=precision == "fp16")
        self.clip_grad_norm = clip_grad_norm
        self.early = early
        self.checkpoint_path = checkpoint_path
        self.progress = progress
        num_classes = getattr(model, "num_classes", None)
        self.species = SPECIES if num_classes in (None, len(SPECIES)) else None
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

        self.seed = 0
        self.rows: list[dict] = []
        self.step = 0
        self.skipped: dict[str, str] = {}
        self.position = _Position()
        self.best_loss: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.stop_reason: str | None = None
        self.resumed_from: str | None = None
        self.resume_rng: tuple[str, dict] | None = None

    # -- resuming ------------------------------------------------------------------------------

    def resume(self, path: Path, seed: int | None) -> None:
        """Load the model, optimizer and training state of a checkpoint."""
        state = resume_state(path)
        try:
            self.model.load_state_dict(state["state_dict"])
        except RuntimeError as err:
            raise CheckpointError(
                f"its weights do not fit this model ({str(err).splitlines()[0]})",
                path=path,
                fix="resume with the same architecture and head the checkpoint was trained with",
            ) from None
        for part, target in (("optimizer", self.optimizer), ("scheduler", self.scheduler)):
            if state.get(part) is not None and target is not None:
                try:
                    target.load_state_dict(state[part])
                except (ValueError, KeyError) as err:
                    raise CheckpointError(
                        f"its {part} state does not fit the {part} given ({err})",
                        path=path,
                        fix=f"pass the same kind of {part} over the same parameters as the interrupted run",
                    ) from None
        run = state.get("extra", {}).get("fit")
        self.position = _Position(epoch=state.get("epoch") or 0, batch=state.get("batch") or 0)
        if run is None:
            if self.position.batch:
                raise CheckpointError(
                    "this checkpoint was saved in the middle of an epoch but not by fit, so the "
                    "rest of that epoch cannot be reproduced",
                    path=path,
                    fix="resume from a checkpoint written by fit(checkpoint_path=...)",
                )
            self.seed = seed if seed is not None else _draw_seed()
        else:
            if seed is not None and seed != run["seed"]:
                raise TrainingError(
                    f"seed={seed} differs from the seed {run['seed']} of the run being resumed",
                    fix=f"pass seed=None or seed={run['seed']} to resume it",
                )
            self.seed = run["seed"]
            self.step = run["step"]
            self.skipped = dict(run["skipped"])
            self.best_loss = run["best_loss"]
            self.best_epoch = run["best_epoch"]
            self.best_state = run["best_state"]
            self.bad_epochs = run["bad_epochs"]
            self.stopped_early = run["stopped_early"]
            if run["scaler"] is not None:
                self.scaler.load_state_dict(run["scaler"])
            self.resume_rng = (run["rng_point"], run["rng"])
        history = state.get("history") or {}
        columns = [history.get(c, []) for c in HISTORY_COLUMNS]
        self.rows = [dict(zip(HISTORY_COLUMNS, values)) for values in zip(*columns)]
        self.resumed_from = str(path)

    # -- checkpoints -----------------------------------------------------------------------------

    def history_columns(self) -> dict[str, list]:
        """The history so far as a dict of lists (what a checkpoint stores)."""
        return {c: [row[c] for row in self.rows] for c in HISTORY_COLUMNS}

    def last_metrics(self) -> dict[str, float]:
        """The latest eval scores and the last epoch's mean train loss, for the checkpoint."""
        metrics: dict[str, float] = {}
        evals = [r for r in self.rows if r["phase"] == "eval"]
        if evals:
            metrics.update({k: evals[-1][k] for k in ("eval_loss", "eval_accuracy", "eval_log_loss")})
        trains = [r for r in self.rows if r["phase"] == "train"]
        if trains:
            last_epoch = trains[-1]["epoch"]
            losses = [r["train_loss"] for r in trains if r["epoch"] == last_epoch]
            metrics["train_loss"] = float(np.mean(losses))
        return metrics

    def save(self, interrupted: bool) -> None:
        """Write a resumable checkpoint of the current position, if a path was given."""
        if self.checkpoint_path is None:
            return
        position = self.position
        run = {
            "seed": self.seed,
            "step": self.step,
            "rng_point": position.rng_point,
            "rng": _rng_plain(position.rng if position.rng is not None else _rng_snapshot(self.device)),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "skipped": [list(item) for item in self.skipped.items()],
            "epochs": self.epochs,
            "device": str(self.device),
            "precision": self.precision,
            "interrupted": interrupted,
        }
        save_checkpoint(
            self.checkpoint_path,
            self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            epoch=position.epoch,
            batch=position.batch,
            metrics=self.last_metrics(),
            species=self.species,
            history=self.history_columns(),
            extra={"fit": run},
        )

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: _StopSignals) -> None:
        """Train from the current position to ``epochs`` (or an interrupt, or early stopping)."""
        shuffle = _ShuffleControl(self.train_loader)
        epoch_bar = tqdm(
            total=self.epochs,
            initial=min(self.position.epoch, self.epochs),
            desc=f"fit on {self.device.type}, {self.precision}",
            unit="epoch",
            disable=not self.progress,
        )
        try:
            with epoch_bar:
                while self.position.epoch < self.epochs and not self.stopped_early:
                    if not self.train_epoch(stop, shuffle, epoch_bar):
                        return
        finally:
            shuffle.restore()

    def _stop_here(self, stop: _StopSignals) -> bool:
        """Save and report an interrupt if one was requested."""
        if stop.requested is None:
            return False
        self.stop_reason = stop.requested
        self.save(interrupted=True)
        return True

    def train_epoch(self, stop: _StopSignals, shuffle: _ShuffleControl, epoch_bar: tqdm) -> bool:
        """Train the epoch at the current position (from its current batch), then evaluate.

        Returns:
            False when an interrupt stopped training (a checkpoint is then written).
        """
        epoch, skip = self.position.epoch, self.position.batch
        restore = self.resume_rng
        self.resume_rng = None
        if restore is not None and restore[0] == "epoch_start":
            _rng_restore(restore[1], self.device)
        shuffle.start_epoch(self.seed, epoch)
        batches = _epoch_batches(self.train_loader, skip)
        boundary = None
        if restore is not None and restore[0] == "batch":
            _rng_restore(restore[1], self.device)
            boundary = _rng_snapshot(self.device)

        self.model.train()
        self.position = _Position(epoch, skip, "batch", boundary or _rng_snapshot(self.device))
        with tqdm(
            total=_loader_length(self.train_loader),
            initial=skip,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            unit="batch",
            leave=False,
            disable=not self.progress,
        ) as batch_bar:
            while True:
                if self._stop_here(stop):
                    return False
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                self.train_batch(batch, stop)
                batch_bar.update()
                if self.rows and self.rows[-1]["phase"] == "train":
                    batch_bar.set_postfix(loss=f"{self.rows[-1]['train_loss']:.4f}", refresh=False)
        if self.position.batch == 0:
            raise TrainingError(
                "the training loader gave no batches",
                fix="check that the training split is not empty (and drop_last with a small set)",
            )

        if self.eval_loader is not None:
            self.evaluate_epoch(stop)
        else:
            self.position = _Position(epoch + 1, 0, "epoch_start", _rng_snapshot(self.device))
        self.save(interrupted=stop.requested is not None)
        epoch_bar.update()
        if self.rows and self.rows[-1]["phase"] == "eval":
            epoch_bar.set_postfix(eval_log_loss=f"{self.rows[-1]['eval_log_loss']:.4f}", refresh=False)
        if stop.requested is not None:
            self.stop_reason = stop.requested
            return False
        return True

    def train_batch(self, batch: Mapping, stop: _StopSignals) -> None:
        """One optimizer step on one batch, recorded as a history row; moves the position on."""
        epoch, number = self.position.epoch, self.position.batch + 1
        _check_batch(batch, need_labels=True)
        for image_id, reason in batch.get("skipped", []):
            self.skipped.setdefault(str(image_id), str(reason))
        if _batch_size(batch) == 0:  # every image of this batch was unreadable and skipped
            self.position = _Position(epoch, number, "batch", _rng_snapshot(self.device))
            return
        images = _to_device(batch["image"], self.device)
        labels = batch["label"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            logits = self.model(images)
        # The loss in float32 whatever the autocast precision: log-softmax needs the range.
        loss = self.criterion(logits.float(), labels)
        value = float(loss.detach())
        if not math.isfinite(value):
            self._raise_non_finite(value, batch, epoch, number)
        self.scaler.scale(loss).backward()

        # From here to the new position, a second Ctrl-C waits: the weights, the history and the
        # position a checkpoint records must change together.
        stop.in_update = True
        try:
            grad_norm = math.nan
            if self.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm))
            lr = float(self.optimizer.param_groups[0]["lr"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scheduler is not None and not self.plateau:
                self.scheduler.step()
            self.step += 1
            row = _row(epoch + 1, number, self.step, "train", lr=lr, train_loss=value, grad_norm=grad_norm)
            self.rows.append(row)
            self.position = _Position(epoch, number, "batch", _rng_snapshot(self.device))
        finally:
            stop.in_update = False

    def _raise_non_finite(self, value: float, batch: Mapping, epoch: int, number: int) -> None:
        """Stop with an error that says where the loss blew up and what to try."""
        images_finite = bool(torch.isfinite(batch["image"]).all())
        labels_finite = bool(torch.isfinite(batch["label"].float()).all())
        if not (images_finite and labels_finite):
            culprit = "images" if not images_finite else "labels"
            cause = f"the batch's {culprit} hold NaN or infinite values"
            fix = "check these images and labels (and the normalisation in the transform)"
        else:
            cause = "the inputs are finite, so the weights diverged"
            fix = "lower the learning rate (e.g. 10x), set clip_grad_norm=1.0, or use precision='fp32'"
        raise TrainingError(
            f"the training loss became {value} at epoch {epoch + 1}, batch {number}: {cause}",
            rows=_first_ids(batch),
            fix=fix,
        )

    def evaluate_epoch(self, stop: _StopSignals) -> None:
        """Score the eval loader, record it, and apply early stopping and a plateau scheduler."""
        epoch, batches = self.position.epoch, self.position.batch
        scores = evaluate(
            self.model,
            self.eval_loader,
            self.criterion,
            device=self.device,
            precision=self.precision,
            progress=self.progress,
        )
        self.model.train()
        stop.in_update = True  # the record, early stopping and the position change together
        try:
            for image_id, reason in scores["skipped"]:
                self.skipped.setdefault(image_id, reason)
            current = scores["eval_log_loss"]
            self.rows.append(
                _row(
                    epoch + 1,
                    batches,
                    self.step,
                    "eval",
                    eval_loss=scores["eval_loss"],
                    eval_accuracy=scores["eval_accuracy"],
                    eval_log_loss=current,
                )
            )
            if self.plateau:
                self.scheduler.step(current)
            if self.early is not None:
                if self.best_loss is None or current < self.best_loss - self.early.min_delta:
                    self.best_loss, self.best_epoch, self.bad_epochs = current, epoch + 1, 0
                    state = self.model.state_dict()
                    self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
                else:
                    self.bad_epochs += 1
                    self.stopped_early = self.bad_epochs >= self.early.patience
            self.position = _Position(epoch + 1, 0, "epoch_start", _rng_snapshot(self.device))
        finally:
            stop.in_update = False

    # -- the result ----------------------------------------------------------------------------

    def finish(self) -> None:
        """Restore the best weights when early stopping asks for it, and save the final state."""
        wanted = self.early is not None and self.early.restore_best and self.best_state is not None
        if not wanted or self.stop_reason is not None:
            return
        self.model.load_state_dict(self.best_state)
        self.save(interrupted=False)

    def history(self) -> pd.DataFrame:
        """The history DataFrame, with what describes the run in ``.attrs``."""
        frame = pd.DataFrame(self.rows, columns=list(HISTORY_COLUMNS))
        frame = frame.astype({"epoch": "int64", "batch": "int64", "step": "int64", "phase": "str"})
        for column in HISTORY_COLUMNS[4:]:
            frame[column] = frame[column].astype("float64")
        path = self.checkpoint_path
        frame.attrs.update(
            device=str(self.device),
            precision=self.precision,
            seed=self.seed,
            epochs_completed=self.position.epoch,
            interrupted=self.stop_reason is not None,
            interrupt_signal=self.stop_reason,
            checkpoint=str(path) if path is not None and path.exists() else None,
            resumed_from=self.resumed_from,
            stopped_early=self.stopped_early,
            best_epoch=self.best_epoch,
            best_eval_log_loss=self.best_loss,
            skipped=sorted(self.skipped.items()),
        )
        return frame


def _row(epoch: int, batch: int, step: int, phase: str, **values: float) -> dict:
    """One history row, NaN where nothing was measured."""
    row = {"epoch": epoch, "batch": batch, "step": step, "phase": phase}
    row.update({c: math.nan for c in HISTORY_COLUMNS[4:]})
    row.update(values)
    return row


def _draw_seed() -> int:
    """A run seed from torch's global generator (so torch.manual_seed before fit fixes it)."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


def _seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's random module."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def fit(
    model: nn.Module,
    train_loader: Iterable,
    eval_loader: Iterable | None = None,
    epochs: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    criterion: nn.Module | None = None,
    scheduler: Any | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    clip_grad_norm: float | None = None,
    early_stopping: int | EarlyStopping | None = None,
    checkpoint_path: str | Path | None = None,
    resume_from: str | Path | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train ``model`` and return its history; stop cleanly and resumably on an interrupt.

    Args:
        model: Any classifier returning logits, e.g. from ``build_model``. It is moved to
            ``device`` (channels-last) and trained in place.
        train_loader: Batches as dicts with "image" (N, 3, H, W), "label" (one-hot, N x classes)
            and "image_id"; ``data.make_loader`` builds them. A DataLoader's shuffling is seeded
            by ``fit`` (see the module docstring).
        eval_loader: Labelled batches scored after every epoch (eval loss, accuracy, log loss).
        epochs: Total number of epochs of the run. When resuming, the epochs already done count:
            re-running the same call with ``resume_from`` finishes the same run, and a finished
            run's checkpoint returns its history without training more.
        optimizer: Defaults to the walkthrough's SGD(lr=0.001, momentum=0.9) over the
            parameters that require gradients.
        criterion: Defaults to ``nn.CrossEntropyLoss()`` (one-hot labels work as probability
            targets). Computed in float32 whatever the precision.
        scheduler: A learning-rate scheduler, stepped after every batch (build it for
            ``epochs * len(train_loader)`` steps); ``ReduceLROnPlateau`` is stepped once per
            epoch with the eval log loss.
        device: "auto", "cpu", "cuda", "cuda:1", "mps" or a torch.device (:func:`pick_device`).
        precision: "auto", "fp32", "bf16" or "fp16" (:func:`pick_precision`).
        clip_grad_norm: Clip the gradients' total norm to this before each step (the norm
            before clipping is recorded in the ``grad_norm`` column).
        early_stopping: A patience (epochs without a better eval log loss) or an
            :class:`EarlyStopping`; needs ``eval_loader``. The best weights are restored at the end.
        checkpoint_path: Where to write a resumable checkpoint after every epoch and on an
            interrupt (atomically: the previous one survives a crash during the write).
        resume_from: A checkpoint written by ``fit`` to continue from (often the same path as
            ``checkpoint_path``). Pass the same kind of model, optimizer and scheduler.
        seed: Seeds torch, numpy and Python's random module at the start and the shuffling of
            every epoch. None draws a seed (recorded in ``history.attrs["seed"]``).
        progress: Show an epoch bar and a batch bar (tqdm); False keeps output silent.

    Returns:
        The history (columns :data:`HISTORY_COLUMNS`; earlier rows included when resuming), with
        ``.attrs``: device, precision, seed, epochs_completed, interrupted (True when a signal
        stopped training), interrupt_signal ("SIGINT", "SIGTERM" or "KeyboardInterrupt"),
        checkpoint (path written, or None), resumed_from, stopped_early, best_epoch,
        best_eval_log_loss, and skipped (sorted (id, reason) pairs of unreadable images).

    Raises:
        TrainingError: the loss became NaN or infinite (naming epoch, batch and images), the
            loader is empty or not conserviz's batch layout, or the device/precision is missing.
        CheckpointError: ``resume_from`` is unreadable or does not fit the model, or a
            checkpoint cannot be written.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"clip_grad_norm must be positive, got {clip_grad_norm!r}")
    early = _early_stopping(early_stopping)
    if early is not None and eval_loader is None:
        raise TrainingError(
            "early stopping watches the eval log loss, but no eval_loader was given",
            fix="pass eval_loader=...",
        )
    device = pick_device(device)
    precision = pick_precision(precision, device)

    was_training = model.training
    model.to(device=device, memory_format=torch.channels_last)
    if optimizer is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise TrainingError(
                "the model has no trainable parameters", fix="unfreeze(model), or leave some layers trainable"
            )
        optimizer = torch.optim.SGD(trainable, lr=0.001, momentum=0.9)
    trainer = _Trainer(
        model,
        train_loader,
        eval_loader,
        epochs,
        optimizer,
        criterion if criterion is not None else nn.CrossEntropyLoss(),
        scheduler,
        device,
        precision,
        clip_grad_norm,
        early,
        Path(checkpoint_path) if checkpoint_path is not None else None,
        progress,
    )
    if resume_from is not None:
        trainer.resume(Path(resume_from), seed)
    else:
        trainer.seed = seed if seed is not None else _draw_seed()
        if seed is not None:
            _seed_everything(seed)

    with _StopSignals() as stop:
        try:
            trainer.run(stop)
        except KeyboardInterrupt:
            # Raised outside an optimizer step (see _StopSignals), so the weights are those of
            # the last batch boundary, which trainer.position describes.
            trainer.stop_reason = stop.requested or "KeyboardInterrupt"
            trainer.save(interrupted=True)
    trainer.finish()
    model.train(was_training)
    return trainer.history()


__all__ = [
    "HISTORY_COLUMNS",
    "PRECISIONS",
    "EarlyStopping",
    "cpu_bf16_support",
    "cpu_supports_bf16",
    "evaluate",
    "fit",
    "pick_device",
    "pick_precision",
    "predict",
    "predict_logits",
]
