"""Fixtures of the unit tier: no unit test reaches btrfs, a mount or the run lock (tests/btrfs does).

The tier runs as root too (scripts/test, CI): a unit test that got as far as the effects would act on
the host. So every public function of btrfsutil, the libc calls of rollback/effects/mount.py (unshare,
mount, umount2), the lock under /run/rollback-locks and the idle priority (which would slow the test
process itself) raise an AssertionError naming what was reached. The CLI boundary turns any exception
into exit 1, so what was reached is also recorded, and the test fails at teardown even when the error
was caught on the way. What stays allowed: reading (device.probe's stat and superblock read, the
hibernation check, /proc), files below tmp_path, subprocesses. tests/unit/test_guard.py shows it fires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NoReturn

import btrfsutil
import pytest

from rollback.effects import device, mount, priority


def _forbidden(name: str, reached: list[str]) -> Callable[..., NoReturn]:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        reached.append(name)
        raise AssertionError(f"a unit test reached {name}: the unit tier never touches btrfs, a mount or the lock")

    return refuse


class _NoLibc:
    """rollback.effects.mount's libc, refusing every function it is asked for."""

    def __init__(self, reached: list[str]) -> None:
        self._reached = reached

    def __getattr__(self, name: str) -> Callable[..., NoReturn]:
        return _forbidden(f"rollback.effects.mount._libc.{name}", self._reached)


def _btrfsutil_callables() -> list[str]:
    """btrfsutil's public callables, but its exception: `except btrfsutil.BtrfsUtilError` must still work."""
    return [
        name
        for name in dir(btrfsutil)
        if not name.startswith("_")
        and callable(value := getattr(btrfsutil, name))
        and not (isinstance(value, type) and issubclass(value, BaseException))
    ]


@pytest.fixture(autouse=True)
def effects_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every unit test: the effects refuse. Yields what was reached; a test that reaches an effect on
    purpose (test_guard.py) clears it."""
    reached: list[str] = []
    for name in _btrfsutil_callables():
        monkeypatch.setattr(btrfsutil, name, _forbidden(f"btrfsutil.{name}", reached))
    monkeypatch.setattr(mount, "_libc", _NoLibc(reached))
    monkeypatch.setattr(mount, "_private", False)  # so top_level() always asks libc for unshare first
    monkeypatch.setattr(device, "locked", _forbidden("rollback.effects.device.locked", reached))
    monkeypatch.setattr(priority, "idle", _forbidden("rollback.effects.priority.idle", reached))
    yield reached
    if reached:
        pytest.fail(f"the test reached {', '.join(reached)} (tests/unit/conftest.py)", pytrace=False)
