"""The training loop, taught in notebook 04: ``fit`` a model, epoch by epoch, batch by batch.

For every batch: forward, loss, backward, step; after every epoch, score the eval loader. The
rest is callbacks (:mod:`conserviz_utils.callbacks`) and the ``run``
(:mod:`conserviz_utils.runtime.session`), which stops Ctrl-C or SIGTERM at a batch boundary and
lets ``resume_from`` continue exactly (on a CPU, seeded, ``num_workers=0``: to the same weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from conserviz_utils.callbacks import (
    Callback, Checkpointer, EarlyStopping, GradientClipping, LRScheduler, NonFiniteLossGuard, ProgressBars,
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
    """Train ``model`` in place and return its history; stop cleanly and resumably on an interrupt.

    Args:
        model: A classifier returning logits (e.g. ``build_model``'s), moved to ``device``
            channels-last; under torchrun, wrapped in ``DistributedDataParallel``.
        train_loader: Batches as ``data.make_loader`` builds them: dicts with "image", "label"
            (one-hot or class numbers) and "image_id". ``fit`` seeds a DataLoader's shuffle.
        epochs: Of the whole run: re-running the same call with ``resume_from`` finishes it.
        optimizer: Default: the walkthrough's SGD(lr=0.001, momentum=0.9).
        criterion: Default: ``nn.CrossEntropyLoss()``, in float32 whatever the precision.
        scheduler: Stepped after every batch (build it for ``epochs * len(train_loader)`` steps);
            a ``ReduceLROnPlateau`` after each evaluation.
        device: "auto" (CUDA, then MPS, then the CPU), "cpu", "cuda:1", ... or a torch.device.
        precision: "auto" (on a CPU: fp32 or bf16, whichever measures faster), "fp32", "bf16", "fp16".
        clip_grad_norm: Clip the gradients' total norm to this (the ``grad_norm`` column).
        early_stopping: A patience (epochs) or an ``EarlyStopping``; needs ``eval_loader``.
        checkpoint_path: Where to write a checkpoint after every epoch and on an interrupt.
        resume_from: A checkpoint ``fit`` wrote; pass the same kind of model, optimizer and callbacks.
        seed: Seeds torch, numpy, random and each epoch's shuffle; None draws one.

    Returns:
        The history (:data:`~conserviz_utils.callbacks.HISTORY_COLUMNS`, a resumed run's earlier
        rows too); ``.attrs``: device, precision, seed, epochs_completed, interrupted,
        interrupt_signal, checkpoint, resumed_from, stopped_early, best_epoch, best_eval_log_loss,
        skipped ((id, reason) of each unreadable image).

    Raises:
        TrainingError: a NaN or infinite loss (naming epoch, batch and images), a loader that is
            empty or not in conserviz's batch layout, a missing device or precision.
        CheckpointError: ``resume_from`` is unreadable or does not fit; a checkpoint cannot be written.
    """
    callbacks = check_arguments(epochs, seed, callbacks)
    built_in = default_callbacks(clip_grad_norm, scheduler, early_stopping, checkpoint_path, progress)
    device = pick_device(device)
    # "auto" on a CPU times fp32 against bf16 on this model and batch size (once per machine).
    choice = choose_precision(precision, device, unwrap_model(model), getattr(train_loader, "batch_size", None),
                              "train")
    precision = choice.precision
    was_training = model.training
    if unwrap_model(model) is model:  # a DDP wrapper stays where it was built
        model.to(device=device, memory_format=torch.channels_last)
    optimizer = optimizer if optimizer is not None else walkthrough_optimizer(model)
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    # fp16's narrow range loses small gradients unless the loss is scaled up; bf16 and fp32 need not.
    scaler = grad_scaler(device, enabled=precision == "fp16")
    run = Session(model, train_loader, eval_loader, epochs=epochs, optimizer=optimizer, scaler=scaler,
                  device=device, precision=precision, precision_choice=choice, callbacks=[*built_in, *callbacks])
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


def check_arguments(epochs: int, seed: int | None, callbacks: Sequence[Callback]) -> list[Callback]:
    """Refuse an epoch count, seed or callback ``fit`` cannot use; the callbacks as a list."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    callbacks = list(callbacks)
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks must be Callback objects, got {type(callback).__name__}")
    return callbacks


def walkthrough_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The walkthrough's SGD(lr=0.001, momentum=0.9) over the parameters that require gradients."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError("the model has no trainable parameters",
                            fix="unfreeze(model), or leave some layers trainable")
    return torch.optim.SGD(trainable, lr=0.001, momentum=0.9)


def default_callbacks(clip_grad_norm: float | None, scheduler: Any | None, early_stopping: int | EarlyStopping | None,
                      checkpoint_path: str | Path | None, progress: bool) -> list[Callback]:
    """The callbacks ``fit``'s arguments stand for (the session adds the history)."""
    if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
        early_stopping = EarlyStopping(patience=early_stopping)
    elif not (early_stopping is None or isinstance(early_stopping, EarlyStopping)):
        raise ValueError(f"early_stopping must be a patience (int), an EarlyStopping or None; "
                         f"got {early_stopping!r}")
    callbacks = [
        NonFiniteLossGuard(),
        GradientClipping(clip_grad_norm) if clip_grad_norm is not None else None,
        LRScheduler(scheduler) if scheduler is not None else None,
        early_stopping,
        ProgressBars() if progress else None,
        Checkpointer(checkpoint_path) if checkpoint_path is not None else None,
    ]
    return [callback for callback in callbacks if callback is not None]


__all__ = ["default_callbacks", "fit"]
