"""The frozen-feature fast path: train the head on cached embeddings in seconds, then predict.

With a frozen backbone, every epoch of ordinary training pushes the same images through the same
network to get the same embeddings; only the small head changes. So on a CPU the course computes
the embeddings once (:func:`conserviz_utils.course.embeddings.compute_embeddings`) and trains the head on
them (:func:`fit_head`): an epoch over 16,000 cached embeddings takes a fraction of a second
instead of the better part of an hour. The head trained here is the model's own ``model.head``
module, so afterwards the whole :class:`~conserviz_utils.models.ConservizNet` predicts from
images, saves as a checkpoint and fine-tunes end to end as usual.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
)

from conserviz_utils import SPECIES
from conserviz_utils.callbacks import Callback, EarlyStopping
from conserviz_utils.runtime.device import pick_device
from conserviz_utils.course.embeddings import Embeddings
from conserviz_utils.errors import DataValidationError
from conserviz_utils.labels import class_positions
from conserviz_utils.metrics import apply_temperature
from conserviz_utils.train import fit

__all__ = [
    "EmbeddingRows",
    "as_matrix",
    "class_targets",
    "embedding_loader",
    "fit_head",
    "predict_from_embeddings",
    "predict_logits_from_embeddings",
]

# Rows per forward pass when evaluating or predicting from embeddings (a few MB at most).
PREDICT_CHUNK = 4096


def head_input_dim(head: nn.Module) -> int | None:
    """The number of inputs of the head's first linear layer, if it has one."""
    for module in head.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
        if isinstance(module, nn.LazyLinear):  # pragma: no cover - no input size yet
            return None
    return None


def as_matrix(embeddings, what: str) -> tuple[torch.Tensor, pd.Index | None]:
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


def class_targets(labels, ids: pd.Index | None, n_rows: int, species: Sequence[str], what: str) -> torch.Tensor:
    """Class numbers (in ``species`` order) of labels in any form ``labels`` accepts, aligned to ``ids``."""
    if isinstance(labels, (pd.DataFrame, pd.Series)) and ids is not None:
        absent = ids.difference(labels.index, sort=False)
        if len(absent):
            raise DataValidationError(
                f"embeddings without a row in the {what}",
                column="id",
                rows=list(absent),
                fix="select the labels of the same ids as the embeddings",
            )
        labels = labels.loc[ids]
    elif isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    positions = class_positions(labels, species, what=what)
    if len(positions) != n_rows:
        raise DataValidationError(
            f"{len(positions)} {what} for {n_rows} embeddings",
            fix="pass exactly one label per embedding row",
        )
    return torch.from_numpy(positions)


def check_head_fits(head: nn.Module, dim: int, n_classes: int, what: str) -> None:
    """Fail clearly when the embedding size or the number of classes does not fit the head."""
    expected = head_input_dim(head)
    if expected is not None and expected != dim:
        raise DataValidationError(
            f"the {what} have {dim} dimensions but the head expects {expected}",
            fix="compute the embeddings with the backbone of the model this head belongs to",
        )
    parameter = next(head.parameters(), None)
    probe = torch.zeros(1, dim, device=parameter.device if parameter is not None else "cpu")
    was_training = head.training
    head.eval()
    with torch.no_grad(), one_thread_on_cpu(probe.device):
        outputs = head(probe).shape[-1]
    head.train(was_training)
    if outputs != n_classes:
        raise DataValidationError(
            f"the head gives {outputs} logits but there are {n_classes} species",
            fix="build the model with num_classes equal to the number of species",
        )


def logits_in_chunks(head: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The head's float32 logits (on the CPU) for every row of ``x``, a few thousand at a time."""
    return torch.cat(
        [head(x[start : start + PREDICT_CHUNK].to(device)).float().cpu() for start in range(0, len(x), PREDICT_CHUNK)]
    )


@contextmanager
def one_thread_on_cpu(device: torch.device) -> Iterator[None]:
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


class EmbeddingRows(Dataset):
    """Embeddings and their class numbers as a dataset whose items are whole batches.

    Indexed with a list of row positions (what a ``BatchSampler`` yields), it returns the batch
    dict the training loop expects — "image_id", "image" (the embeddings) and "label" — in one
    tensor slice, instead of collating rows one by one.
    """

    def __init__(self, values: torch.Tensor, targets: torch.Tensor | None, ids: Sequence[str]) -> None:
        self.values, self.targets, self.ids = values, targets, list(ids)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, rows: list[int]) -> dict:
        index = torch.as_tensor(rows, dtype=torch.long)
        batch = {"image_id": [self.ids[i] for i in rows], "image": self.values[index]}
        if self.targets is not None:
            batch["label"] = self.targets[index]
        return batch


def whole_batches(batch: dict) -> dict:
    """The collate function of an :class:`EmbeddingRows` loader: its items are batches already."""
    return batch


def embedding_loader(
    values: torch.Tensor,
    targets: torch.Tensor | None,
    ids: Sequence[str],
    *,
    batch_size: int,
    shuffle: bool,
) -> DataLoader:
    """A loader of embedding batches for ``train.fit``: shuffled by a sampler ``fit`` seeds per epoch."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    rows = EmbeddingRows(values, targets, ids)
    order = RandomSampler(rows, generator=torch.Generator().manual_seed(0)) if shuffle else SequentialSampler(rows)
    return DataLoader(rows, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                      collate_fn=whole_batches)


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
    optimizer: torch.optim.Optimizer | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Train a classification head on cached embeddings with ``train.fit``, in place.

    The embeddings are just another loader for the same loop that fine-tunes whole networks, so
    the history, early stopping, the NaN guard, callbacks and the errors are the same. ``head``
    is trained as it is, the same module object, so when it is ``model.head`` the whole model is
    ready for prediction from images, checkpoints and fine-tuning afterwards. Training is in fp32
    (the head is tiny; lower precision would only cost accuracy) and on one CPU thread by default,
    where an epoch over 16,000 embeddings takes a fraction of a second.

    Args:
        head: The head to train (e.g. ``model.head``); its parameters are updated in place.
        train_embeddings: :class:`~conserviz_utils.course.embeddings.Embeddings`, a DataFrame indexed
            by id, or an (N, D) array.
        train_labels: The one-hot labels frame, a Series of species names (both matched by id
            when the embeddings carry ids), or an array of species names or class numbers.
        eval_embeddings: Optional embeddings to score after every epoch.
        eval_labels: Their labels, in any form ``train_labels`` accepts.
        epochs: Passes over the training embeddings.
        lr: AdamW learning rate (ignored when ``optimizer`` is given).
        batch_size: Embeddings per optimisation step.
        weight_decay: AdamW weight decay (ignored when ``optimizer`` is given).
        seed: Seeds the shuffling and dropout; the caller's random states are left untouched.
        species: Class names in the order of the head's logits.
        device: Where to train ("cpu", "cuda", "auto", ...); the head returns to where it was.
        early_stopping: A patience (epochs) or an ``EarlyStopping``: stop once the eval log
            loss has not improved for that long, and keep the head of the best epoch. Needs
            eval data, which should come from other sites than the training embeddings but not
            be the images you report the score on.
        optimizer: The optimizer over ``head``'s parameters (default: AdamW with ``lr`` and
            ``weight_decay``).
        callbacks: More :class:`~conserviz_utils.callbacks.Callback` objects for the loop.
        progress: Show progress bars.

    Returns:
        The history of ``train.fit`` (columns ``HISTORY_COLUMNS``): one "train" row per batch
        and, with eval data, one "eval" row per epoch, with ``.attrs`` as ``fit`` sets them.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if (eval_embeddings is None) != (eval_labels is None):
        raise ValueError("pass eval_embeddings and eval_labels together, or neither")
    species = list(species)
    x_train, train_ids = as_matrix(train_embeddings, "train embeddings")
    y_train = class_targets(train_labels, train_ids, len(x_train), species, "train labels")
    train_loader = embedding_loader(x_train, y_train, row_ids(train_ids, len(x_train)), batch_size=batch_size,
                                    shuffle=True)
    eval_loader = None
    if eval_embeddings is not None:
        x_eval, eval_ids = as_matrix(eval_embeddings, "eval embeddings")
        y_eval = class_targets(eval_labels, eval_ids, len(x_eval), species, "eval labels")
        if x_eval.shape[1] != x_train.shape[1]:
            raise DataValidationError(
                f"eval embeddings have {x_eval.shape[1]} dimensions, train embeddings {x_train.shape[1]}",
                fix="compute both with the same backbone",
            )
        eval_loader = embedding_loader(x_eval, y_eval, row_ids(eval_ids, len(x_eval)), batch_size=PREDICT_CHUNK,
                                       shuffle=False)
    check_head_fits(head, x_train.shape[1], len(species), "embeddings")

    device = pick_device(device)
    first = next(head.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    was_training = head.training
    head.to(device)
    if optimizer is None:
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        # fit seeds the global generators: do it inside a fork, so the caller's random state is
        # the same afterwards.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), one_thread_on_cpu(device):
            history = fit(
                head,
                train_loader,
                eval_loader,
                epochs=epochs,
                optimizer=optimizer,
                device=device,
                precision="fp32",
                early_stopping=early_stopping,
                seed=seed,
                progress=progress,
                callbacks=callbacks,
            )
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        head.to(home)
        head.train(was_training)
    return history


def row_ids(ids: pd.Index | None, n_rows: int) -> list[str]:
    """Row ids as strings: the embeddings' own, or positions for a bare array."""
    return [str(i) for i in (ids if ids is not None else range(n_rows))]


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
    x, own_ids = as_matrix(embeddings, "embeddings")
    if ids is not None:
        if len(ids) != len(x):
            raise DataValidationError(f"{len(ids)} ids for {len(x)} embeddings", fix="pass one id per embedding row")
        own_ids = pd.Index(ids)
    if own_ids is None:
        own_ids = pd.RangeIndex(len(x))
    check_head_fits(head, x.shape[1], len(species), "embeddings")
    first = next(head.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = head.training
    head.eval()
    try:
        with torch.inference_mode(), one_thread_on_cpu(device):
            logits = logits_in_chunks(head, x, device)
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
