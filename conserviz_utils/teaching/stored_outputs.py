"""The outputs stored in the committed notebooks: copied from one executed run, paths made relative.

``make stored-outputs`` runs the course once on the quick sample, then this module copies each executed
cell's outputs into the notebook cell of the same id and source, and rebuilds the solved copies.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

from conserviz_utils.errors import ConservizError
from conserviz_utils.files.fileio import atomic_write_text
from conserviz_utils.teaching.solutions import NOTEBOOKS_DIR, PROJECT_ROOT, write_build


def relative_paths(value, root: str):
    """``value`` (an output's JSON) with every ``root/`` in its strings removed."""
    if isinstance(value, str):
        return value.replace(root + "/", "").replace(root, ".")
    if isinstance(value, list):
        return [relative_paths(item, root) for item in value]
    if isinstance(value, dict):
        return {key: relative_paths(item, root) for key, item in value.items()}
    return value


def store_outputs(executed_dir: Path, notebooks_dir: Path = NOTEBOOKS_DIR,
                  project_root: Path = PROJECT_ROOT) -> list[Path]:
    """Copy the outputs of the executed notebooks into the notebooks; returns the notebooks written."""
    updated = {}
    root = str(Path(project_root).resolve())
    for path in sorted(Path(notebooks_dir).glob("*.ipynb")):
        executed_path = Path(executed_dir) / path.name
        if not executed_path.is_file():
            raise ConservizError(f"no executed copy of {path.name}", path=executed_path,
                                 fix="run `make stored-outputs`, which runs every notebook first")
        notebook = nbformat.read(path, as_version=4)
        executed = {cell.get("id"): cell for cell in nbformat.read(executed_path, as_version=4).cells}
        for cell in notebook.cells:
            if cell.cell_type != "code":
                continue
            ran = executed.get(cell.get("id"))
            if ran is None or ran.source != cell.source:
                raise ConservizError(
                    f"cell {cell.get('id')} of {path.name} differs from the executed copy",
                    path=executed_path, fix="the run is older than the notebook: run `make stored-outputs` again",
                )
            cell.outputs = [nbformat.from_dict(relative_paths(copy.deepcopy(dict(o)), root)) for o in ran.outputs]
            cell.execution_count = ran.execution_count
        updated[path] = notebook
    for path, notebook in updated.items():  # only once every notebook matched its run
        atomic_write_text(path, nbformat.writes(notebook) + "\n", what="notebook")
    return list(updated)


def main(argv: list[str] | None = None) -> int:
    """Store the executed run's outputs in the notebooks, then rebuild the solved copies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("executed", type=Path, help="the executed copies, e.g. outputs/stored/executed")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR, help="the notebooks folder")
    args = parser.parse_args(argv)
    try:
        for path in store_outputs(args.executed, args.notebooks):
            print(f"stored the outputs of {path.name}")
        write_build(args.notebooks)
    except ConservizError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
