"""One training run's bookkeeping: what the loop in ``train.fit`` (notebook 04) calls between its six lines.

``fit`` does forward, loss, backward and step itself and calls a :class:`Session` at named points:
``running()``, ``epochs_left()``, ``batches()``, ``after_loss(loss)``, ``optimizer_step()``,
``end_epoch(scores)``. The session emits the callbacks' events there (it is every callback's
``trainer``) and keeps what an exact resume needs: the position and random states at each batch
boundary (`runtime.resume`), the per-epoch shuffle, stops at a batch boundary on every rank
(`runtime.interrupts`), and the checkpoint that the ``Checkpointer`` callback writes and
:meth:`Session.start` reads back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from conserviz_utils import SPECIES
from conserviz_utils.callbacks import Callback, History, LRScheduler
from conserviz_utils.errors import CheckpointError, TrainingError
from conserviz_utils.runtime.batches import batch_size, check_batch, to_device
from conserviz_utils.runtime.checkpoint import resume_state, save_checkpoint
from conserviz_utils.runtime.device import PrecisionChoice
from conserviz_utils.runtime.distributed import any_rank, is_distributed, is_main_process, unwrap_model
from conserviz_utils.runtime.interrupts import StopRequested, StopSignals
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


class Session:
    """One run of the loop: the model, its data, the position, and the callbacks around them."""

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable,
        eval_loader: Iterable | None,
        *,
        epochs: int,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        device: torch.device,
        precision: str,
        precision_choice: PrecisionChoice | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.model = model
        self.unwrapped_model = unwrap_model(model)
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.epochs = epochs
        self.optimizer = optimizer
        self.scaler = scaler
        self.device = device
        self.precision = precision
        self.precision_choice = precision_choice  # how fit chose the precision, for the report
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
        self.shuffle = ShuffleControl(train_loader)

    # -- events and stops ----------------------------------------------------------------------

    def emit(self, event: str, *args: Any) -> None:
        """Call ``event`` on every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    @property
    def stop_requested(self) -> bool:
        """Whether a signal asked training to stop."""
        return self.signals.requested is not None

    def stop_if_asked(self) -> None:
        """At a batch boundary: raise :class:`StopRequested` when any process was asked to stop.

        A signal reaches a torchrun job's ranks at slightly different moments, and the others would
        wait forever for a stopped rank's gradients: so all stop when any was asked to.
        """
        stop = any_rank(self.stop_requested) if is_distributed() else self.stop_requested
        if not stop:
            return
        if self.signals.requested is None:
            self.signals.requested = "SIGTERM"  # another rank got the signal
        raise StopRequested

    # -- the loop's named points, in the order fit calls them ----------------------------------

    def start(self, resume_from: str | Path | None, seed: int | None) -> None:
        """Resume from a checkpoint, or start afresh from ``seed`` (drawn when None)."""
        if resume_from is not None:
            self.resume(Path(resume_from), seed)
        else:
            self.seed = seed if seed is not None else draw_seed()
            if seed is not None:
                seed_everything(seed)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around the loop: signal handlers, on_fit_start, on_interrupt on a stop, on_fit_end, close."""
        with self.signals:
            try:
                self.emit("on_fit_start")
                try:
                    try:
                        yield
                    finally:
                        self.shuffle.restore()
                except (StopRequested, KeyboardInterrupt):
                    # Raised outside an optimizer step (see StopSignals): the weights are those of
                    # the last batch boundary, which self.position describes.
                    self.stop_reason = self.signals.requested or "KeyboardInterrupt"
                    self.emit("on_interrupt")
                self.emit("on_fit_end")
            finally:
                for callback in self.callbacks:
                    callback.close()

    def epochs_left(self) -> Iterator[int]:
        """The epochs still to train: from the resumed position until ``epochs`` or a callback's stop."""
        while self.position.epoch < self.epochs and not self.should_stop:
            yield self.position.epoch

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's (images, labels) on the device, from the current position; StopRequested at a signal.

        Unreadable images are noted in ``skipped``; a batch with none left is passed over.
        """
        loader = self.start_epoch()
        self.emit("on_epoch_start")
        while True:
            self.stop_if_asked()
            try:
                batch = next(loader)
            except StopIteration:
                break
            check_batch(batch, need_labels=True)
            for image_id, reason in batch.get("skipped", []):
                self.skipped.setdefault(str(image_id), str(reason))
            if batch_size(batch) == 0:  # every image of this batch was unreadable and skipped
                self.position = self.next_batch()
                continue
            self.batch = batch
            yield to_device(batch["image"], self.device), batch["label"].to(self.device, non_blocking=True)
        if self.position.batch == 0:
            raise TrainingError(
                "the training loader gave no batches",
                fix="check that the training split is not empty (and drop_last with a small set)",
            )

    def start_epoch(self) -> Iterator:
        """Seed the shuffle, skip the batches already done, restore a resumed run's random states."""
        epoch, skip = self.position.epoch, self.position.batch
        restore, self.resume_rng = self.resume_rng, None
        if restore is not None and restore[0] == "epoch_start":
            rng_restore(restore[1], self.device)
        self.shuffle.start_epoch(self.seed, epoch)
        # Iterating a DataLoader can draw random numbers (its workers' seeds), so the random
        # states a checkpoint keeps in the middle of an epoch are those after this point.
        loader = epoch_batches(self.train_loader, skip)
        boundary = None
        if restore is not None and restore[0] == "batch":
            rng_restore(restore[1], self.device)
            boundary = rng_snapshot(self.device)
        self.position = Position(epoch, skip, "batch", boundary or rng_snapshot(self.device))
        return loader

    def next_batch(self) -> Position:
        """The position once the current batch is done."""
        return Position(self.position.epoch, self.position.batch + 1, "batch", rng_snapshot(self.device))

    def after_loss(self, loss: torch.Tensor) -> None:
        """Record the batch's loss and emit on_loss (the NaN guard stops here)."""
        self.batch_values = {"train_loss": float(loss.detach())}
        self.emit("on_loss", self.batch_values["train_loss"])

    @contextlib.contextmanager
    def optimizer_step(self) -> Iterator[None]:
        """Around the optimizer step: on_before_step, then on_batch_end and the next position.

        The weights, the history and the position a checkpoint records change together, so a
        second Ctrl-C waits until the block is done.
        """
        try:
            with self.signals.uninterruptible():
                self.emit("on_before_step")
                self.batch_values["lr"] = float(self.optimizer.param_groups[0]["lr"])
                yield
                self.step += 1
                self.emit("on_batch_end")
                self.position = self.next_batch()
        finally:
            self.batch = None

    def end_epoch(self, scores: dict[str, Any] | None) -> None:
        """After the epoch: on_eval_end with the eval scores (if any), then on_epoch_end; stop if asked."""
        # The record, early stopping and the position change together.
        with self.signals.uninterruptible():
            if scores is not None:
                for image_id, reason in scores["skipped"]:
                    self.skipped.setdefault(image_id, reason)
                self.emit("on_eval_end", scores)
            self.position = Position(self.position.epoch + 1, 0, "epoch_start", rng_snapshot(self.device))
        self.emit("on_epoch_end")
        self.stop_if_asked()

    # -- checkpoints ---------------------------------------------------------------------------

    def keyed_callbacks(self) -> dict[str, Callback]:
        """The callbacks under the keys their states are saved with (numbered when a class repeats)."""
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
        states = {key: callback.state_dict() for key, callback in self.keyed_callbacks().items()}
        save_checkpoint(
            path,
            self.unwrapped_model,
            optimizer=self.optimizer,
            epoch=position.epoch,
            batch=position.batch,
            metrics=self.history.last_metrics(),
            species=self.species,
            history=self.history.columns(),
            extra={"fit": run, "callbacks": {key: state for key, state in states.items() if state}},
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
        if run is None:
            self.resume_foreign(path, state, seed)
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
            keyed = self.keyed_callbacks()
            for key, saved in state["extra"].get("callbacks", {}).items():
                if key in keyed:
                    load_part(path, key, keyed[key], saved)
        self.history.load_columns(state.get("history") or {})
        self.resumed_from = str(path)

    def resume_foreign(self, path: Path, state: dict, seed: int | None) -> None:
        """Resume from a checkpoint ``fit`` did not write: at an epoch boundary only, with a new seed."""
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
    """Load a saved state (an optimizer's, a scheduler's, a callback's) into ``target``, or say why it does not fit."""
    if state is None or target is None:
        return
    try:
        target.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"its {part} state does not fit the {part} given ({err})",
            path=path,
            fix=f"pass the same kind of {part} as the interrupted run (an optimizer: over the same parameters)",
        ) from None


__all__ = ["Session", "load_part"]
