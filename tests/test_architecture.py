"""The shape of the code, checked: dependencies run one way with no import cycle,
the package never commits, the Amplitude parser touches no database, and no
module or class of the engine outgrows what a newcomer can read."""

import ast
from pathlib import Path

import pytest

from helpers import PROJECT

PACKAGE = PROJECT / "personalization"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 350


def first_party_modules() -> dict[str, Path]:
    """Every module of the project (not tests, benchmarks or migrations), by name."""
    modules = {path.stem: path for path in PROJECT.glob("*.py")}
    for path in PACKAGE.glob("*.py"):
        name = "personalization" if path.stem == "__init__" else path.stem
        modules[name if name == "personalization" else f"personalization.{name}"] = path
    return modules


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = first_party_modules()
    return {name: imports_of(path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the path around it, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return path[path.index(child) :] + [child]
            if child not in state:
                cycle = visit(child, path + [child])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_anywhere():
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize(
    "module",
    sorted(
        name for name in first_party_modules() if name.startswith("personalization.")
    ),
)
def test_the_package_depends_only_downward(module):
    """Package code reads models and the Personalize adapter, never the web layer,
    the facade or Flask's request machinery."""
    web_and_facade = {
        "app",
        "routes",
        "webhooks",
        "commands",
        "visitor",
        "extensions",
        "personalization_system",
        "amplitude",
        "catalog",
        "flask",
    }
    assert not imports_of(first_party_modules()[module], web_and_facade)


def test_only_the_facade_and_the_boundaries_commit():
    """No `commit()` or `rollback()` inside the package: the facade owns the
    transaction."""
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("commit", "rollback"):
                pytest.fail(f"{path.name}:{node.lineno} calls {node.attr}()")


def test_the_amplitude_parser_is_pure():
    """amplitude.py reads payloads; it imports no database, engine or cloud code."""
    imported = imports_of(PROJECT / "amplitude.py", set(first_party_modules()))
    assert imported <= {"personalization.events"}


@pytest.mark.parametrize(
    "path",
    sorted(PACKAGE.glob("*.py")) + [PROJECT / "personalization_system.py"],
    ids=lambda path: path.name,
)
def test_modules_and_classes_stay_readable(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"class {node.name}: {length} lines"
