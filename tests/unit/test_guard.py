"""The unit tier's guard (tests/unit/conftest.py) fires: btrfsutil, the mount calls, the lock and the idle
priority refuse, and what was reached is recorded even where the CLI boundary catches the error. Each
test here reaches an effect on purpose, so it clears the record (`effects_guard`) once it has checked it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import btrfsutil
import pytest

from rollback.cli import main
from rollback.effects import btrfs, device, mount, priority
from rollback.errors import Exit
from rollback.model import Mounts


def test_observing_a_directory_reaches_btrfsutil_and_is_refused(tmp_path: Path, effects_guard: list[str]) -> None:
    with pytest.raises(AssertionError, match=r"a unit test reached btrfsutil\.get_default_subvolume"):
        btrfs.observe(tmp_path, [], [], Mounts({}, {}), datetime.now(UTC))
    assert effects_guard == ["btrfsutil.get_default_subvolume"]
    effects_guard.clear()


def test_every_public_function_of_btrfsutil_refuses(tmp_path: Path, effects_guard: list[str]) -> None:
    names = [n for n in dir(btrfsutil) if not n.startswith("_") and callable(getattr(btrfsutil, n))]
    functions = [n for n in names if n != "BtrfsUtilError"]
    assert {"subvolume_info", "create_snapshot", "delete_subvolume", "sync", "SubvolumeIterator"} <= set(functions)
    for name in functions:
        with pytest.raises(AssertionError, match=rf"btrfsutil\.{name}:"):
            getattr(btrfsutil, name)(str(tmp_path))
    assert effects_guard == [f"btrfsutil.{name}" for name in functions]
    assert issubclass(btrfsutil.BtrfsUtilError, OSError)  # left alone: `except` clauses name it
    effects_guard.clear()


def test_mounting_refuses_before_anything(effects_guard: list[str]) -> None:
    with pytest.raises(AssertionError, match=r"rollback\.effects\.mount\._libc\.unshare"), mount.top_level("/dev/x"):
        pass
    with pytest.raises(AssertionError, match=r"_libc\.mount"):
        mount.make_writable(Path("/"))
    assert effects_guard == ["rollback.effects.mount._libc.unshare", "rollback.effects.mount._libc.mount"]
    effects_guard.clear()


def test_the_lock_and_the_idle_priority_refuse(effects_guard: list[str]) -> None:
    with pytest.raises(AssertionError, match=r"rollback\.effects\.device\.locked"), device.locked("/dev/x", "00"):
        pass
    with pytest.raises(AssertionError, match=r"rollback\.effects\.priority\.idle"):
        priority.idle()
    assert effects_guard == ["rollback.effects.device.locked", "rollback.effects.priority.idle"]
    effects_guard.clear()


@pytest.mark.parametrize(
    ("verb", "reached"),
    [
        ("status", "rollback.effects.mount._libc.unshare"),  # reads only: no lock, straight to the mount
        ("run", "rollback.effects.device.locked"),
        ("cleanup", "rollback.effects.priority.idle"),
    ],
)
def test_what_the_cli_boundary_catches_is_still_recorded(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    effects_guard: list[str],
    verb: str,
    reached: str,
) -> None:
    """main() turns the guard's error into exit 1 (an internal error): the record still fails the test."""
    monkeypatch.setattr(device, "probe", lambda _device: "00" * 16)  # as if /dev/x held a btrfs
    assert main([verb, "--device", "/dev/x", "--kernel-cmdline", "/dev/null"]) == Exit.FAILED
    assert f"internal error: AssertionError('a unit test reached {reached}" in capsys.readouterr().err
    assert effects_guard == [reached]
    effects_guard.clear()
