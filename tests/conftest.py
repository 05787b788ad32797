"""Shared fixtures: a small generated sample dataset, and the ../shared reference folder."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")  # tests never open windows

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A small sample dataset (quarter-size images), generated once per test session."""
    from conserviz_utils.sample import generate_sample

    out = tmp_path_factory.mktemp("sample") / "sample"
    generate_sample(out, n_train=160, n_test=40, seed=0, image_scale=0.25, progress=False)
    return out


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared reference folder; tests that need it skip cleanly without it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (only the project's CI and developers have it)")
    return SHARED
