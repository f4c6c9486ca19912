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


def _unescape(field: str) -> str:
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
        mounts.append(Mount(_unescape(fields[4]), fields[2], fstype, _unescape(source), subvolid))
    return mounts


def subvolumes_of(mounts: list[Mount], dev: str) -> dict[int, str]:
    """Subvolume id -> the first mount point, for the btrfs mounts of the filesystem `dev`."""
    found: dict[int, str] = {}
    for mount in mounts:
        if mount.fstype == "btrfs" and mount.dev == dev and mount.subvolid is not None:
            found.setdefault(mount.subvolid, mount.mount_point)
    return found


def dev_of(mounts: list[Mount], mount_point: str) -> str | None:
    """The filesystem (major:minor) mounted at `mount_point`, the last mount there winning."""
    found = [m.dev for m in mounts if m.mount_point == mount_point]
    return found[-1] if found else None
