"""The README documents what the code defines: settings, exit codes, MESSAGE_IDs."""

from __future__ import annotations

from pathlib import Path

from rollback.errors import Exit
from rollback.events import EVENTS
from rollback.settings import SETTINGS

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    for setting in SETTINGS:
        assert f"| `{setting.key}` | `{setting.flag}" in README, setting.key


def test_every_exit_code_is_documented() -> None:
    for code in Exit:
        assert f"\n| {int(code)} | " in README, code


def test_every_message_id_is_documented() -> None:
    for kind, event in EVENTS.items():
        assert f"| {kind} | `{event.message_id}` |" in README, kind


def test_every_verb_and_its_flags_are_in_the_readme_usage() -> None:
    from rollback.cli import VERBS

    usage = README[README.index("## Using it") :]
    usage = usage[: usage.index("```", usage.index("```") + 3)]
    for verb in VERBS:
        lines = [line for line in usage.splitlines() if line.startswith(f"rollback {verb.name} ")]
        assert lines, verb.name
        for flag, _ in verb.flags:
            assert any(flag in line for line in lines), (verb.name, flag)


def test_every_test_the_reliability_table_names_exists() -> None:
    """docs/reliability.md counts cases by the tests that prove them: a renamed or removed test must not
    leave a row pointing at nothing."""
    import fnmatch
    import re

    tests = Path(__file__).parents[1]
    text = (tests.parent / "docs" / "reliability.md").read_text()
    checked = 0
    for cell in re.findall(r"\| ([^|]*test_\w+\.py[^|]*) \|\s*$", text, re.MULTILINE):  # the last column
        path = ""
        for token in re.findall(r"(?:(?:unit|btrfs|vm)/test_\w+\.py)|\btest_[\w*]+", cell):
            if token.endswith(".py"):
                path = token
                defined = re.findall(r"^def (test_\w+)", (tests / path).read_text(), re.MULTILINE)
            else:
                assert path and fnmatch.filter(defined, token), f"docs/reliability.md names {path}::{token}"
                checked += 1
    assert checked > 60
