from __future__ import annotations

from rollback.mountinfo import parse

SAMPLE = """\
22 1 0:21 / / rw,relatime shared:1 - btrfs /dev/vda2 rw,space_cache=v2,subvolid=256,subvol=/root
23 22 0:21 /persist /persist rw,relatime shared:2 - btrfs /dev/vda2 rw,space_cache=v2,subvolid=257,subvol=/persist
24 22 0:21 /persist/etc/ssh /etc/ssh rw shared:2 - btrfs /dev/vda2 rw,subvolid=257,subvol=/persist
25 22 0:5 / /dev rw,nosuid master:2 - devtmpfs devtmpfs rw,size=4k
26 22 0:30 / /mnt/with\\040space rw - btrfs /dev/mapper/crypt\\040x rw,subvolid=5,subvol=/
"""


def test_btrfs_mounts_with_subvolume_ids() -> None:
    mounts = parse(SAMPLE)
    assert [(m.mount_point, m.subvolid) for m in mounts if m.fstype == "btrfs"] == [
        ("/", 256),
        ("/persist", 257),
        ("/etc/ssh", 257),
        ("/mnt/with space", 5),
    ]
    assert mounts[4].source == "/dev/mapper/crypt x"


def test_other_filesystems_have_no_subvolume() -> None:
    assert parse(SAMPLE)[3].subvolid is None


def test_garbage_lines_are_ignored() -> None:
    assert parse("nonsense\n\n") == []
