"""Names on a real disk: every spelling of a name means the one path, a symbolic link on the way is
refused rather than followed, and nothing may name rollback's own .rollback/."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import btrfsutil
import pytest

from rollback.errors import Exit
from tests.support.disks import Disk
from tests.support.layout import State, outside_root, populate, snapshot_state

pytestmark = pytest.mark.btrfs


def state(disk: Disk) -> State:
    """disk.state(), with whatever is pending committed first: an unmount commits nothing while a copy
    of the mount lives on in another mount namespace (any process that unshared meanwhile has one)."""
    with disk.top(read_only=True) as top:
        btrfsutil.sync(str(top))
        return snapshot_state(top)


def setup(disk: Disk, change: Callable[[Path], object] = lambda top: None) -> None:
    with disk.top() as top:
        populate(top)
        change(top)


def refused(disk: Disk, *args: str, reason: str, code: Exit = Exit.REFUSED) -> str:
    """`rollback run ARGS` exits `code` for `reason`, and the device state is exactly as before."""
    before = state(disk)
    result = disk.rollback("run", *args)
    assert result.returncode == code, result.stderr
    assert f"reason={reason}" in result.stderr and "hint=" in result.stderr, result.stderr
    assert state(disk) == before
    return result.stderr


def persist2_inside_root(top: Path) -> None:
    btrfsutil.create_subvolume(str(top / "root" / "persist2"))  # made by hand on the running system
    (top / "root" / "persist2" / "precious").write_text("keep me\n")


@pytest.mark.parametrize("spelling", ["persist2", "persist2/", "./persist2", "persist2//", "./persist2//"])
def test_every_spelling_of_a_protected_name_protects(disk: Disk, spelling: str) -> None:
    setup(disk, persist2_inside_root)
    stderr = refused(disk, "--protect", spelling, reason="protected-inside")
    assert "protected subvolume 'root/persist2'" in stderr


def test_unprotected_persist2_is_deleted(disk: Disk) -> None:
    """The control: without --protect the same layout rolls back (so the refusals above are the flag's)."""
    setup(disk, persist2_inside_root)
    result = disk.rollback("run")
    assert result.returncode == Exit.OK, result.stderr
    assert "root/persist2/precious" not in state(disk).files


ARCHIVE_SPELLINGS = ["old", "old/", "./old//"]


@pytest.mark.parametrize("spelling", ARCHIVE_SPELLINGS)
def test_every_spelling_of_the_archive_keeps_one(disk: Disk, spelling: str) -> None:
    setup(disk)
    before = state(disk)
    for boot in range(2):
        with disk.top() as top:
            (top / "root" / f"boot-{boot}").write_text(str(boot))  # a used root: it is archived
        result = disk.rollback("run", "--archive", spelling, "--keep-count", "1")
        assert result.returncode == Exit.OK, result.stderr
    after = state(disk)
    archived = [p for p in after.subvolume_paths() if p.startswith("old/") and p.count("/") == 1]
    assert len(archived) == 1, after.subvolume_paths()
    assert sorted(p for p in after.files if "boot-" in p) == [f"{archived[0]}/boot-1"]
    assert sorted(p for p in after.files if "/" not in p) == [".rollback", "home", "nix", "old", "persist", "root"]
    assert sorted(after.under(".rollback")) == [".rollback", ".rollback/trash"]  # the trash emptied
    assert outside_root(after) == outside_root(before)


@pytest.mark.parametrize("spelling", ARCHIVE_SPELLINGS)
def test_every_spelling_of_the_archive_sees_a_foreign_subvolume(disk: Disk, spelling: str) -> None:
    def foreign(top: Path) -> None:
        (top / "old").mkdir()
        btrfsutil.create_subvolume(str(top / "old" / "my-backup"))

    setup(disk, foreign)
    stderr = refused(disk, "--archive", spelling, reason="foreign-subvolume")
    assert "rollback did not put there: 'old/my-backup'" in stderr


def link(name: str, target: str) -> Callable[[Path], None]:
    def change(top: Path) -> None:
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, top / name)

    return change


@pytest.mark.parametrize(
    ("symlink", "target", "args", "reason"),
    [
        ("sys", "root", ("--subvolume", "sys/x"), "not-directory"),
        ("sys", "root", ("--archive", "sys"), "bad-holder"),
        ("sys", "root", ("--archive", "sys/old"), "not-directory"),
        ("sys", "persist", ("--archive", "sys/"), "bad-holder"),
        (".rollback/trash", "../persist", (), "bad-holder"),
        (".rollback/trash", "../root", ("--archive", "old"), "bad-holder"),
        (".rollback", "persist", (), "state-dir"),
        (".rollback", ".rollback", (), "state-dir"),
        ("sys", "sys", ("--subvolume", "sys/root"), "not-directory"),
        ("sys", "sys", ("--archive", "sys/old"), "not-directory"),
        ("procfs", "/proc", ("--subvolume", "procfs/sys"), "not-directory"),
        ("procfs", "/proc", ("--archive", "procfs/sys"), "not-directory"),
        ("procfs", "/proc", ("--mode", "snapshot", "--blank", "procfs/sys"), "not-directory"),
    ],
    ids=[
        "subvolume-via-link",
        "archive-is-link",
        "archive-via-link",
        "archive-link-to-persist",
        "trash-is-link",
        "trash-is-link-keeping",
        "state-dir-is-link",
        "state-dir-link-loop",
        "subvolume-via-link-loop",
        "archive-via-link-loop",
        "subvolume-via-link-to-procfs",
        "archive-via-link-to-procfs",
        "blank-via-link-to-procfs",
    ],
)
def test_a_symbolic_link_on_the_way_is_refused(
    disk: Disk, symlink: str, target: str, args: tuple[str, ...], reason: str
) -> None:
    setup(disk, link(symlink, target))
    refused(disk, *args, reason=reason)


@pytest.mark.parametrize(
    ("verb", "code"), [("cleanup", Exit.REFUSED), ("skip-next", Exit.REFUSED), ("status", Exit.OK)]
)
def test_a_state_directory_that_links_to_itself_is_refused_by_every_verb(disk: Disk, verb: str, code: Exit) -> None:
    """Looking at `.rollback/trash` through a `.rollback` that loops failed (ELOOP): exit 1, internal,
    at every boot and every cleanup. Nothing below a link is looked up now."""
    setup(disk, link(".rollback", ".rollback"))
    before = state(disk)
    result = disk.rollback(verb)
    assert result.returncode == code, result.stderr
    assert code == Exit.OK or "reason=state-dir" in result.stderr, result.stderr
    assert state(disk) == before


@pytest.mark.parametrize(
    "args",
    [
        ("--subvolume", ".rollback/root"),
        ("--subvolume", "./.rollback//root"),
        ("--subvolume", ".rollback/"),
        ("--archive", ".rollback"),
        ("--archive", ".rollback/trash/"),
        ("--mode", "snapshot", "--blank", ".rollback/blank"),
        ("--protect", "./.rollback/x"),
    ],
    ids=lambda args: " ".join(args),
)
def test_nothing_may_name_the_state_directory(disk: Disk, args: tuple[str, ...]) -> None:
    setup(disk)
    assert "inside rollback's own state directory" in refused(disk, *args, reason="bad-name", code=Exit.USAGE)
