"""Parse mountinfo tables: which btrfs subvolumes are mounted, and where.

A filesystem is known by the major:minor field, the superblock's device number: on a multi-device
btrfs the source column names one member for every mount, whichever member was mounted, so a
device node never identifies the filesystem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo, the fields the safety checks use."""

    mount_point: str
    dev: str  # major:minor of the filesystem (its superblock): one value for every mount of it
    fstype: str
    source: str
    subvolid: int | None
    mount_id: str = ""
    parent_id: str = ""
    root: str = "/"  # the path inside its filesystem that is mounted here (btrfs: from the top level)
    writable: bool = True  # this mount's own flag (rw)
    super_options: tuple[str, ...] = ("rw",)  # its superblock's (rw or ro first), shared by every mount of it

    @property
    def super_writable(self) -> bool:
        return self.super_options[:1] == ("rw",)


def unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
        except ValueError:
            continue
        fstype, source, options = fields[dash + 1 : dash + 4]
        subvolid = None
        for option in options.split(","):
            key, _, value = option.partition("=")
            if key == "subvolid" and value.isdigit():
                subvolid = int(value)
        mounts.append(
            Mount(
                unescape(fields[4]),
                fields[2],
                fstype,
                unescape(source),
                subvolid,
                fields[0],
                fields[1],
                unescape(fields[3]),
                fields[5].split(",")[0] == "rw",
                tuple(options.split(",")),
            )
        )
    return mounts


def read_only_under(mounts: list[Mount], dev: str) -> str | None:
    """The mount point of a mount of the filesystem `dev` that is read-write while its superblock is
    read-only. The kernel forces the superblock so after an error (a transaction aborted: a failing
    disk, a damaged tree), refusing every write, and the remount read-write, until it is unmounted
    everywhere; a plain `mount -o remount,ro` of another mount makes it so too, writable again by a
    remount. None: no such mount."""
    return next((m.mount_point for m in mounts if m.dev == dev and m.writable and not m.super_writable), None)


def subvolumes_of(mounts: list[Mount], dev: str) -> dict[int, str]:
    """Subvolume id -> the first mount point, for the btrfs mounts of the filesystem `dev`."""
    found: dict[int, str] = {}
    for mount in mounts:
        if mount.fstype == "btrfs" and mount.dev == dev and mount.subvolid is not None:
            found.setdefault(mount.subvolid, mount.mount_point)
    return found


def mounted_below(mounts: list[Mount], dev: str) -> dict[str, str]:
    """Path inside the filesystem `dev` (from its top level, no leading slash) -> the mount point of
    whatever is mounted there (any filesystem: a tmpfs on a directory of the root, a bind mount), for
    the mounts whose parent is a mount of `dev`: renaming such a path fails (EBUSY), deleting the
    subvolume it is in detaches the mount from under whoever uses it."""
    by_id = {m.mount_id: m for m in mounts}
    found: dict[str, str] = {}
    for mount in mounts:
        parent = by_id.get(mount.parent_id)
        if parent is None or parent.dev != dev or mount.mount_id == parent.mount_id:
            continue
        # both canonical paths; one stacked on the parent's own mount point covers the parent's root
        below = (
            ""
            if mount.mount_point == parent.mount_point
            else mount.mount_point.removeprefix(parent.mount_point.rstrip("/") + "/")
        )
        found.setdefault(f"{parent.root.strip('/')}/{below}".strip("/"), mount.mount_point)
    return found


def dev_of(mounts: list[Mount], mount_point: str) -> str | None:
    """The filesystem (major:minor) mounted at `mount_point`, the last mount there winning."""
    found = [m.dev for m in mounts if m.mount_point == mount_point]
    return found[-1] if found else None
