"""The training loop, taught in notebook 04: ``fit`` a model, epoch by epoch, batch by batch.

Read ``fit`` top to bottom: for every epoch, for every batch, forward → loss → backward → step,
then score the eval loader. Between those lines it calls two seams by name:

* **callbacks** (:mod:`conserviz_utils.callbacks`) hear events (``on_loss``, ``on_batch_end``,
  ``on_eval_end``, …) and hold every extra: the history, the NaN/inf guard, gradient clipping,
  learning-rate schedules, early stopping, checkpoints, progress bars. ``fit``'s arguments switch
  the built-in ones on (:func:`default_callbacks`); ``callbacks=[...]`` adds yours.
* **the session** (:mod:`conserviz_utils.runtime.session`) keeps where the run stands, so that
  Ctrl-C or SIGTERM stop at a batch boundary with a checkpoint, ``fit(..., resume_from=path)``
  continues exactly (on a CPU with a fixed seed and ``num_workers=0``: the same weights as an
  uninterrupted run), and every rank stops at the same batch under torchrun.

Device and precision come from :mod:`conserviz_utils.runtime.device` (``device="auto"``: CUDA, then
Apple's MPS, then the CPU; ``precision="auto"``: measured on CPUs); for several GPUs wrap the model
in ``DistributedDataParallel`` under torchrun (:mod:`conserviz_utils.runtime.distributed`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from conserviz_utils.callbacks import (
    Callback,
    Checkpointer,
    EarlyStopping,
    GradientClipping,
    LRScheduler,
    NonFiniteLossGuard,
    ProgressBars,
    as_early_stopping,
)
from conserviz_utils.errors import TrainingError
from conserviz_utils.inference import evaluate
from conserviz_utils.runtime.device import autocast, choose_precision, grad_scaler, pick_device
from conserviz_utils.runtime.distributed import unwrap_model
from conserviz_utils.runtime.session import Session


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
        precision: "auto", "fp32", "bf16" or "fp16"
            (:func:`conserviz_utils.runtime.device.choose_precision`: on a CPU, measured).
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
    callbacks = list(callbacks)
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks must be Callback objects, got {type(callback).__name__}")
    built_in = default_callbacks(
        clip_grad_norm, scheduler, as_early_stopping(early_stopping), checkpoint_path, progress
    )

    device = pick_device(device)
    # "auto" on a CPU times a few fp32 and bf16 steps of this model at this batch size (once per
    # machine: the decision is remembered), since which is faster depends on the CPU model.
    choice = choose_precision(
        precision, device, unwrap_model(model), getattr(train_loader, "batch_size", None), "train"
    )
    precision = choice.precision
    was_training = model.training
    if unwrap_model(model) is model:  # a DDP wrapper stays where it was built
        model.to(device=device, memory_format=torch.channels_last)
    if optimizer is None:
        optimizer = walkthrough_optimizer(model)
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    # fp16's narrow range loses small gradients unless the loss is scaled up; bf16 and fp32 need not.
    scaler = grad_scaler(device, enabled=precision == "fp16")
    run = Session(
        model, train_loader, eval_loader, epochs=epochs, optimizer=optimizer, scaler=scaler, device=device,
        precision=precision, precision_choice=choice, callbacks=[*built_in, *callbacks],
    )
    run.start(resume_from, seed)  # the checkpoint's weights, position and random states; or the seed

    with run.running():  # on_fit_start; Ctrl-C or SIGTERM: on_interrupt; on_fit_end
        for epoch in run.epochs_left():  # from where a resumed run stopped
            model.train()
            for images, labels in run.batches():  # on_epoch_start; stops at a batch boundary if asked
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, precision):
                    logits = model(images)
                # The loss in float32 whatever the autocast precision: log-softmax needs the range.
                loss = criterion(logits.float(), labels)
                run.after_loss(loss)  # on_loss: the NaN guard
                scaler.scale(loss).backward()
                with run.optimizer_step():  # on_before_step … on_batch_end; a 2nd Ctrl-C waits
                    scaler.step(optimizer)
                    scaler.update()
            scores = None
            if eval_loader is not None:  # under torchrun: the scores of every rank's images
                scores = evaluate(model, eval_loader, criterion, device=device, precision=precision,
                                  progress=progress and run.is_main_process)
            run.end_epoch(scores)  # on_eval_end, on_epoch_end; stops here if a signal came
    model.train(was_training)
    return run.history_frame()


def walkthrough_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The walkthrough's SGD(lr=0.001, momentum=0.9) over the parameters that require gradients."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError(
            "the model has no trainable parameters", fix="unfreeze(model), or leave some layers trainable"
        )
    return torch.optim.SGD(trainable, lr=0.001, momentum=0.9)


def default_callbacks(
    clip_grad_norm: float | None,
    scheduler: Any | None,
    early_stopping: EarlyStopping | None,
    checkpoint_path: str | Path | None,
    progress: bool,
) -> list[Callback]:
    """The callbacks ``fit``'s arguments stand for (the history is always there)."""
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


__all__ = ["default_callbacks", "fit"]
