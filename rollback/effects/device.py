"""The block device: does it exist, is it btrfs, who has it mounted, and the run lock."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rollback import mountinfo, names
from rollback.effects import refs, rundir
from rollback.errors import Refused
from rollback.model import Mounts

_SUPERBLOCK = 0x10000  # the primary superblock: fsid at +0x20 (16 bytes), magic at +0x40
_BTRFS_MAGIC = b"_BHRfS_M"
LOCK_DIR = "/run/rollback-locks"
NODE_LOCK_WAIT_S = 10.0  # how long a lock held on the device node (udev's, for an event) is waited for


def _named(device: str) -> str:
    """The device as a message shows it: quoted when a space or an unprintable character would hide."""
    return device if device.isprintable() and not any(c.isspace() for c in device) else names.shown(device)


def probe(device: str) -> str:
    """The filesystem's fsid (the same on every member device); refuse unless `device` is a block
    device holding a btrfs filesystem."""
    named = _named(device)
    try:
        mode = os.stat(device).st_mode
    except FileNotFoundError:
        raise Refused(f"device {named} does not exist", _absent_hint(device), code="no-device") from None
    except OSError as error:
        raise Refused(f"cannot stat {named}: {error.strerror}", "check the device setting", code="no-device") from None
    if not stat.S_ISBLK(mode):
        raise Refused(
            f"{named} is not a block device",
            "pass the device node, e.g. /dev/disk/by-label/...",
            code="not-block-device",
        )
    try:
        with open(device, "rb") as handle:
            head = os.pread(handle.fileno(), 0x48, _SUPERBLOCK)
    except PermissionError as error:
        _not_root(f"cannot read {named}: {error.strerror}")
        raise Refused(f"cannot read {named}: {error.strerror}", "see dmesg", code="unreadable") from None
    except OSError as error:
        raise Refused(f"cannot read {named}: {error.strerror}", "see dmesg", code="unreadable") from None
    if head[0x40:0x48] != _BTRFS_MAGIC:
        raise Refused(f"{named} does not hold a btrfs filesystem", "check the device setting", code="not-btrfs")
    if int.from_bytes(head[0x38:0x40], "little") & _SUPER_FLAG_SEEDING:
        # never mounted by us: since 6.7 the last unmount of a single-device filesystem unregisters
        # it, and its sprout (the root) then cannot be mounted (dmesg: failed to find fsid ... seed)
        raise Refused(
            f"{named} is a seed device (btrfstune -S 1: read-only; a filesystem sprouted from it is the one "
            "in use, under another UUID): nothing to replace on it, and mounting it alone can leave its sprout "
            "unmountable until btrfs device scan",
            "name the sprout's device (blkid: its UUID is not the seed's); a LABEL= names either, as udev last saw",
            code="seed-device",
        )
    return head[0x20:0x30].hex()


def refuse_copies(device: str, fsid: str) -> dict[int, list[tuple[str, int]]]:
    """Before our mount, for a filesystem over several devices: no member's device id on two block
    devices (a copy of the disks attached, dd or a VM image's; a stale member back beside its
    replacement). The kernel takes each member from whichever device it saw last, and can join the
    copy's to the original's: a run wrote to both, and the original no longer mounted (found by a
    multi-device tester). Devices another holds (multipath paths, md members, dm's) are not counted:
    they show the holder's bytes. The members found (members_attached)."""
    _, found = members_attached(device, fsid)
    twins = {
        member: [f"{node} (generation {generation})" for node, generation in nodes]  # the older: a stale one
        for member, nodes in sorted(found.items())
        if len(nodes) > 1
    }
    if twins:
        shown = "; ".join(f"member {member} on {', '.join(nodes)}" for member, nodes in twins.items())
        raise Refused(
            f"the filesystem {uuid(fsid)} spans several devices, and a member is on two of them ({shown}): a copy of "
            "its disks is attached (or a stale member beside its replacement), and the kernel can join the copy's "
            "members to the original's: any write would damage both",
            "detach every member of the copy; or give each a new UUID (btrfstune -u) and the copy its own label; a "
            "stale member (the older generation, once the others are checked): wipefs -a it; nothing was changed",
            code="copy-attached",
        )
    return found


def behind(found: dict[int, list[tuple[str, int]]]) -> list[str]:
    """What to say of the members (refuse_copies') whose superblock is more than one transaction older
    than the newest (a power cut between members' writes leaves one): away while it was mounted degraded
    without them. Read before a mount: the first commit writes every member's superblock, and the stale
    one looks current while its blocks are not (a multi-device tester)."""
    newest = _newest(found)
    return [
        f"member {member} on {node} is at generation {generation}, the filesystem at {newest}: it missed what was "
        "written while it was away (mounted degraded without it); the kernel reads the newest copies, and the "
        "first commit makes its superblock look current"
        for member, nodes in sorted(found.items())
        for node, generation in nodes
        if generation < newest - 1
    ]


def current_members(found: dict[int, list[tuple[str, int]]]) -> dict[int, list[tuple[str, int]]]:
    """The members (members_attached') with a device not left behind (behind's sense: more than one
    transaction older than the newest), and not a replace target's (device id 0, which the superblock's
    device count leaves out)."""
    newest = _newest(found)
    return {n: nodes for n, nodes in found.items() if n and any(g >= newest - 1 for _, g in nodes)}


def _newest(found: dict[int, list[tuple[str, int]]]) -> int:
    return max((generation for nodes in found.values() for _, generation in nodes), default=0)


def members_attached(device: str, fsid: str) -> tuple[int, dict[int, list[tuple[str, int]]]]:
    """How many devices the filesystem `fsid` spans (its superblock's num_devices, as `device` has it),
    and the block devices carrying each member's superblock, by device id: (node, generation) each; not
    read for a filesystem on one device ({}), nor where `device` cannot be read (0, {})."""
    try:
        with open(device, "rb") as handle:
            head = os.pread(handle.fileno(), 0x90, _SUPERBLOCK)
    except OSError:
        return 0, {}
    spans = int.from_bytes(head[0x88:0x90], "little")
    found: dict[int, list[tuple[str, int]]] = {}
    for name in _unheld_block_devices() if spans > 1 else ():
        node = _node(name)
        if (member := _member_id(node, fsid)) is not None:
            found.setdefault(member[0], []).append((node, member[1]))
    return spans, found


def _node(name: str) -> str:
    """The device node of a /sys/class/block name (`cciss!c0d0` is /dev/cciss/c0d0)."""
    return f"/dev/{name.replace('!', '/')}"


def _unheld_block_devices() -> list[str]:
    """The kernel's block devices (/sys/class/block names) that could hold a btrfs superblock and that
    no other device holds, nor the disk a partition is on (a multipath path's, an md member's), and that
    udev, where it ran, did not find something else on. Not read: what is too small for a superblock
    (an empty drive, an unconnected nbd, an unattached loop device: size 0), floppy drives, DRBD
    devices (_UNREAD_MAJORS)."""
    try:
        names = os.listdir("/sys/class/block")
    except OSError:
        return []
    return [
        name
        for name in names
        if _big_enough(name) and not _held(name) and not _held(_disk_of(name)) and _maybe_btrfs(name)
    ]


# block majors never read: floppy drives (a drive's retries); DRBD, whose device shows its backing
# device's bytes and which, unlike dm and md, registers no holder of that device (the pair would be
# a member on two devices at every boot): the backing device is read instead, and is the same bytes
_UNREAD_MAJORS = {2: "floppy", 147: "drbd"}
_SUPERBLOCK_END = _SUPERBLOCK + 4096


def _big_enough(name: str) -> bool:
    try:
        with open(f"/sys/class/block/{name}/size", encoding="ascii") as handle:
            sectors = int(handle.read())
        with open(f"/sys/class/block/{name}/dev", encoding="ascii") as handle:
            major = int(handle.read().partition(":")[0])
    except (OSError, ValueError):
        return False
    return sectors * 512 >= _SUPERBLOCK_END and major not in _UNREAD_MAJORS


def _held(name: str) -> bool:
    try:
        return bool(os.listdir(f"/sys/class/block/{name}/holders"))
    except OSError:
        return False


def _disk_of(name: str) -> str:
    """The disk a partition is on (its sysfs directory's parent); the name itself for a disk."""
    if not os.path.exists(f"/sys/class/block/{name}/partition"):
        return name
    return os.path.basename(os.path.dirname(os.path.realpath(f"/sys/class/block/{name}")))


_UDEV_DATA = "/run/udev/data"  # b<major>:<minor>, with E:ID_FS_TYPE=... for what blkid found on it


def _maybe_btrfs(name: str) -> bool:
    """False only where udev's database says what filesystem is on the device, and it is not btrfs
    (udev writes no ID_FS_TYPE where blkid found nothing: such a device is read)."""
    try:
        with open(f"/sys/class/block/{name}/dev", encoding="ascii") as handle:
            number = handle.read().strip()
        with open(f"{_UDEV_DATA}/b{number}", encoding="utf-8", errors="replace") as handle:
            said = handle.read()
    except OSError:  # no udev (a rescue shell, a container, these tests), or not processed yet: look
        return True
    return "E:ID_FS_TYPE=" not in said or "E:ID_FS_TYPE=btrfs\n" in said


def _member_id(node: str, fsid: str) -> tuple[int, int] | None:
    """The device id and generation in `node`'s btrfs superblock when it carries the filesystem `fsid`."""
    try:
        fd = os.open(node, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # gone, no medium (an empty drive), not a node here
        return None
    try:
        head = os.pread(fd, 0xD1, _SUPERBLOCK)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(head) < 0xD1 or head[0x40:0x48] != _BTRFS_MAGIC or head[0x20:0x30].hex() != fsid:
        return None
    return int.from_bytes(head[0xC9:0xD1], "little"), int.from_bytes(head[0x48:0x50], "little")  # devid, generation


def _absent_hint(device: str) -> str:
    """What to check for a device path that does not exist: a /dev/disk/by-* link (UUID=, LABEL=) where
    udev made none (a rescue shell, a container), or spelt in capitals where udev's is not."""
    plain = "check the device setting (lsblk -f lists what there is); in the initrd the unit waits for it"
    if not device.startswith("/dev/disk/by-"):
        return plain
    if not os.path.isdir("/dev/disk"):
        return (
            "there is no /dev/disk here: udev has not made its links (a rescue shell, a container); name the "
            "device node instead (blkid -U UUID, blkid -L LABEL)"
        )
    lower = device[: device.rindex("/")] + device[device.rindex("/") :].lower()
    if (
        lower != device
        and device.startswith(("/dev/disk/by-uuid/", "/dev/disk/by-partuuid/"))
        and os.path.exists(lower)
    ):
        return f"udev's link is in lower case: {_named(lower)}"
    return plain


_SUPER_FLAG_SEEDING = 1 << 32  # BTRFS_SUPER_FLAG_SEEDING, in the superblock's flags (offset 0x38)


def _not_root(what: str) -> None:
    """Refuse as not-root when permission is what is missing and we are not root."""
    if os.geteuid() != 0:
        raise Refused(f"{what} (not root)", "run as root", code="not-root")


def label(device: str) -> bytes:
    """The btrfs filesystem label on `device` (b"" for none, or where it cannot be read)."""
    try:
        with open(device, "rb") as handle:
            head = os.pread(handle.fileno(), 0x22B, _SUPERBLOCK)
    except OSError:
        return b""
    return head[0x12B:0x22B].split(b"\0", 1)[0] if head[0x40:0x48] == _BTRFS_MAGIC else b""


def swap_header_tail(device: str, offset_pages: int) -> bytes:
    """The last bytes of the swap header page (where the swap or hibernation signature lives)."""
    from rollback.hibernation import SIGNATURE_SIZE

    page = os.sysconf("SC_PAGE_SIZE")
    where = offset_pages * page + page - SIGNATURE_SIZE
    if where >= 2**63:  # beyond any file offset: pread would raise OverflowError, not OSError
        raise OSError(errno.EINVAL, f"resume_offset {offset_pages} is beyond any device")
    with open(device, "rb") as handle:
        tail = os.pread(handle.fileno(), SIGNATURE_SIZE, where)
    if len(tail) < SIGNATURE_SIZE:  # past the end of the device: nothing checked is not "no image"
        raise OSError(errno.EINVAL, f"resume_offset {offset_pages} is beyond the end of {device}")
    return tail


def read_kernel(path: str) -> str:
    """A kernel-provided text (/proc/cmdline, /sys/power/resume...), or "" where this kernel or
    environment has none; bytes that are not UTF-8 are kept as surrogate escapes."""
    try:
        with open(path, "rb") as handle:
            return os.fsdecode(handle.read())
    except OSError:
        return ""


@contextmanager
def locked(
    device: str, fsid: str, *, node: bool = True, waiting: Callable[[str], None] | None = None
) -> Iterator[Callable[[], None]]:
    """One run per filesystem, whichever member device each was given: an exclusive lock on a file
    named by the fsid, refused at once if held (another rollback), or with `waiting` (told who holds
    it) waited for as long as it is held (the cleanup on a running system, which has no deadline:
    another cleanup of the same filesystem, or a person holding the lock by hand, does the same job or
    must finish first); and (`node`) a BSD lock on the
    device node, which tells udev not to probe it meanwhile (not for the long cleanup on a running
    system: udev would hold the disk's events). udev holds a shared lock on the node while it
    processes an event of the disk, so that one is waited for, bounded (systemd's
    BLOCK_DEVICE_LOCKING.md: take it exclusively and wait). Yields a function that releases both
    early (what is left to do changes nothing)."""
    try:
        rundir.ensure(LOCK_DIR)
        fds = [os.open(f"{LOCK_DIR}/{fsid}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)]
    except PermissionError as error:  # a user in group disk reads the device, not root's directory
        _not_root(f"cannot take the lock in {LOCK_DIR}: {error.strerror}")
        raise
    try:
        if not _flocked(fds[0], 0.0):
            held = f"another process holds the lock on {device}'s filesystem{_holder(fds[0])}"
            if waiting is None:
                raise Refused(held, "another rollback is running; wait for it", code="locked")
            waiting(f"{held}: waiting for it")
            fcntl.flock(fds[0], fcntl.LOCK_EX)  # (a stop signal's handler interrupts it)
            if probe(device) != fsid:  # a name (LABEL=) that leads to another filesystem after a long wait
                raise Refused(
                    f"{_named(device)} holds another filesystem than when this began waiting for its lock",
                    "run it again (nothing was changed)",
                    code="locked",
                )
        if node:
            try:
                fds.append(os.open(device, os.O_RDONLY | os.O_CLOEXEC))
            except OSError as error:  # gone since probe() (a disk unplugged, a dm device removed)
                raise Refused(
                    f"cannot open {_named(device)}: {error.strerror}", _absent_hint(device), code="no-device"
                ) from None
            if not _flocked(fds[-1], NODE_LOCK_WAIT_S):
                raise Refused(
                    f"another process has held the lock on the device node {device} for {NODE_LOCK_WAIT_S:g} s"
                    + _holder(fds[-1]),
                    "a disk tool (udev processing the disk's events, a partitioning tool) is using it; try again",
                    code="locked",
                )

        def release() -> None:
            while fds:
                os.close(fds.pop())

        yield release
    finally:
        for fd in fds:  # what release() has not closed
            os.close(fd)


def lock_holder(fsid: str) -> str | None:
    """Who holds the run lock of the filesystem `fsid` ("pid 1234: rollback run ..."), read from
    /proc/locks without taking it (a lock taken to look would refuse a boot's run starting then as
    `locked`); None when nobody does, or it cannot be read."""
    try:
        fd = os.open(f"{LOCK_DIR}/{fsid}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _holder(fd).removeprefix(", ") or None
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """Who holds the BSD lock on `fd`'s file, as the kernel says (/proc/locks: pid, device and inode),
    and its command line: ", pid 1234: rollback cleanup ..."; "" when that cannot be read."""
    info = os.fstat(fd)
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            held = [line.split() for line in handle.read(1 << 20).splitlines()]
        pid = next(int(f[4]) for f in held if len(f) > 5 and f[1] == "FLOCK" and f[5] == where and f[4].isdigit())
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read(4096).rstrip(b"\0").split(b"\0")
    except (OSError, StopIteration, ValueError):
        return ""
    shown = " ".join(os.fsdecode(word) for word in argv if word)  # none for a kernel thread or a zombie
    return (f", pid {pid}" + (f": {names.shown(shown)}" if shown else "")) if pid > 0 else ""


def _flocked(fd: int, wait_s: float) -> bool:
    """An exclusive BSD lock on `fd`, trying for `wait_s` seconds at most."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def mounts(top: str, fsid: str) -> Mounts:
    """What is mounted, in every mount namespace on the host, of the filesystem mounted at `top` (ours:
    identified by its superblock, not by a member device's name), and on paths inside it. Refuse when
    the same filesystem may also be mounted as another superblock, whose mounts we cannot attribute."""
    tables = list(_namespaces())  # ours first
    own = mountinfo.dev_of(tables[0][1], top)
    if own is None:
        raise OSError(f"{top} is not in /proc/self/mountinfo")
    _refuse_twins(top, fsid, own, tables)
    users = _user_namespace("self")  # (another's: an unprivileged user's mounts can put anything at a path)
    roots = (
        "",
        "/proc/1/root",
        *(f"/proc/{p}/root" for p, _ in tables if p is not None and _user_namespace(p) == users),
    )
    under = next((_where(m, pid) for pid, table in tables if (m := mountinfo.read_only_under(table, own))), "")
    found = Mounts({}, {}, _swapfiles(fsid, roots), under, tuple(missing_members(fsid)))
    for pid, table in tables:
        if pid is None:  # our own top-level mount is not in anybody's way
            table = [m for m in table if m.mount_point != top]
        for subvolid, where in mountinfo.subvolumes_of(table, own).items():
            found.subvolumes.setdefault(subvolid, _where(where, pid))
        for path, where in mountinfo.mounted_below(table, own).items():
            found.paths.setdefault(path, _where(where, pid))
    return found


def _swapfiles(fsid: str, roots: Sequence[str]) -> dict[int, str]:
    """The active swap files on this filesystem, by the subvolume holding each: the kernel does not
    let a subvolume holding one be deleted (EPERM), and the run's delete failed at every run while
    swap was on, after the root was replaced (found by a coexistence tester). /proc/swaps names each
    by its path in the mount namespace it was turned on in: looked up in ours, then through each
    namespace's root (`roots`: /proc/PID/root; a swapon after our private namespace was made, during
    a long cleanup, is found only so). Every file found counts (more refusals, never fewer). In an
    initrd none is active yet."""
    found: dict[int, str] = {}
    try:
        with open("/proc/swaps", encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[1] != "file":
            continue
        path = mountinfo.unescape(fields[0])  # (a space is \\040, as in mountinfo)
        for root in roots:
            if (subvolid := _swap_subvolume(root + path, fsid)) is not None:
                found.setdefault(subvolid, path)
    return found


def _swap_subvolume(path: str, fsid: str) -> int | None:
    """The subvolume holding `path` if it is a regular file on the filesystem `fsid`; None if not, or
    not there. Looked at first without opening it (O_PATH): a FIFO or a device node put at that path in
    another namespace is never opened (a reviewer: a FIFO hung status and the cleanup for good)."""
    try:
        at = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:  # (not in this namespace, gone)
        return None
    try:
        if not stat.S_ISREG(os.fstat(at).st_mode):
            return None
        fd = os.open(f"/proc/self/fd/{at}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        os.close(at)
    try:
        return refs.subvolume_of(fd) if _fsid_of(fd) == fsid else None
    except OSError:  # not btrfs
        return None
    finally:
        os.close(fd)


def _user_namespace(pid: int | str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:  # gone meanwhile
        return ""


SYSFS_BTRFS = "/sys/fs/btrfs"  # a directory per filesystem the kernel has mounted, named by its fsid


def refuse_unseen(device: str, fsid: str, *, writing: bool) -> None:
    """Before our mount: the kernel has this filesystem mounted (somewhere) through other devices, or
    (`writing`) mounted where no mount table we can read shows it. A mount through another device over
    the same bytes (a loop alias, a multipath path) or a copy replays its log and commits a transaction
    under the live one, even read-only; mounts in a mount namespace we cannot see (a container's run,
    the host's mounts being in another PID namespace) would be deleted under their users."""
    _require_kernel_views()
    members = _members(fsid)
    if members is None:  # mounted nowhere
        return
    if os.stat(device).st_rdev not in members:
        _refuse_a_member_back(device, fsid)
        raise Refused(
            f"the filesystem {uuid(fsid)} is mounted through another device, and {_named(device)} holds it "
            "too: this device under another name, or a copy",
            _TWIN_HINT,
            code="mounted",
        )
    if writing and not _in_the_hosts_pid_namespace():
        raise Refused(
            f"the filesystem {uuid(fsid)} is mounted, and this process runs in a PID namespace other than "
            "the host's (a container): the mount tables of the processes outside it cannot be read, so what "
            "is mounted cannot be checked",
            "run rollback on the host (or in the initrd), where every mount can be seen",
            code="mounted",
        )
    if writing and not _seen(fsid, members):
        raise Refused(
            f"the filesystem {uuid(fsid)} is mounted, but in no mount table this process can read: unmounted "
            "lazily (umount -l) and still in use, or held by a mount namespace with no process in it, so what "
            "is mounted cannot be checked",
            "end what uses it (fuser -m; the namespace's bind mount), then run rollback again",
            code="mounted",
        )


def _refuse_a_member_back(device: str, fsid: str) -> None:
    """`device` carries a member the mounted filesystem is missing (mounted degraded, and the device
    attached again): it was called another name for the device, or a copy, whose hint (btrfstune -u)
    would cut a real member off its filesystem (a multi-device tester)."""
    member = _member_id(device, fsid)
    if member is None or member[0] not in missing_members(fsid):
        return
    raise Refused(
        f"{_named(device)} is member {member[0]} of the filesystem {uuid(fsid)}, which is mounted degraded "
        "without it: the kernel does not take a member back into a mounted filesystem",
        "unmount it everywhere and mount it again with every member (then btrfs scrub start: the member "
        "missed what was written meanwhile), or btrfs replace the missing member; nothing was changed",
        code="mounted",
    )


def _require_kernel_views() -> None:
    """/proc and /sys mounted: what is mounted, where and through which devices is read there. A chroot
    without them saw nothing mounted: our read-only mount replayed the log of a filesystem mounted
    through another device and committed under it (without /sys), or every verb was an internal error
    (without /proc)."""
    missing = [
        name for name, probe in (("/proc", "/proc/self/ns/mnt"), ("/sys", "/sys/fs")) if not os.path.exists(probe)
    ]
    if missing:
        raise Refused(
            f"{' and '.join(missing)} not mounted (a chroot?): what is mounted, and through which devices, "
            "cannot be checked",
            "mount -t proc proc /proc; mount -t sysfs sysfs /sys (arch-chroot does both), or run rollback "
            "outside the chroot with --device",
            code="chroot",
        )


_INITIAL_PID_NAMESPACE = 0xEFFFFFFC  # the kernel's fixed inode number of the first PID namespace (PROC_PID_INIT_INO)


def _in_the_hosts_pid_namespace() -> bool:
    """Whether every process's mount table can be read here (/proc shows them all): the initrd and the
    host are in the first PID namespace; a container is not, and its view of the host's mounts is
    whatever was bound into it (/etc/hosts from the host's btrfs, say), not all of them."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == _INITIAL_PID_NAMESPACE
    except OSError:  # no /proc: nothing could be checked either
        return False


UNSEEN_WAIT_S = 10.0  # how long a filesystem mounted where no table shows it may take to go away


def _seen(fsid: str, members: set[int] | None) -> bool:
    """Whether a mount table we can read shows the filesystem, or it goes away: a process that held
    the last mount (a killed cleanup) is gone from /proc before the kernel has torn its filesystem down."""
    deadline = time.monotonic() + UNSEEN_WAIT_S
    while members is not None:
        mounts = [(pid, m) for pid, table in _namespaces() for m in table if m.fstype == "btrfs"]
        if any(_through(m.source, members) for _, m in mounts) or any(_of(fsid, pid, m) for pid, m in mounts):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
        members = _members(fsid)
    return True


def mounted_anywhere(fsid: str) -> bool:
    """The kernel has the filesystem `fsid` mounted (somewhere: any mount namespace)."""
    return _members(fsid) is not None


def _members(fsid: str) -> set[int] | None:
    """The devices (st_rdev) of the mounted filesystem `fsid`, from sysfs; None if it is not mounted."""
    base = f"{SYSFS_BTRFS}/{uuid(fsid)}/devices"
    try:
        listed = os.listdir(base)
    except FileNotFoundError:
        return None
    found = set()
    for name in listed:
        try:
            with open(f"{base}/{name}/dev", encoding="ascii") as handle:
                major, _, minor = handle.read().strip().partition(":")
            found.add(os.makedev(int(major), int(minor)))
        except (OSError, ValueError):  # a member going away meanwhile
            continue
    return found


def read_only_members(top: str) -> list[str]:
    """The member devices (their nodes) of the filesystem mounted at `top` that are read-only, from
    sysfs (devices/<name>/ro), but a seed's (read-only by design: its superblock has the seeding
    flag). All of them make the remount read-write fail; some of them let it succeed, and
    every write then reaches only the others: a raid1 mirror left stale without a word (found by a
    multi-device tester)."""
    fsid = fsid_at(top)
    flags = _flags(fsid, "devices", "ro") if fsid else {}
    return sorted(_node(name) for name, read_only in flags.items() if read_only and not _seed(_node(name)))


def _seed(device: str) -> bool:
    """Whether the device's primary superblock is a btrfs seed's (False where it cannot be read)."""
    try:
        with open(device, "rb") as handle:
            head = os.pread(handle.fileno(), 0x48, _SUPERBLOCK)
    except OSError:
        return False
    return head[0x40:0x48] == _BTRFS_MAGIC and bool(int.from_bytes(head[0x38:0x40], "little") & _SUPER_FLAG_SEEDING)


def missing_members(fsid: str) -> list[int]:
    """The device ids of the mounted filesystem `fsid` that the kernel has no device open for (mounted
    degraded), from sysfs; [] when none are, or it is not mounted. devinfo/<id>/missing says so until the
    member is registered again (btrfs device scan, udev: a disk back), which clears it while the device
    stays unopened (a multi-device tester): then the member ids of the devices open (devices/<name>)
    tell, read where the two lists differ in length."""
    missing = _flags(fsid, "devinfo", "missing")
    ids = {int(n) for n, target in _flags(fsid, "devinfo", "replace_target").items() if n.isdigit() and not target}
    flagged = {int(n) for n, set_ in missing.items() if set_ and n.isdigit()}
    opened = _flags(fsid, "devices", "ro")  # (any attribute: the names)
    if len(opened) >= len(ids):
        return sorted(flagged)
    ids_open = {_open_member_id(_node(name), fsid) for name in opened}
    if None in ids_open:  # a superblock that cannot be read: which member it is, unknown (a reviewer)
        return sorted(flagged)
    return sorted(flagged | (ids - ids_open))


def _open_member_id(node: str, fsid: str) -> int | None:
    """The device id of a device the mounted filesystem `fsid` has open: a member's, or a seed's (a
    sprout lists its seeds' devices, whose superblocks carry the seed's fsid: a reviewer)."""
    if (member := _member_id(node, fsid)) is not None:
        return member[0]
    if _seed(node):
        try:
            with open(node, "rb") as handle:
                return int.from_bytes(os.pread(handle.fileno(), 8, _SUPERBLOCK + 0xC9), "little")
        except OSError:
            return None
    return None


def _flags(fsid: str, kind: str, flag: str) -> dict[str, bool]:
    """Each entry of /sys/fs/btrfs/<fsid>/<kind>: whether its file `flag` reads 1 (False where it cannot
    be read: a kernel without the attribute, a member going away meanwhile); {} when it is not mounted."""
    base = f"{SYSFS_BTRFS}/{uuid(fsid)}/{kind}"
    try:
        listed = os.listdir(base)
    except OSError:
        return {}
    found = {}
    for name in listed:
        try:
            with open(f"{base}/{name}/{flag}", encoding="ascii") as handle:
                found[name] = handle.read().strip() == "1"
        except (OSError, ValueError):
            found[name] = False
    return found


def _of(fsid: str, pid: int | None, mount: mountinfo.Mount) -> bool:
    """Whether `mount` is of the filesystem `fsid`, by what statfs says of its mount point (btrfs folds
    the fsid and the subvolume id into f_fsid): when the device node its line names is gone (renamed
    with lvrename or dmsetup rename, a member unplugged), its source cannot be stat'ed. Never opened."""
    if mount.subvolid is None:
        return False
    words = [int.from_bytes(bytes.fromhex(fsid)[i : i + 4], "big") for i in (0, 4, 8, 12)]
    low = (words[0] ^ words[2] ^ (mount.subvolid >> 32)) & 0xFFFFFFFF
    high = (words[1] ^ words[3] ^ mount.subvolid) & 0xFFFFFFFF
    roots = ["/proc/self/root", "/proc/1/root"] if pid is None else [f"/proc/{pid}/root"]
    for root in roots:
        try:
            if os.statvfs(root + mount.mount_point).f_fsid == low | high << 32:
                return True
        except OSError:  # gone meanwhile, or not reachable from here
            continue
    return False


def _through(source: str, members: set[int]) -> bool:
    try:
        return os.stat(source).st_rdev in members
    except OSError:  # a source that is no path here (another root's /dev)
        return False


def _where(mount_point: str, pid: int | None) -> str:
    """A mount point as messages show it: quoted and escaped when a space, a newline or another
    unprintable character would break the one-line event or hide where it ends."""
    shown = _named(mount_point)
    return shown if pid is None else f"{shown} (mount namespace of PID {pid})"


_TWIN_HINT = (
    "unmount it; if it is a copy of this disk (dd, a snapshot of a VM image), give the copy a new "
    "UUID (btrfstune -u, on every member of the copy) and a label of its own (btrfs filesystem label: a "
    "LABEL= names either) so the two can be told apart"
)


def _refuse_twins(top: str, fsid: str, own: str, tables: list[tuple[int | None, list[mountinfo.Mount]]]) -> None:
    """A second block device over the same bytes (a loop alias, a multipath path, or a copy made with dd)
    is mounted by the kernel (>= 6.7) as a separate filesystem with a temporary fsid: its mounts carry
    another major:minor. Either ours got the temporary fsid (the kernel says so), or another mount's
    device carries our fsid on disk. We cannot tell an alias from a copy, so both refuse."""
    hint = _TWIN_HINT
    if _kernel_fsid(top) not in (fsid, None):
        raise Refused(
            f"the kernel mounted this device under a temporary fsid: another device holding the filesystem "
            f"{uuid(fsid)} is mounted (this device under another name, or a copy), and what it has "
            "mounted cannot be seen from here",
            hint,
            code="mounted",
        )
    checked: set[str] = set()
    for pid, table in tables:
        for mount in table:
            if mount.fstype != "btrfs" or mount.dev == own or mount.source in checked:
                continue
            checked.add(mount.source)
            try:
                theirs = probe(mount.source)
            except Refused:  # not a device node we can read from here: the kernel's check above remains
                continue
            if theirs == fsid:
                raise Refused(
                    f"{mount.source}, another device holding the filesystem {uuid(fsid)}, is mounted at "
                    f"{_where(mount.mount_point, pid)}: this device under another name, or a copy",
                    hint,
                    code="mounted",
                )


_FS_INFO = 0x8400941F  # BTRFS_IOC_FS_INFO: struct btrfs_ioctl_fs_info_args (1024 bytes), fsid at 16


def fsid_at(top: str) -> str:
    """The fsid of the filesystem mounted at `top`, as the kernel has it ("" where it cannot be read)."""
    return _kernel_fsid(top) or ""


def _kernel_fsid(top: str) -> str | None:
    """The fsid the kernel gave the mounted filesystem (None where the ioctl is unavailable)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _fsid_of(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _fsid_of(fd: int) -> str:
    """The fsid of the btrfs holding the open file `fd` (BTRFS_IOC_FS_INFO; OSError elsewhere)."""
    args = bytearray(1024)
    fcntl.ioctl(fd, _FS_INFO, args)
    return bytes(args[16:32]).hex()


def uuid(fsid: str) -> str:
    """The fsid as blkid and UUID= spell it."""
    return f"{fsid[:8]}-{fsid[8:12]}-{fsid[12:16]}-{fsid[16:20]}-{fsid[20:]}"


def _namespaces() -> Iterator[tuple[int | None, list[mountinfo.Mount]]]:
    """(a process in it, its mount table) for every mount namespace: first ours, then PID 1's (None for
    both: their paths are the ones an operator sees), then any other, e.g. a container's."""
    seen = set()
    pids = ["self", "1", *sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int)]
    for pid in pids:
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/mnt")
            if namespace in seen:
                continue
            table = _table(f"/proc/{pid}/mountinfo")
        except OSError:  # gone meanwhile, or a kernel thread
            if pid == "self":
                raise
            continue
        seen.add(namespace)
        yield (None if pid in ("self", "1") else int(pid)), table


def _table(path: str) -> list[mountinfo.Mount]:
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return mountinfo.parse(handle.read())
