"""The notebooks' glue: settings from the environment, shared artifacts rebuilt when missing."""

from __future__ import annotations

import pandas as pd
import pytest

from conserviz_utils.course import (
    CourseSettings,
    ensure_splits,
    load_course_data,
    training_ids,
)
from conserviz_utils.split import load_splits, save_splits


def test_defaults_are_for_a_real_run():
    settings = CourseSettings.from_env({})
    assert not settings.quick
    assert settings.arch == "efficientnet_lite0"
    assert settings.max_train_images is None
    assert settings.artifacts.checkpoint.name == "model.pt"


def test_quick_mode_shrinks_the_run_and_variables_override(tmp_path):
    env = {"CONSERVIZ_QUICK": "1", "CONSERVIZ_EPOCHS": "3", "CONSERVIZ_OUTPUTS": str(tmp_path)}
    settings = CourseSettings.from_env(env)
    assert settings.quick and settings.epochs == 3 and settings.max_train_images == 240
    assert settings.artifacts.splits == tmp_path / "splits.csv"


def test_a_setting_that_is_not_a_number_names_the_variable_and_the_fix():
    with pytest.raises(ValueError, match="CONSERVIZ_BATCH_SIZE='big'.*Fix"):
        CourseSettings.from_env({"CONSERVIZ_BATCH_SIZE": "big"})


def test_training_ids_cap_is_a_seeded_subset():
    ids = pd.Index([f"ZJ{i:06d}" for i in range(100)], name="id")
    settings = CourseSettings.from_env({"CONSERVIZ_MAX_TRAIN_IMAGES": "10"})
    capped = training_ids(ids, settings)
    assert len(capped) == 10 and capped.isin(ids).all()
    assert capped.equals(training_ids(ids, settings))
    assert training_ids(ids, CourseSettings.from_env({})).equals(ids)


@pytest.fixture
def course(sample_dir, tmp_path):
    settings = CourseSettings(data_dir=sample_dir, output_dir=tmp_path / "outputs")
    return load_course_data(settings, verbose=False), settings


def test_ensure_splits_builds_a_site_split_and_reuses_the_saved_one(course):
    data, settings = course
    train_ids, eval_ids = ensure_splits(data, settings)
    assert settings.artifacts.splits.is_file()
    sites = data.train_features["site"]
    assert set(sites[train_ids]).isdisjoint(sites[eval_ids])
    # A saved split (e.g. edited in notebook 02) is what the later notebooks get.
    save_splits(settings.artifacts.splits, eval_ids, train_ids)
    assert ensure_splits(data, settings)[0].equals(load_splits(settings.artifacts.splits)[0])


def test_ensure_splits_replaces_a_split_saved_for_other_data(course):
    data, settings = course
    other = pd.Index(["ZJ999998", "ZJ999999"], name="id")
    save_splits(settings.artifacts.splits, other[:1], other[1:])
    train_ids, eval_ids = ensure_splits(data, settings)
    assert len(train_ids) + len(eval_ids) == len(data.train_features)


def test_later_notebooks_rebuild_the_model_and_metrics_when_04_was_skipped(course):
    from conserviz_utils.course import ensure_checkpoint, ensure_metrics

    data, settings = course
    settings = CourseSettings(
        data_dir=settings.data_dir, output_dir=settings.output_dir,
        epochs=1, head_epochs=3, max_train_images=32, batch_size=16,
    )
    splits = ensure_splits(data, settings)
    checkpoint = ensure_checkpoint(data, splits, settings)
    assert checkpoint.is_file()
    metrics = ensure_metrics(data, splits, settings)
    assert metrics["eval_images"] == len(splits[1])
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["temperature"] > 0
    assert metrics["uniform_log_loss"] == pytest.approx(2.0794, abs=1e-3)
    # Saved, and reused while the checkpoint is unchanged.
    assert settings.artifacts.metrics.is_file()
    assert ensure_metrics(data, splits, settings) == metrics


def test_run_notebooks_executes_in_order_and_keeps_a_failed_copy(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from conserviz_utils.course import run_notebooks

    nbformat.write(new_notebook(cells=[new_code_cell("open('ran', 'w').write('yes')")]), tmp_path / "a.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("1 / 0")]), tmp_path / "b.ipynb")
    executed = tmp_path / "executed"
    timings = run_notebooks(tmp_path, executed, names=("a",))
    assert [name for name, _ in timings] == ["a"]
    assert (tmp_path / "ran").read_text() == "yes"  # the kernel runs in the notebooks' folder
    with pytest.raises(SystemExit, match="b.ipynb failed"):
        run_notebooks(tmp_path, executed, names=("b",))
    failed = nbformat.read(executed / "b.ipynb", as_version=4)
    assert failed.cells[0].outputs[0]["ename"] == "ZeroDivisionError"
