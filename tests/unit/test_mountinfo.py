from __future__ import annotations

from rollback.mountinfo import mounted_below, parse

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


def test_what_is_mounted_on_paths_inside_the_filesystem() -> None:
    """Any filesystem, by the path inside ours it is mounted on: the parent mount's root (btrfs: the
    subvolume's path) and the rest of the mount point; one stacked on a mount point covers its root."""
    table = """\
22 1 0:21 /root / rw shared:1 - btrfs /dev/vda2 rw,subvolid=256,subvol=/root
23 22 0:21 /persist /persist rw shared:2 - btrfs /dev/vda2 rw,subvolid=257,subvol=/persist
24 22 0:5 / /dev rw master:2 - devtmpfs devtmpfs rw
25 23 0:33 / /persist/var/tmp rw - tmpfs tmpfs rw
26 22 0:21 / /mnt/with\\040space rw - btrfs /dev/vda2 rw,subvolid=5,subvol=/
27 26 0:31 / /mnt/with\\040space rw - tmpfs tmpfs rw
28 26 0:32 / /mnt/with\\040space/old/x rw - tmpfs t rw
"""
    assert mounted_below(parse(table), "0:21") == {
        "root/persist": "/persist",
        "root/dev": "/dev",
        "persist/var/tmp": "/persist/var/tmp",
        "root/mnt/with space": "/mnt/with space",
        "": "/mnt/with space",
        "old/x": "/mnt/with space/old/x",
    }
    assert mounted_below(parse(table), "0:5") == {}


def test_a_read_write_mount_over_a_read_only_superblock_is_found() -> None:
    """Read-write over a read-only superblock: the kernel forced it so after an error, or another mount
    was remounted read-only (a reviewer); a mount read-only of its own (and its superblock) is not."""
    from rollback.mountinfo import read_only_under

    table = """\
30 1 0:40 / /mnt/ro ro,relatime - btrfs /dev/loop0 ro,subvolid=5,subvol=/
31 1 0:40 /persist /mnt/p rw,relatime - btrfs /dev/loop0 ro,subvolid=257,subvol=/persist
32 1 0:41 / /mnt/other rw,relatime - btrfs /dev/loop1 ro,subvolid=5,subvol=/
"""
    mounts = parse(table)
    assert read_only_under(mounts, "0:40") == "/mnt/p"
    assert read_only_under(mounts[:1], "0:40") is None
    assert read_only_under(parse(SAMPLE), "0:21") is None
