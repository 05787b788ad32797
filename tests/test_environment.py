"""pyproject.toml is the one source of truth; environment.yml, Makefile and CI must agree with it."""

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


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    return dict(_parse(r) for r in requirements)


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


def test_environment_yml_lists_exactly_the_pyproject_requirements():
    assert _environment_requirements() == _pyproject_requirements()


def test_requirements_are_ranges_not_pins():
    pinned = [name for name, spec in _pyproject_requirements().items() if spec.startswith("==")]
    assert not pinned, f"pinned requirements break installs: {pinned}"


def test_ci_and_readme_use_the_same_test_command():
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "make course" in readme and "make test" in readme
