"""Which block devices the pre-mount scan for copies reads (rollback/effects/device.py: refuse_copies)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from rollback.effects import device


def _a_block_device() -> str:
    names = sorted(os.listdir("/sys/class/block"))
    if not names:
        raise AssertionError("this machine lists no block device in /sys/class/block")
    return names[0]


@pytest.mark.parametrize(
    ("said", "read"),
    [
        (None, True),  # no entry: udev never saw it, or runs nowhere here: look
        ("E:ID_FS_TYPE=btrfs\n", True),
        ("E:ID_FS_TYPE=ext4\n", False),
        ("E:ID_SERIAL=x\n", True),  # nothing found, or not probed (udev then writes no ID_FS_TYPE): read
    ],
)
def test_only_what_udev_did_not_rule_out_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str | None, read: bool
) -> None:
    """Every unheld block device was read at every boot of a multi-device filesystem: an empty CD drive,
    an unconnected nbd (I/O errors in dmesg), a failing disk's retries (a reviewer)."""
    name = _a_block_device()
    number = Path(f"/sys/class/block/{name}/dev").read_text().strip()
    monkeypatch.setattr(device, "_UDEV_DATA", str(tmp_path))
    if said is not None:
        (tmp_path / f"b{number}").write_text(said)
    assert device._maybe_btrfs(name) is read


def test_what_cannot_hold_a_superblock_is_not_read() -> None:
    """An empty drive, an unconnected nbd, an unattached loop device (size 0): udev says nothing of them,
    and reading one at every boot meant I/O errors or a drive's retries (a second reviewer)."""
    sizes = {n: int(Path(f"/sys/class/block/{n}/size").read_text()) for n in os.listdir("/sys/class/block")}
    assert sizes, "this machine lists no block device"
    for name, sectors in sizes.items():
        assert device._big_enough(name) is (sectors * 512 >= 0x10000 + 4096), name
    assert not device._big_enough("no-such-device")


def test_a_partition_is_on_its_disk_and_a_disk_is_its_own() -> None:
    """A partition of a held disk (a multipath path's, a whole-disk md member's) shows the holder's bytes."""
    names = os.listdir("/sys/class/block")
    partitions = [n for n in names if os.path.exists(f"/sys/class/block/{n}/partition")]
    disks = [n for n in names if n not in partitions]
    assert disks and all(device._disk_of(n) == n for n in disks)
    for partition in partitions:  # (vda1 on vda, loop0p1 on loop0, nvme0n1p2 on nvme0n1)
        assert partition.startswith(device._disk_of(partition)) and device._disk_of(partition) in disks


@pytest.mark.parametrize(("number", "read"), [("8:16", True), ("147:0", False), ("2:0", False)])
def test_a_drbd_device_is_not_read_beside_its_backing_device(fs: FakeFilesystem, number: str, read: bool) -> None:
    """DRBD (major 147) registers no holder of its backing device, whose bytes /dev/drbdN shows: a
    multi-device btrfs on DRBD would have been refused copy-attached at every boot (a reviewer). Its
    backing device is read instead; floppy drives (major 2) are not read at all."""
    fs.create_file("/sys/class/block/x/size", contents="2097152\n")
    fs.create_file("/sys/class/block/x/dev", contents=f"{number}\n")
    assert device._big_enough("x") is read


_FSID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("devinfo", "opened", "missing"),
    [
        ({"1": (False, False), "2": (False, False)}, {"loop0": 1, "loop1": 2}, []),  # every member open
        ({"1": (False, False), "2": (True, False)}, {"loop0": 1}, [2]),  # the kernel's flag
        ({"1": (False, False), "2": (False, False)}, {"loop0": 1}, [2]),  # registered again, still unopened
        ({"1": (False, False), "2": (False, False)}, {"loop0": None}, []),  # unreadable: unknown, not missing
        ({"1": (False, False), "2": (False, False), "3": (False, False)}, {"loop0": 1, "loop1": 2}, [3]),
        ({"1": (False, False), "0": (False, True), "2": (False, False)}, {"loop0": 1, "loop1": 2}, []),  # target
    ],
)
def test_missing_members_are_those_the_kernel_has_no_device_open_for(
    monkeypatch: pytest.MonkeyPatch,
    devinfo: dict[str, tuple[bool, bool]],
    opened: dict[str, int | None],
    missing: list[int],
) -> None:
    """devinfo/<id>/missing, and, where fewer devices are open than members listed (a member registered
    again by a scan while mounted degraded: the flag cleared, the device unopened), the ids of the open
    devices' superblocks; a seed's by its own (_open_member_id); one unreadable leaves only the flag; a
    replace target (id 0) is no member (reviewers)."""

    def flags(fsid: str, kind: str, flag: str) -> dict[str, bool]:
        assert fsid == _FSID
        if kind == "devices":
            return dict.fromkeys(opened, False)
        return {n: pair[0 if flag == "missing" else 1] for n, pair in devinfo.items()}

    monkeypatch.setattr(device, "_flags", flags)
    monkeypatch.setattr(device, "_open_member_id", lambda node, fsid: opened[node.removeprefix("/dev/")])
    assert device.missing_members(_FSID) == missing


@pytest.mark.parametrize(
    ("found", "says"),
    [
        ({1: [("/dev/a", 11)], 2: [("/dev/b", 11)]}, "while all 2 are attached (member 1 on /dev/a, 2 on /dev/b)"),
        (
            {1: [("/dev/a", 11)]},
            "is missing (No such file or directory): 1 of its 2 members attached (member 1 on /dev/a)",
        ),
        ({1: [("/dev/a", 11)], 0: [("/dev/new", 11)]}, "1 of its 2 members attached (member 1 on /dev/a)"),  # a target
        ({1: [("/dev/a", 11)], 2: [("/dev/b", 4)]}, "1 of its 2 members attached (member 1 on /dev/a)"),  # left behind
        ({}, "is missing (No such file or directory)"),
    ],
)
def test_a_mount_missing_a_member_says_whether_a_scan_would_help(
    monkeypatch: pytest.MonkeyPatch, found: dict[int, list[tuple[str, int]]], says: str
) -> None:
    """btrfs's ENOENT: every member attached (a scan registers them) or not; a replace target's superblock
    (device id 0) and a member left behind (an older generation) are no member the kernel lacks: a scan
    cannot help, and saying it could sent a user in circles (a reviewer)."""
    from rollback.effects import mount

    monkeypatch.setattr(device, "probe", lambda dev: _FSID)
    monkeypatch.setattr(device, "members_attached", lambda dev, fsid: (2, found))
    refused = mount._member_missing("/dev/a")
    assert refused.code == "mount-failed" and says in refused.reason, refused.reason
    assert ("btrfs device scan, then run again" in refused.hint) == ("while all" in says), refused.hint
