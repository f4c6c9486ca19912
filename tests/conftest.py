"""Fixtures for every tier; what tests share otherwise is in tests/support/."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _never_the_hosts_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to the host's journal: a run under systemd (JOURNAL_STREAM set) must not leak into
    the CLI runs the tests make, whose stderr is never that stream anyway. Tests that want the journal
    path make their own stand-in (tests/support/journal_listener.py)."""
    for name in ("JOURNAL_STREAM", "ROLLBACK_LOG_TARGET", "SYSTEMD_LOG_TARGET", "NOTIFY_SOCKET"):
        monkeypatch.delenv(name, raising=False)
