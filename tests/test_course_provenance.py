"""The course's artifacts know what they were made from: a data switch, an arch switch or an edited
label under one output folder rebuilds what no longer applies, and never mixes old and new."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

import conserviz_utils.course as course
from conserviz_utils.course import results
from conserviz_utils.runtime.checkpoint import load_checkpoint
from conserviz_utils.errors import DataValidationError
from conserviz_utils.metrics import apply_temperature
from conserviz_utils.course.provenance import artifact_fingerprint, read_sidecar, sidecar_path
from conserviz_utils.course.recipe import Recipe
from conserviz_utils.tools.sample import generate_sample
from conserviz_utils.course.settings import CourseSettings
from conserviz_utils.course.splits import EVAL_SHARE
from conserviz_utils.course.steps import StageChoice
from conserviz_utils.split import save_splits, split_by_site
from conserviz_utils.submission import make_submission

# Head only (no fine-tuning), three head epochs: a model in seconds.
FAST = {"epochs": 0, "head_epochs": 3, "batch_size": 16}


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """File digests and precision decisions go to a folder of this module, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONSERVIZ_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def other_sample(tmp_path_factory):
    """A second tiny sample drawn with another seed: the same ids, other sites, labels and pixels."""
    out = tmp_path_factory.mktemp("other") / "sample"
    generate_sample(out, n_train=160, n_test=40, seed=1, image_scale=0.25, progress=False)
    return out


@pytest.fixture(scope="module")
def data_dir(sample_dir, tmp_path_factory):
    """This module's copy of the sample (a test edits a label in it, and puts it back)."""
    copy = tmp_path_factory.mktemp("data") / "sample"
    shutil.copytree(sample_dir, copy)
    return copy


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """Notebooks 02-05's artifacts for the sample, made once: split, head-only model, metrics."""
    settings = CourseSettings(data_dir=data_dir, output_dir=tmp_path_factory.mktemp("trained") / "outputs", **FAST)
    data = course.load_course_data(settings, verbose=False)
    split = course.ensure_splits(data, settings)
    course.ensure_metrics(data, split, settings)
    return settings


@pytest.fixture
def outputs(trained, tmp_path):
    """A copy of the trained output folder that a test may change (the sample itself is shared)."""
    shutil.copytree(trained.output_dir, tmp_path / "outputs")
    return CourseSettings(data_dir=trained.data_dir, output_dir=tmp_path / "outputs", **FAST)


@pytest.fixture
def trainings(monkeypatch):
    """Counts the trainings of the default recipe (each still runs for real)."""
    calls = []
    real = results.train_default_recipe

    def counting(*args, **kwargs):
        calls.append(kwargs.get("recipe"))
        return real(*args, **kwargs)

    monkeypatch.setattr(results, "train_default_recipe", counting)  # where ensure_checkpoint finds it
    return calls


def test_every_artifact_has_a_provenance_record_naming_its_data(trained):
    artifacts = trained.artifacts
    for path, part in ((artifacts.splits, "labels"), (artifacts.checkpoint, "train"), (artifacts.metrics, "train")):
        record = read_sidecar(path)
        assert record is not None, f"{path.name} has no sidecar"
        assert record["data"]["part"] == part and record["data"]["root"] == str(trained.data_dir)
        assert record["artifact_digest"] == artifact_fingerprint(path)
    checkpoint = read_sidecar(artifacts.checkpoint)
    assert checkpoint["settings"]["arch"] == "efficientnet_lite0" and checkpoint["settings"]["pretrained"] is True
    assert checkpoint["extra"]["stage"] == "head-only"
    assert read_sidecar(artifacts.metrics)["inputs"] == {"model.pt": artifact_fingerprint(artifacts.checkpoint)}


def test_reruns_reuse_everything_while_it_still_applies(outputs, trainings, capsys):
    data = course.load_course_data(outputs, verbose=False)
    split = course.ensure_splits(data, outputs)
    before = artifact_fingerprint(outputs.artifacts.metrics)
    course.ensure_metrics(data, split, outputs)
    assert trainings == [] and capsys.readouterr().out == ""
    assert artifact_fingerprint(outputs.artifacts.metrics) == before


def test_a_data_switch_under_one_output_folder_rebuilds_splits_checkpoint_and_metrics(
    outputs, other_sample, trainings, capsys
):
    old_checkpoint = artifact_fingerprint(outputs.artifacts.checkpoint)
    switched = CourseSettings(data_dir=other_sample, output_dir=outputs.output_dir, **FAST)
    data = course.load_course_data(switched, verbose=False)

    split = course.ensure_splits(data, switched)
    said = capsys.readouterr().out
    assert "splits.csv was made from other data" in said and "drawing the site split again" in said
    metrics = course.ensure_metrics(data, split, switched)
    said = capsys.readouterr().out
    assert "model.pt was made from other data" in said and "retraining" in said
    assert len(trainings) == 1

    assert artifact_fingerprint(switched.artifacts.checkpoint) != old_checkpoint
    for path in (switched.artifacts.splits, switched.artifacts.checkpoint, switched.artifacts.metrics):
        assert read_sidecar(path)["data"]["root"] == str(other_sample)
    assert metrics["eval_images"] == len(split.eval)
    assert json.loads(switched.artifacts.metrics.read_text()) == metrics
    # Switching back rebuilds again: the folder holds one data's artifacts at a time, never a mix.
    back = course.load_course_data(outputs, verbose=False)
    course.ensure_metrics(back, course.ensure_splits(back, outputs), outputs)
    assert len(trainings) == 2 and read_sidecar(outputs.artifacts.checkpoint)["data"]["root"] == str(outputs.data_dir)


def test_two_datasets_sharing_ids_do_not_reuse_splits(outputs, other_sample):
    first = course.load_course_data(outputs, verbose=False)
    second = course.load_course_data(CourseSettings(data_dir=other_sample), verbose=False)
    assert first.train_features.index.equals(second.train_features.index)  # the premise: same ids
    assert not first.train_features["site"].equals(second.train_features["site"])

    switched = CourseSettings(data_dir=other_sample, output_dir=outputs.output_dir, **FAST)
    split = course.ensure_splits(second, switched, verbose=False)
    sites = second.train_features["site"]
    assert set(sites[split.train]).isdisjoint(sites[split.eval])  # the old split put sites on both sides
    expected = split_by_site(second.train_features, second.train_labels, test_size=EVAL_SHARE, seed=0)
    assert split.eval.sort_values().equals(expected.eval.sort_values())


def test_an_arch_switch_retrains(outputs, trainings, capsys):
    data = course.load_course_data(outputs, verbose=False)
    split = course.ensure_splits(data, outputs)
    other_arch = CourseSettings(data_dir=outputs.data_dir, output_dir=outputs.output_dir, arch="mobilenet_v3_large",
                                **FAST)
    path = course.ensure_checkpoint(data, split, other_arch, pretrained=False)  # no offline weights for it
    said = capsys.readouterr().out
    assert "model.pt was made with other settings (arch: efficientnet_lite0 → mobilenet_v3_large" in said
    assert len(trainings) == 1
    _, payload = load_checkpoint(path)
    assert payload["arch"] == "mobilenet_v3_large"
    course.ensure_checkpoint(data, split, other_arch, pretrained=False)
    assert len(trainings) == 1  # and now it is reused


def test_an_edited_label_retrains_and_rescores(outputs, trainings, capsys):
    data = course.load_course_data(outputs, verbose=False)
    labels_csv = outputs.data_dir / "train_labels.csv"
    original = labels_csv.read_bytes()
    split = course.ensure_splits(data, outputs)
    labels = pd.read_csv(labels_csv, dtype={"id": str}).set_index("id")
    first = split.train[0]
    species = labels.columns[labels.loc[first].to_numpy().argmax()]
    other = labels.columns[0] if species != labels.columns[0] else labels.columns[1]
    labels.loc[first, species], labels.loc[first, other] = 0.0, 1.0  # relabelled as another species
    try:
        labels.to_csv(labels_csv)
        edited = course.load_course_data(outputs, verbose=False)
        split = course.ensure_splits(edited, outputs, verbose=False)
        course.ensure_metrics(edited, split, outputs)
        said = capsys.readouterr().out
    finally:
        labels_csv.write_bytes(original)  # the other tests share this copy of the sample
    assert f"model.pt was made from other data: the data in {outputs.data_dir} has changed" in said
    assert "metrics.json was made from other data" in said or "metrics.json was made from another model.pt" in said
    assert len(trainings) == 1


def test_a_model_trained_with_a_changed_learning_rate_is_kept_unless_the_recipe_is_asked_for(outputs, trainings, capsys):
    data = course.load_course_data(outputs, verbose=False)
    split = course.ensure_splits(data, outputs)
    custom = Recipe.from_settings(outputs).replace(head_lr=3e-3)
    course.ensure_checkpoint(data, split, outputs, recipe=custom)  # as notebook 04 would, with its own rate
    assert len(trainings) == 1 and "trained with another recipe (head_lr differ)" in capsys.readouterr().out
    # Notebook 05 asks for the settings' model: the learner's learning rate is theirs to keep.
    course.ensure_checkpoint(data, split, outputs)
    course.ensure_checkpoint(data, split, outputs, recipe=custom)
    assert len(trainings) == 1
    assert read_sidecar(outputs.artifacts.checkpoint)["extra"]["recipe"]["head_lr"] == 3e-3


def test_the_fields_the_settings_decide_are_the_ones_compared():
    changed = CourseSettings(arch="mobilenet_v3_large", epochs=3, head_epochs=7, batch_size=8, seed=4,
                             max_train_images=100)
    defaults, from_settings = Recipe().to_dict(), Recipe.from_settings(changed).to_dict()
    assert {k for k in defaults if defaults[k] != from_settings[k]} == set(results.SETTINGS_RECIPE_FIELDS)


@pytest.mark.parametrize("content", ["", "{\"log_loss\": 1.2", "[1, 2]"])
def test_a_metrics_file_that_cannot_be_used_is_computed_again(outputs, trainings, capsys, content):
    data = course.load_course_data(outputs, verbose=False)
    split = course.ensure_splits(data, outputs)
    good = json.loads(outputs.artifacts.metrics.read_text())
    outputs.artifacts.metrics.write_text(content)  # e.g. cut short by a full disk
    metrics = course.ensure_metrics(data, split, outputs)
    assert "metrics.json was changed after its provenance record was written; computing it again" in (
        capsys.readouterr().out
    )
    assert metrics == pytest.approx(good) and trainings == []
    assert json.loads(outputs.artifacts.metrics.read_text()) == metrics


def test_metrics_of_another_checkpoint_are_computed_again(outputs, capsys):
    data = course.load_course_data(outputs, verbose=False)
    split = course.ensure_splits(data, outputs)
    model, _ = load_checkpoint(outputs.artifacts.checkpoint)
    for parameter in model.head.parameters():
        parameter.data.mul_(-1.0)  # another model for the same data and settings (as a rerun of 04 gives)
    choice = StageChoice("head-only", 1.0, None)
    course.save_course_checkpoint(model, choice, data, split, outputs, Recipe.from_settings(outputs))
    course.ensure_metrics(data, split, outputs)
    said = capsys.readouterr().out
    assert "metrics.json was made from another model.pt; computing it again" in said


def test_a_splits_file_without_a_record_is_drawn_again(outputs, capsys):
    data = course.load_course_data(outputs, verbose=False)
    sidecar_path(outputs.artifacts.splits).unlink()  # e.g. written by an older conserviz
    course.ensure_splits(data, outputs)
    assert "splits.csv has no provenance record" in capsys.readouterr().out
    assert read_sidecar(outputs.artifacts.splits) is not None


def test_a_split_edited_by_hand_is_kept_and_a_broken_edit_refused(outputs, capsys):
    data = course.load_course_data(outputs, verbose=False)
    split = course.ensure_splits(data, outputs)
    moved = split.eval[:1]
    save_splits(outputs.artifacts.splits, split.train.append(moved), split.eval[1:])  # moved one image
    kept = course.ensure_splits(data, outputs)
    assert "was edited after notebook 02 saved it; using the edited split" in capsys.readouterr().out
    assert moved[0] in kept.train and len(kept.eval) == len(split.eval) - 1
    # Dropping an image from both sides is not a split of this data: refused, not silently redrawn.
    save_splits(outputs.artifacts.splits, kept.train[1:], kept.eval)
    with pytest.raises(DataValidationError, match="edited after it was saved.*on neither side") as caught:
        course.ensure_splits(data, outputs)
    assert caught.value.rows == [kept.train[0]] and "delete splits.csv" in caught.value.fix


def test_the_submission_sidecar_names_checkpoint_temperature_and_data(outputs):
    data = course.load_course_data(outputs, verbose=False)
    split = course.ensure_splits(data, outputs)
    temperature = course.ensure_metrics(data, split, outputs)["temperature"]
    model, payload = load_checkpoint(outputs.artifacts.checkpoint)
    probs = apply_temperature(course.test_logits(model, payload, data, outputs, progress=False), temperature)
    path = course.save_submission(make_submission(probs, data.submission_format), data, outputs,
                                  temperature=temperature, checkpoint=payload)
    record = read_sidecar(path)
    assert record["extra"]["temperature"] == pytest.approx(temperature)
    assert record["extra"]["checkpoint"]["path"] == str(outputs.artifacts.checkpoint)
    assert record["extra"]["checkpoint"]["digest"] == artifact_fingerprint(outputs.artifacts.checkpoint)
    assert record["extra"]["checkpoint"]["arch"] == "efficientnet_lite0"
    assert record["extra"]["checkpoint"]["stage"] == "head-only"
    assert record["extra"]["data"] == "sample, 160 train + 40 test images"
    assert record["data"]["part"] == "test" and record["data"]["root"] == str(outputs.data_dir)
    assert record["artifact_digest"] == artifact_fingerprint(path)


def test_loading_the_course_data_removes_leftovers_of_killed_runs(outputs):
    dead = 2**22 + 12345  # above any pid this machine hands out
    leftover = outputs.output_dir / "features" / f"efficientnet_lite0-abc.npy.{dead}.partial"
    leftover.write_bytes(b"\0" * 64)
    temp = outputs.output_dir / f".conserviz-model.pt.{dead}-0a1b.tmp"
    temp.write_bytes(b"\0" * 64)
    live = outputs.output_dir / f".conserviz-model.pt.{os.getpid()}-0a1b.tmp"
    live.write_bytes(b"\0" * 64)
    course.load_course_data(outputs, verbose=False)
    assert not leftover.exists() and not temp.exists()
    assert live.exists()  # this process is alive: its temp file may still be in use
