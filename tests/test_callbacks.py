"""The callback seam of the training loop: events, order, user callbacks, resumable state."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import torch

from conserviz_utils.callbacks import Callback, EarlyStopping, LRScheduler
from conserviz_utils.runtime.checkpoint import resume_state
from conserviz_utils.course.features import fit_head
from conserviz_utils.train import fit
from test_train import QUIET, assert_same_weights, make_data, make_loader, one_thread, tiny_model, weights  # noqa: F401


class RecordLR(Callback):
    """A user-written callback: the learning rate of every batch."""

    def __init__(self):
        self.lrs = []

    def on_batch_end(self, trainer):
        self.lrs.append(trainer.batch_values["lr"])


class EventLog(Callback):
    """Writes down every event it sees, with the epoch and batch the loop stands at."""

    def __init__(self, order=50):
        self.order = order
        self.seen = []

    def __getattribute__(self, name):
        if name.startswith("on_") and name in vars(Callback):  # the loop's events
            def record(trainer, *args):
                self.seen.append((name, trainer.position.epoch, trainer.position.batch))
            return record
        return object.__getattribute__(self, name)


class StopAfterBatches(Callback):
    """Asks the loop to stop once ``n`` optimizer steps are done (ends after that epoch)."""

    def __init__(self, n):
        self.n = n

    def on_batch_end(self, trainer):
        if trainer.step >= self.n:
            trainer.should_stop = True


class CountSteps(Callback):
    """A callback with state: how many steps it saw, kept across an interrupt by the checkpoint."""

    def __init__(self):
        self.count = 0

    def on_batch_end(self, trainer):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def loaders():
    images, labels = make_data(32)
    eval_images, eval_labels = make_data(16, seed=3)
    return make_loader(images, labels, shuffle=True), make_loader(eval_images, eval_labels)


def test_a_user_written_callback_sees_every_batch():
    train_loader, eval_loader = loaders()
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    record = RecordLR()
    history = fit(model, train_loader, eval_loader, epochs=2, optimizer=optimizer, scheduler=scheduler,
                  callbacks=[record], seed=0, **QUIET)
    assert len(record.lrs) == 8  # 2 epochs x 4 batches
    assert record.lrs[:3] == pytest.approx([0.1, 0.05, 0.025])  # the scheduler halves it every step
    assert record.lrs == pytest.approx(history.loc[history.phase == "train", "lr"].tolist())


def test_events_come_in_the_documented_order():
    train_loader, eval_loader = loaders()
    log = EventLog()
    fit(tiny_model(), train_loader, eval_loader, epochs=1, callbacks=[log], seed=0, **QUIET)
    names = [name for name, *_ in log.seen]
    assert names[:2] == ["on_fit_start", "on_epoch_start"]
    assert names[2:6] == ["on_loss", "on_before_step", "on_batch_end", "on_loss"]
    assert names.count("on_batch_end") == 4 and names.count("on_loss") == 4
    assert names[-3:] == ["on_eval_end", "on_epoch_end", "on_fit_end"]
    assert "on_interrupt" not in names
    # on_batch_end runs before the position moves on: batch 0, 1, 2, 3 of epoch 0 are done.
    assert [batch for name, _, batch in log.seen if name == "on_batch_end"] == [0, 1, 2, 3]


def test_callbacks_run_in_order_whatever_order_they_are_passed_in():
    train_loader, _ = loaders()
    late, early = EventLog(order=99), EventLog(order=1)
    calls = []
    late.seen = early.seen = calls  # one shared log shows who went first
    fit(tiny_model(), train_loader, epochs=1, callbacks=[late, early], seed=0, **QUIET)
    firsts = [calls[i] for i in range(0, 4)]
    assert firsts[0] == firsts[1] == ("on_fit_start", 0, 0)
    assert calls.index(("on_fit_start", 0, 0)) == 0


def test_a_callback_can_stop_training():
    train_loader, _ = loaders()
    history = fit(tiny_model(), train_loader, epochs=5, callbacks=[StopAfterBatches(6)], seed=0, **QUIET)
    assert history.attrs["epochs_completed"] == 2  # stops at the end of the epoch holding step 6
    assert (history.phase == "train").sum() == 8


def test_fit_refuses_what_is_not_a_callback():
    train_loader, _ = loaders()
    with pytest.raises(TypeError, match="Callback objects"):
        fit(tiny_model(), train_loader, callbacks=[lambda trainer: None], **QUIET)


def test_a_callbacks_state_survives_an_interrupt_and_resume(tmp_path):
    train_loader, eval_loader = loaders()
    path = tmp_path / "run.pt"

    def interrupt_on_step_5(module, inputs, output):
        if module.training:
            counter["forward"] += 1
            if counter["forward"] == 5:
                raise KeyboardInterrupt

    counter = {"forward": 0}
    model = tiny_model()
    model.register_forward_hook(interrupt_on_step_5)
    first = CountSteps()
    history = fit(model, train_loader, eval_loader, epochs=2, callbacks=[first], checkpoint_path=path, seed=4, **QUIET)
    assert history.attrs["interrupted"] and first.count == 4
    assert resume_state(path)["extra"]["callbacks"]["CountSteps"] == {"count": 4}

    second = CountSteps()
    fit(tiny_model(), train_loader, eval_loader, epochs=2, callbacks=[second], checkpoint_path=path,
        resume_from=path, **QUIET)
    assert second.count == 8  # 4 before the interrupt, 4 after


def test_plateau_scheduler_and_early_stopping_state_resume_exactly(tmp_path):
    """A resumed run with a plateau scheduler and early stopping ends like an uninterrupted one."""
    train_loader, eval_loader = loaders()

    def parts():
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)
        return model, optimizer, plateau

    model, optimizer, plateau = parts()
    reference = fit(model, train_loader, eval_loader, epochs=4, optimizer=optimizer, scheduler=plateau,
                    early_stopping=EarlyStopping(patience=3), seed=2, **QUIET)
    reference_weights = weights(model)

    path = tmp_path / "run.pt"
    model, optimizer, plateau = parts()
    calls = {"n": 0}

    def stop_in_epoch_3(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == 10:
                raise KeyboardInterrupt

    handle = model.register_forward_hook(stop_in_epoch_3)
    stopped = fit(model, train_loader, eval_loader, epochs=4, optimizer=optimizer, scheduler=plateau,
                  early_stopping=3, checkpoint_path=path, seed=2, **QUIET)
    handle.remove()
    assert stopped.attrs["interrupted"]
    saved = resume_state(path)["extra"]["callbacks"]
    assert set(saved) == {"LRScheduler", "EarlyStopping"}

    model, optimizer, plateau = parts()
    resumed = fit(model, train_loader, eval_loader, epochs=4, optimizer=optimizer, scheduler=plateau,
                  early_stopping=3, checkpoint_path=path, resume_from=path, **QUIET)
    np.testing.assert_allclose(resumed["lr"], reference["lr"], equal_nan=True)
    np.testing.assert_allclose(resumed["eval_log_loss"], reference["eval_log_loss"], rtol=1e-6, equal_nan=True)
    assert resumed.attrs["best_epoch"] == reference.attrs["best_epoch"]
    assert_same_weights(model, reference_weights, rtol=1e-6, atol=1e-7)


def test_one_early_stopping_object_can_serve_two_runs():
    train_loader, eval_loader = loaders()
    stopping = EarlyStopping(patience=1)
    fit(tiny_model(), train_loader, eval_loader, epochs=3, early_stopping=stopping, seed=0, **QUIET)
    first_best = stopping.best_loss
    second = fit(tiny_model(seed=5), train_loader, eval_loader, epochs=1, early_stopping=stopping, seed=0, **QUIET)
    # The second run starts from scratch: its best is its own single epoch, not the first run's.
    assert second.attrs["best_epoch"] == 1
    assert stopping.best_loss == pytest.approx(second.eval_log_loss.dropna().iloc[0])
    assert first_best is not None


def test_head_training_goes_through_the_same_loop_and_callbacks():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 4
    y = np.arange(160) % 8
    x = (centres[y] + rng.normal(size=(160, 16))).astype("float32")
    head = torch.nn.Linear(16, 8)
    record = RecordLR()
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.05)
    history = fit_head(head, x[:120], y[:120], x[120:], y[120:], epochs=3, batch_size=40, optimizer=optimizer,
                       callbacks=[record], progress=False)
    assert len(record.lrs) == 9 and set(record.lrs) == {0.05}
    assert history.attrs["precision"] == "fp32" and (history.phase == "eval").sum() == 3
    assert history.eval_accuracy.dropna().iloc[-1] > 0.9


def test_lr_scheduler_callback_keeps_the_scheduler_state():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    callback = LRScheduler(scheduler)
    optimizer.step()
    callback.on_batch_end(None)
    state = callback.state_dict()
    fresh_optimizer = torch.optim.SGD(tiny_model().parameters(), lr=1.0)
    fresh = LRScheduler(torch.optim.lr_scheduler.StepLR(fresh_optimizer, step_size=1, gamma=0.1))
    fresh.load_state_dict(state)
    assert fresh.scheduler.last_epoch == 1


def test_progress_bars_show_the_device_precision_and_losses(capsys):
    train_loader, eval_loader = loaders()
    fit(tiny_model(), train_loader, eval_loader, epochs=2, seed=0, device="cpu", precision="fp32", progress=True)
    shown = capsys.readouterr().err
    assert "fit on cpu, fp32" in shown and "2/2" in shown
    assert "eval_log_loss=" in shown and "loss=" in shown


def test_early_stopping_keeps_the_best_epochs_eval_logits_through_a_checkpoint(tmp_path):
    import io

    stopper = EarlyStopping(patience=2)
    trainer = types.SimpleNamespace(position=types.SimpleNamespace(epoch=0), should_stop=False,
                                    unwrapped_model=torch.nn.Linear(2, 2))
    best = pd.DataFrame([[0.5, -0.5], [1.0, 2.0]], index=pd.Index(["a", "b"], name="id"), columns=["x", "y"])
    stopper.on_eval_end(trainer, {"eval_log_loss": 0.4, "logits": best})
    trainer.position.epoch = 1
    stopper.on_eval_end(trainer, {"eval_log_loss": 0.9, "logits": best * 10})  # worse: not kept
    buffer = io.BytesIO()
    torch.save(stopper.state_dict(), buffer)
    buffer.seek(0)
    resumed = EarlyStopping(patience=2)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))  # how fit reads a checkpoint
    pd.testing.assert_frame_equal(resumed.best_logits, best)
    assert resumed.best_epoch == 1
