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
