"""The block device: does it exist, is it btrfs, who has it mounted, and the run lock."""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from rollback import mountinfo
from rollback.errors import Refused

_BTRFS_MAGIC = b"_BHRfS_M"
_MAGIC_OFFSET = 0x10000 + 0x40  # primary superblock + offset of the magic


def probe(device: str) -> None:
    """Refuse unless `device` is a block device holding a btrfs filesystem."""
    try:
        mode = os.stat(device).st_mode
    except FileNotFoundError:
        raise Refused(
            f"device {device} does not exist", "check --device; in the initrd the unit waits for it", code="no-device"
        ) from None
    except OSError as error:
        raise Refused(f"cannot stat {device}: {error.strerror}", code="no-device") from None
    if not stat.S_ISBLK(mode):
        raise Refused(
            f"{device} is not a block device",
            "pass the device node, e.g. /dev/disk/by-label/...",
            code="not-block-device",
        )
    try:
        with open(device, "rb") as handle:
            magic = os.pread(handle.fileno(), len(_BTRFS_MAGIC), _MAGIC_OFFSET)
    except OSError as error:
        raise Refused(f"cannot read {device}: {error.strerror}", code="unreadable") from None
    if magic != _BTRFS_MAGIC:
        raise Refused(f"{device} does not hold a btrfs filesystem", "check --device", code="not-btrfs")


def swap_header_tail(device: str, offset_pages: int) -> bytes:
    """The last bytes of the swap header page (where the swap or hibernation signature lives)."""
    from rollback.hibernation import SIGNATURE_SIZE

    page = os.sysconf("SC_PAGE_SIZE")
    with open(device, "rb") as handle:
        return os.pread(handle.fileno(), SIGNATURE_SIZE, offset_pages * page + page - SIGNATURE_SIZE)


def read_sysfs_resume(path: str = "/sys/power/resume") -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except OSError:  # no hibernation support in this kernel
        return ""


@contextmanager
def locked(device: str) -> Iterator[None]:
    """Hold an exclusive BSD lock on the device node (the protocol udev also honours)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Refused(
                f"another process holds the lock on {device}",
                "another rollback (or a disk tool) is running; wait for it",
                code="locked",
            ) from None
        yield
    finally:
        os.close(fd)


def mounted_subvolumes(device: str, table: str = "/proc/self/mountinfo") -> dict[int, str]:
    """Subvolume id -> a mount point, for every mount of `device`'s filesystem."""
    wanted = os.stat(device).st_rdev
    with open(table, encoding="utf-8", errors="surrogateescape") as handle:
        mounts = mountinfo.parse(handle.read())
    found: dict[int, str] = {}
    for mount in mounts:
        if mount.fstype != "btrfs" or mount.subvolid is None or not mount.source.startswith("/"):
            continue
        try:
            if os.stat(mount.source).st_rdev != wanted:
                continue
        except OSError:
            continue
        found.setdefault(mount.subvolid, mount.mount_point)
    return found
