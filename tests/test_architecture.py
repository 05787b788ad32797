"""The package's shape: no private names across modules, no import cycles, the docs list every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "conserviz_utils"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    """The dotted name of a module file of the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    """Every module of the package, parsed."""
    return {module_name(path): ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import anywhere in a module, late ones too."""
    package = name if (PACKAGE.parent / Path(*name.split("."))).is_dir() else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names if alias.name.startswith("conserviz_utils"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .plan import x
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("conserviz_utils"):
                found.append((target, [alias.name for alias in node.names]))
    return found


def test_no_module_imports_another_modules_private_names():
    offences = []
    for name, tree in modules().items():
        for target, names in imports_of(name, tree):
            if target == name:
                continue
            offences.extend(f"{name} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__")
    assert offences == []


def test_there_is_no_import_cycle():
    parsed = modules()
    graph: dict[str, set[str]] = {}
    for name, tree in parsed.items():
        edges = set()
        # Type-only imports count too: a cycle under TYPE_CHECKING is still two modules that
        # cannot be read, or moved, one without the other.
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, names in imports_of(name, ast.Module(body=[node], type_ignores=[])):
                    # "from conserviz_utils.tools.sample import plan" names a submodule, not a value.
                    for imported in names:
                        if f"{target}.{imported}" in parsed:
                            edges.add(f"{target}.{imported}")
                    if target in parsed and target != name:
                        edges.add(target)
        graph[name] = edges - {name}
    # The package __init__ is imported by everything; it may only import errors (checked below).
    cycles = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == "conserviz_utils":
                continue
            if nxt in on_path:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in done:
                on_path.add(nxt)
                visit(nxt, [*path, nxt], on_path, done)
                on_path.discard(nxt)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], {start}, done)
    assert cycles == []
    assert graph["conserviz_utils"] <= {"conserviz_utils.errors"}


@pytest.mark.skipif(not ARCHITECTURE.exists(), reason="docs/architecture.md is not in this checkout")
def test_the_architecture_page_names_every_module():
    text = ARCHITECTURE.read_text()
    missing = [
        name for name in modules()
        if name != "conserviz_utils" and not name.endswith("__main__")
        and f"`{name.removeprefix('conserviz_utils.')}" not in text
    ]
    assert missing == [], "add these modules to docs/architecture.md"


#: The most lines one module may hold: past it, a module does two jobs and should be split by role.
MODULE_LINE_LIMIT = 600


def test_no_module_is_longer_than_the_limit():
    lengths = {path.relative_to(PACKAGE.parent).as_posix(): len(path.read_text().splitlines())
               for path in PACKAGE.rglob("*.py")}
    too_long = {path: n for path, n in lengths.items() if n > MODULE_LINE_LIMIT}
    assert too_long == {}, f"split these by role (limit {MODULE_LINE_LIMIT} lines)"
