"""The exercise build: learner placeholders and solved notebooks from one source, so they cannot drift.

``notebooks/solutions/source/<notebook>.py`` holds two cells per exercise, ``# %% placeholder <cell id>``
(what the learner gets: ``# YOUR CODE HERE`` and an answer set to ``None``) and ``# %% solution <cell id>``
(the worked answer, asserting that its checker passed). ``make solutions`` writes each placeholder into
the learner notebook's cell of that id (tagged ``exercise``) and writes ``notebooks/solutions/<notebook>.ipynb``:
the notebook with every exercise solved (tagged ``solution``) and outputs cleared, except those nbval
compares (``# NBVAL_CHECK_OUTPUT``). Nothing runs, so the build is deterministic; ``--check`` writes
nothing and exits 1 naming what is out of date.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from conserviz_utils.errors import ConservizError
from conserviz_utils.files.fileio import atomic_write_text

__all__ = ["EXERCISE_TAG", "SOLUTION_TAG", "ExerciseBuildError", "ExerciseSource", "build", "main", "parse_sources",
           "stale_files", "write_build"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"

#: Tag of the learner notebooks' exercise cells, and of the solved copies' worked answers.
EXERCISE_TAG, SOLUTION_TAG = "exercise", "solution"

#: A placeholder must say where the learner writes; a solution must prove itself.
PLACEHOLDER_MARK = "# YOUR CODE HERE"
SOLUTION_PROOF = ".passed"

_MARKER = re.compile(r"^# %% (?P<kind>placeholder|solution) (?P<cell>[A-Za-z0-9_-]+)\s*$")
_CHECKED_OUTPUT = "# NBVAL_CHECK_OUTPUT"
_BANNER_ID = "solved-copy"


class ExerciseBuildError(ConservizError):
    """An exercise source file and its notebook do not fit together."""


@dataclass(frozen=True)
class ExerciseSource:
    """The two versions of one exercise cell."""

    placeholder: str
    solution: str


def parse_sources(path: Path) -> dict[str, ExerciseSource]:
    """Read one exercise source file into cell id → placeholder and solution, refusing a malformed one."""
    path = Path(path)
    cells: dict[tuple[str, str], list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        marker = _MARKER.match(line)
        if marker:
            key = (marker["cell"], marker["kind"])
            if key in cells:
                raise ExerciseBuildError(f"line {number}: a second {key[1]} for cell {key[0]!r}", path=path,
                                         fix="keep one placeholder and one solution per exercise cell")
            current = cells[key] = []
        elif line.startswith("# %%"):
            raise ExerciseBuildError(
                f"line {number}: {line!r} is not a '# %% placeholder <id>' or '# %% solution <id>' marker",
                path=path, fix="mark each cell '# %% placeholder <cell id>' or '# %% solution <cell id>'",
            )
        elif current is not None:
            current.append(line)
    sources: dict[str, ExerciseSource] = {}
    for cell in dict.fromkeys(cell for cell, _ in cells):
        texts = {}
        for kind in ("placeholder", "solution"):
            if (cell, kind) not in cells:
                raise ExerciseBuildError(f"cell {cell!r} has no {kind}", path=path,
                                         fix=f"add a '# %% {kind} {cell}' cell")
            texts[kind] = "\n".join(cells[(cell, kind)]).strip("\n")
            if not texts[kind].strip():
                raise ExerciseBuildError(f"the {kind} of cell {cell!r} is empty", path=path, fix="write its code")
        if PLACEHOLDER_MARK not in texts["placeholder"]:
            raise ExerciseBuildError(f"the placeholder of cell {cell!r} does not say {PLACEHOLDER_MARK!r}", path=path,
                                     fix=f"start it with a {PLACEHOLDER_MARK!r} comment saying what to write")
        if SOLUTION_PROOF not in texts["solution"]:
            raise ExerciseBuildError(f"the solution of cell {cell!r} does not assert that its check passed", path=path,
                                     fix="end it with: result = check_...(...); assert result.passed, result")
        sources[cell] = ExerciseSource(texts["placeholder"], texts["solution"])
    return sources


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _exercise_cells(notebook, path: Path, sources: dict[str, ExerciseSource], source_path: Path):
    """The notebook's exercise cells by id, checked against the source file's cells."""
    cells = {cell["id"]: cell for cell in notebook.cells if EXERCISE_TAG in _tags(cell)}
    for cell in cells.values():
        if cell.cell_type != "code":
            raise ExerciseBuildError(f"cell {cell['id']!r} is tagged {EXERCISE_TAG!r} but is {cell.cell_type}",
                                     path=path, fix="tag only code cells as exercises")
    missing = [cell for cell in sources if cell not in cells]
    if missing:
        raise ExerciseBuildError(
            f"no code cell tagged {EXERCISE_TAG!r} has the id(s) {', '.join(missing)} of {source_path.name}", path=path,
            fix="add the exercise cells to the notebook (tag 'exercise', those ids), or remove them from the source "
            "file",
        )
    unsourced = [cell for cell in cells if cell not in sources]
    if unsourced:
        raise ExerciseBuildError(f"exercise cell(s) {', '.join(unsourced)} have no placeholder and solution",
                                 path=source_path, fix="add a placeholder and a solution for them to this source file")
    return cells


def _solved_copy(notebook, name: str, sources: dict[str, ExerciseSource]):
    """The learner notebook with its exercise cells solved and the run's outputs cleared."""
    solved = copy.deepcopy(notebook)
    code_cells = [cell for cell in solved.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        tags = _tags(cell)
        if EXERCISE_TAG in tags:
            cell.source = sources[cell["id"]].solution
            cell.metadata["tags"] = [SOLUTION_TAG if t == EXERCISE_TAG else t for t in tags]
            cell.outputs = []
        elif _CHECKED_OUTPUT not in cell.source:
            cell.outputs = []
        # nbval refuses stored outputs of an unrun cell; a count from the cell's position keeps
        # the copy the same whatever the learner notebook's last run counted.
        cell.execution_count = number if cell.outputs else None
        for output in cell.outputs:
            if "execution_count" in output:
                output["execution_count"] = cell.execution_count
    banner = nbformat.v4.new_markdown_cell(
        f"**Solved copy of `{name}.ipynb`** — every exercise below holds a worked answer (cells tagged "
        f"`{SOLUTION_TAG}`) that asserts its check passed. This file is generated by `make solutions` from "
        f"`notebooks/{name}.ipynb` and `notebooks/solutions/source/{name}.py`: edit those, never this copy. Run it "
        "top to bottom like the original."
    )
    banner["id"] = _BANNER_ID
    solved.cells.insert(0, banner)
    return solved


def build(notebooks_dir: Path = NOTEBOOKS_DIR) -> dict[Path, nbformat.NotebookNode]:
    """Path → notebook the build writes (learner notebooks with placeholders, solved copies), in a stable order."""
    notebooks_dir = Path(notebooks_dir)
    solutions, sources_dir = notebooks_dir / "solutions", notebooks_dir / "solutions" / "source"
    outputs: dict[Path, nbformat.NotebookNode] = {}
    for source_path in sorted(sources_dir.glob("*.py")):
        name = source_path.stem
        path = notebooks_dir / f"{name}.ipynb"
        if not path.is_file():
            raise ExerciseBuildError(f"the exercise source {source_path.name} has no notebook {path.name}",
                                     path=source_path, fix="name the source file after its notebook, or remove it")
        sources = parse_sources(source_path)
        notebook = nbformat.read(path, as_version=4)
        cells = _exercise_cells(notebook, path, sources, source_path)
        for cell_id, cell in cells.items():
            placeholder = sources[cell_id].placeholder
            if cell.source != placeholder:
                cell.source = placeholder
                cell.outputs = []  # an output of other code would mislead
                cell.execution_count = None
        outputs[path] = notebook
        outputs[solutions / path.name] = _solved_copy(notebook, name, sources)
    unsourced = [path.name for path in sorted(notebooks_dir.glob("*.ipynb")) if path not in outputs
                 and any(EXERCISE_TAG in _tags(c) for c in nbformat.read(path, as_version=4).cells)]
    if unsourced:
        raise ExerciseBuildError(
            f"{', '.join(unsourced)} tag exercise cells but have no exercise source file", path=sources_dir,
            fix="add notebooks/solutions/source/<notebook>.py with their placeholders and solutions",
        )
    return outputs


def _stale(built: dict[Path, nbformat.NotebookNode]) -> list[Path]:
    # Compared as parsed notebooks, so a save with another JSON layout is not "stale".
    return [path for path, notebook in built.items()
            if (nbformat.read(path, as_version=4) if path.is_file() else None) != notebook]


def stale_files(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The notebooks whose content on disk differs from what the build would write."""
    return _stale(build(notebooks_dir))


def write_build(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Write what the build produces where it differs from the files on disk; returns the paths written."""
    built = build(notebooks_dir)
    written = _stale(built)
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, nbformat.writes(built[path]) + "\n", what="notebook")
    return written


def main(argv: list[str] | None = None) -> int:
    """Write the placeholders and the solved copies (``--check``: only say what is stale)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR, help="the notebooks folder")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_files(args.notebooks)
            for path in stale:
                print(f"out of date: {path}", file=sys.stderr)
            if stale:
                print("run `make solutions` to rebuild them", file=sys.stderr)
            return 1 if stale else 0
        written = write_build(args.notebooks)
    except ExerciseBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("exercise notebooks are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
