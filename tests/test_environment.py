"""pyproject.toml is the one source of truth; environment.yml, Makefile and CI must agree with it.

The split is the same everywhere: the course (``dependencies``: ``make course``, ``make lab``,
environment.yml) and two extras, ``test`` and ``docs``, that only ``make test`` and ``make site``
add (``tests/test_no_make.py`` checks the make side).
"""

from __future__ import annotations

import re
import tomllib

from conftest import PROJECT_ROOT

# conda-forge names that differ from the PyPI names in pyproject.toml.
CONDA_NAMES = {"torch": "pytorch", "pillow": "pillow"}
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*([<>=!~].*)?$")


def _parse(requirement: str) -> tuple[str, str]:
    """Split 'name>=1.0' into a normalised name and its version range."""
    match = REQUIREMENT.match(requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    name = match.group(1).lower().replace("_", "-")
    return name, (match.group(2) or "").replace(" ", "")


def _project() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]


def _pyproject_requirements(*extras: str) -> dict[str, str]:
    """The course's requirements, or those of the named extras."""
    project = _project()
    requirements = [r for extra in extras for r in project["optional-dependencies"][extra]]
    return dict(_parse(r) for r in (requirements if extras else project["dependencies"]))


def _environment_requirements() -> dict[str, str]:
    """Read the conda and pip entries of environment.yml (a flat list; no YAML parser needed)."""
    found = {}
    text = (PROJECT_ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        item = line.strip()
        if not item.startswith("- ") or item.endswith(":"):
            continue
        entry = item[2:].strip()
        if entry in ("pip", "-e .") or entry.startswith("python"):
            continue
        name, spec = _parse(entry)
        pypi_name = {v: k for k, v in CONDA_NAMES.items()}.get(name, name)
        found[pypi_name] = spec
    return found


def test_environment_yml_lists_exactly_the_course_requirements():
    assert _environment_requirements() == _pyproject_requirements()


def test_environment_yml_adds_the_extras_as_make_test_does():
    extras = set(_project()["optional-dependencies"])
    assert extras == {"test", "docs"}
    assert not set(_environment_requirements()) & set(_pyproject_requirements(*extras))
    text = (PROJECT_ROOT / "environment.yml").read_text()
    assert 'pip install -e ".[test,docs]"' in text
    assert '-e ".[test,docs]"' in (PROJECT_ROOT / "Makefile").read_text()


def test_requirements_are_ranges_not_pins():
    requirements = {**_pyproject_requirements(), **_pyproject_requirements("test", "docs")}
    pinned = [name for name, spec in requirements.items() if spec.startswith("==")]
    assert not pinned, f"pinned requirements break installs: {pinned}"


def test_the_course_needs_no_test_or_website_package():
    course = set(_pyproject_requirements())
    for extra in ("test", "docs"):
        shared = course & set(_pyproject_requirements(extra))
        assert not shared, f"{extra} packages in the course install: {shared}"


def test_ci_and_readme_use_the_same_test_command():
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "make course" in readme and "make test" in readme
