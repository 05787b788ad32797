"""The exercise build: placeholders and solved copies come from one source and stay up to date."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from conserviz_utils.teaching.solutions import (
    EXERCISE_TAG,
    SOLUTION_TAG,
    ExerciseBuildError,
    build,
    main,
    parse_sources,
    stale_files,
    write_build,
)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# Every course notebook has exercises.
WITH_EXERCISES = [
    "01_explore", "02_split", "03_model", "04_train", "05_evaluate", "06_submit", "07_improve",
]


def test_the_committed_notebooks_are_what_the_build_writes():
    stale = stale_files(NOTEBOOKS)
    assert not stale, f"run `make solutions`: {[str(p.relative_to(NOTEBOOKS)) for p in stale]}"


@pytest.mark.parametrize("name", WITH_EXERCISES)
def test_each_notebook_has_an_exercises_section_with_hands_on_checks(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    headings = [c.source for c in notebook.cells if c.cell_type == "markdown"]
    assert any(h.startswith("## Exercises") for h in headings)
    tasks = [h for h in headings if re.match(r"\*\*Exercise \d", h)]
    assert 2 <= len(tasks) <= 4
    hands_on = [c for c in notebook.cells if EXERCISE_TAG in c.metadata.get("tags", [])]
    assert len(hands_on) >= 2
    sources = parse_sources(NOTEBOOKS / "solutions" / "source" / f"{name}.py")
    for cell in hands_on:
        placeholder = sources[cell["id"]].placeholder
        assert cell.source == placeholder
        # The learner's cell runs as it is: the answer starts as None and the check says so.
        assert re.search(r"^\w+(, \w+)* = None(, None)*$", placeholder, re.MULTILINE), placeholder
        assert re.search(r"^check_\w+\(", placeholder, re.MULTILINE), placeholder
        assert "assert result.passed, result" in sources[cell["id"]].solution


@pytest.mark.parametrize("name", WITH_EXERCISES)
def test_the_parameters_cell_is_tagged_for_papermill(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    parameters, settings = code[0], code[1]
    assert "parameters" in parameters.metadata.get("tags", [])
    # papermill injects plain assignments after this cell: it must hold plain values, all used below.
    names = [line.split(" = ")[0] for line in parameters.source.splitlines() if not line.startswith("#")]
    assert all(line.endswith(" = None") for line in parameters.source.splitlines() if not line.startswith("#"))
    assert "CourseSettings.from_env(" in settings.source
    assert all(f"{name}={name}" in settings.source for name in names) and len(names) == 9


@pytest.mark.parametrize("name", WITH_EXERCISES)
def test_the_solved_copy_holds_the_solutions_and_no_stale_outputs(name):
    solved = nbformat.read(NOTEBOOKS / "solutions" / f"{name}.ipynb", as_version=4)
    assert solved.cells[0].cell_type == "markdown" and "Solved copy" in solved.cells[0].source
    solutions = [c for c in solved.cells if SOLUTION_TAG in c.metadata.get("tags", [])]
    assert solutions and all(not c.outputs for c in solutions)
    assert all(EXERCISE_TAG not in c.metadata.get("tags", []) for c in solved.cells)
    for cell in solved.cells:
        if cell.cell_type == "code" and cell.outputs:
            assert "# NBVAL_CHECK_OUTPUT" in cell.source


# --- the build itself, on a small notebooks folder --------------------------------------------

SOURCE = """\
# The exercises of 01_tiny.

# %% placeholder ex-answer
# YOUR CODE HERE: the answer.
answer = None

check_answer(answer)

# %% solution ex-answer
answer = 42

result = check_answer(answer)
assert result.passed, result
result
"""


def tiny_notebook(exercise_source: str = "answer = 'learner work'") -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    checked = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)", execution_count=7)
    checked.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    plain = nbformat.v4.new_code_cell("2 + 2", execution_count=8)
    plain.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "4"}, execution_count=8)]
    exercise = nbformat.v4.new_code_cell(exercise_source, execution_count=9)
    exercise.metadata["tags"] = [EXERCISE_TAG]
    exercise.outputs = [nbformat.v4.new_output("stream", name="stdout", text="old\n")]
    for cell, cell_id in ((checked, "checked"), (plain, "plain"), (exercise, "ex-answer")):
        cell["id"] = cell_id
    notebook.cells = [nbformat.v4.new_markdown_cell("# Tiny"), checked, plain, exercise]
    notebook.cells[0]["id"] = "title"
    return notebook


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "solutions" / "source").mkdir(parents=True)
    (tmp_path / "solutions" / "source" / "01_tiny.py").write_text(SOURCE)
    nbformat.write(tiny_notebook(), tmp_path / "01_tiny.ipynb")
    return tmp_path


def test_build_writes_the_placeholder_and_the_solved_copy(folder):
    assert main(["--check", "--notebooks", str(folder)]) == 1
    written = write_build(folder)
    assert written == [folder / "01_tiny.ipynb", folder / "solutions" / "01_tiny.ipynb"]
    learner = nbformat.read(folder / "01_tiny.ipynb", as_version=4)
    exercise = learner.cells[3]
    assert exercise.source.startswith("# YOUR CODE HERE") and exercise.source.endswith("check_answer(answer)")
    assert exercise.outputs == [] and exercise.execution_count is None
    assert learner.cells[2].outputs  # the rest of the learner notebook keeps its outputs

    solved = nbformat.read(folder / "solutions" / "01_tiny.ipynb", as_version=4)
    assert [c["id"] for c in solved.cells] == ["solved-copy", "title", "checked", "plain", "ex-answer"]
    assert "01_tiny.py" in solved.cells[0].source
    checked, plain, solution = solved.cells[2:]
    assert checked.outputs[0]["text"] == "1\n" and checked.execution_count == 1
    assert plain.outputs == [] and plain.execution_count is None
    assert solution.source.startswith("answer = 42") and solution.metadata["tags"] == [SOLUTION_TAG]
    assert solution.outputs == []

    assert write_build(folder) == []  # nothing changed, nothing written
    assert main(["--check", "--notebooks", str(folder)]) == 0


def test_a_rerun_of_the_learner_notebook_changes_only_checked_outputs(folder):
    write_build(folder)
    learner = nbformat.read(folder / "01_tiny.ipynb", as_version=4)
    learner.cells[2].outputs[0]["data"]["text/plain"] = "four"  # a cell nbval does not compare
    learner.cells[2].execution_count = 30
    learner.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="not yet\n")]
    nbformat.write(learner, folder / "01_tiny.ipynb")
    assert stale_files(folder) == []
    learner.cells[1].outputs[0]["text"] = "2\n"  # a checked output: the copy must follow
    nbformat.write(learner, folder / "01_tiny.ipynb")
    assert stale_files(folder) == [folder / "solutions" / "01_tiny.ipynb"]


def test_learner_edits_to_an_exercise_cell_are_reset_by_the_build(folder):
    write_build(folder)
    nbformat.write(tiny_notebook("answer = 41"), folder / "01_tiny.ipynb")
    assert folder / "01_tiny.ipynb" in stale_files(folder)


def test_sources_and_notebooks_must_agree(folder):
    (folder / "solutions" / "source" / "01_tiny.py").write_text(SOURCE.replace("ex-answer", "ex-other"))
    with pytest.raises(ExerciseBuildError, match="no code cell tagged 'exercise' has the id"):
        build(folder)
    (folder / "solutions" / "source" / "01_tiny.py").write_text(SOURCE)
    notebook = tiny_notebook()
    notebook.cells[2].metadata["tags"] = [EXERCISE_TAG]
    nbformat.write(notebook, folder / "01_tiny.ipynb")
    with pytest.raises(ExerciseBuildError, match="plain have no placeholder"):
        build(folder)
    nbformat.write(tiny_notebook(), folder / "01_tiny.ipynb")
    (folder / "solutions" / "source" / "02_missing.py").write_text(SOURCE)
    with pytest.raises(ExerciseBuildError, match="has no notebook 02_missing.ipynb"):
        build(folder)
    assert main(["--notebooks", str(folder)]) == 1


def test_a_notebook_with_exercises_needs_a_source_file(folder):
    (folder / "solutions" / "source" / "01_tiny.py").unlink()
    with pytest.raises(ExerciseBuildError, match="01_tiny.ipynb tag exercise cells"):
        build(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.replace("# %% solution ex-answer", "# %% placeholder ex-answer"), "a second placeholder"),
        (lambda s: s.split("# %% solution")[0], "has no solution"),
        (lambda s: s.replace("# YOUR CODE HERE", "# write"), "does not say '# YOUR CODE HERE'"),
        (lambda s: s.replace("assert result.passed, result", "print(result)"), "does not assert"),
        (lambda s: s.replace("# %% solution ex-answer", "# %% answer ex-answer"), "is not a '# %% placeholder"),
        (lambda s: s.replace("answer = 42", "").replace("result = check_answer(answer)\nassert result.passed, result\nresult", ""), "is empty"),
    ],
)
def test_malformed_sources_are_refused_with_the_line_and_the_fix(tmp_path, change, message):
    path = tmp_path / "01_tiny.py"
    path.write_text(change(SOURCE))
    with pytest.raises(ExerciseBuildError, match=re.escape(message)) as caught:
        parse_sources(path)
    assert str(path) in str(caught.value) and "Fix:" in str(caught.value)
