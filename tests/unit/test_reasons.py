"""One table of reasons and one of exit codes: every reason the code can raise or log is in the table
with the exit status its error class carries, every row is used, and --help, the README and the unit
say what the tables say."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rollback import cli, reasons
from rollback.errors import (
    KIND,
    MEANING,
    ConfigError,
    Exit,
    OutputFailed,
    ReadFailed,
    Refused,
    RollbackError,
    StepFailed,
)
from rollback.events import EVENTS

ROOT = Path(__file__).parents[2]
CLASSES: dict[str, type[RollbackError]] = {
    c.__name__: c for c in (ConfigError, Refused, StepFailed, ReadFailed, OutputFailed)
}


def raised() -> list[tuple[str, str, str]]:
    """(where, error class or 'emit', reason) for every error built and every event logged with a reason."""
    found = []
    for path in sorted((ROOT / "rollback").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            keyword = "code" if name in CLASSES else "reason" if name == "emit" else None
            for kw in node.keywords:
                if keyword and kw.arg == keyword:
                    if ast.unparse(kw.value) == "error.code":  # the boundary logs what an error carries
                        continue
                    assert isinstance(kw.value, ast.Constant), f"{path}:{node.lineno}: a reason must be a literal"
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", name, str(kw.value.value)))
    return found


def test_every_error_is_built_with_a_literal_reason() -> None:
    sites = raised()
    assert len(sites) >= 40
    for path in sorted((ROOT / "rollback").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in CLASSES:
                assert any(kw.arg == "code" for kw in node.keywords), f"{path}:{node.lineno} has no code="


@pytest.mark.parametrize(("where", "name", "code"), raised(), ids=lambda x: str(x))
def test_every_reason_raised_is_in_the_table_with_its_exit_status(where: str, name: str, code: str) -> None:
    assert code in reasons.REASONS, f"{where}: reason {code!r} is not in rollback/reasons.py"
    if name in CLASSES:
        assert reasons.exit_of(code) == CLASSES[name].exit_code, f"{where}: {name} carries another exit status"


def test_every_reason_in_the_table_is_used() -> None:
    used = {code for _, _, code in raised()}
    assert set(reasons.REASONS) - used == set()


def test_help_the_readme_and_the_unit_say_what_the_tables_say() -> None:
    readme = (ROOT / "README.md").read_text()
    assert reasons.table() in readme, "regenerate the README's Reasons table from rollback.reasons.table()"
    for code, text in MEANING.items():
        assert f"| {int(code)} | {text} |" in readme
        assert " ".join(text.split()) in " ".join(cli.EXIT_CODES.split())
    unit = (ROOT / "units/rollback@.service").read_text()
    comment = " ".join(line.lstrip("# ") for line in unit.splitlines() if line.startswith("#"))
    for code, text in MEANING.items():  # "3 refused", "2 usage ...": the number with its meaning's first word
        assert f"{int(code)} {text.split()[0].rstrip(':')}" in comment, code


def test_the_catalog_gives_each_event_the_exit_status_the_code_gives_it() -> None:
    """units/rollback.catalog says, per event, which status the unit exits with: the one whose errors log
    that event (errors.KIND), 77 for a skip."""
    catalog = (ROOT / "units/rollback.catalog").read_text()
    expected = {kind: code for code, kind in KIND.items()} | {"skipped": Exit.SKIPPED}
    entries = {block.split("\n", 1)[0].strip(): block for block in catalog.split("\n-- ")[1:]}
    for kind, code in expected.items():
        said = re.findall(r"exits\s+with\s+status\s+(\d+)", entries[EVENTS[kind].message_id])
        assert said == [str(int(code))], (kind, said)
