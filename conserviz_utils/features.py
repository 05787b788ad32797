"""The frozen-feature fast path: train the head on cached embeddings in seconds, then predict.

With a frozen backbone, every epoch of ordinary training pushes the same images through the same
network to get the same embeddings; only the small head changes. So on a CPU the course computes
the embeddings once (:func:`conserviz_utils.embeddings.compute_embeddings`) and trains the head on
them (:func:`fit_head`): an epoch over 16,000 cached embeddings takes a fraction of a second
instead of the better part of an hour. The head trained here is the model's own ``model.head``
module, so afterwards the whole :class:`~conserviz_utils.models.ConservizNet` predicts from
images, saves as a checkpoint and fine-tunes end to end as usual.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from conserviz_utils import SPECIES
from conserviz_utils.device import pick_device
from conserviz_utils.embeddings import Embeddings
from conserviz_utils.errors import DataValidationError, TrainingError
from conserviz_utils.metrics import accuracy, apply_temperature, log_loss
from conserviz_utils.train import HISTORY_COLUMNS, EarlyStopping, _early_stopping

__all__ = ["fit_head", "predict_from_embeddings", "predict_logits_from_embeddings"]

# Rows per forward pass when evaluating or predicting from embeddings (a few MB at most).
_PREDICT_CHUNK = 4096


def _head_input_dim(head: nn.Module) -> int | None:
    """The number of inputs of the head's first linear layer, if it has one."""
    for module in head.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
        if isinstance(module, nn.LazyLinear):  # pragma: no cover - no input size yet
            return None
    return None


def _as_matrix(embeddings, what: str) -> tuple[torch.Tensor, pd.Index | None]:
    """Return (float32 (N, D) tensor, ids or None) of embeddings in any accepted form."""
    if isinstance(embeddings, Embeddings):
        ids, values = embeddings.ids, np.asarray(embeddings.values)
    elif isinstance(embeddings, pd.DataFrame):
        ids, values = embeddings.index, embeddings.to_numpy(dtype=np.float32)
    elif isinstance(embeddings, torch.Tensor):
        ids, values = None, embeddings.detach().cpu().float().numpy()
    else:
        ids, values = None, np.asarray(embeddings, dtype=np.float32)
    if values.ndim != 2 or len(values) == 0:
        raise DataValidationError(
            f"{what} must be a non-empty (images, dims) table, got shape {values.shape}",
            fix="pass the Embeddings from compute_embeddings (or an (N, D) array)",
        )
    values = np.ascontiguousarray(values, dtype=np.float32)
    if not values.flags.writeable:  # a read-only memmap: torch wants memory it may write
        values = values.copy()
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad.size:
        raise DataValidationError(
            f"{what} hold NaN or infinite values",
            rows=list(ids[bad]) if ids is not None else bad.tolist(),
            fix="compute the embeddings again with refresh=True (use precision='fp32' if it recurs)",
        )
    return torch.from_numpy(values), ids


def _as_targets(labels, ids: pd.Index | None, n_rows: int, species: Sequence[str], what: str) -> torch.Tensor:
    """Class numbers (in ``species`` order) of labels in any accepted form, aligned to ``ids``."""
    if isinstance(labels, pd.DataFrame):
        unknown = [c for c in labels.columns if c not in species]
        missing = [c for c in species if c not in labels.columns]
        if unknown or missing:
            raise DataValidationError(
                f"{what} columns do not match the species (missing: {missing or 'none'}; "
                f"unknown: {unknown or 'none'})",
                column=str((unknown or missing)[0]),
                fix="pass the one-hot train_labels frame, or a Series of species names",
            )
        labels = labels[list(species)].idxmax(axis=1)
    if isinstance(labels, pd.Series):
        if ids is not None:
            absent = ids.difference(labels.index, sort=False)
            if len(absent):
                raise DataValidationError(
                    f"embeddings without a row in the {what}",
                    column="id",
                    rows=list(absent),
                    fix="select the labels of the same ids as the embeddings",
                )
            labels = labels.reindex(ids)
        names = labels.to_numpy()
        row_names = list(labels.index)
    else:
        names = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
        row_names = None
    if len(names) != n_rows:
        raise DataValidationError(
            f"{len(names)} {what} for {n_rows} embeddings",
            fix="pass exactly one label per embedding row",
        )
    if names.dtype.kind in "iu":
        numbers = names.astype(np.int64)
    else:
        lookup = {name: i for i, name in enumerate(species)}
        numbers = np.array([lookup.get(name, -1) for name in names.tolist()], dtype=np.int64)
    bad = np.flatnonzero((numbers < 0) | (numbers >= len(species)))
    if bad.size:
        raise DataValidationError(
            f"{what} that are not one of the {len(species)} species",
            rows=[row_names[i] for i in bad] if row_names else bad.tolist(),
            fix=f"use the species names {', '.join(species)} (or class numbers 0..{len(species) - 1})",
        )
    return torch.from_numpy(numbers)


def _check_head_fits(head: nn.Module, dim: int, n_classes: int, what: str) -> None:
    """Fail clearly when the embedding size or the number of classes does not fit the head."""
    expected = _head_input_dim(head)
    if expected is not None and expected != dim:
        raise DataValidationError(
            f"the {what} have {dim} dimensions but the head expects {expected}",
            fix="compute the embeddings with the backbone of the model this head belongs to",
        )
    parameter = next(head.parameters(), None)
    probe = torch.zeros(1, dim, device=parameter.device if parameter is not None else "cpu")
    was_training = head.training
    head.eval()
    with torch.no_grad(), _one_thread_on_cpu(probe.device):
        outputs = head(probe).shape[-1]
    head.train(was_training)
    if outputs != n_classes:
        raise DataValidationError(
            f"the head gives {outputs} logits but there are {n_classes} species",
            fix="build the model with num_classes equal to the number of species",
        )


def _logits_in_chunks(head: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The head's float32 logits (on the CPU) for every row of ``x``, a few thousand at a time."""
    return torch.cat(
        [head(x[start : start + _PREDICT_CHUNK].to(device)).float().cpu() for start in range(0, len(x), _PREDICT_CHUNK)]
    )


@contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run torch on one CPU thread inside the block, then restore the caller's setting.

    The head's products are tiny (a batch of 64 × 1,280 numbers): spread over threads, each one
    costs more in synchronisation than it saves, and when other programs keep the cores busy
    every step waits for a thread that is not running. On a 2-core machine, an epoch over 16,000
    embeddings took 0.4 s on one thread against 31 s on two while the cores were shared (and
    0.37 s against 0.30 s when they were idle).
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _row(epoch: int, batch: int, step: int, phase: str, **values: float) -> dict:
    """One history row in ``train.fit``'s layout, NaN where nothing was measured."""
    row = {"epoch": epoch, "batch": batch, "step": step, "phase": phase}
    row.update({column: math.nan for column in HISTORY_COLUMNS[4:]})
    row.update(values)
    return row


def fit_head(
    head: nn.Module,
    train_embeddings,
    train_labels,
    eval_embeddings=None,
    eval_labels=None,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 256,
    weight_decay: float = 1e-4,
    seed: int = 0,
    species: Sequence[str] = SPECIES,
    device: str | torch.device = "cpu",
    early_stopping: int | EarlyStopping | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train a classification head on cached embeddings (AdamW, cross-entropy), in place.

    ``head`` is trained as it is, the same module object, so when it is ``model.head`` the whole
    model is ready for prediction from images, checkpoints and full fine-tuning afterwards.
    Training is in fp32 (the head is tiny; lower precision would only cost accuracy) and on the
    CPU by default, where an epoch over 16,000 embeddings takes a fraction of a second.

    Args:
        head: The head to train (e.g. ``model.head``); its parameters are updated in place.
        train_embeddings: :class:`Embeddings`, a DataFrame indexed by id, or an (N, D) array.
        train_labels: The one-hot labels frame, a Series of species names (both matched by id
            when the embeddings carry ids), or an array of species names or class numbers.
        eval_embeddings: Optional embeddings to score after every epoch.
        eval_labels: Their labels, in any form ``train_labels`` accepts.
        epochs: Passes over the training embeddings.
        lr: AdamW learning rate.
        batch_size: Embeddings per optimisation step.
        weight_decay: AdamW weight decay.
        seed: Seeds the shuffling and dropout; torch's global random state is left untouched.
        species: Class names in the order of the head's logits.
        device: Where to train ("cpu", "cuda", "auto", ...); the head returns to where it was.
        early_stopping: A patience (epochs) or an ``EarlyStopping``: stop once the eval log
            loss has not improved for that long, and keep the head of the best epoch. A head
            on a few thousand embeddings overfits within a few epochs, and the first sign is
            over-confidence on unseen sites, which log loss punishes. Needs eval data.
        progress: Show a tqdm progress bar over epochs.

    Returns:
        The history in ``train.fit``'s layout (columns ``train.HISTORY_COLUMNS``): one "train"
        row per batch and, with eval data, one "eval" row per epoch; ``epoch`` and ``batch``
        count from 1. ``.attrs`` holds device, precision ("fp32"), seed and epochs_completed;
        with early stopping also best_epoch, best_eval_log_loss and stopped_early.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if (eval_embeddings is None) != (eval_labels is None):
        raise ValueError("pass eval_embeddings and eval_labels together, or neither")
    stopping = _early_stopping(early_stopping)
    if stopping is not None and eval_embeddings is None:
        raise ValueError("early_stopping watches the eval log loss: pass eval_embeddings and eval_labels")
    species = list(species)
    x_train, train_ids = _as_matrix(train_embeddings, "train embeddings")
    y_train = _as_targets(train_labels, train_ids, len(x_train), species, "train labels")
    if eval_embeddings is not None:
        x_eval, eval_ids = _as_matrix(eval_embeddings, "eval embeddings")
        y_eval = _as_targets(eval_labels, eval_ids, len(x_eval), species, "eval labels")
        if x_eval.shape[1] != x_train.shape[1]:
            raise DataValidationError(
                f"eval embeddings have {x_eval.shape[1]} dimensions, train embeddings {x_train.shape[1]}",
                fix="compute both with the same backbone",
            )
    _check_head_fits(head, x_train.shape[1], len(species), "embeddings")

    device = pick_device(device)
    first = next(head.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    was_training = head.training
    head.to(device)
    x_train, y_train = x_train.to(device), y_train.to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    criterion = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    n_batches = math.ceil(len(x_train) / batch_size)
    rows: list[dict] = []
    step = 0
    epoch = 0
    best_loss, best_epoch, best_state = math.inf, 0, None
    try:
        # Dropout draws from the global generator: seed it inside a fork, so the run is
        # reproducible and the caller's random state is the same afterwards.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _one_thread_on_cpu(device):
            torch.manual_seed(seed)
            for epoch in tqdm(range(1, epochs + 1), desc="head", unit="epoch", disable=not progress, leave=False):
                head.train()
                order = torch.randperm(len(x_train), generator=generator).to(device)
                for batch in range(1, n_batches + 1):
                    index = order[(batch - 1) * batch_size : batch * batch_size]
                    loss = criterion(head(x_train[index]), y_train[index])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise TrainingError(
                            f"the head's training loss became {value} at epoch {epoch}, batch {batch}",
                            fix="lower lr (e.g. 10x), or compute the embeddings again in fp32",
                        )
                    rows.append(_row(epoch, batch, step, "train", lr=float(lr), train_loss=value))
                if eval_embeddings is not None:
                    head.eval()
                    with torch.inference_mode():
                        logits = _logits_in_chunks(head, x_eval, device)
                    probs = torch.softmax(logits.double(), dim=1).numpy()
                    y = y_eval.numpy()
                    rows.append(
                        _row(
                            epoch,
                            n_batches,
                            step,
                            "eval",
                            eval_loss=float(criterion(logits, y_eval)),
                            eval_accuracy=accuracy(probs, y),
                            eval_log_loss=log_loss(probs, y),
                        )
                    )
                    if stopping is not None:
                        current = rows[-1]["eval_log_loss"]
                        if current < best_loss - stopping.min_delta:
                            best_loss, best_epoch = current, epoch
                            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                        elif epoch - best_epoch >= stopping.patience:
                            break
        if stopping is not None and stopping.restore_best and best_state is not None:
            head.load_state_dict(best_state)
    finally:
        head.to(home)
        head.train(was_training)
    history = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    history = history.astype({"epoch": "int64", "batch": "int64", "step": "int64", "phase": "str"})
    for column in HISTORY_COLUMNS[4:]:
        history[column] = history[column].astype("float64")
    history.attrs.update(device=str(device), precision="fp32", seed=seed, epochs_completed=epoch)
    if stopping is not None:
        history.attrs.update(best_epoch=best_epoch, best_eval_log_loss=best_loss,
                             stopped_early=epoch < epochs)
    return history


def predict_logits_from_embeddings(
    head: nn.Module,
    embeddings,
    species: Sequence[str] = SPECIES,
    *,
    ids: Sequence | None = None,
) -> pd.DataFrame:
    """Raw logits of the head for each embedding (what ``metrics.fit_temperature`` is fitted on).

    Args:
        head: The trained head (e.g. ``model.head``).
        embeddings: :class:`Embeddings`, a DataFrame indexed by id, or an (N, D) array.
        species: Column names, in the order of the head's logits.
        ids: Row ids for an array without them; default 0..N-1.

    Returns:
        DataFrame of float64 logits indexed by ``id``, one column per species.
    """
    species = list(species)
    x, own_ids = _as_matrix(embeddings, "embeddings")
    if ids is not None:
        if len(ids) != len(x):
            raise DataValidationError(f"{len(ids)} ids for {len(x)} embeddings", fix="pass one id per embedding row")
        own_ids = pd.Index(ids)
    if own_ids is None:
        own_ids = pd.RangeIndex(len(x))
    _check_head_fits(head, x.shape[1], len(species), "embeddings")
    first = next(head.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = head.training
    head.eval()
    try:
        with torch.inference_mode(), _one_thread_on_cpu(device):
            logits = _logits_in_chunks(head, x, device)
    finally:
        head.train(was_training)
    return pd.DataFrame(logits.double().numpy(), index=pd.Index(own_ids, name="id"), columns=species)


def predict_from_embeddings(
    head: nn.Module,
    embeddings,
    species: Sequence[str] = SPECIES,
    *,
    ids: Sequence | None = None,
    temperature: float = 1.0,
) -> pd.DataFrame:
    """Softmax probabilities of the head for each embedding, indexed by id (submission layout).

    Args:
        head: The trained head (e.g. ``model.head``).
        embeddings: :class:`Embeddings`, a DataFrame indexed by id, or an (N, D) array.
        species: Column names, in the order of the head's logits.
        ids: Row ids for an array without them; default 0..N-1.
        temperature: Divide the logits by this before the softmax (see ``metrics.fit_temperature``).

    Returns:
        DataFrame of float64 probabilities indexed by ``id``, one column per species, rows
        summing to 1.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    probs = apply_temperature(predict_logits_from_embeddings(head, embeddings, species, ids=ids), temperature)
    probs.index.name = "id"
    return probs
