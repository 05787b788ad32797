"""Course settings: CONSERVIZ_* variables read, range-checked and explained where they are read."""

from __future__ import annotations

import pytest

from conserviz_utils.errors import ConservizError
from conserviz_utils.course.settings import CourseSettings, SettingsError


def test_defaults_are_for_a_real_run():
    settings = CourseSettings.from_env({})
    assert not settings.quick
    assert settings.arch == "efficientnet_lite0"
    assert settings.epochs == 1 and settings.head_epochs == 30 and settings.batch_size == 32
    assert settings.max_train_images is None
    assert settings.artifacts.checkpoint.name == "model.pt"


def test_quick_mode_shrinks_the_run_and_variables_override(tmp_path):
    env = {"CONSERVIZ_QUICK": "1", "CONSERVIZ_EPOCHS": "3", "CONSERVIZ_OUTPUTS": str(tmp_path)}
    settings = CourseSettings.from_env(env)
    assert settings.quick and settings.epochs == 3 and settings.max_train_images == 240
    assert settings.artifacts.splits == tmp_path / "splits.csv"


def test_the_recipe_is_saved_beside_the_checkpoint(tmp_path):
    artifacts = CourseSettings(output_dir=tmp_path).artifacts
    assert artifacts.recipe.parent == artifacts.checkpoint.parent == tmp_path
    assert artifacts.recipe.suffix == ".json"


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("BATCH_SIZE", "0", "must be at least 1"),
        ("BATCH_SIZE", "-5", "must be at least 1"),
        ("BATCH_SIZE", "big", "is not a whole number"),
        ("EPOCHS", "-1", "must be at least 0"),
        ("EPOCHS", "1.5", "is not a whole number"),
        ("HEAD_EPOCHS", "0", "must be at least 1"),
        ("MAX_TRAIN_IMAGES", "0", "must be at least 1"),
        ("MAX_TRAIN_IMAGES", "-1", "must be at least 1"),
        ("MAX_TRAIN_IMAGES", "3", "too small to learn from"),
        ("MAX_TRAIN_IMAGES", "63", "too small to learn from"),
        ("SEED", "-1", "must be at least 0"),
        ("ARCH", "resnet9000", "not a known architecture"),
        ("QUICK", "maybe", "not a yes/no flag"),
    ],
)
def test_a_bad_setting_names_the_variable_its_value_and_an_example(name, value, problem):
    with pytest.raises(SettingsError) as caught:
        CourseSettings.from_env({f"CONSERVIZ_{name}": value})
    message = str(caught.value)
    assert f"CONSERVIZ_{name}={value!r}" in message
    assert problem in message
    assert f"Fix: set it to e.g. CONSERVIZ_{name}=" in message
    # The example the fix gives is itself accepted.
    example = message.split(f"e.g. CONSERVIZ_{name}=")[1].split(",")[0]
    CourseSettings.from_env({f"CONSERVIZ_{name}": example})


def test_setting_errors_are_conserviz_errors_and_value_errors():
    with pytest.raises(ConservizError):
        CourseSettings.from_env({"CONSERVIZ_BATCH_SIZE": "0"})
    with pytest.raises(ValueError):
        CourseSettings.from_env({"CONSERVIZ_BATCH_SIZE": "0"})


def test_head_only_runs_and_edge_values_are_accepted():
    settings = CourseSettings.from_env(
        {"CONSERVIZ_EPOCHS": "0", "CONSERVIZ_HEAD_EPOCHS": "1", "CONSERVIZ_BATCH_SIZE": "1",
         "CONSERVIZ_SEED": "0", "CONSERVIZ_MAX_TRAIN_IMAGES": "64", "CONSERVIZ_ARCH": "resnet18"}
    )
    assert settings.epochs == 0 and settings.head_epochs == 1 and settings.batch_size == 1
    assert settings.max_train_images == 64 and settings.arch == "resnet18"


@pytest.mark.parametrize(("raw", "quick"), [("1", True), ("yes", True), (" ON ", True), ("0", False),
                                            ("false", False), ("", False)])
def test_quick_is_a_flag(raw, quick):
    assert CourseSettings.from_env({"CONSERVIZ_QUICK": raw}).quick is quick


def test_blank_values_mean_the_default():
    settings = CourseSettings.from_env({"CONSERVIZ_EPOCHS": " ", "CONSERVIZ_ARCH": "", "CONSERVIZ_DATA": ""})
    assert settings.epochs == 1 and settings.arch == "efficientnet_lite0" and settings.data_dir is None


# --- notebook parameters (the parameters cell's values; papermill's -p replaces them) ---------


def test_a_parameter_wins_over_its_variable_and_none_falls_back_to_it(tmp_path):
    env = {"CONSERVIZ_EPOCHS": "2", "CONSERVIZ_BATCH_SIZE": "8", "CONSERVIZ_OUTPUTS": str(tmp_path / "env")}
    settings = CourseSettings.from_env(env, epochs=3, batch_size=None, output_dir=str(tmp_path / "param"))
    assert settings.epochs == 3  # the parameter
    assert settings.batch_size == 8  # None: the variable
    assert settings.output_dir == tmp_path / "param"
    assert CourseSettings.from_env({}, head_epochs=None).head_epochs == 30  # neither: the default


def test_quick_and_paths_can_be_parameters(tmp_path):
    settings = CourseSettings.from_env({}, quick=True, data_dir=str(tmp_path), arch="resnet18")
    assert settings.quick and settings.max_train_images == 240 and settings.epochs == 1
    assert settings.data_dir == tmp_path and settings.arch == "resnet18"
    # papermill passes -p quick 0 as the int 0: a flag all the same, and it overrides the variable.
    assert CourseSettings.from_env({"CONSERVIZ_QUICK": "1"}, quick=0).quick is False


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("epochs", -1, "must be at least 0"),
        ("epochs", 1.5, "is not a whole number"),
        ("epochs", True, "is not a whole number"),
        ("batch_size", 0, "must be at least 1"),
        ("max_train_images", 10, "too small to learn from"),
        ("arch", "resnet9000", "not a known architecture"),
        ("quick", "maybe", "not a yes/no flag"),
    ],
)
def test_a_bad_parameter_names_the_parameter_and_how_to_pass_a_good_one(name, value, problem):
    with pytest.raises(SettingsError) as caught:
        CourseSettings.from_env({}, **{name: value})
    message = str(caught.value)
    assert f"notebook parameter {name}={value!r}" in message and problem in message
    assert "CONSERVIZ_" not in message  # the learner set a parameter, not a variable
    assert f"papermill: -p {name} " in message
    example = message.split(f"e.g. {name} = ")[1].split(" ")[0]
    CourseSettings.from_env({}, **{name: example})  # the example the fix gives is accepted
