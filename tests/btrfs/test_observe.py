"""What observing reads: the boot's cost must not grow with the subvolumes nested in the root.

Every subvolume is listed (id and path: the checks need them all), but a subvolume's record is read
(btrfsutil.subvolume_info) and its top directory opened for +i/+a only for what a plan looks at: the
paths it asks about and the entries of the trash and the archive. Before, the root's children were
opened one by one, which on a cold disk with 1000 nested subvolumes cost ~80 ms (docs/boot-path.md).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import btrfsutil
import pytest

from rollback.effects import btrfs
from rollback.model import TRASH_DIR, Examined, Mounts, Subvol
from rollback.plan import Reclaim, bounds, holders, paths_of_interest
from tests.support.disks import Disk
from tests.support.factory import config
from tests.support.layout import NESTED, populate

pytestmark = pytest.mark.btrfs

NESTED_HERE = [*NESTED, "root/srv", "root/srv/www"]  # some directly in the root, some deeper
OLD = "old/20260101T000000Z"
LEFT = f"{TRASH_DIR}/20260102T000000Z"


def test_only_what_a_plan_looks_at_is_examined(disk: Disk, monkeypatch: pytest.MonkeyPatch) -> None:
    with disk.top() as top:
        populate(top, nested=NESTED_HERE, blank=True)
        for entry in (OLD, LEFT):  # an archived root and a trash entry, each holding a nested subvolume
            (top / entry).parent.mkdir(parents=True, exist_ok=True)
            btrfsutil.create_subvolume(str(top / entry))
            btrfsutil.create_subvolume(str(top / entry / "machines"))
    examined: list[str] = []
    opened: list[str] = []
    examine, pinned = btrfs.examine, btrfs._pinned

    def examining(top: Path, sub: Subvol, quotas: int | None = None) -> Examined | None:
        examined.append(sub.path)
        return examine(top, sub, quotas)

    def opening(path: Path) -> bool:
        opened.append(str(path))
        return pinned(path)

    monkeypatch.setattr(btrfs, "examine", examining)
    monkeypatch.setattr(btrfs, "_pinned", opening)
    wanted = config(archive="old", mode="snapshot")
    with disk.top(read_only=True) as top:
        obs = btrfs.observe(top, paths_of_interest(wanted), holders(wanted), Mounts({}, {}), datetime.now(UTC))
        inside = [str(top / p) for p in (*NESTED_HERE, f"{OLD}/machines", f"{LEFT}/machines")]
    assert sorted(examined) == sorted(["root", "root-blank", OLD, LEFT])
    assert not [p for p in opened if any(p == n or p.startswith(n + "/") for n in inside)]
    assert {s.path for s in obs.tree("root")} == {"root", *NESTED_HERE}  # still listed: the checks see them all
    assert all(isinstance(s, Examined) == (s.path in examined) for s in obs.subvols)


def test_a_path_asked_about_but_not_examined_is_a_loud_error(disk: Disk) -> None:
    """The planner cannot silently read defaults for a subvolume the observer did not examine."""
    with disk.top() as top:
        populate(top)
    with disk.top(read_only=True) as top:
        obs = btrfs.observe(top, ["root"], [], Mounts({}, {}), datetime.now(UTC))
    assert obs.get("root") is not None
    with pytest.raises(LookupError, match="not examined"):
        obs.get(NESTED[0])


def test_a_subvolume_deleted_between_listing_and_examining_is_not_there(
    disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status` takes no lock: a cleanup may delete a trash entry after it was listed."""
    with disk.top() as top:
        populate(top)
        (top / TRASH_DIR).mkdir(parents=True)
        btrfsutil.create_subvolume(str(top / LEFT))
    list_subvolumes = btrfs.list_subvolumes

    def listed_then_deleted(top: Path, also: Iterable[int] = ()) -> tuple[Subvol, ...]:
        found = list_subvolumes(top, also)
        btrfsutil.delete_subvolume(str(top / LEFT))
        btrfsutil.sync(str(top))
        deadline = time.monotonic() + 30
        while btrfsutil.deleted_subvolumes(str(top)) and time.monotonic() < deadline:  # its record gone too
            time.sleep(0.01)
        return found

    monkeypatch.setattr(btrfs, "list_subvolumes", listed_then_deleted)
    wanted = config()
    with disk.top() as top:
        obs = btrfs.observe(top, paths_of_interest(wanted), holders(wanted), Mounts({}, {}), datetime.now(UTC))
    assert obs.entries(TRASH_DIR) == [] and LEFT not in {s.path for s in obs.subvols}
    assert obs.get("root") is not None


# Names the kernel allows: spaces, a newline, non-UTF-8 bytes, a 255-byte name, a subvolume in a plain
# directory of a nested subvolume; 700 children of one subvolume (more than one search returns).
HOSTILE = [
    b"root/a b",
    b"root/a b/new\nline",
    b"root/\xff\xfe/latin1",
    b"root/" + b"n" * 255,
    b"root/d/e/f/deep",
    b"root/d/e/f/deep/g/h/deeper",
    b"persist/docker",
    b"top dir/with space/sub",
    b"top dir/with space/sub/x",
]
WIDE = [f"root/wide/w{i}".encode() for i in range(700)]


def make(top: Path, paths: list[bytes]) -> None:
    for path in paths:
        os.makedirs(os.path.dirname(os.fsencode(top) + b"/" + path), exist_ok=True)
        btrfsutil.create_subvolume(os.fsencode(top) + b"/" + path)


def test_the_listing_sees_what_the_library_sees(disk: Disk) -> None:
    """The hand-read ROOT_REF listing (refs.py), unbounded or told to stop nowhere, is exactly btrfsutil's
    iterator."""
    with disk.top() as top:
        populate(top)
        make(top, [*HOSTILE, *WIDE])
    with disk.top(read_only=True) as top:
        library = tuple(Subvol(i, os.fsdecode(p)) for p, i in btrfsutil.SubvolumeIterator(str(top), top=5))
        listed = btrfs.list_subvolumes(top)
        bounded = btrfs.list_bounded(top, lambda path: False, ())
    assert len(library) == len(set(library)) == 4 + len(NESTED) + len(HOSTILE) + len(WIDE)
    assert (
        sorted(bounded, key=lambda s: s.id) == sorted(library, key=lambda s: s.id) == sorted(listed, key=lambda s: s.id)
    )


def test_a_subvolume_below_a_path_longer_than_the_kernels_lookup_is_listed_with_its_path(disk: Disk) -> None:
    """The kernel's inode lookup answers ENAMETOOLONG past 4080 bytes (btrfsutil's iterator with it): the
    listing then reads the directories' names one at a time, and a boot can delete such a root."""
    levels = [f"{level:03d}" + "d" * 197 for level in range(22)]
    with disk.top() as top:
        populate(top)
        fd = os.open(top / "root", os.O_RDONLY | os.O_DIRECTORY)
        for name in levels:
            os.mkdir(name, dir_fd=fd)
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        btrfsutil.create_subvolume(f"/proc/self/fd/{fd}/deep")
        btrfsutil.create_subvolume(f"/proc/self/fd/{fd}/deep/deeper")
        os.close(fd)
    with disk.top(read_only=True) as top:
        library = btrfsutil.SubvolumeIterator(str(top), top=5)
        try:
            with pytest.raises(btrfsutil.BtrfsUtilError) as failed:
                list(library)
        finally:
            library.close()  # its open directory would keep the filesystem from being unmounted
        listed = {s.path for s in btrfs.list_subvolumes(top)}
    assert failed.value.errno == errno.ENAMETOOLONG
    deep = "root/" + "/".join(levels) + "/deep"
    assert {deep, deep + "/deeper"} <= listed and len(listed) == 4 + len(NESTED) + 2


def test_a_run_that_only_moves_the_root_lists_inside_it_only_what_its_checks_refuse(disk: Disk) -> None:
    """Inside the root and an archived root (which this boot moves, the cleanup deletes): only protected
    names, at any depth, and what is mounted or the default subvolume (found by id); the trash's entries,
    which this boot deletes if the cleanup never ran, and everything outside: all of it, with paths."""
    archived, left = OLD, LEFT
    named = ["root/nix", "root/a b/new\nline/nix", f"{archived}/a/b/c/home", "root/d/e/f/deep/g/persist"]
    with disk.top() as top:
        populate(top)
        make(top, [*HOSTILE, *WIDE])
        for entry in (archived, left):
            make(top, [entry.encode(), f"{entry}/a/b".encode(), f"{entry}/a/b/c".encode()])
        make(top, [p.encode() for p in named])
        default = btrfsutil.subvolume_id(str(top / "root/d/e/f/deep/g/h/deeper"))
        btrfsutil.set_default_subvolume(str(top), default)
        mounted = btrfsutil.subvolume_id(str(top / NESTED[-1]))
    wanted = config(archive="old", cleanup="after-boot")
    with disk.top(read_only=True) as top:
        everything = {s.path for s in btrfs.list_subvolumes(top)}
        now = datetime.now(UTC)
        obs = btrfs.observe(
            top, paths_of_interest(wanted), holders(wanted), Mounts({mounted: "/x"}, {}), now, bounds(wanted)
        )
    listed = {s.path for s in obs.subvols}
    inside = {p for p in everything if p.startswith(("root/", archived + "/"))}
    assert len(inside) > len(WIDE) and set(named) <= inside  # the layout has them
    assert listed == (everything - inside) | {NESTED[-1], "root/d/e/f/deep/g/h/deeper", *named}
    assert {f"{left}/a/b/c", "persist/docker", "top dir/with space/sub/x"} <= listed
    assert obs.default_id == default and obs.get("root") is not None and obs.get(archived) is not None


def test_cleaner_busy_reads_the_deleted_subvolumes_the_kernel_has_not_freed(disk: Disk) -> None:
    """What a no-space failure after a wait for the kernel's cleaner reports (verbs._still_freeing)."""
    with disk.top() as top:
        populate(top)
        assert not btrfs.cleaner_busy(top)
        btrfsutil.delete_subvolume(str(top / "persist"))  # not committed: the cleaner has not started
        assert btrfs.cleaner_busy(top)
        btrfs.execute(Reclaim(timeout_s=60), top)
        assert not btrfs.cleaner_busy(top)
