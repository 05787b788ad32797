"""Writing the sample dataset: layout, determinism, safe writing, the command line and the grid."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conserviz_utils import SPECIES, ConservizError
from conserviz_utils.tools import sample as sample_module
from conserviz_utils.tools.sample import (
    DETECTIONS_NAME,
    MARKER_NAME,
    REAL_IMAGE_SIZES,
    SampleFolderError,
    SampleParameterError,
    generate_sample,
    plan_sample,
    sample_grid,
    sample_marker,
)
from conserviz_utils.tools.sample import write as write_module

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }



# --- layout -------------------------------------------------------------------------------------


def test_layout_matches_the_competition(sample_dir):
    train = pd.read_csv(sample_dir / "train_features.csv")
    labels = pd.read_csv(sample_dir / "train_labels.csv")
    test = pd.read_csv(sample_dir / "test_features.csv")
    submission = pd.read_csv(sample_dir / "submission_format.csv")

    assert list(train.columns) == ["id", "filepath", "site"]
    assert list(test.columns) == ["id", "filepath", "site"]
    assert list(labels.columns) == ["id", *SPECIES]
    assert list(submission.columns) == ["id", *SPECIES]
    assert all(labels[s].dtype == np.float64 for s in SPECIES)
    assert all(submission[s].dtype == np.float64 for s in SPECIES)

    assert list(train.id) == [f"ZJ{i:06d}" for i in range(160)]
    assert list(test.id) == [f"ZJ{i:06d}" for i in range(160, 200)]  # test ids continue
    assert list(labels.id) == list(train.id)
    assert list(submission.id) == list(test.id)
    assert (train.filepath == "train_features/" + train.id + ".jpg").all()
    assert (test.filepath == "test_features/" + test.id + ".jpg").all()
    assert train.site.str.fullmatch(r"S\d{4}").all() and test.site.str.fullmatch(r"S\d{4}").all()

    one_hot = labels[list(SPECIES)].to_numpy()
    assert set(np.unique(one_hot)) == {0.0, 1.0} and (one_hot.sum(axis=1) == 1).all()
    assert (submission[list(SPECIES)] == 0.125).all().all()

    on_disk = {p.relative_to(sample_dir).as_posix() for p in sample_dir.glob("*_features/*.jpg")}
    assert on_disk == set(train.filepath) | set(test.filepath)
    assert sorted(p.name for p in sample_dir.iterdir()) == sorted(
        [DETECTIONS_NAME, MARKER_NAME, "submission_format.csv", "test_features",
         "test_features.csv", "train_features", "train_features.csv", "train_labels.csv"]
    )


def test_csvs_follow_the_plan(sample_dir):
    plan = plan_sample(160, 40, seed=0)
    train = pd.read_csv(sample_dir / "train_features.csv", index_col="id")
    labels = pd.read_csv(sample_dir / "train_labels.csv", index_col="id")
    planned_train = plan[plan.split == "train"]
    pd.testing.assert_series_equal(train.site, planned_train.site)
    assert (labels.idxmax(axis=1) == planned_train.species).all()


def test_images_have_the_planned_size_and_colour(sample_dir):
    plan = plan_sample(160, 40, seed=0)
    for image_id, row in plan.iloc[::4].iterrows():
        with Image.open(sample_dir / row.filepath) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (round(row.width * 0.25), round(row.height * 0.25))
            pixels = np.asarray(image, np.int16)
        # Infrared shots are grey (JPEG leaves channels a few levels apart), day shots colour.
        spread = np.abs(pixels - pixels.mean(axis=2, keepdims=True)).mean()
        assert (spread < 2.0) if row.night else (spread > 3.0), image_id


def test_marker_records_the_parameters(sample_dir):
    marker = sample_marker(sample_dir)
    assert marker is not None
    assert marker["generator"] == "conserviz_utils.tools.sample"
    parameters = (marker["n_train"], marker["n_test"], marker["seed"], marker["image_scale"])
    assert parameters == (160, 40, 0, 0.25)
    assert marker["n_train_sites"] >= 9 and marker["n_test_sites"] >= 3
    assert sample_marker(sample_dir / "train_features") is None


def test_real_size_images_are_small_jpegs_with_info_bands(tmp_path):
    report = generate_sample(
        tmp_path / "s", n_train=24, n_test=0, seed=5, workers=1, progress=False
    )
    plan = plan_sample(24, 0, seed=5)
    sizes = []
    for _, row in plan.iterrows():
        path = tmp_path / "s" / row.filepath
        sizes.append(path.stat().st_size)
        with Image.open(path) as image:
            assert image.size == (row.width, row.height) and image.size in REAL_IMAGE_SIZES
            grey = np.asarray(image.convert("L"), np.int16)
        if row.band != "none":
            band = max(6, round(row.height * 0.06))
            rows = grey[:band] if row.band == "top" else grey[-band:]
            paper = np.median(rows)
            assert paper < 40 or paper > 170, "an info band is a flat black or light-grey strip"
            assert np.mean(np.abs(rows - paper) < 25) > 0.6
    assert 8_000 < np.median(sizes) < 60_000  # real JPEGs: median about 25 KB
    assert report.megabytes == pytest.approx(sum(sizes) / 1e6)


# --- determinism and safe writing ----------------------------------------------------------------


def test_same_bytes_for_any_worker_count(tmp_path):
    small = {"n_train": 30, "n_test": 10, "image_scale": 0.1, "progress": False}
    one = generate_sample(tmp_path / "one", seed=2, workers=1, **small)
    two = generate_sample(tmp_path / "two", seed=2, workers=2, **small)
    assert (one.workers, two.workers) == (1, 2)
    digests = file_digests(tmp_path / "one")
    assert len(digests) == 30 + 10 + 6  # images, 4 CSVs, detections.json, the marker
    assert digests == file_digests(tmp_path / "two")
    other = generate_sample(tmp_path / "other", seed=3, workers=1, **small)
    first = "train_features/ZJ000000.jpg"
    assert file_digests(tmp_path / "other")[first] != digests[first]
    assert other.n_images == 40 and other.images_per_second > 0


def test_refuses_a_folder_with_other_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SampleFolderError) as caught:
        generate_sample(out, n_train=8, n_test=0, image_scale=0.1, progress=False)
    assert "notes.txt" in str(caught.value) and "Fix:" in str(caught.value)
    assert isinstance(caught.value, ConservizError)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(SampleFolderError, match="not a folder"):
        generate_sample(a_file, n_train=8, n_test=0, image_scale=0.1, progress=False)


def test_refuses_a_previous_sample_with_extra_files(tmp_path):
    out = tmp_path / "s"
    generate_sample(out, n_train=8, n_test=0, image_scale=0.1, workers=1, progress=False)
    (out / "my_model.pt").write_bytes(b"weights")
    with pytest.raises(SampleFolderError, match="my_model.pt"):
        generate_sample(out, n_train=8, n_test=0, image_scale=0.1, workers=1, progress=False)
    assert (out / "my_model.pt").exists() and sample_marker(out) is not None


def test_replaces_a_previous_sample_cleanly(tmp_path):
    out = tmp_path / "s"
    generate_sample(out, n_train=20, n_test=6, seed=0, image_scale=0.1, workers=1, progress=False)
    generate_sample(out, n_train=10, n_test=2, seed=1, image_scale=0.1, workers=1, progress=False)
    assert len(list((out / "train_features").iterdir())) == 10  # no leftovers from the first
    assert len(list((out / "test_features").iterdir())) == 2
    assert sample_marker(out)["seed"] == 1
    generate_sample(
        tmp_path / "fresh", n_train=10, n_test=2, seed=1, image_scale=0.1, workers=1, progress=False
    )
    assert file_digests(out) == file_digests(tmp_path / "fresh")


def test_an_interrupted_run_never_looks_complete(tmp_path, monkeypatch):
    out = tmp_path / "s"
    generate_sample(out, n_train=8, n_test=2, image_scale=0.1, workers=1, progress=False)

    def interrupted(plan, folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(write_module, "write_csvs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_sample(
            out, n_train=8, n_test=2, seed=1, image_scale=0.1, workers=1, progress=False
        )
    assert sample_marker(out) is None
    assert not (out / MARKER_NAME).exists() and not (out / "train_features.csv").exists()
    monkeypatch.undo()
    # The unfinished folder is still recognised as ours and rebuilt without complaint.
    generate_sample(out, n_train=8, n_test=2, seed=1, image_scale=0.1, workers=1, progress=False)
    assert sample_marker(out)["seed"] == 1
    assert not (out / sample_module.INCOMPLETE_NAME).exists()


def test_a_run_killed_while_writing_a_csv_is_replaced(tmp_path):
    out = tmp_path / "s"
    generate_sample(out, n_train=8, n_test=2, image_scale=0.1, workers=1, progress=False)
    # What a kill between writing and renaming a CSV leaves behind.
    (out / "conserviz-sample.json").unlink()
    (out / sample_module.INCOMPLETE_NAME).write_text("")
    (out / "train_labels.csv.partial").write_text("id,antelope")
    # Version 2 writes through conserviz_utils.files.fileio, whose temporary files look like this.
    (out / ".conserviz-detections.json.4242-0a1b2c3d.tmp").write_text("{")
    generate_sample(out, n_train=8, n_test=2, image_scale=0.1, workers=1, progress=False)
    assert sample_marker(out) is not None
    assert not (out / "train_labels.csv.partial").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_train": 7}, "n_train"),
        ({"n_test": -1}, "n_test"),
        ({"seed": -2}, "seed"),
        ({"image_scale": 0}, "image_scale"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_parameters_are_named(tmp_path, kwargs, name):
    with pytest.raises(SampleParameterError, match=name) as caught:
        generate_sample(tmp_path / "s", **{"n_train": 8, "n_test": 0, **kwargs})
    assert "Fix:" in str(caught.value)
    assert not (tmp_path / "s").exists()


# --- command line and grid -----------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "conserviz_utils.tools.sample", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )


def test_cli_builds_a_sample_and_prints_the_report(tmp_path):
    out = tmp_path / "cli"
    done = run_cli("--out", str(out), "--n-train", "12", "--n-test", "4", "--seed", "3",
                   "--image-scale", "0.1", "--workers", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "12 train images" in done.stdout and "images/s" in done.stdout
    assert json.loads((out / MARKER_NAME).read_text())["n_test"] == 4
    assert sample_marker(out)["seed"] == 3  # the CLI's marker is recognised by the library
    assert len(pd.read_csv(out / "test_features.csv")) == 4


def test_cli_refusal_is_one_clear_line(tmp_path):
    (tmp_path / "thesis.tex").write_text("")
    done = run_cli(
        "--out", str(tmp_path), "--n-train", "8", "--image-scale", "0.1", "--no-progress"
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "thesis.tex" in done.stderr and "Fix:" in done.stderr


def test_sample_grid_shows_every_class_by_day_and_night():
    grid = sample_grid(seed=0, tile_width=96, species=("leopard", "bird"))
    tile_height = round(96 * 360 / 640)
    assert grid.size == (4 * 96, tile_height + 18)
    pixels = np.asarray(grid, np.int16)[:tile_height]
    spread = np.abs(pixels - pixels.mean(axis=2, keepdims=True)).mean(axis=(0, 2))
    day, night = spread[:96].mean(), spread[96:192].mean()
    assert day > 3 and night < 2  # columns alternate day (colour) and night (grey)


# --- the package ---------------------------------------------------------------------------------


def test_the_package_modules_import_no_private_names_and_form_no_cycle():
    package = PROJECT_ROOT / "conserviz_utils" / "tools" / "sample"
    imports: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = imports.setdefault(path.stem, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("conserviz"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private or private == ["__version__"], (path.name, private)
                if node.module.startswith("conserviz_utils.tools.sample."):
                    found.add(node.module.rsplit(".", 1)[1])
    assert {"plan", "draw", "animals", "paint", "detector", "write", "cli"} <= set(imports)

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(
            step == target or (step not in seen and reaches(step, target, seen | {step}))
            for step in imports.get(start, ())
        )

    assert not [name for name in imports if reaches(name, name, set())]
    # The old single module's public API is all still importable from the package.
    for name in ("generate_sample", "plan_sample", "sample_grid", "sample_marker", "main",
                 "SampleReport", "SampleFolderError", "SampleParameterError", "MARKER_NAME",
                 "GENERATOR_NAME", "GENERATOR_VERSION", "INCOMPLETE_NAME", "REAL_CLASS_COUNTS"):
        assert hasattr(sample_module, name), name
    assert issubclass(SampleFolderError, ConservizError)
    assert SampleParameterError.__module__ == "conserviz_utils.errors"
