"""The layout rules of README "Architecture", checked on the source: what may import what, no
import cycle, small modules and functions, the public API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import krona_core

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "krona_core"

#: krona_core's layers and what each may import (itself always allowed)
LAYERS = {
    "ops": set(),
    "naming": set(),
    "util": set(),
    "families": {"ops", "naming"},
    "files": {"ops", "naming", "families"},
    "adapters": {"ops", "naming", "families", "files"},
    "convert": {"ops", "naming", "families", "files"},
    "train": {"ops", "naming", "families", "files", "adapters", "util"},
    "tiny": {"ops", "naming", "families", "files", "adapters", "util", "train"},
    "world": {"ops", "naming", "families", "files", "adapters", "util", "train"},
    "eval": {"ops", "naming", "families", "files", "adapters", "util", "train", "world"},
    "cli": {"ops", "naming", "families", "files", "adapters", "util", "train", "convert", "tiny", "world", "eval"},
}
PRODUCTION = [*CORE.rglob("*.py"), *(ROOT / "nodes").glob("*.py"), *(ROOT / "krona_a1111").glob("*.py"),
              *(ROOT / "scripts").glob("*.py"), ROOT / "__init__.py", ROOT / "install.py"]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
DECLARATIVE = {"define_schema", "on_ui_tabs"}  # node schemas and the web UI tab layout


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute names of the krona_core modules a file imports."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if target.startswith("krona_core") else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("krona_core", "nodes", "krona_a1111", "tests", "helpers")}


def resolve(name: str) -> str | None:
    """The krona_core module a dotted import name refers to (a module, or a name inside one)."""
    while name:
        path = ROOT / Path(*name.split("."))
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return name
        name = name.rpartition(".")[0]
    return None


def test_krona_core_imports_no_host_and_no_test_code():
    for path in CORE.rglob("*.py"):
        bad = {n for n in imports(path) if n.split(".")[0] in ("nodes", "krona_a1111", "tests", "helpers")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_layers_import_only_what_they_may():
    for path in CORE.rglob("*.py"):
        parts = path.relative_to(CORE).parts
        if len(parts) == 1:
            continue  # the package's __init__ / __main__ face everything
        layer = parts[0]
        allowed = LAYERS[layer] | {layer}
        for name in imports(path):
            target = resolve(name)
            if target is None or target == "krona_core":
                continue
            used = target.split(".")[1]
            assert used in allowed, f"{path.relative_to(ROOT)} ({layer}) imports {target} ({used})"


def test_every_subpackage_is_a_layer():
    assert {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} == set(LAYERS)


def test_no_import_cycle():
    graph = {}
    for path in CORE.rglob("*.py"):
        graph[module_name(path)] = {t for n in imports(path, top_level_only=True) if (t := resolve(n))} - {module_name(path)}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            pytest.fail("import cycle: " + " → ".join(stack[stack.index(node):] + [node]))
        if node in done:
            return
        for nxt in graph.get(node, ()):
            if not node.startswith(nxt + "."):  # a module importing its own package's __init__ is no cycle
                visit(nxt, stack + [node])
        done.add(node)

    for node in graph:
        visit(node, [])


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for path in PRODUCTION:
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in DECLARATIVE:
                body = node.body[1:] if ast.get_docstring(node) else node.body
                if not body:
                    continue
                lines = body[-1].end_lineno - body[0].lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_the_public_api_is_declared():
    assert "attach" in krona_core.__all__ and "load" in krona_core.__all__ and "run_job" in krona_core.__all__
    for name in krona_core.__all__:
        assert hasattr(krona_core, name), name
    assert "tiny" not in krona_core.__all__  # the embedded tiny default is internal
