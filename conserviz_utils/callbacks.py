"""Callbacks: small pieces of behaviour that ``fit``'s loop (notebook 04) calls at named events.

The loop in :mod:`conserviz_utils.train` only does forward, loss, backward, step and evaluation.
Everything else — the NaN guard, gradient clipping, learning-rate schedules, early stopping,
checkpoints, progress bars, the history — is a :class:`Callback`, and ``fit(..., callbacks=[...])``
takes your own. The loop calls every callback's method for each event, in ``order`` (low first):

========================  =====================================================================
event                     when
========================  =====================================================================
``on_fit_start``          once, after a resume has loaded the callbacks' saved state
``on_epoch_start``        before the first batch of an epoch (``trainer.position.epoch`` is it)
``on_loss(loss)``         after the forward pass, before backward (``loss`` is a float)
``on_before_step``        gradients are ready, before the optimizer step
``on_batch_end``          after the optimizer step (``trainer.batch_values``: lr, train_loss, …)
``on_eval_end(scores)``   after the eval loader was scored (``scores``: eval_loss, …)
``on_epoch_end``          after the epoch (and its evaluation)
``on_interrupt``          Ctrl-C or SIGTERM stopped training at a batch boundary
``on_fit_end``            once, at the end (also after an interrupt, not after an error)
``close``                 always, even after an error: release files and progress bars
========================  =====================================================================

Each event receives the running ``trainer`` (what it offers: :class:`Trainer`). A callback sets
``trainer.should_stop = True`` to end training after the current epoch. A callback with state
(early stopping's best score, a scheduler) returns it from ``state_dict`` and takes it back in
``load_state_dict``: the checkpoint keeps it, so a resumed run continues exactly (the Lightning
convention). ``on_batch_end`` and ``on_eval_end`` run while a second Ctrl-C waits,
so the weights, the history and what a checkpoint records change together.

A callback of your own, e.g. one that records the learning rate of every batch::

    class RecordLR(Callback):
        def __init__(self):
            self.lrs = []

        def on_batch_end(self, trainer):
            self.lrs.append(trainer.batch_values["lr"])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from conserviz_utils.errors import TrainingError
from conserviz_utils.runtime.batches import first_ids, loader_length
from conserviz_utils.runtime.resume import Position

if TYPE_CHECKING:  # for annotations only (runtime.device does not import this module)
    from conserviz_utils.runtime.device import PrecisionChoice

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

class Trainer(Protocol):
    """What a callback receives as ``trainer``: the running loop's state (a ``runtime.session.Session``)."""

    model: torch.nn.Module  # as given to fit (a DistributedDataParallel wrapper under torchrun)
    unwrapped_model: torch.nn.Module  # the model itself: what to save and restore
    train_loader: Iterable
    eval_loader: Iterable | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # scales the loss in fp16; does nothing otherwise
    device: torch.device
    precision: str
    precision_choice: PrecisionChoice | None
    is_main_process: bool  # rank 0: the process that writes files
    epochs: int  # of the whole run
    history: History
    position: Position  # epochs done, and batches done of the next one
    step: int  # optimizer steps done over the whole run
    batch: Mapping | None  # the batch being trained on
    batch_values: dict[str, float]  # what the batch measured: train_loss, lr, grad_norm
    should_stop: bool  # set it to end training after the current epoch
    stop_reason: str | None  # the signal that interrupted training
    weights_changed: bool  # set it when a callback replaced the weights after the last epoch
    resumed_from: str | None

    @property
    def stop_requested(self) -> bool:
        """Whether a signal asked training to stop."""

    def save_checkpoint(self, path: Path, interrupted: bool) -> None:
        """Write a resumable checkpoint of the current position."""


class Callback:
    """Base class of callbacks: override the events you need; each receives the running trainer."""

    #: Callbacks run in increasing ``order`` for every event (the history records first, the
    #: checkpoint is written last, after every other callback has updated its state).
    order: int = 50

    def on_fit_start(self, trainer: Trainer) -> None:
        """Training starts (state from a resumed checkpoint is already loaded)."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """An epoch starts."""

    def on_loss(self, trainer: Trainer, loss: float) -> None:
        """The batch's loss is known; backward has not run yet."""

    def on_before_step(self, trainer: Trainer) -> None:
        """The gradients are ready; the optimizer has not stepped yet."""

    def on_batch_end(self, trainer: Trainer) -> None:
        """The optimizer stepped; ``trainer.batch_values`` holds what the batch measured."""

    def on_eval_end(self, trainer: Trainer, scores: dict[str, Any]) -> None:
        """The eval loader was scored."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """An epoch (and its evaluation) ended."""

    def on_interrupt(self, trainer: Trainer) -> None:
        """A signal stopped training at a batch boundary."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Training ended normally or by an interrupt."""

    def close(self) -> None:
        """Release what the callback holds; called even when training failed."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback (empty: nothing to resume)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned."""

    def history_attrs(self) -> dict[str, Any]:
        """Entries this callback adds to ``history.attrs``."""
        return {}


def history_row(epoch: int, batch: int, step: int, phase: str, **values: float) -> dict:
    """One history row, NaN where nothing was measured."""
    row = {"epoch": epoch, "batch": batch, "step": step, "phase": phase}
    row.update({column: math.nan for column in HISTORY_COLUMNS[4:]})
    row.update(values)
    return row


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """History rows as the typed DataFrame ``fit`` returns."""
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    frame = frame.astype({"epoch": "int64", "batch": "int64", "step": "int64", "phase": "str"})
    for column in HISTORY_COLUMNS[4:]:
        frame[column] = frame[column].astype("float64")
    return frame


class History(Callback):
    """Records one row per training batch and one per evaluation (the loop always has one)."""

    order = 0

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_batch_end(self, trainer: Trainer) -> None:
        position = trainer.position
        values = {k: trainer.batch_values.get(k, math.nan) for k in ("lr", "train_loss", "grad_norm")}
        self.rows.append(history_row(position.epoch + 1, position.batch + 1, trainer.step, "train", **values))

    def on_eval_end(self, trainer: Trainer, scores: dict[str, Any]) -> None:
        position = trainer.position
        values = {k: scores[k] for k in ("eval_loss", "eval_accuracy", "eval_log_loss")}
        self.rows.append(history_row(position.epoch + 1, position.batch, trainer.step, "eval", **values))

    def columns(self) -> dict[str, list]:
        """The history so far as a dict of lists (what a checkpoint stores)."""
        return {c: [row[c] for row in self.rows] for c in HISTORY_COLUMNS}

    def load_columns(self, columns: dict[str, list]) -> None:
        """Take back the rows a checkpoint stored with :meth:`columns`."""
        values = [columns.get(c, []) for c in HISTORY_COLUMNS]
        self.rows = [dict(zip(HISTORY_COLUMNS, row)) for row in zip(*values)]

    def last_metrics(self) -> dict[str, float]:
        """The latest eval scores and the last epoch's mean train loss, for the checkpoint."""
        metrics: dict[str, float] = {}
        evals = [r for r in self.rows if r["phase"] == "eval"]
        if evals:
            metrics.update({k: evals[-1][k] for k in ("eval_loss", "eval_accuracy", "eval_log_loss")})
        trains = [r for r in self.rows if r["phase"] == "train"]
        if trains:
            last_epoch = trains[-1]["epoch"]
            metrics["train_loss"] = float(np.mean([r["train_loss"] for r in trains if r["epoch"] == last_epoch]))
        return metrics

    def latest(self, column: str) -> float | None:
        """The newest value recorded in ``column``, if any."""
        for row in reversed(self.rows):
            if not math.isnan(row[column]):
                return row[column]
        return None

    def frame(self) -> pd.DataFrame:
        """The history as a DataFrame with :data:`HISTORY_COLUMNS`."""
        return history_frame(self.rows)


class NonFiniteLossGuard(Callback):
    """Stop with an error naming the epoch, the batch and its images when the loss is NaN or inf."""

    order = 10

    def on_loss(self, trainer: Trainer, loss: float) -> None:
        if math.isfinite(loss):
            return
        batch = trainer.batch
        images_finite = bool(torch.isfinite(batch["image"]).all())
        labels_finite = bool(torch.isfinite(batch["label"].float()).all())
        if not (images_finite and labels_finite):
            culprit = "images" if not images_finite else "labels"
            cause = f"the batch's {culprit} hold NaN or infinite values"
            fix = "check these images and labels (and the normalisation in the transform)"
        else:
            cause = "the inputs are finite, so the weights diverged"
            fix = "lower the learning rate (e.g. 10x), set clip_grad_norm=1.0, or use precision='fp32'"
        position = trainer.position
        raise TrainingError(
            f"the training loss became {loss} at epoch {position.epoch + 1}, batch {position.batch + 1}: {cause}",
            rows=first_ids(batch),
            fix=fix,
        )


class GradientClipping(Callback):
    """Clip the gradients' total norm before each step; the norm before clipping goes to the history."""

    order = 10

    def __init__(self, max_norm: float) -> None:
        if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive, got {max_norm!r}")
        self.max_norm = float(max_norm)

    def on_before_step(self, trainer: Trainer) -> None:
        trainer.scaler.unscale_(trainer.optimizer)
        params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
        trainer.batch_values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm))


class LRScheduler(Callback):
    """Step a learning-rate scheduler after every batch, or once per epoch on the eval log loss.

    ``ReduceLROnPlateau`` watches a score, so it is stepped after each evaluation with the eval log
    loss; every other scheduler is stepped after every optimizer step (build it for
    ``epochs * len(train_loader)`` steps).
    """

    order = 20

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def on_batch_end(self, trainer: Trainer) -> None:
        if not self.plateau:
            self.scheduler.step()

    def on_eval_end(self, trainer: Trainer, scores: dict[str, Any]) -> None:
        if self.plateau:
            self.scheduler.step(scores["eval_log_loss"])

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


class EarlyStopping(Callback):
    """Stop when the eval log loss has not improved for ``patience`` epochs; keep the best weights.

    Attributes:
        patience: Epochs without improvement to wait before stopping.
        min_delta: An improvement smaller than this does not count.
        restore_best: At the end of ``fit``, load the weights of the best epoch.
    """

    order = 30

    def __init__(self, patience: int = 3, min_delta: float = 0.0, restore_best: bool = True) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.patience = patience
        self.min_delta = float(min_delta)
        self.restore_best = restore_best
        self.reset()

    def __repr__(self) -> str:
        return f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, restore_best={self.restore_best})"

    def reset(self) -> None:
        """Forget the scores of an earlier run."""
        self.best_loss: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.stopped_early = False

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.eval_loader is None:
            raise TrainingError(
                "early stopping watches the eval log loss, but no eval data was given",
                fix="pass eval_loader=... to fit (eval_embeddings and eval_labels to fit_head)",
            )
        if trainer.resumed_from is None:
            self.reset()
        trainer.should_stop = self.stopped_early

    def on_eval_end(self, trainer: Trainer, scores: dict[str, Any]) -> None:
        current = scores["eval_log_loss"]
        if self.best_loss is None or current < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.bad_epochs = current, trainer.position.epoch + 1, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in trainer.unwrapped_model.state_dict().items()}
        else:
            self.bad_epochs += 1
            self.stopped_early = self.bad_epochs >= self.patience
            trainer.should_stop = trainer.should_stop or self.stopped_early

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.restore_best and self.best_state is not None and trainer.stop_reason is None:
            trainer.unwrapped_model.load_state_dict(self.best_state)
            trainer.weights_changed = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss = state["best_loss"]
        self.best_epoch = state["best_epoch"]
        self.best_state = state["best_state"]
        self.bad_epochs = state["bad_epochs"]
        self.stopped_early = state["stopped_early"]

    def history_attrs(self) -> dict[str, Any]:
        return {
            "stopped_early": self.stopped_early,
            "best_epoch": self.best_epoch,
            "best_eval_log_loss": self.best_loss,
        }


def as_early_stopping(value: int | EarlyStopping | None) -> EarlyStopping | None:
    """Accept a patience (int) or an :class:`EarlyStopping` (``fit``'s ``early_stopping``)."""
    if value is None or isinstance(value, EarlyStopping):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return EarlyStopping(patience=value)
    raise ValueError(f"early_stopping must be a patience (int), an EarlyStopping or None; got {value!r}")


class Checkpointer(Callback):
    """Write a resumable checkpoint after every epoch and on an interrupt (atomically, rank 0 only).

    The file holds the weights, the optimizer, the history, the random states and every
    callback's ``state_dict``, so ``fit(..., resume_from=path)`` continues exactly.
    """

    order = 90

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.saved_at: tuple | None = None

    def save(self, trainer: Trainer, interrupted: bool) -> None:
        """Write the checkpoint of the trainer's current position (once per position)."""
        where = (trainer.position.epoch, trainer.position.batch, trainer.step, trainer.weights_changed)
        if where == self.saved_at or not trainer.is_main_process:
            return
        trainer.save_checkpoint(self.path, interrupted=interrupted)
        self.saved_at = where

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.save(trainer, interrupted=trainer.stop_requested)

    def on_interrupt(self, trainer: Trainer) -> None:
        self.save(trainer, interrupted=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.weights_changed and trainer.stop_reason is None:
            self.save(trainer, interrupted=False)

    def history_attrs(self) -> dict[str, Any]:
        return {"checkpoint": str(self.path) if self.path.exists() else None}


class ProgressBars(Callback):
    """An epoch bar and a batch bar (tqdm.auto) with the latest train loss and eval log loss."""

    order = 80

    def __init__(self) -> None:
        self.epoch_bar: tqdm | None = None
        self.batch_bar: tqdm | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.epoch_bar = tqdm(
            total=trainer.epochs,
            initial=min(trainer.position.epoch, trainer.epochs),
            desc=f"fit on {trainer.device.type}, "
            + (trainer.precision_choice.label if trainer.precision_choice is not None else trainer.precision),
            unit="epoch",
            disable=not trainer.is_main_process,
        )

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.batch_bar = tqdm(
            total=loader_length(trainer.train_loader),
            initial=trainer.position.batch,
            desc=f"epoch {trainer.position.epoch + 1}/{trainer.epochs}",
            unit="batch",
            leave=False,
            disable=not trainer.is_main_process,
        )

    def on_batch_end(self, trainer: Trainer) -> None:
        if self.batch_bar is not None:
            self.batch_bar.update()
            self.batch_bar.set_postfix(loss=f"{trainer.batch_values['train_loss']:.4f}", refresh=False)

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.close_batch_bar()
        if self.epoch_bar is not None:
            self.epoch_bar.update()
            latest = trainer.history.latest("eval_log_loss")
            if latest is not None:
                self.epoch_bar.set_postfix(eval_log_loss=f"{latest:.4f}", refresh=False)

    def close_batch_bar(self) -> None:
        """Close the bar of the current epoch."""
        if self.batch_bar is not None:
            self.batch_bar.close()
            self.batch_bar = None

    def close(self) -> None:
        self.close_batch_bar()
        if self.epoch_bar is not None:
            self.epoch_bar.close()
            self.epoch_bar = None


__all__ = [
    "HISTORY_COLUMNS",
    "Callback",
    "Checkpointer",
    "EarlyStopping",
    "GradientClipping",
    "History",
    "LRScheduler",
    "NonFiniteLossGuard",
    "ProgressBars",
    "Trainer",
    "as_early_stopping",
    "history_frame",
    "history_row",
]
