"""No pass twice: notebooks 05 and 06 reuse notebook 04's embeddings for a head-only model, and
read their own cached logits on a rerun, but never for other weights or other data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import conserviz_utils.course as course
from conserviz_utils.runtime.checkpoint import load_checkpoint
from conserviz_utils.course.predictions import (
    cached_logits,
    find_cached_embeddings,
    read_logits,
    uses_frozen_backbone,
)
from conserviz_utils.course.embeddings import weights_fingerprint
from conserviz_utils.course.provenance import read_sidecar
from conserviz_utils.course.settings import CourseSettings
from conserviz_utils.course.steps import embedding_transform
from conserviz_utils.inference import predict_logits

FAST = {"epochs": 0, "head_epochs": 3, "batch_size": 16}


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """File digests and precision decisions go to a folder of this module, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONSERVIZ_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def trained(sample_dir, tmp_path_factory):
    """Notebooks 04 and 06's output for the sample, made once: a head-only model, its embeddings, test logits.

    Returns:
        (settings, the forward passes the first ``test_logits`` call made).
    """
    settings = CourseSettings(data_dir=sample_dir, output_dir=tmp_path_factory.mktemp("trained") / "outputs", **FAST)
    data = course.load_course_data(settings, verbose=False)
    split = course.ensure_splits(data, settings)
    model, checkpoint = load_checkpoint(course.ensure_checkpoint(data, split, settings))
    forwards = Forwards(model)
    course.test_logits(model, checkpoint, data, settings, progress=False)
    return settings, forwards


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained outputs (with 04's embeddings cache), its data, split and reloaded model."""
    trained_settings, _ = trained
    shutil.copytree(trained_settings.output_dir, tmp_path / "outputs")
    settings = CourseSettings(data_dir=trained_settings.data_dir, output_dir=tmp_path / "outputs", **FAST)
    data = course.load_course_data(settings, verbose=False)
    split = course.ensure_splits(data, settings)
    model, checkpoint = load_checkpoint(settings.artifacts.checkpoint)
    return settings, data, split, model, checkpoint


class Forwards:
    """Counts the forward passes of the backbone and of the head."""

    def __init__(self, model) -> None:
        self.backbone = self.head = 0
        model.backbone.register_forward_hook(lambda *_: self.count("backbone"))
        model.head.register_forward_hook(lambda *_: self.count("head"))

    def count(self, part: str) -> None:
        setattr(self, part, getattr(self, part) + 1)

    def reset(self) -> None:
        self.backbone = self.head = 0


def test_eval_logits_of_a_head_only_model_reuse_the_embeddings_of_notebook_04(run):
    settings, data, split, model, checkpoint = run
    assert uses_frozen_backbone(checkpoint)
    forwards = Forwards(model)
    logits = course.eval_logits(model, checkpoint, data, split, settings, progress=False)
    assert forwards.backbone == 0 and forwards.head > 0  # the head over cached embeddings only
    assert list(logits.index) == list(split.eval) and list(logits.columns) == data.species
    assert read_sidecar(settings.artifacts.eval_logits)["extra"]["how"] == "the head over cached embeddings"

    forwards.reset()
    again = course.eval_logits(model, checkpoint, data, split, settings, progress=False)
    assert forwards.backbone == 0 and forwards.head == 0  # read from outputs/predictions
    pd.testing.assert_frame_equal(again, logits)

    # The same numbers as the whole model over the images (the pass they save), in the precision
    # the embeddings were computed in (measured on a CPU: bf16 where it is faster).
    entry = find_cached_embeddings(model, data.train_features, split.eval, cache_dir=settings.artifacts.features,
                                   transform=embedding_transform(model.arch))
    precision = json.loads(entry.path.with_suffix(".json").read_text())["precision"]
    images = predict_logits(model, course.prediction_loader(model, data.train_features.loc[split.eval], settings),
                            precision=precision, progress=False)
    np.testing.assert_allclose(logits.to_numpy(), images.loc[logits.index].to_numpy(),
                               atol=1e-4 if precision == "fp32" else 0.05)


def test_a_fine_tuned_model_predicts_once_then_reads_its_cached_logits(run):
    settings, data, split, model, checkpoint = run
    with torch.no_grad():
        next(model.backbone.parameters()).mul_(1.01)  # fine-tuning changed the backbone
    tuned = {**checkpoint, "extra": {**checkpoint["extra"], "stage": "fine-tuned"}}
    forwards = Forwards(model)
    logits = course.eval_logits(model, tuned, data, split, settings, progress=False)
    assert forwards.backbone > 0
    assert read_sidecar(settings.artifacts.eval_logits)["extra"]["how"] == "the model over the images"
    forwards.reset()
    pd.testing.assert_frame_equal(course.eval_logits(model, tuned, data, split, settings, progress=False), logits)
    assert forwards.backbone == 0 and forwards.head == 0


def test_cached_logits_are_not_read_for_other_weights(run, capsys):
    settings, data, split, model, checkpoint = run
    first = course.eval_logits(model, checkpoint, data, split, settings, progress=False)
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.mul_(-1.0)  # a new head: the old logits no longer apply
    forwards = Forwards(model)
    second = course.eval_logits(model, checkpoint, data, split, settings, progress=False)
    assert "eval_logits.csv was made with other settings (model weights:" in capsys.readouterr().out
    assert forwards.head > 0 and not np.allclose(first.to_numpy(), second.to_numpy())
    assert read_sidecar(settings.artifacts.eval_logits)["settings"]["model weights"] == weights_fingerprint(model)


def test_test_logits_embed_the_test_images_once(trained, run):
    _, first_call = trained
    assert first_call.backbone > 0 and first_call.head > 0  # the first call embedded the test images
    settings, data, _, model, checkpoint = run
    forwards = Forwards(model)
    logits = course.test_logits(model, checkpoint, data, settings, progress=False)
    assert forwards.backbone == 0 and forwards.head == 0  # a rerun reads outputs/predictions
    assert list(logits.index) == list(data.test_features.index) and list(logits.columns) == data.species
    # Without the logits file, the test embeddings cached on the first call still spare the pass.
    settings.artifacts.test_logits.unlink()
    again = course.test_logits(model, checkpoint, data, settings, progress=False)
    assert forwards.backbone == 0 and forwards.head > 0
    np.testing.assert_allclose(again.to_numpy(), logits.to_numpy(), rtol=0, atol=1e-12)


def test_a_changed_test_image_is_predicted_again(run, tmp_path, capsys):
    settings, _, _, model, checkpoint = run
    copy = tmp_path / "data"
    shutil.copytree(settings.data_dir, copy)
    moved = CourseSettings(data_dir=copy, output_dir=settings.output_dir, **FAST)
    copied = course.load_course_data(moved, verbose=False)
    forwards = Forwards(model)
    course.test_logits(model, checkpoint, copied, moved, progress=False)
    assert forwards.head == 0  # a copy of the same data in another folder: the same fingerprint, reused
    first, second = copied.test_features["path"].iloc[:2]
    shutil.copyfile(second, first)  # one test image replaced by another
    course.test_logits(model, checkpoint, course.load_course_data(moved, verbose=False), moved, progress=False)
    assert "test_logits.csv was made from other data" in capsys.readouterr().out
    assert forwards.backbone > 0


def test_find_cached_embeddings_needs_the_same_images_and_backbone(run, tmp_path):
    settings, data, split, model, _ = run
    transform = embedding_transform(model.arch)
    found = find_cached_embeddings(model, data.train_features, split.eval, cache_dir=settings.artifacts.features,
                                   transform=transform)
    assert found is not None and list(found.ids) == list(split.eval)
    # An image of the cached entry changed on disk: the entry no longer holds its embedding.
    copy = tmp_path / "data"
    shutil.copytree(settings.data_dir, copy)
    copied = course.load_course_data(CourseSettings(data_dir=copy), verbose=False)
    changed = copied.train_features.loc[split.eval[0], "path"]
    with open(changed, "ab") as handle:
        handle.write(b"\0")
    same_paths = data.train_features.assign(path=copied.train_features["path"])
    assert find_cached_embeddings(model, same_paths, split.eval, cache_dir=settings.artifacts.features,
                                  transform=transform) is None
    with torch.no_grad():
        next(model.backbone.parameters()).add_(0.01)  # another backbone
    assert find_cached_embeddings(model, data.train_features, split.eval, cache_dir=settings.artifacts.features,
                                  transform=transform) is None


def test_logits_round_trip_exactly_and_skipped_images_are_not_cached(run, tmp_path):
    _, data, split, model, _ = run
    ids = split.eval
    values = np.random.default_rng(0).normal(size=(len(ids), len(data.species))) * 1e3
    logits = pd.DataFrame(values, index=pd.Index(ids, name="id"), columns=data.species)
    path = tmp_path / "logits.csv"
    written = cached_logits(path, model, data, "train", ids, data.species, lambda: (logits, "made up"), say=None)
    read = read_logits(path, ids, data.species)
    assert read is not None and np.array_equal(read.to_numpy(), values) and written is logits
    assert read_logits(path, ids[::-1], data.species) is None  # other rows: not these logits

    partial = logits.iloc[1:].copy()
    partial.attrs["skipped"] = [(str(ids[0]), "unreadable")]
    other = tmp_path / "partial.csv"
    cached_logits(other, model, data, "train", ids, data.species, lambda: (partial, "made up"), say=None)
    assert not other.exists()


def test_notebook_05_reads_the_eval_logits_fit_computed_at_the_kept_epoch(run):
    import copy

    from conserviz_utils.course.recipe import Recipe
    from conserviz_utils.course.results import save_course_checkpoint
    from conserviz_utils.course.steps import fine_tune, keep_better_stage, make_loaders

    settings, data, split, model, _ = run
    settings.artifacts.eval_logits.unlink(missing_ok=True)
    recipe = Recipe.from_settings(settings).replace(fine_tune_epochs=1, max_train_images=64)
    head_state = copy.deepcopy(model.state_dict())
    train_loader, eval_loader = make_loaders(data, split, recipe, model, image_cache=settings.artifacts.images)
    history = fine_tune(model, train_loader, eval_loader, recipe, progress=False)
    choice = keep_better_stage(model, head_state, float("inf"), history)  # keep the fine-tuned stage
    assert choice.stage == "fine-tuned" and len(choice.eval_logits["ids"]) == len(split.eval)
    save_course_checkpoint(model, choice, data, split, settings, recipe)
    assert settings.artifacts.eval_logits.is_file()  # written by 04, before 05 runs

    reloaded, checkpoint = load_checkpoint(settings.artifacts.checkpoint)
    forwards = Forwards(reloaded)
    logits = course.eval_logits(reloaded, checkpoint, data, split, settings, progress=False)
    assert forwards.backbone == 0 and forwards.head == 0  # no pass over the eval images
    assert read_sidecar(settings.artifacts.eval_logits)["extra"]["how"].startswith("fit's evaluation at the kept epoch")
    assert logits.attrs["how"].startswith("read from eval_logits.csv (fit's evaluation at the kept epoch")
    assert list(logits.index) == list(split.eval) and list(logits.columns) == data.species
    # The very numbers the reloaded model gives over the images, in fit's precision.
    precision = history.attrs["precision"]
    images = predict_logits(reloaded, course.prediction_loader(reloaded, data.train_features.loc[split.eval], settings),
                            precision=precision, progress=False)
    np.testing.assert_allclose(logits.to_numpy(), images.loc[logits.index].to_numpy(),
                               atol=1e-4 if precision == "fp32" else 0.05)


def test_eval_logits_that_miss_an_eval_image_are_not_kept(run):
    from conserviz_utils.course.results import keep_eval_logits

    settings, data, split, model, _ = run
    settings.artifacts.eval_logits.unlink(missing_ok=True)
    ids = [str(i) for i in split.eval]
    values = np.zeros((len(ids), len(data.species))).tolist()
    whole = {"ids": ids, "columns": list(data.species), "values": values}
    short = {"ids": ids[1:], "columns": list(data.species), "values": values[1:]}  # an unreadable image skipped
    assert keep_eval_logits(model, short, data, split, settings) is None
    assert not settings.artifacts.eval_logits.exists()
    other_species = {**whole, "columns": list(reversed(data.species))}
    assert keep_eval_logits(model, other_species, data, split, settings) is None
    assert keep_eval_logits(model, whole, data, split, settings) == settings.artifacts.eval_logits
