"""Training: ``fit`` a model with a small loop and callbacks; stop cleanly and resume exactly.

``fit`` is the walkthrough's loop (SGD, cross-entropy, one-hot labels) with a seam for callbacks
(:mod:`conserviz_utils.callbacks`). The loop itself only does forward, loss, backward, step and
evaluation, and keeps the position a checkpoint needs. Everything else is a callback that
``fit``'s arguments switch on:

* ``clip_grad_norm`` → :class:`~conserviz_utils.callbacks.GradientClipping`
* ``scheduler`` → :class:`~conserviz_utils.callbacks.LRScheduler` (``ReduceLROnPlateau`` per epoch)
* ``early_stopping`` → :class:`~conserviz_utils.callbacks.EarlyStopping` (best weights restored)
* ``checkpoint_path`` → :class:`~conserviz_utils.callbacks.Checkpointer`
* ``progress`` → :class:`~conserviz_utils.callbacks.ProgressBars`
* always: :class:`~conserviz_utils.callbacks.History` and the NaN/inf loss guard.

**Device and precision** (:mod:`conserviz_utils.runtime.device`): ``device="auto"`` picks a CUDA GPU,
then Apple's MPS, then the CPU; the model and image batches use the channels-last layout.
**Interrupts** (:mod:`conserviz_utils.runtime.interrupts`): Ctrl-C, the notebook's stop button and SIGTERM
stop training at the next batch boundary, write a resumable checkpoint and return the history so
far with ``history.attrs["interrupted"] = True``; a second Ctrl-C stops at once, but never inside
an optimizer step. **Exact resume** (:mod:`conserviz_utils.runtime.resume`): ``fit(..., resume_from=path)``
re-draws the same shuffle, skips the batches already done and restores the random states and
every callback's state; on a CPU with a fixed seed and ``num_workers=0`` an interrupted and
resumed run ends with the same weights as an uninterrupted one.
**Several GPUs**: wrap the model in ``DistributedDataParallel`` under ``torchrun`` (see
:mod:`conserviz_utils.runtime.distributed`); evaluation then covers every rank's images and only rank 0
writes checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from conserviz_utils import SPECIES
from conserviz_utils.runtime.batches import batch_size, check_batch, to_device
from conserviz_utils.callbacks import (
    HISTORY_COLUMNS,
    Callback,
    Checkpointer,
    EarlyStopping,
    GradientClipping,
    History,
    LRScheduler,
    NonFiniteLossGuard,
    ProgressBars,
    as_early_stopping,
)
from conserviz_utils.runtime.checkpoint import resume_state, save_checkpoint
from conserviz_utils.runtime.device import (
    PRECISIONS,
    PrecisionChoice,
    autocast,
    choose_precision,
    grad_scaler,
    pick_device,
    pick_precision,
)
from conserviz_utils.runtime.distributed import (
    any_rank,
    is_distributed,
    is_main_process,
    unwrap_model,
)
from conserviz_utils.errors import CheckpointError, TrainingError
from conserviz_utils.inference import evaluate, predict, predict_logits
from conserviz_utils.runtime.interrupts import StopSignals
from conserviz_utils.runtime.resume import (
    Position,
    ShuffleControl,
    draw_seed,
    epoch_batches,
    rng_plain,
    rng_restore,
    rng_snapshot,
    seed_everything,
)


class Trainer:
    """One run of the loop: the model, its data, the position, and the callbacks around them."""

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable,
        eval_loader: Iterable | None,
        *,
        epochs: int,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        device: torch.device,
        precision: str,
        callbacks: Sequence[Callback],
        progress: bool = True,
    ) -> None:
        self.model = model
        self.unwrapped_model = unwrap_model(model)
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.epochs = epochs
        self.optimizer = optimizer
        self.criterion = criterion
        self.device = device
        self.precision = precision
        self.precision_choice: PrecisionChoice | None = None  # how fit chose it, for the report
        self.progress = progress
        self.scaler = grad_scaler(device, enabled=precision == "fp16")
        self.is_main_process = is_main_process()
        num_classes = getattr(self.unwrapped_model, "num_classes", None)
        self.species = SPECIES if num_classes in (None, len(SPECIES)) else None

        self.history = History()
        self.callbacks = sorted([self.history, *callbacks], key=lambda callback: callback.order)
        self.seed = 0
        self.step = 0
        self.position = Position()
        self.skipped: dict[str, str] = {}
        self.batch: Mapping | None = None
        self.batch_values: dict[str, float] = {}
        self.should_stop = False  # set by callbacks, e.g. early stopping
        self.stop_reason: str | None = None  # the signal that interrupted training
        self.weights_changed = False  # a callback replaced the weights after the last epoch
        self.resumed_from: str | None = None
        self.resume_rng: tuple[str, dict] | None = None
        self.signals = StopSignals()

    # -- events --------------------------------------------------------------------------------

    def emit(self, event: str, *args: Any) -> None:
        """Call ``event`` on every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    @property
    def stop_requested(self) -> bool:
        """Whether a signal asked training to stop."""
        return self.signals.requested is not None

    def agree_on_stop(self) -> bool:
        """Whether any process was asked to stop; under torchrun every rank stops at the same batch.

        A signal reaches the ranks at slightly different moments; if one rank stopped while the
        others went on, they would wait forever for its gradients. So the ranks share their
        flag (one tiny all-reduce per batch) and all stop when any was asked to.
        """
        if not is_distributed():
            return self.stop_requested
        stop = any_rank(self.stop_requested)
        if stop and self.signals.requested is None:
            self.signals.requested = "SIGTERM"  # another rank got the signal
        return stop

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> pd.DataFrame:
        """Train from the current position to ``epochs``, an interrupt or a callback's stop."""
        with self.signals:
            try:
                self.emit("on_fit_start")
                try:
                    self.run_epochs()
                except KeyboardInterrupt:
                    # Raised outside an optimizer step (see StopSignals): the weights are those of
                    # the last batch boundary, which self.position describes.
                    self.stop_reason = self.signals.requested or "KeyboardInterrupt"
                    self.emit("on_interrupt")
                self.emit("on_fit_end")
            finally:
                for callback in self.callbacks:
                    callback.close()
        return self.history_frame()

    def run_epochs(self) -> None:
        """Train epoch after epoch until done, stopped by a callback, or interrupted."""
        shuffle = ShuffleControl(self.train_loader)
        try:
            while self.position.epoch < self.epochs and not self.should_stop:
                if not self.train_epoch(shuffle):
                    return
        finally:
            shuffle.restore()

    def interrupted_here(self) -> bool:
        """Report an interrupt to the callbacks if one was requested."""
        if not self.agree_on_stop():
            return False
        self.stop_reason = self.signals.requested
        self.emit("on_interrupt")
        return True

    def train_epoch(self, shuffle: ShuffleControl) -> bool:
        """Train the epoch at the current position (from its current batch), then evaluate.

        Returns:
            False when an interrupt stopped training.
        """
        epoch, skip = self.position.epoch, self.position.batch
        restore, self.resume_rng = self.resume_rng, None
        if restore is not None and restore[0] == "epoch_start":
            rng_restore(restore[1], self.device)
        shuffle.start_epoch(self.seed, epoch)
        batches = epoch_batches(self.train_loader, skip)
        boundary = None
        if restore is not None and restore[0] == "batch":
            rng_restore(restore[1], self.device)
            boundary = rng_snapshot(self.device)

        self.model.train()
        self.position = Position(epoch, skip, "batch", boundary or rng_snapshot(self.device))
        self.emit("on_epoch_start")
        while True:
            if self.interrupted_here():
                return False
            try:
                batch = next(batches)
            except StopIteration:
                break
            self.train_batch(batch)
        if self.position.batch == 0:
            raise TrainingError(
                "the training loader gave no batches",
                fix="check that the training split is not empty (and drop_last with a small set)",
            )
        if self.eval_loader is not None:
            self.evaluate_epoch()
        else:
            self.position = Position(epoch + 1, 0, "epoch_start", rng_snapshot(self.device))
        self.emit("on_epoch_end")
        return not self.interrupted_here()

    def train_batch(self, batch: Mapping) -> None:
        """One optimizer step on one batch; moves the position on."""
        epoch, number = self.position.epoch, self.position.batch + 1
        check_batch(batch, need_labels=True)
        for image_id, reason in batch.get("skipped", []):
            self.skipped.setdefault(str(image_id), str(reason))
        if batch_size(batch) == 0:  # every image of this batch was unreadable and skipped
            self.position = Position(epoch, number, "batch", rng_snapshot(self.device))
            return
        images = to_device(batch["image"], self.device)
        labels = batch["label"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            logits = self.model(images)
        # The loss in float32 whatever the autocast precision: log-softmax needs the range.
        loss = self.criterion(logits.float(), labels)
        self.batch, self.batch_values = batch, {"train_loss": float(loss.detach())}
        self.emit("on_loss", self.batch_values["train_loss"])
        self.scaler.scale(loss).backward()

        # From here to the new position, a second Ctrl-C waits: the weights, the history and the
        # position a checkpoint records must change together.
        self.signals.in_update = True
        try:
            self.emit("on_before_step")
            self.batch_values["lr"] = float(self.optimizer.param_groups[0]["lr"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            self.emit("on_batch_end")
            self.position = Position(epoch, number, "batch", rng_snapshot(self.device))
        finally:
            self.signals.in_update = False
            self.batch = None

    def evaluate_epoch(self) -> None:
        """Score the eval loader and hand the scores to the callbacks."""
        scores = evaluate(
            self.model, self.eval_loader, self.criterion, device=self.device, precision=self.precision,
            progress=self.progress and self.is_main_process,
        )
        self.model.train()
        self.signals.in_update = True  # the record, early stopping and the position change together
        try:
            for image_id, reason in scores["skipped"]:
                self.skipped.setdefault(image_id, reason)
            self.emit("on_eval_end", scores)
            self.position = Position(self.position.epoch + 1, 0, "epoch_start", rng_snapshot(self.device))
        finally:
            self.signals.in_update = False

    # -- checkpoints ---------------------------------------------------------------------------

    def callback_states(self) -> dict[str, dict]:
        """Every callback's state, keyed by class name (numbered when a class appears twice)."""
        states: dict[str, dict] = {}
        for key, callback in self.keyed_callbacks().items():
            state = callback.state_dict()
            if state:
                states[key] = state
        return states

    def keyed_callbacks(self) -> dict[str, Callback]:
        """The callbacks under the keys their states are saved with."""
        keyed: dict[str, Callback] = {}
        for callback in self.callbacks:
            if callback is self.history:
                continue
            key, number = type(callback).__name__, 1
            while key in keyed:
                number += 1
                key = f"{type(callback).__name__}#{number}"
            keyed[key] = callback
        return keyed

    def save_checkpoint(self, path: Path, interrupted: bool) -> None:
        """Write a resumable checkpoint of the current position to ``path``."""
        position = self.position
        run = {
            "seed": self.seed,
            "step": self.step,
            "rng_point": position.rng_point,
            "rng": rng_plain(position.rng if position.rng is not None else rng_snapshot(self.device)),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "skipped": [list(item) for item in self.skipped.items()],
            "epochs": self.epochs,
            "device": str(self.device),
            "precision": self.precision,
            "interrupted": interrupted,
        }
        save_checkpoint(
            path,
            self.unwrapped_model,
            optimizer=self.optimizer,
            epoch=position.epoch,
            batch=position.batch,
            metrics=self.history.last_metrics(),
            species=self.species,
            history=self.history.columns(),
            extra={"fit": run, "callbacks": self.callback_states()},
        )

    def resume(self, path: Path, seed: int | None) -> None:
        """Load the model, optimizer, position and callback states of a checkpoint."""
        state = resume_state(path)
        try:
            self.unwrapped_model.load_state_dict(state["state_dict"])
        except RuntimeError as err:
            raise CheckpointError(
                f"its weights do not fit this model ({str(err).splitlines()[0]})",
                path=path,
                fix="resume with the same architecture and head the checkpoint was trained with",
            ) from None
        load_part(path, "optimizer", self.optimizer, state.get("optimizer"))
        run = state.get("extra", {}).get("fit")
        self.position = Position(epoch=state.get("epoch") or 0, batch=state.get("batch") or 0)
        keyed = self.keyed_callbacks()
        if run is None:
            if self.position.batch:
                raise CheckpointError(
                    "this checkpoint was saved in the middle of an epoch but not by fit, so the "
                    "rest of that epoch cannot be reproduced",
                    path=path,
                    fix="resume from a checkpoint written by fit(checkpoint_path=...)",
                )
            self.seed = seed if seed is not None else draw_seed()
            schedulers = [c for c in self.callbacks if isinstance(c, LRScheduler)]
            if state.get("scheduler") is not None and schedulers:
                load_part(path, "scheduler", schedulers[0].scheduler, state["scheduler"])
        else:
            if seed is not None and seed != run["seed"]:
                raise TrainingError(
                    f"seed={seed} differs from the seed {run['seed']} of the run being resumed",
                    fix=f"pass seed=None or seed={run['seed']} to resume it",
                )
            self.seed, self.step = run["seed"], run["step"]
            self.skipped = dict(run["skipped"])
            if run["scaler"] is not None:
                self.scaler.load_state_dict(run["scaler"])
            self.resume_rng = (run["rng_point"], run["rng"])
            for key, saved in state["extra"].get("callbacks", {}).items():
                if key in keyed:
                    try:
                        keyed[key].load_state_dict(saved)
                    except (ValueError, KeyError, TypeError) as err:
                        raise CheckpointError(
                            f"the saved state of {key} does not fit the {key} given ({err})",
                            path=path,
                            fix=f"pass the same kind of {key} as the interrupted run",
                        ) from None
        self.history.load_columns(state.get("history") or {})
        self.resumed_from = str(path)

    # -- the result ----------------------------------------------------------------------------

    def history_frame(self) -> pd.DataFrame:
        """The history DataFrame, with what describes the run in ``.attrs``."""
        frame = self.history.frame()
        frame.attrs.update(
            device=str(self.device),
            precision=self.precision,
            seed=self.seed,
            epochs_completed=self.position.epoch,
            interrupted=self.stop_reason is not None,
            interrupt_signal=self.stop_reason,
            checkpoint=None,
            resumed_from=self.resumed_from,
            stopped_early=False,
            best_epoch=None,
            best_eval_log_loss=None,
        )
        if self.precision_choice is not None:
            frame.attrs.update(self.precision_choice.as_attrs())
        for callback in self.callbacks:
            frame.attrs.update(callback.history_attrs())
        frame.attrs["skipped"] = sorted(self.skipped.items())
        return frame


def load_part(path: Path, part: str, target: Any, state: Any) -> None:
    """Load a saved optimizer or scheduler state into ``target``, with a clear error if it does not fit."""
    if state is None or target is None:
        return
    try:
        target.load_state_dict(state)
    except (ValueError, KeyError) as err:
        raise CheckpointError(
            f"its {part} state does not fit the {part} given ({err})",
            path=path,
            fix=f"pass the same kind of {part} over the same parameters as the interrupted run",
        ) from None


def default_callbacks(
    *,
    clip_grad_norm: float | None,
    scheduler: Any | None,
    early_stopping: EarlyStopping | None,
    checkpoint_path: str | Path | None,
    progress: bool,
) -> list[Callback]:
    """The callbacks ``fit``'s arguments stand for."""
    callbacks: list[Callback] = [NonFiniteLossGuard()]
    if clip_grad_norm is not None:
        callbacks.append(GradientClipping(clip_grad_norm))
    if scheduler is not None:
        callbacks.append(LRScheduler(scheduler))
    if early_stopping is not None:
        callbacks.append(early_stopping)
    if checkpoint_path is not None:
        callbacks.append(Checkpointer(checkpoint_path))
    if progress:
        callbacks.append(ProgressBars())
    return callbacks


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
    callbacks: Sequence[Callback] = (),
) -> pd.DataFrame:
    """Train ``model`` and return its history; stop cleanly and resumably on an interrupt.

    Args:
        model: Any classifier returning logits, e.g. from ``build_model``. It is moved to
            ``device`` (channels-last) and trained in place.
        train_loader: Batches as dicts with "image" (N, 3, H, W), "label" (one-hot, N x classes,
            or class numbers) and "image_id"; ``data.make_loader`` builds them. A DataLoader's
            shuffling is seeded by ``fit`` (see :mod:`conserviz_utils.runtime.resume`).
        eval_loader: Labelled batches scored after every epoch (eval loss, accuracy, log loss).
        epochs: Total number of epochs of the run. When resuming, the epochs already done count:
            re-running the same call with ``resume_from`` finishes the same run.
        optimizer: Defaults to the walkthrough's SGD(lr=0.001, momentum=0.9) over the
            parameters that require gradients.
        criterion: Defaults to ``nn.CrossEntropyLoss()`` (one-hot labels work as probability
            targets). Computed in float32 whatever the precision.
        scheduler: A learning-rate scheduler, stepped after every batch; ``ReduceLROnPlateau``
            is stepped once per epoch with the eval log loss.
        device: "auto", "cpu", "cuda", "cuda:1", "mps" or a torch.device.
        precision: "auto", "fp32", "bf16" or "fp16" (:func:`conserviz_utils.runtime.device.choose_precision`: on a CPU, measured).
        clip_grad_norm: Clip the gradients' total norm to this before each step (the norm
            before clipping is recorded in the ``grad_norm`` column).
        early_stopping: A patience (epochs without a better eval log loss) or an
            :class:`~conserviz_utils.callbacks.EarlyStopping`; needs ``eval_loader``.
        checkpoint_path: Where to write a resumable checkpoint after every epoch and on an
            interrupt (atomically: the previous one survives a crash during the write).
        resume_from: A checkpoint written by ``fit`` to continue from (often the same path as
            ``checkpoint_path``). Pass the same kind of model, optimizer and callbacks.
        seed: Seeds torch, numpy and Python's random module at the start and the shuffling of
            every epoch. None draws a seed (recorded in ``history.attrs["seed"]``).
        progress: Show an epoch bar and a batch bar (tqdm); False keeps output silent.
        callbacks: Your own :class:`~conserviz_utils.callbacks.Callback` objects, run with the
            built-in ones in ``order``.

    Returns:
        The history (columns :data:`~conserviz_utils.callbacks.HISTORY_COLUMNS`; earlier rows
        included when resuming), with ``.attrs``: device, precision, seed, epochs_completed,
        interrupted, interrupt_signal ("SIGINT", "SIGTERM" or "KeyboardInterrupt"), checkpoint
        (path written, or None), resumed_from, stopped_early, best_epoch, best_eval_log_loss,
        and skipped (sorted (id, reason) pairs of unreadable images).

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
    user_callbacks = list(callbacks)
    for callback in user_callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks must be Callback objects, got {type(callback).__name__}")
    built_in = default_callbacks(
        clip_grad_norm=clip_grad_norm,
        scheduler=scheduler,
        early_stopping=as_early_stopping(early_stopping),
        checkpoint_path=checkpoint_path,
        progress=progress,
    )
    device = pick_device(device)
    # "auto" on a CPU times a few fp32 and bf16 steps of this model at this batch size (once per
    # machine: the decision is remembered), since which is faster depends on the CPU model.
    choice = choose_precision(
        precision, device, unwrap_model(model), getattr(train_loader, "batch_size", None), "train"
    )

    was_training = model.training
    if unwrap_model(model) is model:  # a DDP wrapper stays where it was built
        model.to(device=device, memory_format=torch.channels_last)
    if optimizer is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise TrainingError(
                "the model has no trainable parameters", fix="unfreeze(model), or leave some layers trainable"
            )
        optimizer = torch.optim.SGD(trainable, lr=0.001, momentum=0.9)
    trainer = Trainer(
        model,
        train_loader,
        eval_loader,
        epochs=epochs,
        optimizer=optimizer,
        criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
        device=device,
        precision=choice.precision,
        callbacks=[*built_in, *user_callbacks],
        progress=progress,
    )
    if resume_from is not None:
        trainer.resume(Path(resume_from), seed)
    else:
        trainer.seed = seed if seed is not None else draw_seed()
        if seed is not None:
            seed_everything(seed)
    trainer.precision_choice = choice
    history = trainer.fit()
    model.train(was_training)
    return history


__all__ = [
    "HISTORY_COLUMNS",
    "PRECISIONS",
    "Callback",
    "EarlyStopping",
    "Trainer",
    "evaluate",
    "fit",
    "pick_device",
    "pick_precision",
    "predict",
    "predict_logits",
]
