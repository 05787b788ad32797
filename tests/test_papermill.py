"""papermill's ``-p`` reaches the course: the notebooks' parameters cells are what papermill replaces.

Each run executes the real opening cells of notebook 04 (its markdown, the cell tagged
``parameters``, the settings cell and the recipe cell, copied unchanged) through papermill's own
command line, so a notebook edit that breaks ``papermill 04_train.ipynb out.ipynb -p epochs 3``
fails here. papermill is in the test extra only; the course never needs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("papermill", reason="papermill is optional (pip install papermill, or the test extra)")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_train.ipynb"
REPORT = 'import json\nprint(json.dumps({"epochs": settings.epochs, "fine_tune_epochs": recipe.fine_tune_epochs, ' \
    '"batch_size": recipe.batch_size, "quick": settings.quick, "output_dir": str(settings.output_dir)}))'


def opening_cells(tmp_path: Path) -> Path:
    """Notebook 04 up to its recipe cell, plus one cell that prints what the run would use."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    recipe_at = next(i for i, cell in enumerate(notebook.cells) if "Recipe.from_settings(" in cell.source)
    notebook.cells = notebook.cells[: recipe_at + 1] + [nbformat.v4.new_code_cell(REPORT)]
    path = tmp_path / "04_opening.ipynb"
    nbformat.write(notebook, path)
    return path


def this_interpreters_kernel(folder: Path) -> Path:
    """A kernelspec running this interpreter, in a folder for JUPYTER_PATH (a machine's own "python3" may not)."""
    spec = folder / "kernels" / "conserviz-test"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "conserviz test", "language": "python"}))
    return folder


def papermill(source: Path, out: Path, *parameters: str, env_quick: bool = True) -> subprocess.CompletedProcess:
    """``papermill SOURCE OUT -p NAME VALUE …`` on a kernel of this interpreter."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONSERVIZ_")}
    env["JUPYTER_PATH"] = str(this_interpreters_kernel(source.parent / "jupyter"))
    if env_quick:
        env["CONSERVIZ_QUICK"] = "1"
    command = [sys.executable, "-m", "papermill", str(source), str(out), "--kernel", "conserviz-test",
               "--no-progress-bar", *parameters]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=source.parent)


def printed_report(out: Path) -> dict:
    """The JSON the last cell of the executed notebook printed."""
    executed = nbformat.read(out, as_version=4)
    stream = "".join(o.get("text", "") for o in executed.cells[-1].outputs if o.output_type == "stream")
    return json.loads(stream)


def test_papermill_p_epochs_changes_the_run_over_the_environment(tmp_path):
    out = tmp_path / "out.ipynb"
    done = papermill(opening_cells(tmp_path), out, "-p", "epochs", "3", "-p", "batch_size", "8",
                     "-p", "output_dir", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = printed_report(out)
    # The parameters win; quick mode still comes from CONSERVIZ_QUICK (its parameter stayed None).
    assert report == {"epochs": 3, "fine_tune_epochs": 3, "batch_size": 8, "quick": True,
                      "output_dir": str(tmp_path / "run")}
    executed = nbformat.read(out, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "epochs = 3" in injected[0].source


def test_without_parameters_the_notebook_keeps_its_defaults(tmp_path):
    out = tmp_path / "out.ipynb"
    done = papermill(opening_cells(tmp_path), out, "-p", "output_dir", str(tmp_path / "run"), env_quick=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = printed_report(out)
    assert report["epochs"] == 1 and report["fine_tune_epochs"] == 1 and report["quick"] is False


def test_a_bad_parameter_stops_the_run_with_a_message_naming_it(tmp_path):
    out = tmp_path / "out.ipynb"
    done = papermill(opening_cells(tmp_path), out, "-p", "batch_size", "0")
    assert done.returncode != 0
    assert "notebook parameter batch_size=0 must be at least 1" in done.stderr
    assert "-p batch_size 32" in done.stderr  # the fix, in papermill's own words
