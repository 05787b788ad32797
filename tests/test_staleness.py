"""Issue 20: the command line uses a run folder's model, resume state and temperature only while they match.

Two tiny generated datasets (A and B) and the ``conserviz`` command, as a determined user would
drive it: a head trained on A is not fine-tuned or resumed on B, a temperature belongs to the
checkpoint it was fitted for, resume is exact with the command's own loader, numbers are checked
where they are read, and the messages name the flags.
"""

from __future__ import annotations

import argparse
import os
import shutil

import pytest
import torch

from conserviz_utils.course.provenance import read_sidecar, sidecar_path
from conserviz_utils.errors import CheckpointError, DataValidationError
from conserviz_utils.tools import cli, cli_common, cli_predict
from test_cli import run


def generate(tmp_path_factory, seed: int):
    from conserviz_utils.tools.sample import generate_sample

    out = tmp_path_factory.mktemp(f"data{seed}") / "sample"
    generate_sample(out, n_train=96, n_test=16, seed=seed, image_scale=0.25, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def data_a(tmp_path_factory):
    return generate(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def data_b(tmp_path_factory):
    return generate(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def head_on_a(data_a, tmp_path_factory):
    """``conserviz train --stage head`` on A: a run folder with model.pt, splits.csv and metrics.json."""
    out = tmp_path_factory.mktemp("run") / "out"
    code, _, err = run("train", "--stage", "head", "--data", str(data_a), "--out", str(out), "--head-epochs", "2",
                       "--no-pretrained", "-q")
    assert code == 0, err
    code, _, err = run("evaluate", "--data", str(data_a), "--out", str(out), "-q")
    assert code == 0, err
    return out


def copy_run(run_folder, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_folder, copy)
    return copy


# --- case 1: fine-tuning another dataset's head ---------------------------------------------------


def test_finetune_on_b_refuses_the_head_trained_on_a(head_on_a, data_a, data_b, tmp_path):
    out = copy_run(head_on_a, tmp_path)
    model = (out / "model.pt").read_bytes()
    code, _, err = run("train", "--data", str(data_b), "--out", str(out), "--stage", "finetune", "--no-pretrained")
    assert code == 1
    assert "cannot fine-tune this model here: model.pt was made from other data" in err
    assert "--stage both" in err and "Traceback" not in err
    # Nothing relabelled: the model and its record still say A.
    assert (out / "model.pt").read_bytes() == model
    assert read_sidecar(out / "model.pt")["data"]["root"] == str(data_a)


# --- case 2: resuming another dataset's state; a finished run leaves none --------------------------


def resume_state_of(out, data_dir, seed=0):
    """A fine-tuning state in ``out`` recorded as a run on ``data_dir`` (as an interrupted run leaves it)."""
    from conserviz_utils.course.recipe import Recipe
    from conserviz_utils.course.splits import ensure_splits
    from conserviz_utils.data import load_competition
    from conserviz_utils.tools.run_folder import prepare_resume, resume_provenance

    recipe = Recipe(seed=seed)
    settings = cli_common.course_settings(out, data_dir, recipe)
    data = load_competition(data_dir)
    split = ensure_splits(data, settings, verbose=False)
    expected = resume_provenance(data, split, recipe, False, settings.artifacts.checkpoint)
    prepare_resume(settings.artifacts.resume, expected, resume=False)
    shutil.copy(out / "model.pt", settings.artifacts.resume)
    return settings.artifacts.resume, expected, (data, split, recipe, settings)


def test_resume_on_b_refuses_the_state_of_a_run_on_a(head_on_a, data_a, data_b, tmp_path):
    out = copy_run(head_on_a, tmp_path)
    resume_state_of(out, data_a)
    record = sidecar_path(out / "model.pt").read_text()
    code, _, err = run("train", "--data", str(data_b), "--out", str(out), "--resume", "--no-pretrained")
    assert code == 1
    assert "was made from other data" in err and "Traceback" not in err
    assert sidecar_path(out / "model.pt").read_text() == record  # not relabelled as B


def test_resume_state_is_checked_before_fit_continues_it(head_on_a, data_a, data_b, tmp_path):
    from conserviz_utils.data import load_competition
    from conserviz_utils.tools.run_folder import prepare_resume, resume_provenance

    out = copy_run(head_on_a, tmp_path)
    path, expected, (data, split, recipe, settings) = resume_state_of(out, data_a)
    assert prepare_resume(path, expected, resume=True) is True
    # Another dataset's record is refused, naming the way out.
    other = resume_provenance(load_competition(data_b), split, recipe, False, settings.artifacts.checkpoint)
    with pytest.raises(CheckpointError, match="cannot resume: fine_tune_resume.pt was made from other data") as caught:
        prepare_resume(path, other, resume=True)
    assert "without --resume" in caught.value.fix
    # Another recipe too.
    changed = resume_provenance(data, split, recipe.replace(fine_tune_lr=1e-2), False, settings.artifacts.checkpoint)
    with pytest.raises(CheckpointError, match="other settings"):
        prepare_resume(path, changed, resume=True)
    # A damaged state says how to start over, not "an interrupted download".
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot resume from this fine-tuning state") as caught:
        prepare_resume(path, expected, resume=True)
    assert f"delete {path}" in caught.value.fix and "without --resume" in caught.value.fix
    # A state without a record (an older conserviz, a notebook's) is not taken for this run's.
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="has no provenance record"):
        prepare_resume(path, expected, resume=True)
    # A fresh start clears it and records the new run.
    assert prepare_resume(path, expected, resume=False) is False
    assert not path.exists() and read_sidecar(path)["data"] == expected["data"]


# --- case 3: a temperature belongs to its checkpoint ------------------------------------------------


def temperature(out, checkpoint):
    args = argparse.Namespace(temperature=None, out=out)
    return cli_predict._temperature(args, checkpoint, cli_common.Console(quiet=True))


def other_model(source, target):
    """A checkpoint with other weights than ``source``'s."""
    from conserviz_utils.runtime.checkpoint import load_checkpoint, save_checkpoint

    model, payload = load_checkpoint(source)
    with torch.no_grad():
        next(model.head.parameters()).add_(0.5)
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(target, model, species=payload["species"], extra=payload["extra"])


def test_temperature_comes_only_from_metrics_that_name_the_checkpoint(head_on_a, tmp_path):
    import json

    out = copy_run(head_on_a, tmp_path)
    fitted = json.loads((out / "metrics.json").read_text())["temperature"]
    assert fitted != 1.0
    assert temperature(out, out / "model.pt") == fitted
    # submit --out R1 --checkpoint R2/model.pt: R1's temperature was fitted for another model.
    second = other_model(out / "model.pt", tmp_path / "r2" / "model.pt")
    os.utime(out / "metrics.json", (2e9, 2e9))  # newer than any checkpoint: mtime decides nothing
    assert temperature(out, second) == 1.0
    args = argparse.Namespace(temperature=None, out=out)
    console = cli_common.Console()
    from contextlib import redirect_stdout
    from io import StringIO

    said = StringIO()
    with redirect_stdout(said):
        cli_predict._temperature(args, second, console)
    assert said.getvalue().startswith("temperature 1: ") and "was made from another model.pt" in said.getvalue()
    # A model copied in with `cp -p` (an older mtime) does not pick up the old temperature either.
    shutil.copy2(second, out / "model.pt")
    os.utime(out / "model.pt", (1e9, 1e9))
    assert temperature(out, out / "model.pt") == 1.0


def test_evaluate_records_the_checkpoint_it_scored(head_on_a, data_a, tmp_path):
    out = copy_run(head_on_a, tmp_path)
    second = other_model(out / "model.pt", tmp_path / "r2" / "model.pt")
    code, _, err = run("evaluate", "--data", str(data_a), "--out", str(out), "--checkpoint", str(second), "-q")
    assert code == 0, err
    assert temperature(out, second) != 1.0  # fitted for the checkpoint evaluated
    assert temperature(out, out / "model.pt") == 1.0  # not for the run's own model


# --- case 4: exact resume with the command's own loader (a worker) ---------------------------------


def augmenting_loader(workers: int, seeded: bool):
    """The command's kind of training loader: shuffled, a random augmentation, drawn in a loader worker."""
    from test_train import make_data

    from conserviz_utils.data import make_loader
    from conserviz_utils.runtime.item_seeds import seeded_loader

    images, labels = make_data(n=36, size=8)
    from test_train import TensorImages

    loader = make_loader(TensorImages(images, labels, noise=0.5), batch_size=6, shuffle=True,
                         num_workers=workers, seed=0)
    return seeded_loader(loader) if seeded else loader


def train_tiny(path, workers, seeded, stop_at=None, resume=False):
    """fit a tiny BatchNorm net for 2 epochs of 6 batches; SIGINT during forward pass ``stop_at``."""
    import signal

    from test_train import QUIET, interrupt_at, send, tiny_model

    from conserviz_utils.train import fit

    model = tiny_model()
    if stop_at is not None:
        interrupt_at(model, stop_at, send(signal.SIGINT))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = fit(model, augmenting_loader(workers, seeded), None, epochs=2, optimizer=optimizer, seed=3,
                  checkpoint_path=path, resume_from=path if resume else None, **QUIET)
    return model, history


@pytest.mark.parametrize("seeded", [False, True])
def test_resume_with_a_loader_worker_is_exact_once_items_are_seeded(tmp_path, seeded):
    whole, _ = train_tiny(tmp_path / "whole.pt", workers=1, seeded=seeded)
    again, _ = train_tiny(tmp_path / "again.pt", workers=1, seeded=seeded)
    _, stopped = train_tiny(tmp_path / "parts.pt", workers=1, seeded=seeded, stop_at=3)
    assert stopped.attrs["interrupted"] is True
    resumed, _ = train_tiny(tmp_path / "parts.pt", workers=1, seeded=seeded, resume=True)
    state = {name: value for name, value in whole.state_dict().items()}
    assert all(torch.equal(value, again.state_dict()[name]) for name, value in state.items())
    different = [name for name, value in state.items() if not torch.equal(value, resumed.state_dict()[name])]
    if seeded:
        assert different == []  # bit-identical, BatchNorm's running statistics included
    else:
        assert different  # the failure of issue 20: the worker redraws the augmentation after a resume


def test_seeded_augmentation_does_not_depend_on_the_number_of_workers(tmp_path):
    none, _ = train_tiny(tmp_path / "a.pt", workers=0, seeded=True)
    one, _ = train_tiny(tmp_path / "b.pt", workers=1, seeded=True)
    for name, value in none.state_dict().items():
        assert torch.equal(value, one.state_dict()[name]), name


def test_a_finished_fine_tuning_leaves_no_state_to_resume(data_a, tmp_path, monkeypatch):
    import pandas as pd

    from conserviz_utils.course import steps

    seen = {}

    def fake_fine_tune(model, train_loader, eval_loader, recipe, *, resume_path, resume, **options):
        # What fit leaves while it runs: the state, under this run's record.
        seen["record"] = read_sidecar(resume_path)
        seen["seeded"] = type(train_loader.sampler).__name__
        resume_path.write_bytes(b"state")
        history = pd.DataFrame({"eval_log_loss": [9.0]})
        history.attrs["interrupted"] = False
        return history

    monkeypatch.setattr(steps, "fine_tune", fake_fine_tune)
    code, _, err = run("train", "--data", str(data_a), "--out", str(tmp_path), "--stage", "finetune",
                       "--no-pretrained", "-q")
    assert code == 0, err
    assert seen["record"]["data"]["root"] == str(data_a) and "artifact_digest" not in seen["record"]
    assert seen["seeded"] == "SeededSampler"  # the CLI's loader draws augmentation per image
    assert not (tmp_path / "fine_tune_resume.pt").exists()
    assert not sidecar_path(tmp_path / "fine_tune_resume.pt").exists()


# --- case 6: numbers checked where they are read ----------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (("train", "--data", "D", "--batch-size", "99999999999999999999"), "batch_size=99999999999999999999 must be at most 65,536"),
        (("train", "--data", "D", "--head-batch-size", "99999999999999999999"), "argument --head-batch-size"),
        (("train", "--data", "D", "--seed", "99999999999999999999999"), "must be at most 4,294,967,295 (e.g. --seed 0)"),
        (("evaluate", "--data", "D", "--batch-size", "99999999999999999999"), "is not a whole number from 1 to 65,536"),
        (("sample", "OUT", "--n-train", "99999999999999999999"), "argument --n-train"),
        (("sample", "OUT", "--seed", "99999999999999999999999"), "from 0 to 4,294,967,295 (e.g. 0)"),
        (("sample", "OUT", "--workers", "99999999999999999999"), "argument --workers"),
        (("train", "--data", "D", "--devices", "0"), "argument --devices"),
        (("predict", "--data", "D", "--temperature", "1e308"), "argument --temperature"),
    ],
)
def test_big_numbers_on_the_command_line_are_usage_errors(argv, message, tmp_path):
    argv = [str(tmp_path) if item in ("D", "OUT") else item for item in argv]
    (tmp_path / "model.pt").write_bytes(b"")
    code, _, err = run(*argv)
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_a_big_number_in_a_recipe_file_names_the_file_and_the_range(tmp_path):
    for value, problem in (("1e20", "is not a whole number (allowed: 1 to 65,536)"),
                           ("100000000000000000000", "must be at most 65,536")):
        config = tmp_path / "recipe.toml"
        config.write_text(f"batch_size = {value}\n")
        code, _, err = run("train", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--config", str(config))
        assert code == 1
        assert str(config) in err and problem in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["BATCH_SIZE", "SEED", "EPOCHS", "HEAD_EPOCHS", "MAX_TRAIN_IMAGES"])
def test_big_environment_numbers_are_refused(name):
    from conserviz_utils.course.settings import CourseSettings, SettingsError

    with pytest.raises(SettingsError, match=f"CONSERVIZ_{name}='1{'0' * 23}' must be at most"):
        CourseSettings.from_env({f"CONSERVIZ_{name}": "1" + "0" * 23})


# --- case 7: messages that fit their reader -------------------------------------------------------


def test_a_pickle_payload_is_named_as_such_not_as_a_truncated_file(tmp_path):
    from conserviz_utils.runtime.checkpoint import load_checkpoint

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo never",))

    path = tmp_path / "model.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert "pickled Python objects" in caught.value.problem and "would run code" in caught.value.problem
    assert "truncated" not in str(caught.value)


@pytest.mark.parametrize(
    "fix, args, expected",
    [
        ("train on more images: raise CONSERVIZ_MAX_TRAIN_IMAGES (or unset it), or use more data", {},
         "use a --data folder with more labelled training images (no --max-train-images cap is set)"),
        ("train on more images: raise CONSERVIZ_MAX_TRAIN_IMAGES (or unset it), or use more data",
         {"max_train_images": 70}, "raise --max-train-images (now 70) or leave it out, or use more data"),
        ("/x is not writable: save to a folder you can write to (e.g. set CONSERVIZ_OUTPUTS)", {},
         "/x is not writable: save to a folder you can write to (e.g. pass another --out)"),
        ("pass n_folds=3 or fewer, or use more sites", {}, "pass --folds 3 or fewer, or use more sites"),
        ("predict on every test image (data.test_features) with on_error='raise'", {},
         "conserviz predict --data DIR --out runs/a predicts them all"),
    ],
)
def test_command_line_errors_name_flags_not_notebook_settings(fix, args, expected):
    from pathlib import Path

    err = DataValidationError("a problem", fix=fix)
    rendered = cli.for_command_line(err, argparse.Namespace(out=Path("runs/a"), **args)).render("cli")
    assert expected in rendered
    assert str(err).endswith(f"Fix: {fix}")  # the notebook's wording stays the notebook's


def test_too_many_folds_names_the_flag(data_a, tmp_path):
    code, _, err = run("train", "--data", str(data_a), "--out", str(tmp_path), "--folds", "50", "--head-epochs", "1",
                       "--no-pretrained", "-q")
    assert code == 1
    assert "pass --folds" in err and "n_folds" not in err


# --- case 8: symlinked data folders -----------------------------------------------------------------


def test_a_symlinked_image_folder_reads_and_links_that_escape_stay_refused(data_a, tmp_path):
    from conserviz_utils.data import load_competition

    shared = tmp_path / "shared" / "train_features"
    shutil.copytree(data_a / "train_features", shared)
    data = tmp_path / "data"
    data.mkdir()
    for item in data_a.iterdir():
        if item.name != "train_features":
            os.symlink(item, data / item.name) if item.is_dir() else shutil.copy(item, data / item.name)
    os.symlink(shared, data / "train_features")  # a hub's shared, read-only copy
    loaded = load_competition(data)
    assert len(loaded.train_features) == 96
    # A link inside the tree that stays inside it is fine...
    first = sorted(shared.iterdir())[0]
    moved = shared / "inside" / first.name
    moved.parent.mkdir()
    shutil.move(first, moved)
    os.symlink(moved, first)
    assert len(load_competition(data).train_features) == 96
    # ...one that leaves it is refused.
    outside = tmp_path / "elsewhere.jpg"
    shutil.move(moved, outside)
    first.unlink()
    os.symlink(outside, first)
    with pytest.raises(DataValidationError, match="lead outside the data folder"):
        load_competition(data)
