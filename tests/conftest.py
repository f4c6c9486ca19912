"""Shared test policy: in CI (CI=true) a tier that cannot run fails instead of skipping."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def _never_the_hosts_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to the host's journal: a run under systemd (JOURNAL_STREAM set) must not leak into
    the CLI runs the tests make, whose stderr is never that stream anyway. Tests that want the journal
    path make their own stand-in (tests/btrfs/journal_listener.py)."""
    for name in ("JOURNAL_STREAM", "ROLLBACK_LOG_TARGET", "SYSTEMD_LOG_TARGET", "NOTIFY_SOCKET"):
        monkeypatch.delenv(name, raising=False)


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: a skip there would hide a missing install step."""
    if IN_CI:
        pytest.fail(f"required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)
