"""Scoring and prediction, taught in notebook 05: run a model over a loader in inference mode.

`evaluate` scores a labelled loader (the training loop calls it after every epoch); `predict_logits`
and `predict` give one row per image id in the submission layout. Images and the model use the
channels-last memory layout; ``tta=True`` averages each image with its mirror image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from conserviz_utils import SPECIES
from conserviz_utils.errors import TrainingError
from conserviz_utils.metrics import accuracy, apply_temperature, log_loss
from conserviz_utils.runtime.batches import (
    BATCH_LAYOUT_FIX, batch_size, check_batch, class_positions, loader_length, to_device,
)
from conserviz_utils.runtime.device import autocast, choose_precision, pick_device
from conserviz_utils.runtime.distributed import gather_objects, gather_predictions

__all__ = ["evaluate", "forward_batches", "predict", "predict_logits"]


def forward_batches(
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
    ids, logits, labels, skipped = [], [], [], []
    try:
        with torch.inference_mode(), autocast(device, precision):
            total = loader_length(loader)
            for batch in tqdm(loader, total=total, desc=desc, unit="batch", leave=False, disable=not progress):
                check_batch(batch, need_labels)
                skipped.extend((str(i), str(reason)) for i, reason in batch.get("skipped", []))
                if batch_size(batch) == 0:
                    continue
                images = to_device(batch["image"], device)
                out = model(images).float()
                if tta:  # average with the mirror image (flipped along the width): animals walk both ways
                    out = (out + model(torch.flip(images, dims=[-1])).float()) / 2
                batch_ids = [str(i) for i in batch.get("image_id", range(len(ids), len(ids) + len(out)))]
                if len(batch_ids) != len(out):
                    raise TrainingError(
                        f"a batch has {len(out)} images but {len(batch_ids)} image ids", fix=BATCH_LAYOUT_FIX
                    )
                ids.extend(batch_ids)
                logits.append(out.to("cpu", torch.float64))
                if need_labels:
                    labels.append(batch["label"].cpu())
    finally:
        model.train(was_training)
    all_logits = torch.cat(logits) if logits else torch.empty((0, 0), dtype=torch.float64)
    return ids, all_logits, (torch.cat(labels) if need_labels and labels else None), skipped


def _refuse_non_finite(ids: Sequence[str], logits: np.ndarray, where: str) -> None:
    """Name the images whose logits are NaN or infinite: the weights diverged."""
    bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
    if bad.size:
        raise TrainingError(
            f"the model outputs NaN or infinite logits{where}",
            rows=[ids[i] for i in bad],
            fix="the weights diverged: retrain with a lower learning rate or clip gradients, and check these images",
        )


def evaluate(
    model: nn.Module,
    loader: Iterable,
    criterion: nn.Module | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``model`` on a labelled loader: mean loss, accuracy and the competition log loss.

    Returns ``{"eval_loss", "eval_accuracy", "eval_log_loss", "images", "skipped", "logits"}``,
    the logits a float64 frame indexed by id (columns: the dataset's species, when it names them),
    so a caller keeps them instead of predicting again; raises `TrainingError` when the loader has
    no labelled images or the model outputs NaN/inf.
    """
    device = pick_device(device)
    precision = choose_precision(precision, device, model, getattr(loader, "batch_size", None), "inference").precision
    ids, logits, labels, skipped = forward_batches(
        model, loader, device=device, precision=precision, tta=False, need_labels=True, progress=progress,
        desc="eval",
    )
    # Under torchrun each rank scored its share of the eval set: score the whole set.
    ids, logits, labels = gather_predictions(ids, logits, labels)
    skipped = sorted({tuple(item) for share in gather_objects(skipped) for item in share})
    if not ids:
        raise TrainingError("the eval loader gave no images", fix="check that the eval split is not empty")
    _refuse_non_finite(ids, logits.numpy(), " on eval images")
    probs = torch.softmax(logits, dim=1).numpy()
    y = class_positions(labels).numpy()
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    return {
        # The criterion sees the labels as the loader gives them, as in training.
        "eval_loss": float(criterion(logits.float(), labels)),
        "eval_accuracy": accuracy(y, probs),
        "eval_log_loss": log_loss(y, probs),
        "images": len(ids),
        "skipped": skipped,
        "logits": pd.DataFrame(logits.numpy(), index=pd.Index(ids, name="id"),
                               columns=getattr(getattr(loader, "dataset", None), "species", None)),
    }


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
        tta: Test-time augmentation: average the logits of each image and its mirror image.
        precision: "auto", "fp32", "bf16" or "fp16" (see `runtime.device.choose_precision`).
        species: The column names, in the order of the model's outputs.

    Returns:
        A float64 frame indexed by image id ("id"), one column per species. Images the loader
        skipped (``on_error="skip"``) have no row: ``.attrs["skipped"]`` lists them as
        (id, reason) and ``.attrs["note"]`` says what to do.
    """
    device = pick_device(device)
    choice = choose_precision(precision, device, model, getattr(loader, "batch_size", None), "inference")
    columns = list(species)
    ids, logits, _, skipped = forward_batches(
        model, loader, device=device, precision=choice.precision, tta=tta, need_labels=False, progress=progress,
        desc="predict",
    )
    if ids and logits.shape[1] != len(columns):
        raise TrainingError(
            f"the model gives {logits.shape[1]} outputs per image but {len(columns)} species were given",
            fix="pass the species the model was trained on (species=...), in its output order",
        )
    values = logits.numpy().reshape(len(ids), len(columns))
    frame = pd.DataFrame(values, index=pd.Index(ids, name="id"), columns=columns)
    frame.attrs.update(choice.as_attrs())
    frame.attrs["skipped"] = list(skipped)
    if skipped:
        shown = ", ".join(i for i, _ in skipped[:5]) + (" …" if len(skipped) > 5 else "")
        frame.attrs["note"] = (
            f"{len(skipped)} image(s) could not be read and have no row: {shown}. A submission needs every "
            "test id, so repair or replace these files (reasons in .attrs['skipped']) and predict again"
        )
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

    Arguments and skipped images as in `predict_logits`; ``temperature`` divides the logits
    before the softmax (fit it with `metrics.fit_temperature` on eval logits to undo
    over-confidence). Each row sums to 1.
    """
    is_number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not (is_number and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    logits = predict_logits(
        model, loader, tta=tta, device=device, precision=precision, species=species, progress=progress
    )
    if logits.empty:
        probs = logits.copy()
    else:
        _refuse_non_finite(list(logits.index), logits.to_numpy(), "")
        probs = apply_temperature(logits, temperature)
        probs.index.name = "id"
    probs.attrs = dict(logits.attrs)
    return probs
