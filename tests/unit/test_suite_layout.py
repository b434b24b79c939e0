"""The test suite's own shape: every test module in one layer folder, none importing another.

Layers: ``unit`` (pure logic: no processes, no watchers), ``integration`` (real watcher,
journal, importers, JVM, Ice pieces in-process), ``e2e`` (the real ``omero-dropbox`` CLI as a
process, a browser). What modules share lives in ``tests/support``; fixtures in conftest.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
LAYERS = ("unit", "integration", "e2e")


def all_test_modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if "__pycache__" not in p.parts)


def imported_modules(source: str, path: Path) -> list[str]:
    """Every module ``source`` (the text of ``path``) imports, relative imports resolved
    against its package; ``from m import n`` yields ``m`` and ``m.n`` (n may be a module)."""
    package = path.relative_to(TESTS.parent).with_suffix("").parts[:-1]
    out: list[str] = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = [*base, *(node.module.split(".") if node.module else [])]
            if node.module:
                out.append(".".join(module))
            out.extend(".".join([*module, alias.name]) for alias in node.names)
    return out


def test_every_test_module_lives_in_one_layer_folder() -> None:
    misplaced = [
        str(p.relative_to(TESTS))
        for p in all_test_modules()
        if p.parent.parent != TESTS or p.parent.name not in LAYERS
    ]
    assert not misplaced, f"move these into tests/unit, tests/integration or tests/e2e: {misplaced}"
    assert {p.parent.name for p in all_test_modules()} == set(LAYERS)


def test_support_holds_no_tests() -> None:
    found = [p.name for p in (TESTS / "support").glob("*.py") if p.name.startswith("test")]
    assert not found, f"tests/support is for helpers; tests there would not be in a layer: {found}"


def test_no_test_module_imports_another_test_module_or_conftest() -> None:
    wrong = {}
    for path in all_test_modules():
        bad = [
            name
            for name in imported_modules(path.read_text(), path)
            if name.startswith("tests.")
            and not name.startswith("tests.support")
            and any(part.startswith("test_") or part == "conftest" for part in name.split("."))
        ]
        if bad:
            wrong[str(path.relative_to(TESTS))] = bad
    assert not wrong, f"share helpers through tests/support, fixtures through conftest.py: {wrong}"


def test_the_import_check_sees_relative_and_absolute_imports() -> None:
    """The check above is only as good as the import parsing: it must see all three spellings."""
    source = "from .test_a import x\nfrom tests.unit.test_b import y\nfrom . import test_c\nimport os\n"
    names = imported_modules(source, TESTS / "e2e" / "test_probe.py")
    assert {"tests.e2e.test_a", "tests.unit.test_b", "tests.e2e.test_c", "os"} <= set(names)
