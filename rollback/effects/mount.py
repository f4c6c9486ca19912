"""A top-level mount that never outlives the process: a private mount namespace."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rollback import mountinfo
from rollback.effects import rundir
from rollback.errors import Refused
from rollback.mountinfo import Mount

_CLONE_NEWNS = 0x00020000
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_NOATIME = 1024
_MS_REC = 16384
_MS_SLAVE = 1 << 19
_MNT_DETACH = 2
_ENOENT = 2  # errno.ENOENT
_EINVAL = 22  # errno.EINVAL
_EIO = 5  # errno.EIO
_EBUSY = 16  # errno.EBUSY
_EEXIST = 17  # errno.EEXIST
MOUNT_POINT = "/run/rollback"

_libc = ctypes.CDLL(None, use_errno=True)
_private = False


def enter_private_namespace() -> None:
    """Unshare the mount namespace once: our mounts vanish with the process, even on SIGKILL. The
    copies of the host's mounts it starts with are made slaves, not private: our mounts reach no other
    namespace, and the host's unmounts reach ours (private, a filesystem the user unmounted while a
    long cleanup ran stayed mounted in its namespace: a USB disk or LUKS volume not released)."""
    global _private
    if _private:
        return
    if _libc.unshare(_CLONE_NEWNS) != 0:
        errno = ctypes.get_errno()
        raise Refused(
            f"cannot create a private mount namespace: {os.strerror(errno)}",
            "rollback needs root (CAP_SYS_ADMIN): run it with sudo, from the initrd unit or a root shell",
            code="not-root",
        )
    if _libc.mount(None, b"/", None, _MS_REC | _MS_SLAVE, None) != 0:
        errno = ctypes.get_errno()
        if errno == _EINVAL:  # "/" is no mount's root: a plain chroot into a directory
            raise Refused(
                "/ is not a mount point (a plain chroot?): the top-level mount could not be kept from "
                "reaching the host's mounts",
                "bind-mount the directory on itself before entering it (mount --bind DIR DIR; arch-chroot "
                "does), or run rollback outside the chroot with --device",
                code="chroot",
            )
        raise OSError(errno, f"make / rslave: {os.strerror(errno)}")
    _private = True


@contextmanager
def top_level(device: str) -> Iterator[Path]:
    """Mount subvolid=5 of `device` privately and read-only; yield its path; unmount.

    Read-only and noatime: observing must not write (reading the root's directory on a relatime
    mount moves its generation, which would make an untouched root look used). make_writable()
    switches it when a plan is about to be carried out.
    """
    enter_private_namespace()
    # One fixed, empty directory: the mount on it exists only in our namespace, so concurrent
    # processes can share it and a killed process leaves nothing to clean up.
    rundir.ensure(MOUNT_POINT)
    where = MOUNT_POINT
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOATIME | _MS_RDONLY
    result = _libc.mount(os.fsencode(device), os.fsencode(where), b"btrfs", flags, b"subvolid=5")
    if result != 0:
        errno = ctypes.get_errno()
        if errno == _ENOENT and os.path.exists(device):  # btrfs's answer when a member is not there
            raise _member_missing(device)
        if errno == _EIO and _read_only_device(device):  # btrfs: "log replay required on RO media"
            raise Refused(
                f"cannot mount {device}: {os.strerror(errno)}: the device is read-only, and a filesystem "
                "with its log to replay (after an unclean shutdown) cannot be mounted from it",
                "make the device writable (blockdev --setrw; a loop device attached without -r), or look at "
                "it by hand with mount -o ro,rescue=nologreplay",
                code="read-only",
            )
        raise Refused(
            f"cannot mount {device}: {os.strerror(errno)}", _MOUNT_HINTS.get(errno, _DAMAGE), code="mount-failed"
        )
    try:
        yield Path(where)
    finally:
        if _libc.umount2(os.fsencode(where), 0) != 0:
            _libc.umount2(os.fsencode(where), _MNT_DETACH)


def _member_missing(device: str) -> Refused:
    """The mount's ENOENT: a member the kernel knows no device for. Either it is not attached, or (every
    member attached) the kernel was not told of it: no udev to run btrfs device scan (a rescue shell;
    `btrfs device scan --forget`), where the hint to mount degraded made a real member stale (a
    multi-device tester)."""
    from rollback.effects import device as devices

    spans, found = devices.members_attached(device, devices.probe(device))
    # not a replace target's (device id 0, not counted in the superblock's), nor a member left behind (a
    # disk removed, or away during a degraded mount: its superblock older): those are no member's device
    # the kernel lacks, and a scan cannot help (a reviewer)
    current = devices.current_members(found)
    shown = ", ".join(f"{n} on {nodes[0][0]}" for n, nodes in sorted(current.items()))
    if spans > 1 and len(current) >= spans:
        return Refused(
            f"cannot mount {device}: the kernel knows no device for a member of its btrfs filesystem, while all "
            f"{spans} are attached (member {shown}): they were not registered (udev runs btrfs device scan: none ran "
            "here, or a scan --forget undid it)",
            "btrfs device scan, then run again; nothing was changed",
            code="mount-failed",
        )
    attached = f": {len(current)} of its {spans} members attached (member {shown})" if current else ""
    return Refused(
        f"cannot mount {device}: a device of its btrfs filesystem is missing ({os.strerror(_ENOENT)}){attached}",
        f"btrfs filesystem show {device}; dmesg names what is missing (a seed device: attach it, then btrfs device "
        "scan). A degraded filesystem is repaired by hand (mount -o degraded, where every block group has a copy "
        "elsewhere: not raid0 nor single), not rolled back (booted with rootflags=degraded on purpose: add "
        "rollback.skip); nothing was changed",
        code="mount-failed",
    )


_DAMAGE = "check the device with btrfs check --readonly; see dmesg"
_MOUNT_HINTS = {  # what btrfs's mount answers that is no damage (found by a multi-device tester)
    _EBUSY: "the device is in use otherwise (a btrfs replace target, a seed in use, held by another filesystem): "
    "lsblk; btrfs filesystem show; dmesg",
    _EEXIST: "another device carries this filesystem's fsid and device id (a copy, or a member back from a "
    "degraded mount): blkid; detach every member of the copy, or give each a new UUID (btrfstune -u) and the "
    "copy its own label; forgetting one member of a copy lets the kernel join the others' to the original's",
}
_BLKROGET = 0x125E  # _IO(0x12, 94): int, whether the block device is read-only


def _read_only_device(device: str) -> bool:
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        answer = bytearray(4)
        fcntl.ioctl(fd, _BLKROGET, answer)
        return bool(int.from_bytes(answer, sys.byteorder))
    except OSError:
        return False
    finally:
        os.close(fd)


def settle(top: Path) -> None:
    """Commit what others wrote to the filesystem (syncfs), so that the subvolumes' items read next say
    what is in them: a root written through another mount (a rescue shell's /mnt) keeps its committed
    generation for up to 30 s, and a snapshot of the blank then looked untouched, and was deleted
    rather than archived. Nothing to commit where only our read-only mount has it (the initrd's case):
    the kernel returns at once. Best effort: an error here is the next step's to report."""
    try:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _libc.syncfs(fd)
    finally:
        os.close(fd)


def make_writable(top: Path) -> None:
    """Make our top-level mount read-write (still noatime), in place: no gap between what was observed
    and what is changed. Our mount's own flag (MS_BIND: the superblock every mount of the filesystem
    shares is untouched) where the superblock is writable already (the running system's: a plain
    remount reconfigured it, and the running system's `noacl` was dropped at every cleanup; found by a
    scale tester); else the superblock too, `noacl` kept. A superblock another mount holds read-only
    stays writable after the run (that mount keeps its own read-only flag): putting it back read-only
    was tried, and failed the writes of whoever made it writable meanwhile (a reviewer)."""
    flags = _MS_REMOUNT | _MS_NOSUID | _MS_NODEV | _MS_NOATIME
    own = _libc.mount(None, os.fsencode(top), None, flags | _MS_BIND, None) == 0
    if own and not os.statvfs(top).f_flag & os.ST_RDONLY:
        return
    if _libc.mount(None, os.fsencode(top), None, flags, _kept_options(top)) != 0:  # (rescue mounts: verbs' check)
        code = ctypes.get_errno()
        # (btrfs refuses it so after an error forced the filesystem read-only, until unmounted everywhere)
        forced = code == errno.EINVAL
        why = "; the kernel refuses it after an error forced the filesystem read-only" if forced else ""
        raise Refused(
            f"cannot write to the filesystem: remounting it read-write failed: {os.strerror(code)}{why}",
            (
                "dmesg says which error; it stays so until unmounted everywhere (the running system's root: "
                "reboot), then btrfs check --readonly on the device"
                if forced
                else "the device or the filesystem is read-only (blockdev --getro, dmesg)"
            )
            + "; nothing was changed",
            code="read-only",
        )


def refuse_rescue_mounts(top: Path, *, dry_run: bool = False) -> None:
    """Mounted elsewhere with rescue options (`-o ro,rescue=nologreplay`: an admin looking at a suspect
    disk), the superblock is read-only by design, and the remount read-write fails EINVAL as after an
    error (a tester with failing disks); a dry run, which does not remount, said exit 0 and its plan."""
    rescue = [o for o in _super_options(top) if o.startswith("rescue=") or o == "nologreplay"]
    if rescue:
        raise Refused(
            f"cannot write to the filesystem: it is mounted elsewhere with {','.join(rescue)}, which keeps it "
            "read-only" + (" (the run would be refused)" if dry_run else ""),
            "unmount it everywhere first (findmnt --source <device>); nothing was changed",
            code="read-only",
        )


def read_only_under(top: Path) -> str | None:
    """A mount of the filesystem mounted at `top` read-write over its read-only superblock
    (mountinfo.read_only_under): another mount, before our remount read-write, or ours, after it (the
    kernel forcing it so under the run). None where the mount table cannot be read."""
    mounts, ours = _table(top)
    return mountinfo.read_only_under(mounts, ours.dev) if ours else None


def _kept_options(top: Path) -> bytes | None:
    """What a reconfiguration of the superblock would reset and the superblock has now: `noacl` (btrfs
    turns ACLs on at every reconfiguration from mount(2) unless told)."""
    return b"noacl" if "noacl" in _super_options(top) else None


def superblock_read_only(top: Path) -> bool:
    """The superblock of the filesystem mounted at `top` is read-only (every mount of it read-only, or
    forced so after an error)."""
    return _super_options(top)[:1] == ("ro",)


def _super_options(top: Path) -> tuple[str, ...]:
    """The superblock's options, as our mount's line shows them; () where the mount table cannot be read."""
    ours = _table(top)[1]
    return ours.super_options if ours else ()


def _table(top: Path) -> tuple[list[Mount], Mount | None]:
    """This namespace's mount table, and our mount in it: the last line for its mount point (one there
    before it is hidden by it); ([], None) where the table cannot be read."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            mounts = mountinfo.parse(handle.read())
    except OSError:
        return [], None
    ours = [m for m in mounts if m.mount_point == str(top)]
    return mounts, ours[-1] if ours else None
