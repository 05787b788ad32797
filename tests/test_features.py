"""The frozen-feature fast path: cached embeddings, head training on them, prediction from them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conserviz_utils import SPECIES, DataValidationError, TrainingError
from conserviz_utils.data import ImagesDataset, default_transform, load_competition, make_loader
from conserviz_utils.course.embeddings import compute_embeddings
from conserviz_utils.course.features import fit_head, predict_from_embeddings, predict_logits_from_embeddings
from conserviz_utils.metrics import log_loss
from conserviz_utils.callbacks import HISTORY_COLUMNS
from conserviz_utils.inference import predict

N_CLASSES = len(SPECIES)
SMALL = 32  # image side for the tests: the behaviour does not depend on the size


# --- helpers -----------------------------------------------------------------------------------


def clusters(n_per_class: int = 40, dim: int = 16, seed: int = 0, spread: float = 0.6):
    """Embeddings drawn around one centre per species, with one-hot labels indexed by id."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CLASSES, dim)) * 2
    y = np.repeat(np.arange(N_CLASSES), n_per_class)
    x = (centres[y] + rng.normal(scale=spread, size=(len(y), dim))).astype(np.float32)
    ids = pd.Index([f"ZJ{i:06d}" for i in range(len(y))], name="id")
    labels = pd.DataFrame(np.eye(N_CLASSES)[y], index=ids, columns=list(SPECIES))
    return pd.DataFrame(x, index=ids), labels


def small_head(dim: int = 16, seed: int = 0, dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, N_CLASSES))


@pytest.fixture(scope="module")
def data(sample_dir):
    return load_competition(sample_dir)


def embed(model, features, tmp_path, **kwargs):
    options = dict(transform=default_transform(SMALL), cache_dir=tmp_path / "features", batch_size=5,
                   num_workers=0, device="cpu", precision="fp32", progress=False)
    options.update(kwargs)
    return compute_embeddings(model, features, **options)


# --- fit_head ----------------------------------------------------------------------------------


def test_fit_head_learns_separable_clusters_and_reports_eval_scores():
    x, labels = clusters()
    train_ids, eval_ids = x.index[::2], x.index[1::2]
    head = small_head()
    history = fit_head(head, x.loc[train_ids], labels, x.loc[eval_ids], labels, epochs=15, lr=1e-2,
                       batch_size=32, progress=False)
    evals = history[history.phase == "eval"]
    assert len(evals) == 15
    assert evals.eval_accuracy.iloc[-1] > 0.95
    assert evals.eval_log_loss.iloc[-1] < 0.3 < math.log(N_CLASSES)
    assert evals.eval_log_loss.iloc[-1] < evals.eval_log_loss.iloc[0]
    # The recorded score is the competition metric of what predict_from_embeddings gives.
    probs = predict_from_embeddings(head, x.loc[eval_ids])
    assert evals.eval_log_loss.iloc[-1] == pytest.approx(log_loss(labels.loc[eval_ids], probs), rel=1e-9)


def test_fit_head_history_has_the_layout_of_train_fit():
    x, labels = clusters(n_per_class=10)  # 80 rows → 3 batches of 32
    history = fit_head(small_head(), x, labels, x, labels, epochs=2, batch_size=32, progress=False)
    assert list(history.columns) == list(HISTORY_COLUMNS)
    train_rows = history[history.phase == "train"]
    assert list(train_rows.epoch) == [1, 1, 1, 2, 2, 2]
    assert list(train_rows.batch) == [1, 2, 3, 1, 2, 3]
    assert list(train_rows.step) == [1, 2, 3, 4, 5, 6]
    assert train_rows.train_loss.notna().all() and train_rows.eval_loss.isna().all()
    eval_rows = history[history.phase == "eval"]
    assert list(eval_rows.epoch) == [1, 2] and list(eval_rows.step) == [3, 6]
    assert history.attrs["precision"] == "fp32" and history.attrs["epochs_completed"] == 2
    without_eval = fit_head(small_head(), x, labels, epochs=1, batch_size=32, progress=False)
    assert set(without_eval.phase) == {"train"}


def test_early_stopping_stops_when_eval_log_loss_rises_and_restores_the_best_head():
    rng = np.random.default_rng(3)
    x = pd.DataFrame(rng.normal(size=(64, 16)).astype(np.float32), index=[f"ZJ{i:06d}" for i in range(64)])
    noise = pd.Series(np.array(SPECIES)[rng.integers(0, N_CLASSES, 64)], index=x.index)  # nothing to learn
    train, held_out = x.index[:32], x.index[32:]
    head = small_head(dropout=0.0)
    history = fit_head(head, x.loc[train], noise, x.loc[held_out], noise, epochs=40, lr=3e-2, batch_size=8,
                       early_stopping=2, progress=False)
    evals = history[history.phase == "eval"]
    assert history.attrs["stopped_early"] and history.attrs["epochs_completed"] < 40
    assert history.attrs["epochs_completed"] == history.attrs["best_epoch"] + 2
    assert history.attrs["best_eval_log_loss"] == evals.eval_log_loss.min()
    restored = log_loss(noise.loc[held_out], predict_from_embeddings(head, x.loc[held_out]))
    assert restored == pytest.approx(history.attrs["best_eval_log_loss"], rel=1e-9)
    with pytest.raises(TrainingError, match="early stopping watches the eval log loss"):
        fit_head(small_head(), x, noise, epochs=2, early_stopping=2, progress=False)


def test_fit_head_is_reproducible_and_leaves_the_global_random_state_alone():
    x, labels = clusters(n_per_class=10)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, second = small_head(seed=1), small_head(seed=1)
    torch.set_rng_state(before)
    h1 = fit_head(first, x, labels, epochs=3, batch_size=16, seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    h2 = fit_head(second, x, labels, epochs=3, batch_size=16, seed=7, progress=False)
    pd.testing.assert_frame_equal(h1, h2)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    third = small_head(seed=1)
    h3 = fit_head(third, x, labels, epochs=3, batch_size=16, seed=8, progress=False)
    assert not h3.train_loss.equals(h1.train_loss)


def test_fit_head_trains_the_module_in_place_and_restores_its_mode():
    x, labels = clusters(n_per_class=10)
    head = small_head()
    head.eval()
    weight = head[0].weight
    start = weight.detach().clone()
    fit_head(head, x, labels, epochs=2, progress=False)
    assert head[0].weight is weight  # the same parameter object, updated in place
    assert not torch.equal(weight.detach(), start)
    assert not head.training


class ThreadSpy(nn.Module):
    """Records how many threads torch may use whenever the head runs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(torch.get_num_threads())
        return x


def test_the_head_trains_on_one_cpu_thread_and_the_setting_is_restored():
    x, labels = clusters(n_per_class=4)
    spy = ThreadSpy()
    head = nn.Sequential(spy, nn.Linear(16, N_CLASSES))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit_head(head, x, labels, x, labels, epochs=1, progress=False)
        predict_from_embeddings(head, x)
        assert spy.seen == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_labels_are_matched_to_embeddings_by_id():
    x, labels = clusters(n_per_class=10)
    shuffled = labels.sample(frac=1.0, random_state=0)
    a, b = small_head(seed=2), small_head(seed=2)
    fit_head(a, x, labels, epochs=2, progress=False)
    fit_head(b, x, shuffled, epochs=2, progress=False)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    names = labels.idxmax(axis=1)  # a Series of species names works the same
    c = small_head(seed=2)
    fit_head(c, x, names.sample(frac=1.0, random_state=1), epochs=2, progress=False)
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(DataValidationError, match="without a row") as excinfo:
        fit_head(small_head(), x, labels.drop(index=["ZJ000003"]), epochs=1, progress=False)
    assert "ZJ000003" in str(excinfo.value)


@pytest.mark.parametrize(
    "case, match",
    [
        ("dim", "16 dimensions but the head expects 12"),
        ("classes", "gives 5 logits but there are 8 species"),
        ("nan", "NaN or infinite"),
        ("species", "classes that are not species"),
        ("length", "79 train labels for 80 embeddings"),
        ("columns", "are not the species"),
    ],
)
def test_fit_head_refuses_inputs_that_do_not_fit(case, match):
    x, labels = clusters(n_per_class=10)
    head = small_head()
    y = labels
    if case == "dim":
        head = small_head(dim=12)
    elif case == "classes":
        head = nn.Linear(16, 5)
    elif case == "nan":
        x = x.copy()
        x.iloc[4, 2] = np.nan
    elif case == "species":
        y = labels.idxmax(axis=1).replace({"hog": "pig"})
    elif case == "length":
        x, y = x.to_numpy(), np.arange(79) % N_CLASSES
    elif case == "columns":
        y = labels.rename(columns={"hog": "pig"})
    with pytest.raises(DataValidationError, match=match) as excinfo:
        fit_head(head, x, y, epochs=1, progress=False)
    if case == "nan":
        assert "ZJ000004" in str(excinfo.value)
    if case == "species":
        assert "pig" not in SPECIES and "ZJ0000" in str(excinfo.value)


def test_predict_from_embeddings_gives_the_submission_layout():
    x, _ = clusters(n_per_class=3)
    head = small_head()
    probs = predict_from_embeddings(head, x)
    assert list(probs.columns) == list(SPECIES) and probs.index.name == "id"
    assert probs.index.equals(x.index)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    head.eval()
    with torch.no_grad():
        expected = torch.softmax(head(torch.tensor(x.to_numpy())).double(), dim=1).numpy()
    np.testing.assert_allclose(probs.to_numpy(), expected, atol=1e-6)
    logits = predict_logits_from_embeddings(head, x)
    hot = predict_from_embeddings(head, x, temperature=3.0)
    np.testing.assert_allclose(hot.to_numpy(), torch.softmax(torch.tensor(logits.to_numpy()) / 3, 1).numpy(), atol=1e-12)
    assert hot.max(axis=1).mean() < probs.max(axis=1).mean()  # a higher temperature is less sure
    arrays = predict_from_embeddings(head, x.to_numpy(), ids=list(x.index))
    pd.testing.assert_frame_equal(arrays, probs)
    with pytest.raises(ValueError, match="temperature"):
        predict_from_embeddings(head, x, temperature=0)


def test_a_head_trained_on_embeddings_drops_back_into_the_model(data, tmp_path):
    """fit_head(model.head) + predict_from_embeddings = predict(model) on the images."""
    from conserviz_utils.models import build_model

    model = build_model("efficientnet_lite0", pretrained=False, head="seed", seed=0, freeze_backbone=True)
    features = data.train_features.iloc[:16]
    labels = data.train_labels.loc[features.index]
    emb = embed(model, features, tmp_path, batch_size=8)
    head = model.head
    fit_head(model.head, emb, labels, epochs=3, batch_size=8, progress=False)
    assert model.head is head
    from_embeddings = predict_from_embeddings(model.head, emb)
    loader = make_loader(ImagesDataset(features, transform=default_transform(SMALL)), batch_size=8, num_workers=0)
    from_images = predict(model, loader, device="cpu", precision="fp32", progress=False)
    np.testing.assert_allclose(from_embeddings.to_numpy(), from_images.loc[from_embeddings.index].to_numpy(), atol=1e-5)


def test_fit_head_early_stopping_keeps_the_best_epoch():
    """On noise the eval log loss soon turns up; early stopping stops and restores that epoch."""
    from conserviz_utils.course.features import fit_head, predict_logits_from_embeddings
    from conserviz_utils.metrics import apply_temperature, log_loss

    rng = np.random.default_rng(0)
    species = list(SPECIES)
    x_train, x_eval = rng.normal(size=(64, 16)).astype("float32"), rng.normal(size=(64, 16)).astype("float32")
    y_train, y_eval = rng.choice(species, 64), rng.choice(species, 64)
    head = nn.Linear(16, 8)
    history = fit_head(head, x_train, y_train, x_eval, y_eval, epochs=200, lr=1e-2,
                       batch_size=16, early_stopping=3, progress=False)
    evals = history.dropna(subset=["eval_log_loss"])
    assert history.attrs["stopped_early"] and len(evals) < 200
    assert len(evals) - history.attrs["best_epoch"] == 3
    kept = apply_temperature(predict_logits_from_embeddings(head, x_eval), 1.0)
    assert log_loss(pd.Series(y_eval).to_numpy(), kept.to_numpy()) == pytest.approx(evals["eval_log_loss"].min())


def test_fit_head_early_stopping_needs_eval_data():
    from conserviz_utils.course.features import fit_head

    with pytest.raises(TrainingError, match="early stopping watches the eval log loss"):
        fit_head(nn.Linear(4, 8), np.zeros((8, 4), "float32"), list(SPECIES), early_stopping=2)
