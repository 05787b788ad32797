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
    from conserviz_utils.tools.sample import generate_sample

    out = tmp_path_factory.mktemp("sample") / "sample"
    generate_sample(out, n_train=160, n_test=40, seed=0, image_scale=0.25, progress=False)
    return out


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared reference folder; tests that need it skip cleanly without it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (only the project's CI and developers have it)")
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def own_cache_folder(tmp_path_factory):
    """Remembered precision decisions and file digests go to a folder of this test run.

    Otherwise a decision the user's machine remembered (or a test's fake measurement) would leak
    between the tests and the user's own runs.
    """
    import os

    folder = tmp_path_factory.mktemp("conserviz-cache")
    before = os.environ.get("CONSERVIZ_CACHE_DIR")
    os.environ["CONSERVIZ_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("CONSERVIZ_CACHE_DIR", None)
    else:
        os.environ["CONSERVIZ_CACHE_DIR"] = before
