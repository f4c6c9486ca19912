"""Fixtures for every tier; what tests share otherwise is in tests/support/."""

from __future__ import annotations

import pytest

from rollback.verbs import PROC_CMDLINE_ENV


@pytest.fixture(autouse=True)
def _never_the_hosts_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to the host's journal: a run under systemd (JOURNAL_STREAM set) must not leak into
    the CLI runs the tests make, whose stderr is never that stream anyway. Tests that want the journal
    path make their own stand-in (tests/support/journal_listener.py)."""
    for name in ("JOURNAL_STREAM", "ROLLBACK_LOG_TARGET", "SYSTEMD_LOG_TARGET", "NOTIFY_SOCKET"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _never_the_hosts_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hibernation check also reads the kernel's own /proc/cmdline (a stale resume= on a developer's
    machine would refuse every run): the CLI runs tests make read /dev/null there instead, as their
    --kernel-cmdline /dev/null keeps the host's rollback.* options out. A test that wants it unsets it."""
    monkeypatch.setenv(PROC_CMDLINE_ENV, "/dev/null")
