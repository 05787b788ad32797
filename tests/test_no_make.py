"""The path without make: each make target runs exactly the command the README gives for it.

The README lists the commands for Windows and anyone without make (``python -m venv .venv``,
``pip install -e .``, ``conserviz course``, ``jupyter lab notebooks/``). These tests ask make
itself what it would run (``make -n``) and compare, so the two paths cannot drift apart; they
run the targets against stand-in commands to check that ``QUICK=1 EPOCHS=0`` reaches both, and
that the course's install never pulls in the test or website extras.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
BIN = ".venv/bin/"
STAMPS = {"course": ".venv/.conserviz-course", "test": ".venv/.conserviz-test", "docs": ".venv/.conserviz-docs"}
# What `make lab` adds as root; the README says so next to the commands.
AS_ROOT = ' $(if [ "$(id -u)" = 0 ]; then echo --allow-root; fi)'


def make(*arguments: str, env: dict | None = None) -> list[str]:
    """The commands ``make`` runs (or, with ``-n``, would run) for ``arguments``, one per line."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed (the path without make is what the README offers then)")
    result = subprocess.run(
        ["make", "--no-print-directory", *arguments],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 0, f"make {' '.join(arguments)} failed:\n{result.stderr}"
    return [line for line in result.stdout.splitlines() if line.strip()]


def dry_run(target: str, *variables: str) -> list[str]:
    """The commands of ``target`` alone, with the environment it depends on taken as built."""
    skip_stamps = [flag for stamp in STAMPS.values() for flag in ("-o", stamp)]
    return make("-n", *skip_stamps, target, *variables)


def install_commands(stamp: str, *variables: str) -> list[str]:
    """The commands that build one of the .venv stamps from nothing."""
    return make("-n", "-B", STAMPS[stamp], *variables)


def readme_block(marker: str) -> list[str]:
    """The commands of the README's fenced code block that contains ``marker``, comments removed."""
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        if marker in block:
            lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
            return [line for line in lines if line]
    raise AssertionError(f"README.md has no bash block with {marker!r}")


def without_make() -> list[str]:
    """The README's path without make, less the activation line (the shell's, not a command)."""
    return [c for c in readme_block("python -m venv .venv") if not c.startswith("source ")]


def in_readme_text(command: str) -> bool:
    return f"`{command}`" in README.read_text().replace("\n", " ")


def test_the_path_without_make_is_the_four_documented_commands():
    assert without_make() == ["python -m venv .venv", "pip install -e .", "conserviz course", "jupyter lab notebooks/"]


def test_make_course_and_make_lab_run_exactly_the_documented_commands():
    commands = without_make()
    assert dry_run("course") == [BIN + "conserviz course"]
    assert "conserviz course" in commands
    lab = dry_run("lab")
    assert len(lab) == 1 and lab[0].endswith(AS_ROOT)
    assert lab[0].removesuffix(AS_ROOT) == BIN + "jupyter lab notebooks/"
    assert "jupyter lab notebooks/" in commands
    assert "--allow-root" in README.read_text()


def test_the_course_install_is_the_documented_one_and_leaves_the_extras_out():
    commands = install_commands("course", "PYTHON=python")
    assert commands[0].endswith("|| python -m venv .venv"), commands[0]
    installs = [c for c in commands if " install " in c and "--upgrade pip" not in c]
    assert installs == [BIN + "pip install -e ."], installs
    assert "pip install -e ." in without_make()
    # course and lab build only the course's stamp: no test or website package on the way.
    for target in ("course", "lab"):
        everything = " ".join(make("-n", "-B", target))
        assert "[test" not in everything and "docs]" not in everything, everything


def test_make_test_adds_the_test_and_website_extras_and_every_extra_exists():
    extras = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    test_installs = [c for c in install_commands("test") if "pip install" in c]
    assert test_installs[-1] == BIN + 'pip install --quiet -e ".[test,docs]"'
    assert {"test", "docs"} <= set(extras)
    docs_installs = [c for c in install_commands("docs") if "pip install" in c]
    assert docs_installs[-1] == BIN + 'pip install --quiet -e ".[docs]"'


def test_make_site_runs_the_documented_sphinx_command():
    site = dry_run("site")
    assert site == [BIN + "sphinx-build -b html -c docs . build/site"]
    assert in_readme_text(site[0].removeprefix(BIN))
    assert in_readme_text('pip install -e ".[docs]"')


def test_the_cpu_only_torch_route_is_the_documented_command():
    documented = readme_block("--index-url")
    commands = install_commands("course", "TORCH_INDEX=cpu")
    torch = [c.removeprefix(BIN) for c in commands if "--index-url" in c]
    assert torch == documented
    # It comes before the course, so pip finds torch installed and keeps the CPU build.
    assert commands.index(BIN + torch[0]) < commands.index(BIN + "pip install -e .")
    assert not any("--index-url" in c for c in install_commands("course"))


def test_conserviz_course_is_a_command_of_the_installed_package():
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["conserviz"] == "conserviz_utils.tools.cli:main"
    result = subprocess.run(
        [sys.executable, "-m", "conserviz_utils", "course", "--help"],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout


def _stand_in(folder: Path, name: str, record: Path) -> None:
    """A command that writes its arguments and the course's variables to ``record``."""
    script = folder / name
    script.write_text(
        "#!/bin/sh\n"
        f'echo "{name} $* quick=$CONSERVIZ_QUICK epochs=$CONSERVIZ_EPOCHS" >> "{record}"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_quick_and_epochs_reach_both_make_course_and_make_lab(tmp_path):
    record = tmp_path / "ran.txt"
    for name in ("conserviz", "jupyter"):
        _stand_in(tmp_path, name, record)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSERVIZ_")}
    skip_stamps = [flag for stamp in STAMPS.values() for flag in ("-o", stamp)]
    for target in ("course", "lab"):
        make("-s", *skip_stamps, target, "QUICK=1", "EPOCHS=0", f"BIN={tmp_path}", env=env)
    make("-s", *skip_stamps, "course", f"BIN={tmp_path}", env=env)
    ran = record.read_text().splitlines()
    assert ran[0] == "conserviz course quick=1 epochs=0"
    assert ran[1].startswith("jupyter lab notebooks/") and ran[1].endswith("quick=1 epochs=0")
    assert ran[2] == "conserviz course quick= epochs="  # nothing set unless asked
    assert in_readme_text("make lab QUICK=1 EPOCHS=0")
    assert in_readme_text("export CONSERVIZ_QUICK=1 CONSERVIZ_EPOCHS=0")
