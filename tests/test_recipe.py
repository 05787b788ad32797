"""The Recipe: every hyperparameter of the default recipe, validated and serialisable."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conserviz_utils.errors import ConservizError
from conserviz_utils.course.recipe import Recipe, RecipeError
from conserviz_utils.course.settings import CourseSettings


def test_the_default_recipe_holds_the_course_values():
    recipe = Recipe()
    assert (recipe.head_lr, recipe.head_weight_decay, recipe.head_batch_size) == (1e-3, 1.0, 64)
    assert (recipe.head_epochs, recipe.head_patience, recipe.head_holdout) == (30, 3, 0.15)
    assert (recipe.fine_tune_optimizer, recipe.fine_tune_lr, recipe.fine_tune_weight_decay) == ("adamw", 1e-4, 1e-4)
    assert (recipe.fine_tune_epochs, recipe.fine_tune_patience, recipe.augment) == (1, 1, True)
    assert (recipe.arch, recipe.batch_size, recipe.seed, recipe.max_train_images) == ("efficientnet_lite0", 32, 0, None)


def test_from_settings_takes_the_run_settings():
    settings = CourseSettings.from_env(
        {"CONSERVIZ_QUICK": "1", "CONSERVIZ_EPOCHS": "0", "CONSERVIZ_HEAD_EPOCHS": "5",
         "CONSERVIZ_BATCH_SIZE": "8", "CONSERVIZ_SEED": "7", "CONSERVIZ_ARCH": "resnet18"}
    )
    recipe = Recipe.from_settings(settings)
    assert recipe.fine_tune_epochs == 0 and recipe.head_epochs == 5 and recipe.batch_size == 8
    assert recipe.seed == 7 and recipe.arch == "resnet18" and recipe.max_train_images == 240
    assert recipe.head_lr == Recipe().head_lr  # what settings do not hold keeps its default


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("arch", "resnet9000"),
        ("seed", -1),
        ("seed", 1.5),
        ("max_train_images", 0),
        ("head_lr", 0.0),
        ("head_lr", float("nan")),
        ("head_lr", "fast"),
        ("head_weight_decay", -1e-4),
        ("head_batch_size", 0),
        ("head_epochs", 0),
        ("head_epochs", True),
        ("head_patience", 0),
        ("head_holdout", 0.0),
        ("head_holdout", 1.0),
        ("fine_tune_optimizer", "adam"),
        ("fine_tune_lr", -1.0),
        ("fine_tune_weight_decay", float("inf")),
        ("fine_tune_epochs", -1),
        ("fine_tune_patience", 0),
        ("augment", "yes"),
        ("batch_size", 0),
    ],
)
def test_a_bad_field_is_refused_with_its_name_value_and_an_example(field, value):
    with pytest.raises(RecipeError) as caught:
        Recipe(**{field: value})
    assert caught.value.field == field
    assert f"recipe field {field}={value!r}" in str(caught.value)
    assert f"Fix: set {field} to e.g." in str(caught.value)
    assert isinstance(caught.value, ConservizError) and isinstance(caught.value, ValueError)


def test_edge_values_are_accepted_and_numbers_become_floats():
    recipe = Recipe(fine_tune_epochs=0, head_weight_decay=0, fine_tune_weight_decay=0, head_lr=1,
                    fine_tune_optimizer="sgd", augment=False, max_train_images=1)
    assert recipe.fine_tune_epochs == 0 and recipe.augment is False
    assert isinstance(recipe.head_weight_decay, float) and isinstance(recipe.head_lr, float)


def test_a_recipe_is_frozen_and_replace_validates():
    recipe = Recipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.head_lr = 3e-3
    changed = recipe.replace(head_lr=3e-3)
    assert changed.head_lr == 3e-3 and recipe.head_lr == 1e-3
    with pytest.raises(RecipeError, match="head_lr"):
        recipe.replace(head_lr=-1.0)
    with pytest.raises(RecipeError, match="unknown recipe field.*learning_rate"):
        recipe.replace(learning_rate=3e-3)


def test_to_dict_and_from_dict_round_trip():
    recipe = Recipe(head_lr=3e-3, max_train_images=500, augment=False, arch="resnet18")
    values = recipe.to_dict()
    assert values["head_lr"] == 3e-3 and values["max_train_images"] == 500
    assert json.loads(json.dumps(values)) == values  # plain JSON values
    assert Recipe.from_dict(values) == recipe
    assert Recipe.from_dict({"head_lr": 3e-3}) == Recipe(head_lr=3e-3)  # the rest keep defaults


def test_from_dict_refuses_an_unknown_key_naming_it():
    with pytest.raises(RecipeError) as caught:
        Recipe.from_dict({"head_lr": 1e-3, "learnig_rate": 0.1})
    assert caught.value.field == "learnig_rate"
    assert "learnig_rate" in str(caught.value) and "head_lr" in caught.value.fix
    with pytest.raises(RecipeError, match="table of fields"):
        Recipe.from_dict([("head_lr", 1e-3)])


def test_save_writes_json_atomically_and_load_reads_it_back(tmp_path):
    recipe = Recipe(fine_tune_epochs=0, seed=3)
    path = recipe.save(tmp_path / "out" / "recipe.json")
    assert json.loads(path.read_text()) == recipe.to_dict()
    assert Recipe.load(path) == recipe
    assert sorted(p.name for p in path.parent.iterdir()) == ["recipe.json"]  # no temp file left
    Recipe(seed=4).save(path)  # replaced as a whole
    assert Recipe.load(path).seed == 4


def test_load_names_the_file_of_a_broken_recipe(tmp_path):
    broken = tmp_path / "recipe.json"
    broken.write_text("")
    with pytest.raises(RecipeError, match="not a readable recipe JSON") as caught:
        Recipe.load(broken)
    assert caught.value.path == broken
    broken.write_text(json.dumps({"head_lr": -1}))
    with pytest.raises(RecipeError, match="head_lr") as caught:
        Recipe.load(broken)
    assert caught.value.path == broken and caught.value.field == "head_lr"
    with pytest.raises(RecipeError, match="not found"):
        Recipe.load(tmp_path / "absent.json")


def test_to_toml_and_from_toml_round_trip(tmp_path):
    for recipe in (Recipe(), Recipe(max_train_images=500, augment=False, fine_tune_optimizer="sgd", head_lr=2.5e-5)):
        path = tmp_path / "recipe.toml"
        path.write_text(recipe.to_toml())
        assert Recipe.from_toml(path) == recipe
    assert "# max_train_images" in Recipe().to_toml()  # unset: a comment, since TOML has no null
    assert Recipe(seed=9).save_toml(tmp_path / "saved.toml").read_text() == Recipe(seed=9).to_toml()


def test_from_toml_accepts_a_partial_file_and_refuses_bad_ones(tmp_path):
    config = tmp_path / "recipe.toml"
    config.write_text("head_lr = 3e-3\nfine_tune_weight_decay = 0\naugment = false\n")
    recipe = Recipe.from_toml(config)
    assert recipe == Recipe(head_lr=3e-3, fine_tune_weight_decay=0.0, augment=False)

    config.write_text("head_lr = 3e-3\nhead_lrr = 1e-3\n")
    with pytest.raises(RecipeError, match="head_lrr") as caught:
        Recipe.from_toml(config)
    assert caught.value.path == config and caught.value.field == "head_lrr"

    config.write_text("head_lr = \n")
    with pytest.raises(RecipeError, match="not a readable TOML file") as caught:
        Recipe.from_toml(config)
    assert caught.value.path == config

    config.write_text('head_epochs = "thirty"\n')
    with pytest.raises(RecipeError, match="head_epochs='thirty' is not a whole number"):
        Recipe.from_toml(config)
    with pytest.raises(RecipeError, match="not found"):
        Recipe.from_toml(tmp_path / "absent.toml")
