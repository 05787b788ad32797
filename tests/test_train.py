"""fit, predict and interrupt-safe training, on tiny models and in-memory loaders."""

from __future__ import annotations

import copy
import math
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss as sklearn_log_loss
from torch import nn
from torch.utils.data import DataLoader, Dataset

from conserviz_utils import SPECIES, TrainingError
from conserviz_utils.runtime.checkpoint import resume_state
from conserviz_utils.data import collate_images
from conserviz_utils.callbacks import HISTORY_COLUMNS, EarlyStopping
from conserviz_utils.inference import predict, predict_logits
from conserviz_utils.train import fit

N_CLASSES = len(SPECIES)


# ------------------------------------------------------------------------------------------------
# Tiny models and loaders in conserviz's batch layout (shared with test_checkpoint.py)
# ------------------------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """A small CNN on 3×size×size images: conv, pool, dropout, linear."""

    def __init__(self, num_classes: int = N_CLASSES, dropout: float = 0.0, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten()
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


class TensorImages(Dataset):
    """Items like ImagesDataset's: {"image_id", "image", "label"}; optional noise drawn per item."""

    def __init__(self, images, labels=None, ids=None, noise: float = 0.0, unreadable=()) -> None:
        self.images = images
        self.labels = labels
        self.ids = ids if ids is not None else [f"ZJ{i:06d}" for i in range(len(images))]
        self.noise = noise
        self.unreadable = set(unreadable)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        if image_id in self.unreadable:
            return {"image_id": image_id, "error": "truncated JPEG"}
        image = self.images[index]
        if self.noise:
            # Drawn from torch's global generator, like a random augmentation in the main process.
            image = image + self.noise * torch.randn(image.shape)
        item = {"image_id": image_id, "image": image}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


def make_data(n: int = 40, size: int = 16, seed: int = 0, classes: int = N_CLASSES):
    """Random images whose class shows in the mean colour (learnable), and one-hot labels."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    images = torch.rand(n, 3, size, size, generator=generator)
    images[:, 0] += y.float().view(-1, 1, 1) / classes
    labels = nn.functional.one_hot(y, classes).float()
    return images, labels


def make_loader(images, labels=None, batch_size: int = 8, shuffle: bool = False, **options) -> DataLoader:
    """A DataLoader over in-memory images, batching with conserviz's collate_images."""
    dataset = TensorImages(images, labels, **options)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_images)


def tiny_model(seed: int = 0, **options) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**options)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: nn.Module | dict, b: nn.Module | dict, **tolerance) -> None:
    a = a if isinstance(a, dict) else weights(a)
    b = b if isinstance(b, dict) else weights(b)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=lambda m, key=key: f"{key}: {m}", **tolerance)


QUIET = {"device": "cpu", "precision": "fp32", "progress": False}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine the threads' spin
    waits make each small op cost milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# Device and precision in the loop (the choice itself: test_device.py)
# ------------------------------------------------------------------------------------------------


def test_fit_reports_device_and_precision_in_attrs():
    images, labels = make_data(16)
    history = fit(tiny_model(), make_loader(images, labels), epochs=1, seed=0, **QUIET)
    assert history.attrs["device"] == "cpu"
    assert history.attrs["precision"] == "fp32"
    assert history.attrs["seed"] == 0


def test_bf16_autocast_trains_on_cpu():
    images, labels = make_data(16)
    loader = make_loader(images, labels)
    history = fit(tiny_model(), loader, epochs=2, device="cpu", precision="bf16", progress=False, seed=0)
    assert history.attrs["precision"] == "bf16"
    assert np.isfinite(history["train_loss"]).all()


# ------------------------------------------------------------------------------------------------
# Learning
# ------------------------------------------------------------------------------------------------


def test_overfits_a_16_image_batch_to_near_zero_loss():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(16, 3, 16, 16, generator=generator)
    labels = nn.functional.one_hot(torch.randint(0, N_CLASSES, (16,), generator=generator), N_CLASSES).float()
    model = tiny_model(width=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = make_loader(images, labels, batch_size=16)
    history = fit(model, loader, epochs=150, optimizer=optimizer, seed=0, **QUIET)
    assert history["train_loss"].iloc[0] > 1.5  # random labels: about ln 8 at the start
    assert history["train_loss"].iloc[-1] < 0.05


def test_overfits_a_conserviz_resnet18():
    from conserviz_utils.models import build_model

    generator = torch.Generator().manual_seed(2)
    images = torch.rand(16, 3, 64, 64, generator=generator)
    labels = nn.functional.one_hot(torch.arange(16) % N_CLASSES, N_CLASSES).float()
    model = build_model("resnet18", pretrained=False, head="linear", dropout=0.0, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = make_loader(images, labels, batch_size=16)
    history = fit(model, loader, epochs=8, optimizer=optimizer, seed=0, **QUIET)
    assert history["train_loss"].iloc[0] > 1.5
    assert history["train_loss"].iloc[-1] < 0.05


def test_default_optimizer_is_the_walkthroughs_sgd():
    """One step of the default: SGD(lr=0.001, momentum=0.9) on the trainable parameters only."""
    images, labels = make_data(8)
    model = tiny_model()
    model.features.requires_grad_(False)
    before = weights(model)
    reference = copy.deepcopy(model)
    fit(model, make_loader(images, labels), epochs=1, seed=0, **QUIET)

    loss = nn.functional.cross_entropy(reference(images), labels)
    loss.backward()
    expected = {name: p.detach() - 0.001 * p.grad for name, p in reference.classifier.named_parameters()}
    for name, value in expected.items():
        torch.testing.assert_close(getattr(model.classifier, name), value)
    assert_same_weights({k: v for k, v in weights(model).items() if k.startswith("features")},
                        {k: v for k, v in before.items() if k.startswith("features")})


def test_history_layout_and_eval_metrics():
    images, labels = make_data(24)
    eval_images, eval_labels = make_data(16, seed=5)
    eval_loader = make_loader(eval_images, eval_labels)
    model = tiny_model()
    history = fit(model, make_loader(images, labels), eval_loader, epochs=2, seed=0, **QUIET)

    assert list(history.columns) == list(HISTORY_COLUMNS)
    assert list(history["phase"]) == ["train"] * 3 + ["eval"] + ["train"] * 3 + ["eval"]
    assert list(history["epoch"]) == [1, 1, 1, 1, 2, 2, 2, 2]
    assert list(history["batch"]) == [1, 2, 3, 3, 1, 2, 3, 3]
    assert list(history["step"]) == [1, 2, 3, 3, 4, 5, 6, 6]
    train, evals = history[history.phase == "train"], history[history.phase == "eval"]
    assert train["train_loss"].notna().all() and train["eval_log_loss"].isna().all()
    assert evals["train_loss"].isna().all() and evals["eval_log_loss"].notna().all()
    assert (train["lr"] == 0.001).all()
    assert train["grad_norm"].isna().all()  # only measured when clipping
    assert history.attrs["epochs_completed"] == 2 and history.attrs["interrupted"] is False

    # The last eval row scores the final weights: the same numbers predict() and sklearn give.
    probs = predict(model, eval_loader, **QUIET)
    y = eval_labels.argmax(dim=1).numpy()
    last = evals.iloc[-1]
    expected = sklearn_log_loss(y, probs.to_numpy(), labels=range(N_CLASSES))
    assert last["eval_log_loss"] == pytest.approx(expected, rel=1e-6)
    assert last["eval_accuracy"] == pytest.approx(np.mean(probs.to_numpy().argmax(axis=1) == y))
    assert last["eval_loss"] == pytest.approx(last["eval_log_loss"], rel=1e-5)  # CE on one-hot labels


def test_gradient_clipping_bounds_each_update():
    images, labels = make_data(8)
    updates = {}
    for clip in (None, 1e-3):
        model = tiny_model()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        loader = make_loader(images, labels)
        history = fit(model, loader, epochs=1, optimizer=optimizer, clip_grad_norm=clip, seed=0, **QUIET)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        updates[clip] = float((after - before).norm())
        grad_norm = history["grad_norm"].iloc[0]
    assert updates[None] > 0.01  # unclipped, the step is far larger than the bound
    assert updates[1e-3] == pytest.approx(1e-3, rel=1e-3)
    assert grad_norm == pytest.approx(updates[None], rel=1e-4)  # recorded before clipping


def test_nan_input_names_epoch_batch_and_images():
    images, labels = make_data(24)
    images[10, 0, 0, 0] = float("nan")  # in the second batch of 8
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingError) as caught:
        fit(tiny_model(), make_loader(images, labels), epochs=1, seed=0, **QUIET)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back
    message = str(caught.value)
    assert "epoch 1, batch 2" in message
    assert "images hold NaN" in message
    assert "ZJ000008" in message  # first ids of that batch
    assert caught.value.rows[:2] == ["ZJ000008", "ZJ000009"]


def test_diverging_weights_name_the_batch_and_suggest_a_lower_rate():
    images, labels = make_data(32)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e12)
    diverged = r"epoch 1, batch \d+: the inputs are finite, so the weights diverged"
    with pytest.raises(TrainingError, match=diverged) as caught:
        fit(model, make_loader(images, labels), epochs=3, optimizer=optimizer, seed=0, **QUIET)
    assert "lower the learning rate" in caught.value.fix


def test_early_stopping_restores_the_best_weights():
    """Train on one class, evaluate on another: eval log loss only gets worse after epoch 1."""
    images, _ = make_data(16)
    train_labels = nn.functional.one_hot(torch.zeros(16, dtype=torch.long), N_CLASSES).float()
    eval_labels = nn.functional.one_hot(torch.ones(16, dtype=torch.long), N_CLASSES).float()
    train_loader, eval_loader = make_loader(images, train_labels), make_loader(images, eval_labels)

    def run(epochs, early):
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        history = fit(
            model, train_loader, eval_loader, epochs, optimizer, early_stopping=early, seed=0, **QUIET
        )
        return model, history

    after_one_epoch, _ = run(1, None)
    model, history = run(10, 2)
    assert history.attrs["stopped_early"] is True
    assert history.attrs["best_epoch"] == 1
    assert history.attrs["epochs_completed"] == 3  # epoch 1 best, 2 and 3 worse: patience 2
    losses = history.loc[history.phase == "eval", "eval_log_loss"].to_numpy()
    assert len(losses) == 3 and losses[0] < losses[1] < losses[2]
    assert_same_weights(model, after_one_epoch)

    kept_last, _ = run(10, EarlyStopping(patience=2, restore_best=False))
    with pytest.raises(AssertionError):
        assert_same_weights(kept_last, after_one_epoch)


def test_early_stopping_needs_an_eval_loader():
    images, labels = make_data(8)
    with pytest.raises(TrainingError, match="early stopping watches the eval log loss"):
        fit(tiny_model(), make_loader(images, labels), early_stopping=2, **QUIET)


def test_bad_batches_get_clear_errors():
    images, labels = make_data(8)
    with pytest.raises(TrainingError, match="without an 'image' entry") as caught:
        fit(tiny_model(), [(images, labels)], **QUIET)
    assert "make_loader" in caught.value.fix
    with pytest.raises(TrainingError, match="no 'label'"):
        fit(tiny_model(), make_loader(images), **QUIET)
    with pytest.raises(TrainingError, match="gave no batches"):
        fit(tiny_model(), [], **QUIET)


def test_skipped_images_are_counted_not_fatal():
    images, labels = make_data(16)
    loader = make_loader(images, labels, unreadable={"ZJ000003", "ZJ000011"})
    eval_loader = make_loader(images, labels, unreadable={"ZJ000005"})
    history = fit(tiny_model(), loader, eval_loader, epochs=2, seed=0, **QUIET)
    assert history.attrs["skipped"] == [
        ("ZJ000003", "truncated JPEG"),
        ("ZJ000005", "truncated JPEG"),
        ("ZJ000011", "truncated JPEG"),
    ]
    assert len(history) == 2 * (2 + 1)


def test_a_batch_of_only_unreadable_images_is_passed_over():
    images, labels = make_data(12)
    unreadable = {f"ZJ{i:06d}" for i in range(4, 8)}  # the whole second batch of 4
    loader = make_loader(images, labels, batch_size=4, unreadable=unreadable)
    history = fit(tiny_model(), loader, seed=0, **QUIET)
    assert list(history["batch"]) == [1, 3]  # batch 2 had no image to learn from
    assert list(history["step"]) == [1, 2]
    assert [image_id for image_id, _ in history.attrs["skipped"]] == sorted(unreadable)


# ------------------------------------------------------------------------------------------------
# Resume and interrupts
# ------------------------------------------------------------------------------------------------


class Recipe:
    """One small training set-up with every source of randomness an exact resume must replay:
    a shuffled DataLoader, noise drawn per item, dropout, SGD momentum, a per-batch scheduler
    and an eval loader; or a plain list of batches."""

    epochs = 2
    batches_per_epoch = 5

    def __init__(self, loader_kind: str = "dataloader") -> None:
        images, labels = make_data(40)
        eval_images, eval_labels = make_data(16, seed=9)
        if loader_kind == "dataloader":
            self.train_loader = make_loader(images, labels, shuffle=True, noise=0.05)
        else:
            items = TensorImages(images, labels)
            self.train_loader = [collate_images([items[i] for i in range(s, s + 8)]) for s in range(0, 40, 8)]
        self.eval_loader = make_loader(eval_images, eval_labels)

    def parts(self):
        model = tiny_model(dropout=0.3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.97)
        return model, optimizer, scheduler

    def fit(self, model, optimizer, scheduler, **options) -> pd.DataFrame:
        options = {"epochs": self.epochs, "seed": 7, **QUIET, **options}
        return fit(
            model, self.train_loader, self.eval_loader, optimizer=optimizer, scheduler=scheduler, **options
        )

    def uninterrupted(self):
        model, optimizer, scheduler = self.parts()
        return model, self.fit(model, optimizer, scheduler)

    def resumed(self, path, **options):
        model, optimizer, scheduler = self.parts()
        torch.manual_seed(12345)  # whatever the global state, the checkpoint's is restored
        return model, self.fit(model, optimizer, scheduler, resume_from=path, checkpoint_path=path, **options)


def interrupt_at(model: nn.Module, forward_number: int, action, training: bool = True) -> None:
    """Call ``action`` inside the model's forward pass number ``forward_number`` (1-based)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        if module.training == training:
            calls["n"] += 1
            if calls["n"] == forward_number:
                action()

    model.register_forward_hook(hook)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt


def send(signum):
    return lambda: os.kill(os.getpid(), signum)


def assert_same_run(resumed: pd.DataFrame, reference: pd.DataFrame) -> None:
    columns = ["epoch", "batch", "step", "phase"]
    pd.testing.assert_frame_equal(resumed[columns], reference[columns])
    for column in ("lr", "train_loss", "eval_log_loss", "eval_accuracy"):
        np.testing.assert_allclose(resumed[column], reference[column], rtol=1e-6, equal_nan=True)


@pytest.fixture(scope="module")
def reference_run():
    recipe = Recipe()
    model, history = recipe.uninterrupted()
    return weights(model), history


@pytest.mark.parametrize(
    ("action", "forward_number", "training", "expected_position", "expected_signal"),
    [
        (raise_keyboard_interrupt, 3, True, (0, 2), "KeyboardInterrupt"),  # mid-epoch 1
        (raise_keyboard_interrupt, 7, True, (1, 1), "KeyboardInterrupt"),  # mid-epoch 2
        (raise_keyboard_interrupt, 1, False, (0, 5), "KeyboardInterrupt"),  # during the epoch-1 eval
        (send(signal.SIGTERM), 4, True, (0, 4), "SIGTERM"),  # batch 4 completes, then stop
        (send(signal.SIGTERM), 5, True, (0, 5), "SIGTERM"),  # last batch of epoch 1: stop before eval
        (send(signal.SIGINT), 8, True, (1, 3), "SIGINT"),  # first Ctrl-C: stop at the next boundary
    ],
)
def test_interrupted_then_resumed_training_ends_with_the_same_weights(
    tmp_path, reference_run, action, forward_number, training, expected_position, expected_signal
):
    reference_weights, reference_history = reference_run
    recipe = Recipe()
    path = tmp_path / "run.pt"
    model, optimizer, scheduler = recipe.parts()
    interrupt_at(model, forward_number, action, training)
    sigterm_before = signal.getsignal(signal.SIGTERM)

    history = recipe.fit(model, optimizer, scheduler, checkpoint_path=path)

    assert signal.getsignal(signal.SIGTERM) is sigterm_before  # fit put the handler back
    assert history.attrs["interrupted"] is True
    assert history.attrs["interrupt_signal"] == expected_signal
    assert history.attrs["checkpoint"] == str(path)
    state = resume_state(path)
    assert (state["epoch"], state["batch"]) == expected_position
    completed = expected_position[0] * Recipe.batches_per_epoch + expected_position[1]
    assert (history.phase == "train").sum() == completed

    model, resumed = recipe.resumed(path)
    assert resumed.attrs["interrupted"] is False
    assert resumed.attrs["resumed_from"] == str(path)
    assert_same_run(resumed, reference_history)
    assert_same_weights(model, reference_weights, rtol=1e-6, atol=1e-7)


class SignalsDuringStep(torch.optim.SGD):
    """SGD that receives two SIGINTs (Ctrl-C pressed twice) in the middle of step number ``at``."""

    def __init__(self, params, at: int, **options) -> None:
        super().__init__(params, **options)
        self.at, self.calls = at, 0

    def step(self, closure=None):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return super().step(closure)


def test_a_second_ctrl_c_stops_at_once_but_never_inside_an_update(tmp_path, reference_run):
    reference_weights, reference_history = reference_run
    recipe = Recipe()

    # Pressed twice during a forward pass: stops at once, before that batch's update.
    model, optimizer, scheduler = recipe.parts()
    interrupt_at(model, 4, lambda: (send(signal.SIGINT)(), send(signal.SIGINT)()))
    history = recipe.fit(model, optimizer, scheduler, checkpoint_path=tmp_path / "a.pt")
    assert history.attrs["interrupt_signal"] == "SIGINT"
    assert (resume_state(tmp_path / "a.pt")["epoch"], resume_state(tmp_path / "a.pt")["batch"]) == (0, 3)
    model, resumed = recipe.resumed(tmp_path / "a.pt")
    assert_same_weights(model, reference_weights, rtol=1e-6, atol=1e-7)

    # Pressed twice during the optimizer step: the step, and its batch, complete first.
    model = tiny_model(dropout=0.3)
    optimizer = SignalsDuringStep(model.parameters(), at=4, lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.97)
    recipe.fit(model, optimizer, scheduler, checkpoint_path=tmp_path / "b.pt")
    assert (resume_state(tmp_path / "b.pt")["epoch"], resume_state(tmp_path / "b.pt")["batch"]) == (0, 4)
    model, resumed = recipe.resumed(tmp_path / "b.pt")
    assert_same_run(resumed, reference_history)
    assert_same_weights(model, reference_weights, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loader_kind", ["dataloader", "list"])
def test_resume_continues_the_epoch_count(tmp_path, loader_kind):
    recipe = Recipe(loader_kind)
    reference_model, reference_history = recipe.uninterrupted()
    path = tmp_path / "run.pt"
    model, optimizer, scheduler = recipe.parts()
    first = recipe.fit(model, optimizer, scheduler, epochs=1, checkpoint_path=path)
    assert first.attrs["epochs_completed"] == 1 and resume_state(path)["epoch"] == 1

    model, resumed = recipe.resumed(path)
    assert resumed.attrs["epochs_completed"] == 2
    assert list(resumed.loc[resumed.phase == "eval", "epoch"]) == [1, 2]
    assert list(resumed.loc[resumed.phase == "train", "step"]) == list(range(1, 11))
    assert_same_run(resumed, reference_history)
    assert_same_weights(model, reference_model, rtol=1e-6, atol=1e-7)

    # Resuming a finished run trains no more and returns its history.
    model, again = recipe.resumed(path)
    pd.testing.assert_frame_equal(again, resumed)
    assert_same_weights(model, reference_model, rtol=1e-6, atol=1e-7)


def test_interrupt_in_a_data_loader_resumes_on_the_same_batches(tmp_path):
    """The images of the remaining batches after a resume are the ones of an unbroken run."""
    recipe = Recipe()

    def seen_ids(model):
        seen = []
        def record(module, args):
            if module.training:
                seen.append(float(args[0][:, 1].mean()))

        model.register_forward_pre_hook(record)
        return seen

    model, optimizer, scheduler = recipe.parts()
    unbroken = seen_ids(model)
    recipe.fit(model, optimizer, scheduler)

    path = tmp_path / "run.pt"
    model, optimizer, scheduler = recipe.parts()
    before = seen_ids(model)
    interrupt_at(model, 7, raise_keyboard_interrupt)
    recipe.fit(model, optimizer, scheduler, checkpoint_path=path)
    model, optimizer, scheduler = recipe.parts()
    after = seen_ids(model)
    recipe.fit(model, optimizer, scheduler, resume_from=path)
    assert before[:6] + after == unbroken


def test_resume_refuses_another_seed(tmp_path):
    recipe = Recipe()
    path = tmp_path / "run.pt"
    model, optimizer, scheduler = recipe.parts()
    recipe.fit(model, optimizer, scheduler, epochs=1, checkpoint_path=path)
    model, optimizer, scheduler = recipe.parts()
    with pytest.raises(TrainingError, match="seed=8 differs from the seed 7"):
        recipe.fit(model, optimizer, scheduler, resume_from=path, seed=8)


def test_fit_runs_outside_the_main_thread():
    """Signal handlers can only be installed in the main thread; fit then trains without them."""
    import threading

    images, labels = make_data(16)
    results = []
    worker = threading.Thread(target=lambda: results.append(fit(tiny_model(), make_loader(images, labels), **QUIET)))
    worker.start()
    worker.join()
    assert len(results) == 1 and results[0].attrs["epochs_completed"] == 1


def test_interrupt_without_checkpoint_path_still_returns_the_history():
    recipe = Recipe()
    model, optimizer, scheduler = recipe.parts()
    interrupt_at(model, 3, raise_keyboard_interrupt)
    history = recipe.fit(model, optimizer, scheduler)
    assert history.attrs["interrupted"] is True and history.attrs["checkpoint"] is None
    assert (history.phase == "train").sum() == 2


def test_resume_on_the_sample_dataset_with_augmentation(sample_dir, tmp_path):
    """The real pipeline: competition CSVs, JPEG decoding, random augmentation, collate_images."""
    from conserviz_utils.data import ImagesDataset, default_transform, load_competition, train_transform
    from conserviz_utils.data import make_loader as make_image_loader

    data = load_competition(sample_dir)
    features = data.train_features
    train_set = ImagesDataset(features.iloc[:96], data.train_labels, train_transform(size=32))
    eval_set = ImagesDataset(features.iloc[96:128], data.train_labels, default_transform(size=32))

    def run(interrupt=None, **options):
        train_loader = make_image_loader(train_set, batch_size=16, shuffle=True, num_workers=0)
        eval_loader = make_image_loader(eval_set, batch_size=16, num_workers=0)
        model = tiny_model(dropout=0.2)
        if interrupt is not None:
            interrupt_at(model, *interrupt)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        history = fit(model, train_loader, eval_loader, 2, optimizer, seed=3, **QUIET, **options)
        return model, history

    reference_model, reference = run()
    path = tmp_path / "sample.pt"
    _, stopped = run(interrupt=(9, send(signal.SIGTERM)), checkpoint_path=path)  # epoch 2, batch 3
    assert stopped.attrs["interrupted"] is True
    assert list(stopped["phase"]) == ["train"] * 6 + ["eval"] + ["train"] * 3
    model, resumed = run(checkpoint_path=path, resume_from=path)
    assert_same_run(resumed, reference)
    assert_same_weights(model, reference_model, rtol=1e-6, atol=1e-7)

    test_set = ImagesDataset(data.test_features, transform=default_transform(size=32))
    probs = predict(model, make_image_loader(test_set, num_workers=0), **QUIET)
    assert list(probs.index) == list(data.test_features.index)
    assert list(probs.columns) == list(data.species)


# ------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------


def test_predict_layout_and_values():
    images, labels = make_data(20)
    model = tiny_model().eval()
    loader = make_loader(images, labels)
    probs = predict(model, loader, **QUIET)
    assert list(probs.columns) == list(SPECIES)
    assert probs.index.name == "id"
    assert list(probs.index) == [f"ZJ{i:06d}" for i in range(20)]  # loader order, every id
    assert (probs.dtypes == "float64").all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    with torch.no_grad():
        expected_logits = model(images).double()
    expected = torch.softmax(expected_logits, 1).numpy()
    np.testing.assert_allclose(probs.to_numpy(), expected, rtol=1e-5, atol=1e-7)

    logits = predict_logits(model, loader, **QUIET)
    np.testing.assert_allclose(logits.to_numpy(), expected_logits.numpy(), rtol=1e-5, atol=1e-6)
    softened = predict(model, loader, temperature=2.0, **QUIET)
    expected = torch.softmax(expected_logits / 2, 1).numpy()
    np.testing.assert_allclose(softened.to_numpy(), expected, rtol=1e-5, atol=1e-7)
    assert model.training is False  # predict put the mode back


class LeftMinusRight(nn.Module):
    """Logits that depend only on how much brighter the left half is than the right half."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(-4, 4, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        difference = x[..., :half].mean(dim=(1, 2, 3)) - x[..., half:].mean(dim=(1, 2, 3))
        return difference[:, None] * self.scale[None, :]


def test_tta_averages_the_horizontal_mirror():
    images = torch.zeros(4, 3, 8, 8)
    images[..., :4] = 1.0  # bright left half; a vertical flip would change nothing
    loader = make_loader(images)
    plain = predict(LeftMinusRight(), loader, **QUIET)
    assert plain.to_numpy().max() > 0.5  # confident without TTA
    mirrored = predict(LeftMinusRight(), loader, tta=True, **QUIET)
    np.testing.assert_allclose(mirrored.to_numpy(), 1 / N_CLASSES, atol=1e-12)  # image and mirror cancel


def test_predict_lists_skipped_ids_and_says_why():
    images, _ = make_data(10)
    loader = make_loader(images, unreadable={"ZJ000004"})
    probs = predict(tiny_model(), loader, **QUIET)
    assert "ZJ000004" not in probs.index and len(probs) == 9
    assert probs.attrs["skipped"] == [("ZJ000004", "truncated JPEG")]
    assert "ZJ000004" in probs.attrs["note"] and "submission" in probs.attrs["note"]
    assert predict(tiny_model(), make_loader(images), **QUIET).attrs["skipped"] == []


def test_predict_refuses_species_that_do_not_fit_the_model():
    images, _ = make_data(4)
    with pytest.raises(TrainingError, match="gives 8 outputs per image but 3 species"):
        predict(tiny_model(), make_loader(images), species=["a", "b", "c"], **QUIET)
    with pytest.raises(ValueError, match="temperature"):
        predict(tiny_model(), make_loader(images), temperature=0.0, **QUIET)


def test_predict_under_bf16_is_close_to_fp32():
    images, _ = make_data(8)
    model = tiny_model().eval()
    exact = predict(model, make_loader(images), **QUIET)
    approx = predict(model, make_loader(images), device="cpu", precision="bf16", progress=False)
    assert (approx.dtypes == "float64").all()
    np.testing.assert_allclose(approx.sum(axis=1), 1.0, atol=1e-12)
    assert math.isclose(np.abs(approx.to_numpy() - exact.to_numpy()).max(), 0.0, abs_tol=0.02)
