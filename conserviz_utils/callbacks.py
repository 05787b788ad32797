"""Callbacks, taught in notebook 04: the behaviour that ``train.fit``'s loop calls at named events.

The loop only does forward, loss, backward, step and evaluation; the history, the NaN guard,
clipping, schedules, early stopping, checkpoints and progress bars are callbacks, run in
increasing ``order``. Each event (a method of :class:`Callback`) gets the running ``trainer``, a
:class:`conserviz_utils.runtime.session.Session` (``model``, ``optimizer``, ``position``,
``step``, ``batch``, ``batch_values``, ``history``, …); ``trainer.should_stop = True`` ends training
after the epoch. State returned by ``state_dict`` goes into the checkpoint and comes back through
``load_state_dict``, so a resumed run continues exactly. ``fit(..., callbacks=[...])`` adds yours::

    class RecordLR(Callback):
        def __init__(self):
            self.lrs = []

        def on_batch_end(self, trainer):
            self.lrs.append(trainer.batch_values["lr"])
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from conserviz_utils.errors import TrainingError
from conserviz_utils.runtime.batches import first_ids, loader_length

#: Columns of ``fit``'s history: one "train" row per batch (``lr``, ``train_loss``, ``grad_norm``
#: when clipping) and one "eval" row per epoch, at its last batch; NaN where a row measures
#: nothing. ``epoch`` and ``batch`` count from 1, ``step`` counts batches over the whole run.
HISTORY_COLUMNS = (
    "epoch", "batch", "step", "phase",
    "lr", "train_loss", "grad_norm", "eval_loss", "eval_accuracy", "eval_log_loss",
)
EVAL_COLUMNS = ("eval_loss", "eval_accuracy", "eval_log_loss")


class Callback:
    """Base class of callbacks: override the events you need."""

    order: int = 50  # the history runs first, the checkpoint last, after the others updated

    def on_fit_start(self, trainer) -> None:
        """Once, before the first epoch (a resumed run's saved state is already loaded)."""

    def on_epoch_start(self, trainer) -> None:
        """Before the epoch's first batch."""

    def on_loss(self, trainer, loss: float) -> None:
        """The batch's loss is known; backward has not run yet."""

    def on_before_step(self, trainer) -> None:
        """The gradients are ready; the optimizer has not stepped yet."""

    def on_batch_end(self, trainer) -> None:
        """The optimizer stepped; ``trainer.batch_values`` holds what the batch measured."""

    def on_eval_end(self, trainer, scores: dict[str, Any]) -> None:
        """The eval loader was scored (``scores``: eval_loss, eval_accuracy, eval_log_loss)."""

    def on_epoch_end(self, trainer) -> None:
        """The epoch and its evaluation ended."""

    def on_interrupt(self, trainer) -> None:
        """Ctrl-C or SIGTERM stopped training at a batch boundary."""

    def on_fit_end(self, trainer) -> None:
        """Once, at the end (after an interrupt too, not after an error)."""

    def close(self) -> None:
        """Always, even after an error: release files and progress bars."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback (empty: nothing to resume)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned."""

    def history_attrs(self) -> dict[str, Any]:
        """Entries this callback adds to the history's ``.attrs``."""
        return {}


class History(Callback):
    """Records a row per training batch and per evaluation (the loop always has one)."""

    order = 0

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_batch_end(self, trainer) -> None:
        self.add(trainer, "train", trainer.position.batch + 1, trainer.batch_values)

    def on_eval_end(self, trainer, scores: dict[str, Any]) -> None:
        self.add(trainer, "eval", trainer.position.batch, scores)  # at the epoch's last batch

    def add(self, trainer, phase: str, batch: int, values: dict[str, float]) -> None:
        """Append a row of ``values``, NaN in the columns they do not measure."""
        row = {"epoch": trainer.position.epoch + 1, "batch": batch, "step": trainer.step, "phase": phase}
        self.rows.append(row | {c: values.get(c, math.nan) for c in HISTORY_COLUMNS[4:]})

    def columns(self) -> dict[str, list]:
        """The rows as a dict of lists (what a checkpoint stores)."""
        return {c: [row[c] for row in self.rows] for c in HISTORY_COLUMNS}

    def load_columns(self, columns: dict[str, list]) -> None:
        """Take back the rows a checkpoint stored with :meth:`columns`."""
        self.rows = [dict(zip(HISTORY_COLUMNS, row)) for row in zip(*(columns.get(c, []) for c in HISTORY_COLUMNS))]

    def last_metrics(self) -> dict[str, float]:
        """The latest eval scores and the last epoch's mean train loss, for the checkpoint."""
        evals = [r for r in self.rows if r["phase"] == "eval"]
        metrics = {k: evals[-1][k] for k in EVAL_COLUMNS} if evals else {}
        trains = [r for r in self.rows if r["phase"] == "train"]
        if trains:
            last_epoch = [r["train_loss"] for r in trains if r["epoch"] == trains[-1]["epoch"]]
            metrics["train_loss"] = float(np.mean(last_epoch))
        return metrics

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with :data:`HISTORY_COLUMNS`."""
        types = {"epoch": "int64", "batch": "int64", "step": "int64", "phase": "str"}
        frame = pd.DataFrame(self.rows, columns=list(HISTORY_COLUMNS))
        return frame.astype(types | dict.fromkeys(HISTORY_COLUMNS[4:], "float64"))


class NonFiniteLossGuard(Callback):
    """Stop with an error naming the epoch, the batch and its images when the loss is NaN or inf."""

    order = 10

    def on_loss(self, trainer, loss: float) -> None:
        if math.isfinite(loss):
            return
        batch, position = trainer.batch, trainer.position
        culprit = next((key for key in ("image", "label") if not torch.isfinite(batch[key].float()).all()), None)
        if culprit is not None:
            cause = f"the batch's {culprit}s hold NaN or infinite values"
            fix = "check these images and labels (and the normalisation in the transform)"
        else:
            cause = "the inputs are finite, so the weights diverged"
            fix = "lower the learning rate (e.g. 10x), set clip_grad_norm=1.0, or use precision='fp32'"
        where = f"at epoch {position.epoch + 1}, batch {position.batch + 1}"
        raise TrainingError(f"the training loss became {loss} {where}: {cause}", rows=first_ids(batch), fix=fix)


class GradientClipping(Callback):
    """Clip the gradients' total norm before each step; the norm before clipping goes to the history."""

    order = 10

    def __init__(self, max_norm: float) -> None:
        if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive, got {max_norm!r}")
        self.max_norm = float(max_norm)

    def on_before_step(self, trainer) -> None:
        trainer.scaler.unscale_(trainer.optimizer)  # fp16: clip the true gradients, not the scaled ones
        params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
        trainer.batch_values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm))


class LRScheduler(Callback):
    """Step a scheduler after every batch; a ``ReduceLROnPlateau`` after each evaluation, on the eval log loss."""

    order = 20

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def on_batch_end(self, trainer) -> None:
        if not self.plateau:
            self.scheduler.step()

    def on_eval_end(self, trainer, scores: dict[str, Any]) -> None:
        if self.plateau:
            self.scheduler.step(scores["eval_log_loss"])

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


class EarlyStopping(Callback):
    """Stop once the eval log loss has not improved by ``min_delta`` for ``patience`` epochs; keep the best weights.

    It keeps the best epoch's eval logits too (``best_logits``), so the weights it restores come
    with their predictions on the eval images and nothing has to predict them again.
    """

    order = 30
    FRESH = {"best_loss": None, "best_epoch": None, "best_state": None, "best_logits": None, "bad_epochs": 0,
             "stopped_early": False}

    def __init__(self, patience: int = 3, min_delta: float = 0.0, restore_best: bool = True) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.patience, self.min_delta, self.restore_best = patience, float(min_delta), restore_best
        self.load_state_dict(self.FRESH)

    def on_fit_start(self, trainer) -> None:
        if trainer.eval_loader is None:
            raise TrainingError(
                "early stopping watches the eval log loss, but no eval data was given",
                fix="pass eval_loader=... to fit (eval_embeddings and eval_labels to fit_head)",
            )
        if trainer.resumed_from is None:  # the same object may serve a second run
            self.load_state_dict(self.FRESH)
        trainer.should_stop = self.stopped_early

    def on_eval_end(self, trainer, scores: dict[str, Any]) -> None:
        current = scores["eval_log_loss"]
        if self.best_loss is None or current < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.bad_epochs = current, trainer.position.epoch + 1, 0
            weights = trainer.unwrapped_model.state_dict()
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
            self.best_logits = scores.get("logits")
        else:
            self.bad_epochs += 1
            self.stopped_early = self.bad_epochs >= self.patience
            trainer.should_stop = trainer.should_stop or self.stopped_early

    def on_fit_end(self, trainer) -> None:
        if self.restore_best and self.best_state is not None and trainer.stop_reason is None:
            trainer.unwrapped_model.load_state_dict(self.best_state)
            trainer.weights_changed = True

    def state_dict(self) -> dict[str, Any]:
        state = {key: getattr(self, key) for key in self.FRESH}
        if self.best_logits is not None:  # as tensors and lists: checkpoints load with weights_only=True
            frame = self.best_logits
            state["best_logits"] = {"ids": [str(i) for i in frame.index], "columns": [str(c) for c in frame.columns],
                                    "values": torch.tensor(frame.to_numpy(dtype=np.float64))}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in self.FRESH:
            # A checkpoint written before best_logits was kept lacks it; it is only an optimisation.
            setattr(self, key, state.get(key) if key == "best_logits" else state[key])
        logits = self.best_logits
        if isinstance(logits, dict):
            self.best_logits = pd.DataFrame(logits["values"].numpy(), columns=logits["columns"],
                                            index=pd.Index(logits["ids"], name="id"))

    def history_attrs(self) -> dict[str, Any]:
        return {"stopped_early": self.stopped_early, "best_epoch": self.best_epoch,
                "best_eval_log_loss": self.best_loss}


class Checkpointer(Callback):
    """Write a resumable checkpoint after every epoch and on an interrupt (atomically, rank 0 only)."""

    order = 90

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.saved_at: tuple | None = None

    def save(self, trainer, interrupted: bool) -> None:
        """Write the checkpoint of the trainer's current position, once per position."""
        where = (trainer.position.epoch, trainer.position.batch, trainer.step, trainer.weights_changed)
        if where != self.saved_at and trainer.is_main_process:
            trainer.save_checkpoint(self.path, interrupted=interrupted)
            self.saved_at = where

    def on_epoch_end(self, trainer) -> None:
        self.save(trainer, interrupted=trainer.stop_requested)

    def on_interrupt(self, trainer) -> None:
        self.save(trainer, interrupted=True)

    def on_fit_end(self, trainer) -> None:
        if trainer.weights_changed and trainer.stop_reason is None:  # early stopping restored the best
            self.save(trainer, interrupted=False)

    def history_attrs(self) -> dict[str, Any]:
        return {"checkpoint": str(self.path) if self.path.exists() else None}


class ProgressBars(Callback):
    """An epoch bar and a batch bar (tqdm.auto) with the latest train loss and eval log loss."""

    order = 80

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}

    def on_fit_start(self, trainer) -> None:
        precision = trainer.precision_choice.label if trainer.precision_choice is not None else trainer.precision
        self.bars["epoch"] = tqdm(total=trainer.epochs, initial=min(trainer.position.epoch, trainer.epochs),
                                  desc=f"fit on {trainer.device.type}, {precision}", unit="epoch",
                                  disable=not trainer.is_main_process)

    def on_epoch_start(self, trainer) -> None:
        self.bars["batch"] = tqdm(total=loader_length(trainer.train_loader), initial=trainer.position.batch,
                                  desc=f"epoch {trainer.position.epoch + 1}/{trainer.epochs}", unit="batch",
                                  leave=False, disable=not trainer.is_main_process)

    def on_batch_end(self, trainer) -> None:
        self.bars["batch"].update()
        self.bars["batch"].set_postfix(loss=f"{trainer.batch_values['train_loss']:.4f}", refresh=False)

    def on_eval_end(self, trainer, scores: dict[str, Any]) -> None:
        self.bars["epoch"].set_postfix(eval_log_loss=f"{scores['eval_log_loss']:.4f}", refresh=False)

    def on_epoch_end(self, trainer) -> None:
        self.bars.pop("batch").close()
        self.bars["epoch"].update()

    def close(self) -> None:
        while self.bars:  # the batch bar, then the epoch bar
            self.bars.popitem()[1].close()


__all__ = [
    "EVAL_COLUMNS", "HISTORY_COLUMNS", "Callback", "Checkpointer", "EarlyStopping", "GradientClipping", "History",
    "LRScheduler", "NonFiniteLossGuard", "ProgressBars",
]
