"""The notebooks' shared steps: splits, training set checks, the head's honest early stopping,
keeping the better stage, and the artifacts later notebooks rebuild when missing."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conserviz_utils import SPECIES
from conserviz_utils.course.embeddings import Embeddings
from conserviz_utils.course.results import ensure_checkpoint, ensure_metrics, save_metrics, train_default_recipe
from conserviz_utils.course.splits import ensure_splits, load_course_data
from conserviz_utils.course.steps import (
    check_training_set,
    compare_splits,
    fine_tune,
    holdout_split,
    keep_better_stage,
    make_optimizer,
    score_head,
    train_head,
    training_ids,
)
from conserviz_utils.errors import DataValidationError
from conserviz_utils.course.recipe import Recipe
from conserviz_utils.course.settings import CourseSettings
from conserviz_utils.split import Split, load_splits, save_splits, split_stratified


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """File digests (provenance) and precision decisions go to this module's folder, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONSERVIZ_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def one_hot(names, ids) -> pd.DataFrame:
    frame = pd.DataFrame(0, index=pd.Index(ids, name="id"), columns=list(SPECIES))
    for row, name in zip(ids, names, strict=True):
        frame.loc[row, name] = 1
    return frame


def balanced_labels(n: int) -> pd.DataFrame:
    ids = [f"ZJ{i:06d}" for i in range(n)]
    return one_hot([SPECIES[i % len(SPECIES)] for i in range(n)], ids)


def test_training_ids_cap_is_a_seeded_subset():
    labels = balanced_labels(200)
    ids = labels.index
    recipe = Recipe(max_train_images=100)
    capped = training_ids(ids, labels, recipe)
    assert len(capped) == 100 and capped.isin(ids).all()
    assert capped.equals(training_ids(ids, labels, recipe))
    assert not capped.equals(training_ids(ids, labels, recipe.replace(seed=1)))
    assert training_ids(ids, labels, Recipe()).equals(ids)


def test_a_training_set_missing_a_species_is_refused_naming_it():
    labels = balanced_labels(160)
    without_hog = labels[labels["hog"] == 0]
    with pytest.raises(DataValidationError, match="no image of 1 species") as caught:
        check_training_set(without_hog)
    assert caught.value.rows == ["hog"] and "CONSERVIZ_MAX_TRAIN_IMAGES" in caught.value.fix
    with pytest.raises(DataValidationError, match="no image of 1 species"):
        training_ids(without_hog.index, labels, Recipe())


def test_a_training_set_too_small_to_learn_from_is_refused():
    labels = balanced_labels(200)
    check_training_set(labels.iloc[:64])  # 8 per species: the least accepted
    with pytest.raises(DataValidationError, match="56 training images are too few.*at least 64"):
        check_training_set(labels.iloc[:56])
    with pytest.raises(DataValidationError, match="too few"):
        training_ids(labels.index, labels, Recipe(max_train_images=40))


@pytest.fixture
def course(sample_dir, tmp_path):
    settings = CourseSettings(data_dir=sample_dir, output_dir=tmp_path / "outputs")
    return load_course_data(settings, verbose=False), settings


def test_ensure_splits_builds_a_site_split_and_reuses_the_saved_one(course):
    data, settings = course
    split = ensure_splits(data, settings)
    assert isinstance(split, Split) and settings.artifacts.splits.is_file()
    sites = data.train_features["site"]
    assert set(sites[split.train]).isdisjoint(sites[split.eval])
    # A saved split (e.g. edited in notebook 02) is what the later notebooks get.
    save_splits(settings.artifacts.splits, split.eval, split.train)
    assert ensure_splits(data, settings).train.equals(load_splits(settings.artifacts.splits).train)


def test_ensure_splits_replaces_a_split_saved_for_other_data(course):
    data, settings = course
    other = pd.Index(["ZJ999998", "ZJ999999"], name="id")
    save_splits(settings.artifacts.splits, other[:1], other[1:])
    train_ids, eval_ids = ensure_splits(data, settings)
    assert len(train_ids) + len(eval_ids) == len(data.train_features)


def test_the_early_stopping_holdout_is_whole_training_sites_and_never_eval(course):
    data, settings = course
    split = ensure_splits(data, settings)
    fit_ids, watch_ids = holdout_split(data, split.train, Recipe())
    sites = data.train_features["site"]
    assert fit_ids.union(watch_ids).sort_values().equals(split.train.sort_values())
    assert set(sites[fit_ids]).isdisjoint(sites[watch_ids])
    assert not watch_ids.isin(split.eval).any()
    stratified = holdout_split(data, split.train, Recipe(), by_site=False)
    assert stratified.train.union(stratified.eval).sort_values().equals(split.train.sort_values())


class TinyModel(nn.Module):
    """Stands in for a ConservizNet: only ``.head`` is used by the fast path."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(dim, len(SPECIES))


def fake_embeddings(data, dim: int = 16, seed: int = 0) -> Embeddings:
    """Embeddings with some label signal, so a head learns something within a few epochs."""
    rng = np.random.default_rng(seed)
    labels = data.train_labels.loc[data.train_features.index].to_numpy(dtype=np.float32)
    values = rng.normal(size=(len(labels), dim)).astype(np.float32)
    values[:, : len(SPECIES)] += 1.5 * labels
    return Embeddings(ids=data.train_features.index, values=values)


def test_the_head_never_watches_the_eval_images(course):
    data, settings = course
    split = ensure_splits(data, settings)
    embeddings = fake_embeddings(data)
    recipe = Recipe(head_epochs=8, head_patience=2)

    first = TinyModel(16)
    history = train_head(first.head, embeddings, data, split.train, recipe, progress=False)
    # Garble the eval images' embeddings and labels: training must not change at all.
    garbled = embeddings.values.copy()
    garbled[data.train_features.index.get_indexer(split.eval)] = 100.0
    shuffled = data.train_labels.copy()
    shuffled.loc[split.eval] = shuffled.loc[split.eval].iloc[::-1].to_numpy()
    other = dataclasses.replace(data, train_labels=shuffled)
    second = TinyModel(16)
    again = train_head(second.head, Embeddings(ids=embeddings.ids, values=garbled), other, split.train, recipe,
                       progress=False)
    pd.testing.assert_frame_equal(history, again)
    assert torch.equal(first.head.weight, second.head.weight)
    # The eval images are scored only after training, on the kept head.
    scores = score_head(first.head, embeddings, data, split.eval)
    assert 0.0 <= scores["accuracy"] <= 1.0 and np.isfinite(scores["log_loss"])


def test_compare_splits_scores_each_split_on_its_own_eval_side(course):
    data, settings = course
    embeddings = fake_embeddings(data)
    splits = {"random": split_stratified(data.train_labels, test_size=0.25, seed=0),
              "by site": ensure_splits(data, settings)}
    table = compare_splits(TinyModel(16), embeddings, data, splits, Recipe(head_epochs=5))
    assert list(table.index) == ["random", "by site"]
    assert list(table.columns) == ["eval accuracy", "eval log loss"]
    assert np.isfinite(table.to_numpy()).all() and (table["eval log loss"] > 0).all()
    torch.rand(3)  # whatever ran before, the same seed gives the same table
    pd.testing.assert_frame_equal(table, compare_splits(TinyModel(16), embeddings, data, splits, Recipe(head_epochs=5)))


def eval_history(*losses: float) -> pd.DataFrame:
    return pd.DataFrame({"phase": ["eval"] * len(losses), "eval_log_loss": losses})


@pytest.mark.parametrize(
    ("tuned_history", "stage", "tuned_loss"),
    [
        (eval_history(1.2, 0.9), "fine-tuned", 0.9),
        (eval_history(1.1), "head-only", 1.1),
        (eval_history(1.0), "head-only", 1.0),  # a tie keeps the simpler model
        (eval_history(float("nan")), "head-only", None),
        (None, "head-only", None),  # CONSERVIZ_EPOCHS=0: a head-only run
    ],
)
def test_keep_better_stage(tuned_history, stage, tuned_loss):
    model = nn.Linear(2, 2)
    head_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)  # "fine-tuning" moved the weights
    choice = keep_better_stage(model, head_state, 1.0, tuned_history)
    assert choice.stage == stage
    if tuned_loss is None:
        assert choice.fine_tuned_log_loss is None or np.isnan(choice.fine_tuned_log_loss)
    else:
        assert choice.fine_tuned_log_loss == pytest.approx(tuned_loss)
    assert choice.log_loss == pytest.approx(0.9 if stage == "fine-tuned" else 1.0)
    kept_head = torch.equal(model.weight, head_state["weight"])
    assert kept_head == (stage == "head-only")
    assert f"keeping the {stage} model" in str(choice)


def test_save_metrics_is_atomic_and_leaves_no_temp_file(tmp_path):
    settings = CourseSettings(output_dir=tmp_path / "outputs")
    path = save_metrics(settings, {"log_loss": 1.5})
    assert json.loads(path.read_text()) == {"log_loss": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]
    with pytest.raises(TypeError):  # not JSON: refused before the old file is touched
        save_metrics(settings, {"log_loss": object()})
    assert json.loads(path.read_text()) == {"log_loss": 1.5}


@pytest.fixture(scope="module")
def trained(sample_dir, tmp_path_factory):
    """The default recipe run once, small: a real model, one short fine-tuning epoch."""
    out = tmp_path_factory.mktemp("trained")
    settings = CourseSettings(data_dir=sample_dir, output_dir=out / "outputs", epochs=1, head_epochs=3,
                              max_train_images=64, batch_size=16)
    data = load_course_data(settings, verbose=False)
    split = ensure_splits(data, settings)
    return data, split, settings, ensure_checkpoint(data, split, settings)


def test_later_notebooks_rebuild_the_model_and_metrics_when_04_was_skipped(trained):
    data, split, settings, checkpoint = trained
    assert checkpoint.is_file()
    assert Recipe.load(settings.artifacts.recipe) == Recipe.from_settings(settings)  # beside the model
    metrics = ensure_metrics(data, split, settings)
    assert metrics["eval_images"] == len(split.eval)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["temperature"] > 0
    assert metrics["uniform_log_loss"] == pytest.approx(2.0794, abs=1e-3)
    # Saved, and reused while the checkpoint is unchanged.
    assert settings.artifacts.metrics.is_file()
    assert ensure_metrics(data, split, settings) == metrics
    # A metrics file cut short (0 bytes, newer than the model) is computed again, not a crash.
    settings.artifacts.metrics.write_text("")
    assert ensure_metrics(data, split, settings) == pytest.approx(metrics)


def test_a_head_only_run_keeps_the_head_and_saves_its_recipe(trained, tmp_path):
    from conserviz_utils.runtime.checkpoint import load_checkpoint

    data, split, settings, _ = trained
    head_only = CourseSettings(data_dir=settings.data_dir, output_dir=tmp_path / "outputs", epochs=0,
                               head_epochs=3, max_train_images=64, batch_size=16)
    # The embeddings of the same images with the same backbone: reuse the cache, skip the minute.
    shutil.copytree(settings.artifacts.features, head_only.artifacts.features)
    model, histories = train_default_recipe(data, split, head_only, progress=False)
    assert histories["fine_tune"] is None and histories["choice"].stage == "head-only"
    assert not head_only.artifacts.resume.exists()
    assert Recipe.load(head_only.artifacts.recipe).fine_tune_epochs == 0
    reloaded, _ = load_checkpoint(head_only.artifacts.checkpoint)
    saved = reloaded.head.state_dict()
    assert all(torch.equal(saved[name], value) for name, value in model.head.state_dict().items())


def test_python_m_course_still_starts_the_course_runner():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "conserviz_utils.course.steps", "--help"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "conserviz_utils.tools.runner" in done.stdout and "--quick" in done.stdout


# ------------------------------------------------------------------------------------------------
# One function per stage: notebook 04, `make course`, the CLI and torchrun all train through them
# ------------------------------------------------------------------------------------------------

SGD = {"fine_tune_optimizer": "sgd", "fine_tune_lr": 0.02, "fine_tune_weight_decay": 0.0, "fine_tune_patience": 2}


@pytest.fixture
def fit_calls(monkeypatch):
    """Replaces ``train.fit`` (what ``fine_tune`` calls) by a spy that records its arguments and trains nothing."""
    calls = []

    def spy(model, train_loader, eval_loader=None, **kwargs):
        calls.append({"model": model, **kwargs})
        return pd.DataFrame({"phase": ["eval"], "epoch": [1], "eval_log_loss": [0.5]})

    monkeypatch.setattr("conserviz_utils.train.fit", spy)
    return calls


def assert_trained_with(call, recipe: Recipe, model) -> None:
    """``fit`` got ``model`` and the recipe's SGD, rate, weight decay, epochs, patience and seed."""
    optimizer = call["optimizer"]
    assert call["model"] is model
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert group["lr"] == recipe.fine_tune_lr and group["momentum"] == 0.9
    assert group["weight_decay"] == recipe.fine_tune_weight_decay
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.parameters()}
    assert all(p.requires_grad for p in model.parameters())  # unfrozen: every layer learns
    assert (call["epochs"], call["early_stopping"].patience, call["seed"]) == (
        recipe.fine_tune_epochs, recipe.fine_tune_patience, recipe.seed)


def test_make_optimizer_builds_what_the_recipe_names_for_each_stage():
    params = [nn.Parameter(torch.zeros(2))]
    recipe = Recipe(head_lr=0.5, head_weight_decay=0.25, fine_tune_lr=0.01, fine_tune_weight_decay=0.0)
    head = make_optimizer(params, recipe, stage="head")
    assert type(head) is torch.optim.AdamW and head.defaults["lr"] == 0.5 and head.defaults["weight_decay"] == 0.25
    assert type(make_optimizer(params, recipe)) is torch.optim.AdamW
    sgd = make_optimizer(params, recipe.replace(fine_tune_optimizer="sgd"))
    assert type(sgd) is torch.optim.SGD and sgd.defaults["lr"] == 0.01 and sgd.defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown stage 'tail'"):
        make_optimizer(params, recipe, stage="tail")


def test_notebook_04_trains_through_the_shared_stages_and_builds_no_optimizer_itself():
    import nbformat

    from conftest import PROJECT_ROOT

    for path in (PROJECT_ROOT / "notebooks" / "04_train.ipynb", PROJECT_ROOT / "notebooks" / "solutions" / "04_train.ipynb"):
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "fine_tune(model, train_loader, eval_loader, recipe" in code, path
        assert "train_head(model.head, embeddings, data, train_ids, recipe" in code, path
        for own_optimizer in ("torch.optim", "AdamW(", "SGD(", "fit(model"):
            assert own_optimizer not in code, f"{path.name} trains outside fine_tune/train_head: {own_optimizer}"


def test_fine_tune_the_notebook_path_uses_the_recipes_optimizer(fit_calls):
    from conserviz_utils.models import build_model, freeze_backbone

    recipe = Recipe(fine_tune_epochs=2, seed=3, **SGD)
    model = build_model(recipe.arch, pretrained=False)
    freeze_backbone(model)  # as stage 1 leaves it
    fine_tune(model, [], None, recipe, progress=False)
    assert len(fit_calls) == 1
    assert_trained_with(fit_calls[0], recipe, model)


def test_fine_tune_refuses_a_wrapped_model_that_was_wrapped_while_frozen(fit_calls):
    from conserviz_utils.models import build_model, freeze_backbone

    model = freeze_backbone(build_model("efficientnet_lite0", pretrained=False))
    with pytest.raises(ValueError, match="unfreeze.*before wrapping"):
        fine_tune(FakeDDP(model), [], None, Recipe(**SGD), progress=False)
    assert fit_calls == []


def test_train_head_uses_the_recipes_head_optimizer_batch_and_patience(course, monkeypatch):
    data, settings = course
    split = ensure_splits(data, settings)
    calls = []
    monkeypatch.setattr("conserviz_utils.course.features.fit_head",
                        lambda head, *args, **kwargs: calls.append((head, kwargs)) or pd.DataFrame())
    recipe = Recipe(head_lr=0.02, head_weight_decay=0.5, head_batch_size=8, head_epochs=4, head_patience=2, seed=1)
    head = TinyModel(16).head
    train_head(head, fake_embeddings(data), data, split.train, recipe, progress=False)
    (trained, kwargs), = calls
    optimizer = kwargs["optimizer"]
    assert trained is head and type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["lr"] == 0.02 and optimizer.defaults["weight_decay"] == 0.5
    assert (kwargs["epochs"], kwargs["batch_size"], kwargs["early_stopping"], kwargs["seed"]) == (4, 8, 2, 1)


def test_make_course_path_fine_tunes_with_the_recipes_optimizer(trained, tmp_path, fit_calls):
    data, split, settings, _ = trained
    run = CourseSettings(data_dir=settings.data_dir, output_dir=tmp_path / "outputs", epochs=1, head_epochs=3,
                         max_train_images=64, batch_size=16)
    shutil.copytree(settings.artifacts.features, run.artifacts.features)  # the same embeddings: reuse them
    recipe = Recipe.from_settings(run).replace(**SGD)
    model, histories = train_default_recipe(data, split, run, progress=False, recipe=recipe)
    assert len(fit_calls) == 1
    assert_trained_with(fit_calls[0], recipe, model)
    assert histories["choice"].stage == "fine-tuned"  # the spy's 0.5 beats the head


class FakeDDP(nn.parallel.DistributedDataParallel):
    """Stands in for DistributedDataParallel (no process group): ``unwrap_model`` sees through it."""

    def __init__(self, module: nn.Module) -> None:
        nn.Module.__init__(self)
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def cli_fine_tune(sample, out, monkeypatch) -> int:
    """``conserviz train --stage finetune`` with SGD in the recipe, from random weights, quietly."""
    from conserviz_utils.tools import cli

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return cli.main(["train", "--stage", "finetune", "--data", str(sample), "--out", str(out), "--no-pretrained",
                     "--quiet", "--fine-tune-optimizer", "sgd", "--fine-tune-lr", "0.02",
                     "--fine-tune-weight-decay", "0", "--fine-tune-patience", "2", "--device", "cpu"])


def test_the_cli_fine_tunes_with_the_recipes_optimizer(sample_dir, tmp_path, fit_calls, monkeypatch):
    from conserviz_utils.models import ConservizNet

    assert cli_fine_tune(sample_dir, tmp_path / "out", monkeypatch) == 0
    (call,) = fit_calls
    assert isinstance(call["model"], ConservizNet)
    assert_trained_with(call, Recipe.load(tmp_path / "out" / "recipe.json"), call["model"])
    assert Recipe.load(tmp_path / "out" / "recipe.json").fine_tune_optimizer == "sgd"


def test_the_cli_under_torchrun_fine_tunes_the_wrapped_model_through_the_same_stage(
    sample_dir, tmp_path, fit_calls, monkeypatch
):
    from conserviz_utils.runtime import distributed

    wrapped = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # the branch torchrun's processes take
    monkeypatch.setattr(distributed, "wrap_model",
                        lambda model, device, sync_batchnorm=False: wrapped.append(FakeDDP(model)) or wrapped[-1])
    assert cli_fine_tune(sample_dir, tmp_path / "out", monkeypatch) == 0
    (call,) = fit_calls
    assert len(wrapped) == 1 and call["model"] is wrapped[0]  # the wrapped model itself, not a copy
    assert_trained_with(call, Recipe.load(tmp_path / "out" / "recipe.json"), wrapped[0])
    assert str(call["device"]) == "cpu"


@pytest.mark.parametrize("augment", [True, False])
def test_notebook_04s_loader_cell_builds_what_make_loaders_builds(course, augment):
    import types

    import nbformat

    from conftest import PROJECT_ROOT
    from conserviz_utils.course.steps import make_loaders

    data, settings = course
    split = ensure_splits(data, settings)
    recipe = Recipe(augment=augment, batch_size=8)
    cells = nbformat.read(PROJECT_ROOT / "notebooks" / "04_train.ipynb", as_version=4).cells
    cell = next(c for c in cells if c.get("id") == "fine-tune-loaders")
    namespace = {"model": types.SimpleNamespace(arch=recipe.arch), "data": data, "split": split, "recipe": recipe,
                 "settings": settings, "train_ids": training_ids(split.train, data.train_labels, recipe)}
    exec(cell.source, namespace)  # the notebook's own code
    expected = make_loaders(data, split, recipe, namespace["model"], image_cache=settings.artifacts.images)
    for shown, built in zip((namespace["train_loader"], namespace["eval_loader"]), expected, strict=True):
        assert shown.batch_size == built.batch_size
        assert shown.dataset.image_ids == built.dataset.image_ids
        assert repr(shown.dataset.transform) == repr(built.dataset.transform)
        assert repr(shown.dataset.cache) == repr(built.dataset.cache)  # both read the run's image cache
        assert built.dataset.cache.root == settings.artifacts.images
    assert ("RandomResizedCrop" in repr(namespace["train_set"].transform)) == augment


def test_the_fine_tuning_loaders_read_the_images_embed_images_decoded_without_decoding_again(course, monkeypatch):
    import types

    from conserviz_utils.course.steps import cache_images, make_loaders
    from conserviz_utils.files import image_cache

    data, settings = course
    split = ensure_splits(data, settings)
    recipe = Recipe(batch_size=8)
    report = cache_images(data.train_features, recipe.arch, settings, progress=False)
    assert report.built == len(data.train_features) and not report.failed
    assert cache_images(data.train_features, recipe.arch, settings, progress=False).reused == report.total

    def no_decoding(*args, **kwargs):
        raise AssertionError("a JPEG was decoded again")

    monkeypatch.setattr(image_cache, "open_image", no_decoding)
    model = types.SimpleNamespace(arch=recipe.arch)
    train_loader, eval_loader = make_loaders(data, split, recipe, model, image_cache=settings.artifacts.images)
    for loader in (train_loader, eval_loader):
        dataset = loader.dataset
        first, last = dataset[0], dataset[len(dataset) - 1]
        assert first["image"].shape == last["image"].shape == (3, 224, 224)
