"""Each concern has one home: checked on the package's source (AST), so a regression shows here.

- no import cycles among pytest_dsocr's modules (module-level imports; TYPE_CHECKING-only
  imports are annotations and do not count);
- only the family registry and the families' own modules name a family: nothing else
  compares against a family name;
- no module reads another object's private attributes (``obj._name`` where ``_name`` is an
  attribute some pytest_dsocr class keeps for itself);
- the benchmark stage list is written out once (pytest_dsocr/stages.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pytest_dsocr.families import FAMILY_NAMES
from pytest_dsocr.stages import BENCHMARK_STAGES

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_dsocr"
# Modules allowed to name a family: the registry, and each family's own code.
FAMILY_HOMES = ("families.py", "models/deepseek_ocr/", "models/deepseek_ocr2/", "analytic/deepseek_ocr.py",
                "analytic/deepseek_ocr2.py", "analytic/model.py", "analytic/crosscheck.py")


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return found


def module_level_imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """pytest_dsocr modules ``name`` imports when it is imported (not inside functions or
    ``if TYPE_CHECKING:`` blocks)."""
    targets: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in known else base)

    visit(tree.body)
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def test_no_import_cycles():
    trees = modules()
    known = set(trees)
    graph = {name: module_level_imports(name, tree, known) for name, tree in trees.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_only_the_registry_and_the_families_name_a_family():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if any(relative.startswith(home) for home in FAMILY_HOMES):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in FAMILY_NAMES:
                offenders.append(f"{relative}:{node.lineno}: {node.value!r}")
    assert not offenders, "family names outside the registry: " + ", ".join(offenders)


def private_attributes() -> set[str]:
    """``_name`` attributes pytest_dsocr classes keep for themselves (``self._name = ...``)."""
    names = set()
    for tree in modules().values():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id == "self"
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                names.add(node.attr)
    return names


def test_no_module_reads_another_objects_private_attributes():
    private = private_attributes()
    offenders = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in private
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                offenders.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "private attributes read from outside: " + ", ".join(offenders)


def test_the_benchmark_stage_list_is_written_once():
    places = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List)):
                values = {elt.value for elt in node.elts if isinstance(elt, ast.Constant)}
                if len(values & set(BENCHMARK_STAGES)) >= 3:
                    places.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert places == ["stages.py:" + places[0].split(":")[1]] and len(places) == 1, places
