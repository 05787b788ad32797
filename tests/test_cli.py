"""The ``conserviz`` command: help, exit codes, messages, and a real train → submit on a tiny sample."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conserviz_utils.tools import cli, cli_train
from conserviz_utils.course.recipe import Recipe

COMMANDS = ("sample", "embed", "train", "evaluate", "predict", "submit", "course")


def run(*argv: str) -> tuple[int, str, str]:
    """``conserviz argv`` in this process: (exit status, stdout, stderr), as the shell would see them."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as stop:  # argparse: --help, --version and its own usage errors
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def run_module(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m conserviz_utils argv`` in a fresh process (what torchrun and users start)."""
    return subprocess.run([sys.executable, "-m", "conserviz_utils", *argv], check=False, capture_output=True,
                          text=True, timeout=300, cwd=cwd, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def tiny_sample(tmp_path_factory) -> Path:
    """96 train and 16 test images at quarter size: the fewest that still leave 8 per species to train on."""
    from conserviz_utils.tools.sample import generate_sample

    out = tmp_path_factory.mktemp("cli") / "sample"
    generate_sample(out, n_train=96, n_test=16, seed=0, image_scale=0.25, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def head_run(tiny_sample, tmp_path_factory) -> tuple[Path, tuple[int, str, str]]:
    """``conserviz train --stage head`` with a config file and a flag over it, quietly."""
    folder = tmp_path_factory.mktemp("run")
    config = folder / "mine.toml"
    config.write_text("head_epochs = 4\nseed = 1\nhead_patience = 3\n")
    out = folder / "out"
    result = run("train", "--stage", "head", "--data", str(tiny_sample), "--out", str(out),
                 "--config", str(config), "--head-patience", "2", "--quiet")
    return out, result


# ------------------------------------------------------------------------------------------------
# Help and usage
# ------------------------------------------------------------------------------------------------


def test_top_level_help_lists_every_command_with_an_example():
    code, out, _ = run("--help")
    assert code == 0
    for name in COMMANDS:
        assert f"\n    {name} " in out
    assert "example:" in out and "conserviz train --data" in out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_exits_0_with_an_example(name):
    code, out, _ = run(name, "--help")
    assert code == 0
    example = out.split("example:", 1)[1]
    assert f"conserviz {name}" in example


def test_train_help_lists_the_recipe_fields_as_flags():
    _, out, _ = run("train", "--help")
    for field in ("--head-lr", "--fine-tune-epochs", "--batch-size", "--augment", "--no-augment", "--config"):
        assert field in out
    assert "torchrun --nproc-per-node=4 -m conserviz_utils train" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        ((), "choose a command"),
        (("train", "--stage", "nope"), "invalid choice: 'nope'"),
        (("train", "--data", "DATA", "--head-lr", "-1"), "argument --head-lr: recipe field head_lr=-1.0 must be above 0"),
        (("train", "--data", "DATA", "--fine-tune-epochs", "0", "--stage", "finetune"), "fine_tune_epochs is 0"),
        (("train", "--data", "DATA", "--folds", "1"), "argument --folds: needs at least 2 folds"),
        (("train", "--data", "DATA", "--folds", "3", "--stage", "both"), "not --stage both"),
        (("evaluate",), "--data DIR is required"),
        (("sample",), "the following arguments are required: OUT"),
    ],
)
def test_usage_errors_exit_2_with_the_reason(argv, message, tmp_path, monkeypatch):
    monkeypatch.delenv("CONSERVIZ_DATA", raising=False)
    argv = [str(tmp_path) if item == "DATA" else item for item in argv]
    code, out, err = run(*argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert out == ""


def test_data_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("CONSERVIZ_DATA", str(tmp_path / "from-env"))
    code, _, err = run("embed", "--out", str(tmp_path / "out"))
    assert code == 1
    assert f"{tmp_path / 'from-env'}: data folder not found" in err


# ------------------------------------------------------------------------------------------------
# Data and model errors: exit 1, one line, no traceback (unless --verbose)
# ------------------------------------------------------------------------------------------------


def test_a_bad_data_folder_exits_1_with_one_line_and_no_traceback(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train_features.csv").write_text("id,filepath\nZJ1,a.jpg\n")  # no site column
    done = run_module("train", "--stage", "head", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("conserviz train: error: ")
    assert "train_features.csv" in lines[0] and "Fix:" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "model.pt").exists()

    code, _, err = run("train", "--stage", "head", "--data", str(tmp_path / "data"), "--out",
                       str(tmp_path / "out"), "--verbose")
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == lines[0]


def test_submit_without_a_trained_model_says_which_command_trains_one(tiny_sample, tmp_path):
    code, _, err = run("submit", "--data", str(tiny_sample), "--out", str(tmp_path))
    assert code == 1
    assert err.count("\n") == 1
    assert f"{tmp_path / 'model.pt'}: no trained model here" in err
    assert "conserviz train --data DIR --out" in err


def test_a_bad_config_file_exits_1_naming_it(tiny_sample, tmp_path):
    config = tmp_path / "recipe.toml"
    config.write_text("head_lr = 0.001\nlearning_rate = 3\n")
    code, _, err = run("train", "--data", str(tiny_sample), "--out", str(tmp_path / "out"), "--config", str(config))
    assert code == 1
    assert str(config) in err and "unknown recipe field(s): learning_rate" in err


# ------------------------------------------------------------------------------------------------
# The real thing, on a tiny sample
# ------------------------------------------------------------------------------------------------


def test_train_head_writes_the_model_and_the_recipe_that_repeats_it(head_run):
    from conserviz_utils.runtime.checkpoint import resume_state

    out, (code, stdout, stderr) = head_run
    assert code == 0, stderr
    assert stdout == ""  # --quiet
    assert {"model.pt", "recipe.toml", "recipe.json", "splits.csv", "features"} <= {p.name for p in out.iterdir()}
    # defaults < --config < flags; the head stage records that no fine-tuning ran.
    expected = Recipe(head_epochs=4, seed=1, head_patience=2, fine_tune_epochs=0)
    assert Recipe.from_toml(out / "recipe.toml") == expected
    assert Recipe.load(out / "recipe.json") == expected
    assert resume_state(out / "model.pt")["extra"]["recipe"] == expected.to_dict()


def test_submit_after_train_writes_a_valid_submission(head_run, tiny_sample):
    from conserviz_utils.data import load_competition
    from conserviz_utils.submission import read_submission, validate_submission

    out, _ = head_run
    code, stdout, stderr = run("submit", "--data", str(tiny_sample), "--out", str(out))
    assert code == 0, stderr
    assert f"wrote {out / 'submission.csv'}: 16 rows x 8 species, validated" in stdout
    data = load_competition(tiny_sample)
    submission = read_submission(out / "submission.csv")
    validate_submission(submission, data.submission_format)
    assert list(submission.index) == list(data.submission_format.index)


def test_evaluate_then_predict_then_submit_those_predictions(head_run, tiny_sample):
    out, _ = head_run
    code, stdout, stderr = run("evaluate", "--data", str(tiny_sample), "--out", str(out))
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    eval_ids = pd.read_csv(out / "splits.csv").query("split == 'eval'")
    assert metrics["eval_images"] == len(eval_ids)
    assert f"log loss       {metrics['log_loss']:.4f}" in stdout

    code, stdout, stderr = run("predict", "--data", str(tiny_sample), "--out", str(out), "--tta", "-q")
    assert code == 0, stderr
    predictions = pd.read_csv(out / "predictions.csv", index_col="id")
    assert predictions.shape == (16, 8)
    assert (predictions.sum(axis=1) - 1).abs().max() < 1e-9

    code, _, stderr = run("submit", "--data", str(tiny_sample), "--out", str(out),
                          "--predictions", str(out / "predictions.csv"), "-q")
    assert code == 0, stderr
    submitted = pd.read_csv(out / "submission.csv", index_col="id")
    pd.testing.assert_frame_equal(submitted, predictions.loc[submitted.index, submitted.columns])


def test_cross_validation_writes_test_predictions_that_submit_accepts(head_run, tiny_sample):
    out, _ = head_run
    code, stdout, stderr = run("train", "--folds", "2", "--head-epochs", "2", "--data", str(tiny_sample),
                               "--out", str(out))
    assert code == 0, stderr
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["folds"] == 2 and summary["log_loss"] > 0
    assert "2-fold cross-validation by site: out-of-fold log loss" in stdout
    # The trained model's recipe is left alone; the CV's own sits beside its files.
    assert Recipe.from_toml(out / "recipe.toml").head_epochs == 4
    assert Recipe.from_toml(out / "cv_recipe.toml").head_epochs == 2
    code, _, stderr = run("submit", "--data", str(tiny_sample), "--out", str(out),
                          "--predictions", str(out / "cv_test_predictions.csv"), "-q")
    assert code == 0, stderr


# ------------------------------------------------------------------------------------------------
# Launching: torchrun, the course runner, python -m
# ------------------------------------------------------------------------------------------------


def test_devices_re_runs_the_same_command_under_torchrun(tiny_sample, tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    launched = {}

    def fake_call(command, env):
        launched.update(command=command, env=env)
        return 0

    monkeypatch.setattr(cli_train.subprocess, "call", fake_call)
    argv = ["train", "--data", str(tiny_sample), "--out", str(tmp_path), "--devices", "2", "--device", "cpu",
            "--stage", "finetune"]
    code, _, stderr = run(*argv)
    assert code == 0, stderr
    assert launched["command"] == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "conserviz_utils", "train", "--data", str(tiny_sample), "--out", str(tmp_path),
        "--device", "cpu", "--stage", "finetune",
    ]
    assert int(launched["env"]["OMP_NUM_THREADS"]) >= 1


def test_devices_beyond_the_gpus_is_a_usage_error(tiny_sample, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cli_train.subprocess, "call", lambda *a, **k: pytest.fail("must not launch"))
    code, _, err = run("train", "--data", str(tiny_sample), "--out", str(tmp_path), "--devices", "4")
    assert code == 2
    assert "4 processes need 4 GPUs, this machine has 1" in err


def test_course_runs_the_notebook_runner(monkeypatch, tmp_path):
    from conserviz_utils.tools import runner

    seen = {}
    monkeypatch.setattr(runner, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    code, _, _ = run("course", "--quick", "--outputs", str(tmp_path))
    assert code == 0
    assert seen["argv"] == ["--quick", "--outputs", str(tmp_path)]


def test_python_m_conserviz_utils_is_the_command():
    done = run_module("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == "conserviz 0.1.0"
