"""The committed notebooks' outputs come from one executed run (`teaching.stored_outputs`)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from conserviz_utils.errors import ConservizError
from conserviz_utils.teaching.stored_outputs import main, store_outputs


def write(path: Path, sources: list[str], outputs: list[list] | None = None) -> None:
    notebook = nbformat.v4.new_notebook()
    for number, source in enumerate(sources):
        cell = nbformat.v4.new_code_cell(source, id=f"cell-{number}")
        if outputs is not None:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=t) for t in outputs[number]]
            cell.execution_count = number + 1
        notebook.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


def test_outputs_are_copied_by_cell_with_the_machines_folder_made_relative(tmp_path):
    root = tmp_path / "project"
    notebooks, executed = root / "notebooks", root / "outputs" / "stored" / "executed"
    write(notebooks / "01_a.ipynb", ["print(1)", "print(2)"], [["old\n"], []])
    write(executed / "01_a.ipynb", ["print(1)", "print(2)"],
          [["1\n"], [f"wrote {root}/outputs/stored/model.pt\n"]])
    assert store_outputs(executed, notebooks, root) == [notebooks / "01_a.ipynb"]
    cells = nbformat.read(notebooks / "01_a.ipynb", as_version=4).cells
    assert [c.outputs[0]["text"] for c in cells] == ["1\n", "wrote outputs/stored/model.pt\n"]
    assert [c.execution_count for c in cells] == [1, 2]


def test_a_run_older_than_the_notebook_is_refused_and_nothing_is_written(tmp_path):
    notebooks, executed = tmp_path / "notebooks", tmp_path / "executed"
    write(notebooks / "01_a.ipynb", ["print('new')"], [["kept\n"]])
    write(executed / "01_a.ipynb", ["print('old')"], [["old\n"]])
    with pytest.raises(ConservizError, match="differs from the executed copy"):
        store_outputs(executed, notebooks, tmp_path)
    assert nbformat.read(notebooks / "01_a.ipynb", as_version=4).cells[0].outputs[0]["text"] == "kept\n"


def test_a_missing_executed_copy_says_how_to_make_it(tmp_path, capsys):
    write(tmp_path / "notebooks" / "01_a.ipynb", ["1"])
    assert main([str(tmp_path / "nothing"), "--notebooks", str(tmp_path / "notebooks")]) == 1
    assert "make stored-outputs" in capsys.readouterr().err
