"""Pure means pure: the modules that decide import nothing that acts (no os, no subprocess, no
btrfsutil, nothing of rollback.effects); only rollback/effects/, verbs, sources, log and cli do."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2] / "rollback"
PURE = [
    "cmdline",
    "devspec",
    "errors",
    "events",
    "hibernation",
    "model",
    "mountinfo",
    "names",
    "plan",
    "reasons",
    "report",
    "settings",
]
# the standard library's modules that compute without touching the system
STDLIB_PURE = {
    "__future__", "bisect", "collections", "dataclasses", "datetime", "enum", "functools", "itertools", "json", "re",
    "string", "typing",
}  # fmt: skip


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module in ("rollback", "tests"):  # from tests import conftest
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level and not node.module:  # from . import names
            found |= {"." * node.level + alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            found.add("." * node.level + (node.module or ""))
    return found


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_only_pure_modules(name: str) -> None:
    for module in imports(ROOT / f"{name}.py"):
        top = module.split(".")[0]
        if top == "rollback":
            assert module.split(".")[1] in PURE, (name, module)
        else:
            assert top in STDLIB_PURE, (name, module)


def test_every_module_is_either_pure_or_known_to_act() -> None:
    acting = {"__init__", "__main__", "cli", "entry", "lazy", "log", "sources", "verbs"}
    assert {p.stem for p in ROOT.glob("*.py")} == set(PURE) | acting


def test_tests_share_helpers_only_through_tests_support() -> None:
    """No test module imports from a conftest file or from another test module, by any spelling (`from tests
    import conftest`, a bare `import conftest`, `from . import test_plan`); the bench likewise."""
    root = ROOT.parent
    for path in [*(root / "tests").rglob("*.py"), *(root / "bench").rglob("*.py")]:
        for module in imports(path):
            where = (str(path.relative_to(root)), module)
            if module.startswith("tests.") or (module.startswith(".") and path.parent.name != "support"):
                assert module.startswith("tests.support"), where
            assert "conftest" not in module.split("."), where
            assert not module.lstrip(".").split(".")[0].startswith("test_"), where
