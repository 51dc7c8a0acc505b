"""The layout's rules (ARCHITECTURE.md), checked on the source: data flows down, modules stay small.

- the core (``relabel_maps/*.py`` and ``relabel_maps/codecs/``) imports only the standard library,
  numpy, zstandard and itself, and never a face (``torch/``, ``hub/``, ``annotate/``, ``convert/``);
- no core module exceeds ``MAX_CORE_LINES`` lines;
- module-level imports inside the package form no cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "relabel_maps"
FACES = ("torch", "hub", "annotate", "convert", "audit")
CORE_THIRD_PARTY = {"numpy", "zstandard"}
MAX_CORE_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _module_level_imports(path: Path) -> list[str]:
    """Absolute names imported at module level (not under ``if TYPE_CHECKING`` nor inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = _module_name(path)
    package = module if _is_package(path) else module.rpartition(".")[0]
    names: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    prefix = ".".join(base)
                    target = f"{prefix}.{node.module}" if node.module else prefix
                else:
                    target = node.module or ""
                names.append(target)
                if not node.module or node.level:  # "from . import x" may name submodules
                    names.extend(f"{target}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and not _is_type_checking(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _core_files() -> list[Path]:
    files = list(PACKAGE.glob("*.py")) + list((PACKAGE / "codecs").glob("*.py"))
    return sorted(files)


def _all_imports_anywhere(path: Path) -> list[str]:
    """Every import in the file, including those inside functions (for the no-face rule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = _module_name(path)
    package = module if _is_package(path) else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{prefix}.{node.module}" if node.module else prefix
                out.append(target)
                out.extend(f"{target}.{alias.name}" for alias in node.names)
            else:
                out.append(node.module or "")
    return out


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_core_module_is_small_and_imports_no_face(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_CORE_LINES, f"{path.name}: {lines} lines; split it by job"
    for name in _module_level_imports(path):
        root = name.split(".")[0]
        assert root == "relabel_maps" or root in CORE_THIRD_PARTY or root in sys.stdlib_module_names, (
            f"core module {path.name} imports {name} at module level"
        )
    faces = {f"relabel_maps.{face}" for face in FACES}
    for name in _all_imports_anywhere(path):
        hits = [f for f in faces if name == f or name.startswith(f + ".")]
        # the one sanctioned dispatch: open() hands hf:// URLs to the Hub face, lazily
        if path.name == "opener.py" and hits == ["relabel_maps.hub"]:
            continue
        assert not hits, f"core module {path.name} imports the face {hits[0]}"


def test_module_level_imports_have_no_cycle() -> None:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in _module_level_imports(path):
            # the deepest package module the import names
            parts = imported.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                deps.add(".".join(parts))
        graph[name] = deps

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            # a package's __init__ importing its own submodules is the normal re-export pattern
            if dep.startswith(node + ".") and modules[node].name == "__init__.py":
                continue
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checks_see_the_layout() -> None:
    """Guard against a vacuous pass: the scanner finds the core and a face's imports."""
    core = {p.name for p in _core_files()}
    assert {"reader.py", "writer.py", "pooling.py", "frame.py", "layout.py", "base.py"} <= core
    assert "relabel_maps.frame" in _module_level_imports(PACKAGE / "torch" / "boxes.py")  # "from ..frame import"
    assert "relabel_maps.hub" in _all_imports_anywhere(PACKAGE / "opener.py")
