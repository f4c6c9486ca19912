"""Real machines: a raid1 over two member devices, mounts only another mount namespace can see, one
lock per filesystem, and verbs that must write nothing (not even an atime) to prove it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import btrfsutil
import pytest

from rollback import mountinfo
from rollback.errors import Exit
from rollback.verbs import FAIL_AT_ENV, FAIL_ERRNO_ENV
from tests.support.cli import rollback_argv
from tests.support.disks import Disk, attached, loop_device
from tests.support.environment import require_root
from tests.support.layout import NESTED, State, outside_root, populate, rolled_back, sh

pytestmark = pytest.mark.btrfs

LOCK_DIR = Path("/run/rollback-locks")
DAY_NS = 86400 * 10**9
Raid = tuple[Disk, Disk]  # one filesystem, seen through each of its two member devices


@pytest.fixture
def raid(tmp_path: Path) -> Iterator[Raid]:
    """A btrfs raid1 (data and metadata) over two loop devices of 512 MiB sparse images."""
    require_root("mkfs.btrfs", "btrfs", "losetup", "mount", "unshare")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with ExitStack() as stack:
        members = [stack.enter_context(loop_device(tmp_path / f"member{n}.img", 512 << 20)) for n in (1, 2)]
        for member in members:  # on the way out, before the detach: forget only our own members
            stack.callback(subprocess.run, ["btrfs", "device", "scan", "--forget", member], capture_output=True)
        stack.callback(subprocess.run, ["umount", "-R", str(mnt)], capture_output=True)
        sh("mkfs.btrfs", "-q", "-f", "-d", "raid1", "-m", "raid1", *members)
        sh("btrfs", "device", "scan", *members)
        yield Disk(members[0], mnt, tmp_path), Disk(members[1], mnt, tmp_path)


def states(*views: Disk) -> State:
    """The device state, read through every view given: one filesystem, so one answer."""
    found = [view.state() for view in views]
    assert all(s == found[0] for s in found), "the members disagree"
    return found[0]


def refused(via: Disk, *args: str, reason: str, readers: Sequence[Disk] = ()) -> str:
    """`rollback run ARGS` through `via` refuses for `reason`, and the device state is exactly as before."""
    readers = readers or (via,)
    before = states(*readers)
    result = via.rollback("run", *args)
    assert result.returncode == Exit.REFUSED, result.stderr
    assert f"reason={reason}" in result.stderr and "hint=" in result.stderr, result.stderr
    assert states(*readers) == before
    return result.stderr


@contextmanager
def mounted(device: str, subvol: str, where: Path) -> Iterator[None]:
    where.mkdir(exist_ok=True)
    sh("mount", "-o", f"subvol={subvol}", device, str(where))
    try:
        yield
    finally:
        sh("umount", str(where))


def released(*devices: str, timeout: float = 20) -> bool:
    """Wait until no filesystem holds the devices (an exclusive open succeeds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            for device in devices:
                os.close(os.open(device, os.O_RDONLY | os.O_EXCL))
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


@contextmanager
def mounted_in_another_namespace(device: str, subvol: str, where: Path, members: Sequence[str]) -> Iterator[int]:
    """Mount `subvol` in a private mount namespace of a background process; yield its PID."""
    where.mkdir(exist_ok=True)
    script = f"mount -o subvol={subvol} {device} {where} && echo ready && exec sleep 600"
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        yield proc.pid
    finally:
        proc.kill()  # `exec sleep`: the namespace's only process, so its mount goes with it
        proc.wait()
        assert released(*members), "the namespace's mount outlived its process"


def test_root_mounted_only_in_another_namespace(disk: Disk, tmp_path: Path) -> None:
    with disk.top() as top:
        populate(top)
    where = tmp_path / "ns-root"
    with mounted_in_another_namespace(disk.device, "root", where, [disk.device]) as pid:
        assert str(where) not in Path("/proc/self/mountinfo").read_text()
        assert str(where) in Path(f"/proc/{pid}/mountinfo").read_text()
        stderr = refused(disk, reason="mounted")
    assert f"'root' is mounted at {where} (mount namespace of PID {pid})" in stderr


@pytest.fixture
def alias(disk: Disk, tmp_path: Path) -> Iterator[Disk]:
    """The same image through a second loop device: the same bytes under another name, as a loop alias or
    a multipath path presents them; the kernel mounts whichever comes second under a temporary fsid."""
    with disk.top() as top:
        populate(top)
    device = sh("losetup", "-f", "--show", str(tmp_path / "disk.img"))
    try:
        yield Disk(device, disk.mnt, tmp_path)
    finally:
        assert released(device)
        sh("losetup", "-d", device)


@pytest.mark.parametrize("run_via_alias", [True, False], ids=["live-via-device", "live-via-alias"])
def test_root_mounted_through_another_name_of_the_device(
    disk: Disk, alias: Disk, tmp_path: Path, run_via_alias: bool
) -> None:
    """Whichever name mounted the live root, our own top-level mount comes second: the kernel's fsid
    for it is a temporary one, which says another device holds this filesystem and is mounted."""
    live, via = (disk, alias) if run_via_alias else (alias, disk)
    with mounted(live.device, "root", tmp_path / "live"):
        stderr = refused(via, reason="mounted")
    assert "is mounted through another device" in stderr  # before our mount (it was after: a temporary fsid)


def _superblock(image: Path) -> bytes:
    """The primary superblock's generation, root, chunk root and log root: what a commit or a log
    replay changes."""
    with image.open("rb") as handle:
        return os.pread(handle.fileno(), 0x20, 0x10000 + 0x48)


@pytest.mark.parametrize("verb", [("status",), ("diff",), ("run", "--dry-run"), ("run",), ("skip-next",)])
def test_nothing_is_written_through_an_alias_of_a_live_filesystem(
    disk: Disk, alias: Disk, tmp_path: Path, verb: tuple[str, ...]
) -> None:
    """Our mount through a second device over the same bytes is a second filesystem instance: mounting
    it (read-only, even for `status`) replayed the live one's log tree and committed a transaction under
    it, before the refusal (found by an adversarial tester). Refused before mounting: not one byte of
    the superblock moves, a fsynced but uncommitted write on the live mount pending."""
    live = tmp_path / "live"
    live.mkdir()
    sh("mount", "-o", "subvol=persist,commit=300", disk.device, str(live))
    try:
        fd = os.open(live / "fsynced", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"in the log tree, not yet committed\n")
        os.fsync(fd)
        os.close(fd)
        before = _superblock(tmp_path / "disk.img")
        assert before[0x18:0x20] != bytes(8), "no log tree to replay: the test would show nothing"
        result = alias.rollback(*verb)
        assert result.returncode == Exit.REFUSED and "reason=mounted" in result.stderr, result.stderr
        assert _superblock(tmp_path / "disk.img") == before
    finally:
        sh("umount", str(live))


@pytest.mark.parametrize(
    "inside",
    ["", "mount -o subvol=persist {dev} {keep}", "mount -t tmpfs {dev} {keep}"],
    ids=["nothing-mounted", "persist-mounted", "a-tmpfs-named-as-the-device"],
)
def test_a_run_that_cannot_see_the_filesystems_mounts_is_refused(disk: Disk, tmp_path: Path, inside: str) -> None:
    """rollback in another PID namespace (a privileged container) reads no mount table of the host's:
    the root mounted there looked unmounted, and was replaced under the running system (found by an
    adversarial tester); with some other mount of the filesystem inside the container (/etc/hosts bound
    from the host's btrfs, as Docker does), a first fix was passed (found by a reviewer). A verb that
    writes refuses in a PID namespace other than the host's while the filesystem is mounted; `status`
    reads on."""
    with disk.top() as top:
        populate(top)
    live, keep = tmp_path / "live", tmp_path / "keep"
    keep.mkdir()
    with mounted(disk.device, "root", live):
        before = disk.state()
        hidden = (
            'umount "$0" && ' + (inside.format(dev=disk.device, keep=keep) + " && " if inside else "") + 'exec "$@"'
        )
        container = ["unshare", "-p", "-f", "-m", "--propagation", "private", "--mount-proc", "sh", "-c", hidden]
        for verb in ("run", "cleanup", "skip-next"):
            result = subprocess.run([*container, str(live), *disk.rollback_argv(verb)], capture_output=True, text=True)
            assert result.returncode == Exit.REFUSED, result.stderr
            assert "a PID namespace other than the host's" in result.stderr and "reason=mounted" in result.stderr
            assert disk.state() == before
        shown = subprocess.run([*container, str(live), *disk.rollback_argv("status")], capture_output=True, text=True)
        assert shown.returncode == Exit.OK, shown.stderr


@pytest.mark.parametrize("namespace", ["ours", "another"])
def test_root_through_an_alias_while_the_filesystem_is_mounted_through_the_device(
    disk: Disk, alias: Disk, tmp_path: Path, namespace: str
) -> None:
    """/persist mounted through the device makes our top-level mount share its superblock (no temporary
    fsid); the live root through the alias is a separate superblock, found by its device's fsid on disk."""
    with ExitStack() as stack:
        stack.enter_context(mounted(disk.device, "persist", tmp_path / "persist"))
        where = tmp_path / "live"
        if namespace == "ours":
            stack.enter_context(mounted(alias.device, "root", where))
        else:
            pid = stack.enter_context(mounted_in_another_namespace(alias.device, "root", where, []))
            where = Path(f"{where} (mount namespace of PID {pid})")
        stderr = refused(disk, reason="mounted")
    assert f"{alias.device}, another device holding the filesystem" in stderr and f"at {where}" in stderr


def test_a_mounted_copy_of_the_disk_refuses_until_unmounted(disk: Disk, tmp_path: Path) -> None:
    """A dd copy carries the same fsid, and nothing on the host tells it from an alias: refuse while it is
    mounted (the hint says how to tell them apart), run normally once it is not."""
    with disk.top() as top:
        populate(top)
    sh("sync")
    copy_image = tmp_path / "copy.img"
    sh("cp", "--sparse=always", str(tmp_path / "disk.img"), str(copy_image))
    with loop_device_for(copy_image) as copy:
        with mounted(copy, "persist", tmp_path / "copy"):
            stderr = refused(disk, reason="mounted")
        assert "btrfstune -u" in stderr
        assert released(copy)
    before = disk.state()
    result = disk.rollback("run")
    assert result.returncode == Exit.OK, result.stderr
    rolled_back(before, disk.state())


def test_an_unrelated_btrfs_mounted_is_no_obstacle(disk: Disk, tmp_path: Path) -> None:
    with disk.top() as top:
        populate(top)
    with loop_device(tmp_path / "other.img", 256 << 20) as other:
        sh("mkfs.btrfs", "-q", other)
        with mounted(other, "/", tmp_path / "other"):
            before = disk.state()
            result = disk.rollback("run")
        assert result.returncode == Exit.OK, result.stderr
        rolled_back(before, disk.state())


@contextmanager
def loop_device_for(image: Path) -> Iterator[str]:
    device = sh("losetup", "-f", "--show", str(image))
    try:
        yield device
    finally:
        released(device)
        sh("losetup", "-d", device)


# --- raid1: one filesystem, two member devices ---------------------------------------------


@pytest.mark.parametrize("cleanup", [(), ("--cleanup", "after-boot")], ids=["delete-at-boot", "after-boot"])
@pytest.mark.parametrize("subvol", ["root", "root/var/lib/machines", "root/var/lib/machines/guest/srv"])
@pytest.mark.parametrize(("mount_via", "run_via"), [(0, 1), (1, 0)], ids=["mount-L1-run-L2", "mount-L2-run-L1"])
def test_mounted_through_one_member_refused_through_the_other(
    raid: Raid, tmp_path: Path, subvol: str, mount_via: int, run_via: int, cleanup: tuple[str, ...]
) -> None:
    """After boot, the run reads the subvolumes' ROOT_REF items itself (plan.bounds) and finds a mounted
    one by id, three levels deep too: on two devices as on one."""
    with raid[0].top() as top:
        populate(top)
    live = tmp_path / "live"
    with mounted(raid[mount_via].device, subvol, live):
        stderr = refused(raid[run_via], *cleanup, reason="mounted", readers=raid)
    assert f"'{subvol}' is mounted at {live}" in stderr


@pytest.mark.parametrize(("mount_via", "run_via"), [(0, 1), (1, 0)], ids=["mount-L1-run-L2", "mount-L2-run-L1"])
def test_raid_root_mounted_only_in_another_namespace(raid: Raid, tmp_path: Path, mount_via: int, run_via: int) -> None:
    with raid[0].top() as top:
        populate(top)
    where = tmp_path / "ns-root"
    members = [d.device for d in raid]
    with mounted_in_another_namespace(raid[mount_via].device, "root", where, members) as pid:
        assert str(where) not in Path("/proc/self/mountinfo").read_text()
        stderr = refused(raid[run_via], reason="mounted", readers=raid)
    assert f"'root' is mounted at {where} (mount namespace of PID {pid})" in stderr


@pytest.mark.parametrize("cleanup", [(), ("--cleanup", "after-boot")], ids=["delete-at-boot", "after-boot"])
@pytest.mark.parametrize("on", ["root", "root/srv"])
@pytest.mark.parametrize(("mount_via", "run_via"), [(0, 1), (1, 0)], ids=["mount-L1-run-L2", "mount-L2-run-L1"])
def test_a_tmpfs_on_the_root_through_one_member_refused_through_the_other(
    raid: Raid, tmp_path: Path, on: str, mount_via: int, run_via: int, cleanup: tuple[str, ...]
) -> None:
    """A filesystem mounted on a path the run moves (found by the mount's path inside the btrfs, from
    mountinfo's root and parent fields) belongs to the one filesystem whichever member mounted it."""
    with raid[0].top() as top:
        populate(top)
        (top / on).mkdir(exist_ok=True)
    held = tmp_path / "held"
    held.mkdir()
    sh("mount", "-o", "subvolid=5", raid[mount_via].device, str(held))
    try:
        sh("mount", "-t", "tmpfs", "tmpfs", str(held / on))
        stderr = refused(raid[run_via], *cleanup, reason="mounted", readers=raid)
    finally:  # recursively: wherever a run that did not refuse moved the tmpfs to
        sh("umount", "-R", str(held))
    assert f"'{on}' has a filesystem mounted on it ({held / on})" in stderr, stderr


def fsid_of(device: str) -> str:
    with open(device, "rb") as handle:
        return os.pread(handle.fileno(), 16, 0x10020).hex()


def test_the_lock_is_per_filesystem_not_per_member(raid: Raid) -> None:
    with raid[0].top() as top:
        populate(top)
    fsid = fsid_of(raid[0].device)
    assert fsid == fsid_of(raid[1].device)
    LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(LOCK_DIR / fsid, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run through the first member holds it
        said = refused(raid[1], reason="locked", readers=raid)
        assert f"holds the lock on {raid[1].device}'s filesystem, pid {os.getpid()}: '" in said, said  # who holds it
    finally:
        os.close(fd)


def dirty(top: Path) -> None:
    """What a boot leaves in root: cruft and nested subvolumes."""
    (top / "root" / "tmp").mkdir(exist_ok=True)
    (top / "root" / "tmp" / "cruft").write_text("left over\n")
    for path in NESTED:
        (top / path).parent.mkdir(parents=True, exist_ok=True)
        btrfsutil.create_subvolume(str(top / path))
        (top / path / "data").write_text(path)


@pytest.mark.parametrize(
    "verb", [("run",), ("run", "--dry-run"), ("cleanup",), ("cleanup", "--dry-run"), ("skip-next",)], ids=" ".join
)
@pytest.mark.parametrize("via", [0, 1], ids=["named-the-writable-one", "named-the-read-only-one"])
def test_one_member_read_only_is_refused_not_written_degraded(raid: Raid, verb: tuple[str, ...], via: int) -> None:
    """A raid1 whose second member is read-only (`losetup -r`, `blockdev --setro`): the kernel remounts it
    read-write on the other one, and every run wrote a single copy: the mirror stale, nothing said, `status`
    silent (found by a multi-device tester). Refused before any write, naming it, through either member;
    both images byte-identical; once writable again, the run goes on."""
    with raid[0].top() as top:
        populate(top)
    assert raid[0].rollback("run", "--cleanup", "after-boot").returncode == Exit.OK  # something in the trash
    images = [raid[0].workdir / f"member{n}.img" for n in (1, 2)]
    before = [image.read_bytes() for image in images]
    sh("blockdev", "--setro", raid[1].device)
    try:
        result = raid[via].rollback(*verb, "--cleanup", "after-boot")
    finally:
        sh("blockdev", "--setrw", raid[1].device)
    assert result.returncode == Exit.REFUSED and "reason=read-only" in result.stderr, result.stderr
    assert f"{raid[1].device} is read-only" in result.stderr and "stale" in result.stderr, result.stderr
    assert [image.read_bytes() for image in images] == before
    assert raid[via].rollback(*verb, "--cleanup", "after-boot").returncode in (Exit.OK, Exit.SKIPPED)


def test_status_names_a_read_only_member_and_the_filesystem(raid: Raid) -> None:
    """`status` said nothing of a read-only member (every writing verb now refuses for it), nor which
    filesystem the device named (a LABEL= can name either of two; found by a multi-device tester)."""
    with raid[0].top() as top:
        populate(top)
    uuid = sh("blkid", "-o", "value", "-s", "UUID", raid[0].device).strip()
    sh("blockdev", "--setro", raid[1].device)
    try:
        text, as_json = raid[0].rollback("status"), raid[0].rollback("status", "--json")
    finally:
        sh("blockdev", "--setrw", raid[1].device)
    assert f"READ-ONLY:  {raid[1].device}: every run, cleanup and skip-next is refused" in text.stdout, text.stdout
    assert f"(filesystem UUID={uuid}, " in text.stdout, text.stdout
    found = json.loads(as_json.stdout)
    assert found["read_only_devices"] == [raid[1].device] and found["fsid"] == uuid
    assert json.loads(raid[0].rollback("status", "--json").stdout)["read_only_devices"] == []


@pytest.mark.parametrize("verb", [("run",), ("status",)], ids=" ".join)
def test_a_copy_of_a_multi_device_filesystem_attached_is_refused_before_mounting(
    raid: Raid, tmp_path: Path, verb: tuple[str, ...]
) -> None:
    """A copy of both disks attached beside them (dd, a VM image's snapshot): the kernel takes each member
    from whichever device it saw last, and joined the copy's to the original's; a run wrote to both and the
    original no longer mounted (a multi-device tester). Refused before any mount, naming each member's two
    devices, through either member; every image byte-identical; with the copy detached, the run goes on."""
    with raid[0].top() as top:
        populate(top)
    originals = [raid[0].workdir / f"member{n}.img" for n in (1, 2)]
    copies = [tmp_path / f"copy{n}.img" for n in (1, 2)]
    for original, copy in zip(originals, copies, strict=True):
        sh("cp", "--sparse=always", str(original), str(copy))
    before = [image.read_bytes() for image in [*originals, *copies]]
    with ExitStack() as stack:
        attached_copies = [stack.enter_context(attached(copy)) for copy in copies]
        for member in attached_copies:
            stack.callback(subprocess.run, ["btrfs", "device", "scan", "--forget", member], capture_output=True)
        results = [view.rollback(*verb) for view in raid]
    for result in results:
        assert result.returncode == Exit.REFUSED and "reason=copy-attached" in result.stderr, result.stderr
        for number, (view, twin) in enumerate(zip(raid, attached_copies, strict=True), 1):
            assert f"member {number} on " in result.stderr and view.device in result.stderr, result.stderr
            assert f"{twin} (generation " in result.stderr, result.stderr  # (the older: a stale member)
    assert [image.read_bytes() for image in [*originals, *copies]] == before
    assert raid[0].rollback(*verb).returncode == Exit.OK


def test_concurrent_runs_through_both_members(raid: Raid) -> None:
    with raid[0].top() as top:
        populate(top)
    before = raid[0].state()
    outcomes = []
    for attempt in range(5):
        if attempt:
            with raid[attempt % 2].top() as top:
                dirty(top)
        procs = [
            subprocess.Popen(d.rollback_argv("run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for d in raid
        ]
        results = [(p.communicate(timeout=120)[1], p.returncode) for p in procs]
        codes = sorted(code for _, code in results)
        assert codes in ([Exit.OK, Exit.OK], [Exit.OK, Exit.REFUSED]), results
        assert all("reason=locked" in err for err, code in results if code == Exit.REFUSED), results
        outcomes.append(codes)
        rolled_back(before, states(*raid))
    print("outcomes (sorted exit codes per attempt):", outcomes)


def test_a_run_through_the_second_member(raid: Raid) -> None:
    with raid[0].top() as top:
        populate(top)
    before = states(*raid)
    result = raid[1].rollback("run")
    assert result.returncode == Exit.OK, result.stderr
    after = raid[0].state()  # read through the other member
    rolled_back(before, after)
    ids = {s.path: s.id for s in before.subvolumes}
    assert {s.path: s.id for s in after.subvolumes}["root"] != ids["root"]
    assert "4 subvolume(s) deleted" in result.stderr


@pytest.mark.parametrize("cleanup", ["boot", "after-boot"])
def test_no_room_for_the_first_change_on_two_members_deletes_the_pruned_roots_first(raid: Raid, cleanup: str) -> None:
    """Keep mode's prune-first path (no room for step 1, archived roots due), run through the second
    member: the due roots deleted, the run done; the result read through the first member."""
    with raid[0].top() as top:
        populate(top)
        (top / "old").mkdir()
        for stamp in ("20200101T000000Z", "20200102T000000Z"):
            btrfsutil.create_snapshot(str(top / "root"), str(top / "old" / stamp))
            btrfsutil.create_subvolume(str(top / "old" / stamp / "nested"))
    before = states(*raid)
    flags = ("--archive", "old", "--keep-count", "1", "--keep-min", "0", "--cleanup", cleanup)
    result = raid[1].rollback("run", *flags, env={FAIL_AT_ENV: "1", FAIL_ERRNO_ENV: str(errno.ENOSPC)})
    assert result.returncode == Exit.OK, result.stderr
    assert "nothing changed: first deleting 2 pruned root(s)" in result.stderr
    after = states(*raid)
    archived = [p for p in after.subvolume_paths() if p.startswith("old/") and p.count("/") == 1]
    assert len(archived) == 1 and archived[0] not in before.subvolume_paths()  # today's root, archived
    assert not [p for p in after.subvolume_paths() if p.startswith(("old/2020", ".rollback/"))]
    assert after.under("root") == {"root": "dir:40755"} and outside_root(after) == outside_root(before)


_MAGIC_AT = 0x10040  # the primary superblock's magic: without it, no tool nor kernel scan sees the member


@contextmanager
def member_away(member: Disk, how: str) -> Iterator[None]:
    """One member the kernel has no device for: `forgotten` (attached, but no udev registered it: a rescue
    shell), or `absent` (its superblock unreadable as btrfs, as if not attached); back on the way out."""
    with open(member.device, "r+b" if how == "absent" else "rb") as handle:  # (a close after writing: udev probes)
        magic = os.pread(handle.fileno(), 8, _MAGIC_AT)
        if how == "absent":
            os.pwrite(handle.fileno(), b"\0" * 8, _MAGIC_AT)
    sh("btrfs", "device", "scan", "--forget", member.device)
    try:
        yield
    finally:
        if how == "absent":
            with open(member.device, "r+b") as handle:
                os.pwrite(handle.fileno(), magic, _MAGIC_AT)
        sh("btrfs", "device", "scan", member.device)


@pytest.mark.parametrize("verb", ["run", "status", "cleanup"])
@pytest.mark.parametrize("how", ["forgotten", "absent"])
def test_a_member_missing_is_refused_saying_so(raid: Raid, verb: str, how: str) -> None:
    """btrfs answers ENOENT when it has no device for a member: the refusal said "No such file or
    directory" of a device node that exists; then, for a member attached that no udev registered (a
    rescue shell), that a device is missing, and to mount degraded, which makes the member left out
    stale (a multi-device tester). Each case says which it is."""
    with raid[0].top() as top:
        populate(top)
    before = states(*raid)
    with member_away(raid[1], how):
        result = raid[0].rollback(verb)
    assert result.returncode == Exit.REFUSED and "reason=mount-failed" in result.stderr, result.stderr
    if how == "forgotten":
        assert "while all 2 are attached (member 1 on " in result.stderr and "degraded" not in result.stderr
        assert "hint='btrfs device scan, then run again; nothing was changed'" in result.stderr, result.stderr
    else:
        assert "a device of its btrfs filesystem is missing" in result.stderr, result.stderr
        assert f"1 of its 2 members attached (member 1 on {raid[0].device})" in result.stderr, result.stderr
    assert states(*raid) == before


def test_status_of_a_filesystem_mounted_degraded_names_the_missing_member(raid: Raid, tmp_path: Path) -> None:
    """Mounted by hand with -o degraded (a rescue shell), `status` shared the mount and said nothing of it,
    while the next boot's mount, without the option, is refused (a multi-device tester's leftover)."""
    with raid[0].top() as top:
        populate(top)
    before = states(*raid)
    held = tmp_path / "held"
    held.mkdir()
    healthy = raid[0].rollback("status")
    assert healthy.returncode == Exit.OK and "DEGRADED" not in healthy.stdout, healthy.stdout
    sh("btrfs", "device", "scan", "--forget", raid[1].device)  # as if that disk had not appeared
    try:
        sh("mount", "-o", "degraded,ro", raid[0].device, str(held))
        try:
            result = raid[0].rollback("status")
            as_json = raid[0].rollback("status", "--json")
        finally:
            sh("umount", str(held))
    finally:
        sh("btrfs", "device", "scan", raid[1].device)
    assert result.returncode == Exit.OK, result.stderr
    assert "DEGRADED:   device id(s) 2 missing (mounted degraded)" in result.stdout, result.stdout
    assert json.loads(as_json.stdout)["missing_devices"] == [2]
    assert states(*raid) == before


@contextmanager
def mounted_degraded(raid: Raid, where: Path, options: str) -> Iterator[None]:
    """The filesystem mounted through the first member only, `options` (degraded,...), the second
    member registered again while it is: a disk back in a running rescue system."""
    where.mkdir(exist_ok=True)
    sh("btrfs", "device", "scan", "--forget", raid[1].device)
    try:
        sh("mount", "-o", options, raid[0].device, str(where))
        try:
            sh("btrfs", "device", "scan", raid[1].device)
            yield
        finally:
            sh("umount", str(where))
    finally:
        sh("btrfs", "device", "scan", raid[1].device)


def test_a_member_back_while_mounted_degraded_is_not_called_a_copy(raid: Raid, tmp_path: Path) -> None:
    """The missing member attached again while the filesystem is mounted degraded without it: refused as
    "this device under another name, or a copy", whose hint (btrfstune -u on the copy) cuts a real
    member off its filesystem (a multi-device tester). Says which member it is and what to do."""
    with raid[0].top() as top:
        populate(top)
    before = states(*raid)
    with mounted_degraded(raid, tmp_path / "held", "degraded,ro"):
        results = [raid[1].rollback(verb) for verb in ("status", "run")]
    for result in results:
        assert result.returncode == Exit.REFUSED and "reason=mounted" in result.stderr, result.stderr
        assert f"{raid[1].device} is member 2 of the filesystem" in result.stderr, result.stderr
        assert "mounted degraded without it" in result.stderr and "btrfstune" not in result.stderr, result.stderr
    assert states(*raid) == before


def test_a_member_back_from_a_degraded_mount_is_said_to_be_stale_before_the_commit_hides_it(
    raid: Raid, tmp_path: Path
) -> None:
    """Written to while mounted degraded without a member, then mounted with it again: the member's blocks
    are stale, and the run's commit writes its superblock as current, the last sign of it gone (a
    multi-device tester: nothing said). Said before the mount, with what to do; a healthy one says nothing."""
    with raid[0].top() as top:
        populate(top)
    healthy = raid[0].rollback("status")
    assert healthy.returncode == Exit.OK and "missed what was written" not in healthy.stderr, healthy.stderr
    held = tmp_path / "held"
    with mounted_degraded(raid, held, "degraded,subvolid=5"):
        for n in range(3):  # a commit each
            (held / "persist" / f"while-away-{n}").write_text("written without the second member\n")
            sh("btrfs", "filesystem", "sync", str(held))
    results = [raid[0].rollback("status"), raid[1].rollback("run")]
    for result in results:
        assert result.returncode == Exit.OK, result.stderr
        assert f"member 2 on {raid[1].device} is at generation " in result.stderr, result.stderr
        assert "it missed what was written while it was away" in result.stderr and "btrfs scrub start" in result.stderr
    assert "missed what was written" not in raid[0].rollback("status").stderr  # (the run's commit hid it)


@pytest.mark.parametrize(
    "verb", [("run",), ("run", "--dry-run"), ("cleanup",), ("cleanup", "--dry-run"), ("skip-next",)], ids=" ".join
)
def test_a_filesystem_mounted_degraded_and_read_only_is_not_written(
    raid: Raid, tmp_path: Path, verb: tuple[str, ...]
) -> None:
    """Mounted `-o ro,degraded` (a user who chose not to write to it): a run made it read-write degraded,
    where new block groups have a single copy, without a word (a multi-device tester). Every writing
    verb and its dry run refuse, nothing written."""
    with raid[0].top() as top:
        populate(top)
    assert raid[0].rollback("run", "--cleanup", "after-boot").returncode == Exit.OK  # (the cleanup's work)
    before = states(*raid)
    held = tmp_path / "held"
    with mounted_degraded(raid, held, "degraded,ro"):
        result = raid[0].rollback(*verb)
        table = mountinfo.parse(Path("/proc/self/mountinfo").read_text())
        still = [m.super_options for m in table if m.mount_point == str(held)]
    assert result.returncode == Exit.REFUSED and "reason=read-only" in result.stderr, result.stderr
    assert "it is mounted degraded (device id(s) 2 missing) and read-only" in result.stderr, result.stderr
    assert ("the run would be refused" in result.stderr) == ("--dry-run" in verb), result.stderr
    assert still and still[0][:1] == ("ro",), still  # the superblock still read-only
    assert states(*raid) == before


def test_a_degraded_filesystem_remounted_read_only_under_another_mount_is_not_written(
    raid: Raid, tmp_path: Path
) -> None:
    """Degraded, `mount -o remount,ro /` by an admin to stop writes while /persist (a mount of the same
    filesystem) still shows read-write: the superblock is read-only under a read-write mount, as after
    an error, and the refusal was skipped for it: the run's remount made it read-write degraded (a
    reviewer). Refused, saying both ways it can be so; nothing written."""
    with raid[0].top() as top:
        populate(top)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    sh("btrfs", "device", "scan", "--forget", raid[1].device)
    try:
        sh("mount", "-o", "degraded,subvol=persist", raid[0].device, str(first))
        try:
            sh("mount", "-o", "degraded,subvol=home", raid[0].device, str(second))
            try:
                sh("mount", "-o", "remount,ro", str(second))
                before = raid[0].state()
                result = raid[0].rollback("run")
                assert raid[0].state() == before
                table = mountinfo.parse(Path("/proc/self/mountinfo").read_text())
                assert [m.super_options[:1] for m in table if m.mount_point == str(first)] == [("ro",)]
            finally:
                sh("umount", str(second))
        finally:
            sh("umount", str(first))
    finally:
        sh("btrfs", "device", "scan", raid[1].device)
    assert result.returncode == Exit.REFUSED and "reason=read-only" in result.stderr, result.stderr
    assert "mounted degraded (device id(s) 2 missing) and read-only" in result.stderr, result.stderr
    assert "if an error forced it so" in result.stderr, result.stderr


def test_a_run_on_a_filesystem_mounted_degraded_read_write_warns(raid: Raid, tmp_path: Path) -> None:
    """Mounted read-write degraded on purpose: the run goes on (the user writes to it already), saying
    that what it writes may have a single copy, and what to do once the member is back."""
    with raid[0].top() as top:
        populate(top)
    with mounted_degraded(raid, tmp_path / "held", "degraded"):
        dry_run = raid[0].rollback("run", "--dry-run")
        result = raid[0].rollback("run")
    for ran in (dry_run, result):
        assert ran.returncode == Exit.OK, ran.stderr
        assert (
            "mounted degraded (device id(s) 2 missing): what this verb writes may go to block groups with a single copy"
            in ran.stderr
        )


# --- observing writes nothing, not even an atime ---------------------------------------------


def aged(disk: Disk, change: Callable[[Path], None] = lambda top: None) -> State:
    """Populate, change, then set every directory's atime in root 3 days before its mtime, so that any
    read on a relatime mount would write a new atime (and move root's generation). The state after."""
    with disk.top() as top:
        populate(top)
        change(top)
        for dirpath, _, _ in os.walk(top / "root"):
            mtime = os.stat(dirpath).st_mtime_ns
            os.utime(dirpath, ns=(mtime - 3 * DAY_NS, mtime))
    return disk.state()


def protected_home_inside_root(top: Path) -> None:
    btrfsutil.create_subvolume(str(top / "root" / "tmp" / "home"))


def test_the_oracle_sees_an_atime_update(disk: Disk) -> None:
    """The meta-test: a read on a read-write relatime mount changes the state, so the equalities
    below (and in every refusal test) would catch a run that mounted that way before refusing."""
    before = aged(disk, protected_home_inside_root)
    with disk.top() as top:  # read-write, relatime: mount(8)'s defaults
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        assert "relatime" in next(line for line in mounts if f" {top} " in line)
        os.listdir(top / "root")
    after = disk.state()
    root_before, root_after = (next(s for s in st.subvolumes if s.path == "root") for st in (before, after))
    assert root_after.generation > root_before.generation
    assert root_after.ctransid > root_before.ctransid
    assert after.files == before.files  # only the atime changed


def test_a_refusal_writes_nothing_not_even_an_atime(disk: Disk) -> None:
    before = aged(disk, protected_home_inside_root)
    result = disk.rollback("run")
    assert result.returncode == Exit.REFUSED and "reason=protected-inside" in result.stderr, result.stderr
    assert disk.state() == before


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("status",), Exit.OK),
        (("status", "--json"), Exit.OK),
        (("diff",), Exit.OK),
        (("diff", "--json"), Exit.OK),
        (("run", "--dry-run"), Exit.OK),
        (("run", "--skip"), Exit.SKIPPED),
    ],
    ids=["status", "status-json", "diff", "diff-json", "dry-run", "skip"],
)
def test_observing_verbs_write_nothing(disk: Disk, args: tuple[str, ...], code: Exit) -> None:
    before = aged(disk)
    result = disk.rollback(*args)
    assert result.returncode == code, result.stderr
    assert disk.state() == before


# --- quota groups: what the old root's qgroup had is said to be left behind ------------------


@pytest.mark.parametrize(
    "args",
    [(), ("--mode", "snapshot"), ("--archive", "old"), ("--cleanup", "after-boot")],
    ids=["recreate", "snapshot", "keep", "after-boot"],
)
@pytest.mark.parametrize("own_limit", [False, True], ids=["group", "own-limit"])
def test_what_the_old_roots_qgroup_had_is_said_once(disk: Disk, args: tuple[str, ...], own_limit: bool) -> None:
    """The root's qgroup in a higher-level one with a limit (or a limit of its own): the new root has
    neither, and the run that leaves them says so, once (was: silently; found by an adversarial tester)."""
    with disk.top() as top:
        populate(top, blank=True)
        sh("btrfs", "quota", "enable", str(top))
        if own_limit:
            sh("btrfs", "qgroup", "limit", "100M", str(top / "root"))
        else:
            sh("btrfs", "qgroup", "create", "1/100", str(top))
            root = f"0/{btrfsutil.subvolume_id(str(top / 'root'))}"
            sh("btrfs", "qgroup", "assign", "--no-rescan", root, "1/100", str(top))
            sh("btrfs", "qgroup", "limit", "100M", "1/100", str(top))
    before = disk.state()
    said = []
    for _ in range(2):
        with disk.top() as top:
            (top / "root" / "used").write_text("the machine ran on this root\n")
        result = disk.rollback("run", *args)
        assert result.returncode == Exit.OK, result.stderr
        said.append(result.stderr)
    expected = "had a limit:" if own_limit else "was in qgroup(s) 1/100:"
    assert "kind=warning" in said[0] and f"the qgroup of the old 'root' {expected}" in said[0], said[0]
    assert "kind=warning" not in said[1]  # the new root is in no qgroup and has no limit: said once
    assert outside_root(disk.state()) == outside_root(before)


@pytest.mark.parametrize("over", [False, True], ids=["under-its-limit", "at-its-limit"])
def test_a_limit_on_the_blanks_qgroup_is_every_roots(disk: Disk, over: bool) -> None:
    """btrfs copies a snapshot's source qgroup limit to the snapshot's own: each root made from a limited
    blank has its limit. Every run from the second said "the new one ... has no limit" (false, at every
    boot), and a blank at its limit (the README's `snapshot -r` of a limited root, say) made every root
    start full, unwritable, exit 0 (found by a full-disk tester). Now: nothing said of a limit the new
    root gets again; a blank at its limit is refused, the device unchanged."""
    with disk.top() as top:
        populate(top, blank=False)
        btrfsutil.create_subvolume(str(top / "root-blank"))
        (top / "root-blank" / "etc").mkdir()
        (top / "root-blank" / "etc" / "os-release").write_bytes(b"x" * (256 << 10))
        btrfsutil.set_subvolume_read_only(str(top / "root-blank"))
        sh("btrfs", "quota", "enable", str(top))
        sh("btrfs", "quota", "rescan", "-w", str(top))
        sh("btrfs", "qgroup", "limit", "64k" if over else "100M", str(top / "root-blank"), str(top))
    before = disk.state()
    said = []
    for _ in range(1 if over else 2):
        result = disk.rollback("run", "--mode", "snapshot")
        said.append(result.stderr)
        if over:
            assert result.returncode == Exit.REFUSED and "reason=blank-over-quota" in result.stderr, result.stderr
            assert disk.state() == before
            return
        assert result.returncode == Exit.OK, result.stderr
    assert "kind=warning" not in said[1], said[1]
    with disk.top() as top:
        limits = sh("btrfs", "qgroup", "show", "-re", "--raw", str(top))
        root = btrfsutil.subvolume_id(str(top / "root"))
    (line,) = [line for line in limits.splitlines() if line.startswith(f"0/{root} ")]
    assert str(100 << 20) in line.split(), limits  # the premise: the blank's limit, copied


def test_a_filesystem_unmounted_lazily_and_still_in_use_is_refused(disk: Disk, tmp_path: Path) -> None:
    """`umount -l` with a process still inside: the filesystem stays mounted in the kernel and in no
    mount table. A verb that writes waits (a killed run's filesystem outlives its process briefly),
    then refuses: what is in use cannot be seen."""
    with disk.top() as top:
        populate(top)
    live = tmp_path / "live"
    live.mkdir()
    sh("mount", "-o", "subvol=root", disk.device, str(live))
    user = subprocess.Popen(["sleep", "600"], cwd=live)
    try:
        sh("umount", "-l", str(live))
        before = disk.state()
        result = disk.rollback("run")
        assert result.returncode == Exit.REFUSED, result.stderr
        assert "in no mount table this process can read" in result.stderr and "reason=mounted" in result.stderr
        assert disk.state() == before
    finally:
        user.kill()
        user.wait()
    assert released(disk.device)
    assert disk.rollback("run").returncode == Exit.OK  # once nothing uses it


@pytest.mark.parametrize(
    ("mounted", "verb", "code"),
    [
        ("root", "run", Exit.REFUSED),
        ("persist", "run", Exit.OK),
        ("root", "skip-next", Exit.OK),
        ("root", "cleanup", Exit.OK),
    ],
)
def test_a_mount_whose_device_node_is_gone_is_still_seen(
    disk: Disk, tmp_path: Path, mounted: str, verb: str, code: Exit
) -> None:
    """The node a mount line names removed since (lvrename, dmsetup rename, an unplugged member): the
    mount was not recognised, so every writing verb waited 10 s and was refused as if unmounted lazily
    (found by a multi-device tester). Recognised by statfs of its mount point: the usual checks decide
    (the root mounted: `run` refused as mounted, naming where)."""
    with disk.top() as top:
        populate(top)
    node = tmp_path / "member"
    rdev = os.stat(disk.device).st_rdev
    os.mknod(node, 0o600 | stat.S_IFBLK, rdev)
    live = tmp_path / "live"
    live.mkdir()
    sh("mount", "-o", f"subvol={mounted}", str(node), str(live))
    try:
        node.unlink()
        result = disk.rollback(verb)
    finally:
        sh("umount", str(live))
    assert result.returncode == code, result.stderr
    assert "in no mount table" not in result.stderr, result.stderr
    if code == Exit.REFUSED:
        assert "reason=mounted" in result.stderr and str(live) in result.stderr, result.stderr


# --- a seed device and its sprout ------------------------------------------------------------


@pytest.mark.parametrize("verb", [("status",), ("diff",), ("run",), ("cleanup",), ("skip-next",)])
def test_a_seed_device_is_refused_before_mounting_and_its_sprout_still_mounts(
    tmp_path: Path, verb: tuple[str, ...]
) -> None:
    """A device named by LABEL= (a seed and its sprout share it) or by the UUID from before sprouting is
    the seed: `status` showed its frozen tree as the live root, `run` was refused `read-only`, and the
    probing mount unregistered the seed (kernel 6.7+): the sprout, the root, could not be mounted at
    that boot (found by a multi-device tester). Refused before any mount; both devices byte-identical."""
    require_root("mkfs.btrfs", "btrfstune", "btrfs", "losetup", "mount")
    with (
        loop_device(tmp_path / "seed.img", 300 << 20) as seed,
        loop_device(tmp_path / "sprout.img", 300 << 20) as sprout,
    ):
        sh("mkfs.btrfs", "-q", "-f", "-L", "sys", seed)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        sh("mount", "-o", "subvolid=5", seed, str(mnt))
        populate(mnt)
        sh("umount", str(mnt))
        sh("btrfstune", "-S", "1", seed)
        sh("mount", "-o", "subvolid=5", seed, str(mnt))
        sh("btrfs", "device", "add", "-f", sprout, str(mnt))
        sh("mount", "-o", "remount,rw", str(mnt))
        (mnt / "persist" / "after-sprouting").write_text("written to the sprout\n")
        sh("umount", str(mnt))
        sh("btrfs", "device", "scan", seed, sprout)
        try:
            _refused_as_a_seed(tmp_path, mnt, seed, sprout, verb)
            sh("blockdev", "--setro", seed)  # a seed on read-only media: read-only by design, not a stale mirror
            try:
                dry_run = subprocess.run(
                    rollback_argv("run", "--dry-run", device=sprout), capture_output=True, text=True
                )
            finally:
                sh("blockdev", "--setrw", seed)  # (the loop device keeps the flag for whoever attaches it next)
            assert dry_run.returncode == Exit.OK and "move root -> .rollback/trash/" in dry_run.stdout, dry_run.stderr
        finally:  # no registration left naming loop devices about to be detached
            subprocess.run(["btrfs", "device", "scan", "--forget", seed, sprout], capture_output=True)


def _refused_as_a_seed(tmp_path: Path, mnt: Path, seed: str, sprout: str, verb: tuple[str, ...]) -> None:
    images = [tmp_path / "seed.img", tmp_path / "sprout.img"]
    before = [image.read_bytes() for image in images]
    result = subprocess.run([*rollback_argv(*verb, device=seed)], capture_output=True, text=True, timeout=120)
    assert result.returncode == Exit.REFUSED, result.stderr
    assert "reason=seed-device" in result.stderr and "name the sprout" in result.stderr, result.stderr
    assert [image.read_bytes() for image in images] == before
    sh("mount", "-o", "subvolid=5", sprout, str(mnt))  # what sysroot.mount does next
    try:
        assert (mnt / "persist" / "after-sprouting").read_text() == "written to the sprout\n"
    finally:
        sh("umount", str(mnt))


@contextmanager
def _on_a_small_tmpfs(tmp_path: Path) -> Iterator[tuple[Disk, Path]]:
    """A btrfs on a sparse image in a 96 MiB tmpfs, and the path of a file that fills the tmpfs: the
    loop device's writes into the image's holes then fail (EIO), as a dying disk's do."""
    require_root("mkfs.btrfs", "losetup", "mount")
    backing = tmp_path / "backing"
    backing.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(backing))
    try:
        with loop_device(backing / "disk.img", 512 * 1024 * 1024) as device:
            sh("mkfs.btrfs", "-q", device)
            mnt = tmp_path / "mnt"
            mnt.mkdir()
            try:
                yield Disk(device, mnt, tmp_path), backing / "fill"
            finally:
                subprocess.run(["umount", "-R", str(mnt)], capture_output=True)
    finally:
        sh("umount", str(backing))


def _trimmed(disk: Disk) -> None:
    """Every free block of the filesystem a hole in the image (the loop device punches one per discard):
    with the tmpfs full, any new block written fails."""
    with disk.top() as top:
        btrfsutil.sync(str(top))
        sh("fstrim", str(top))


def _fill(path: Path) -> None:
    with path.open("wb") as handle, suppress(OSError):  # ENOSPC: full
        while True:
            handle.write(b"\0" * (1 << 20))


def test_a_filesystem_forced_read_only_elsewhere_is_refused_naming_the_way_out(tmp_path: Path) -> None:
    """Mounted elsewhere, the kernel forced it read-only after a write error (a transaction aborted): the
    run refused "remounting read-write failed: Invalid argument", its dry run and status passed, or
    reading it gave "the disk is damaged" of a disk working again (a tester with failing disks). Every
    writing verb refuses `read-only` saying an error forced it so, and how to get out; what only looks
    refuses so where it cannot read, else says it; unmounted, the next run rolls back."""
    with _on_a_small_tmpfs(tmp_path) as (disk, filler):
        with disk.top() as top:
            populate(top)
        before = disk.state()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        sh("mount", disk.device, str(elsewhere))
        try:
            _fill(filler)
            with suppress(OSError):  # the write may fail itself, or only the commit
                (elsewhere / "persist/big").write_bytes(os.urandom(32 << 20))
            subprocess.run(["sync", "-f", str(elsewhere)], capture_output=True)
            filler.unlink()  # the disk works again; the filesystem stays read-only while mounted
            table = Path("/proc/self/mountinfo").read_text()
            line = next(line for line in table.splitlines() if f" {elsewhere} " in line)
            assert line.split(" - ")[1].split()[2].startswith("ro,"), f"not forced read-only: {line}"
            for verb in (("run",), ("skip-next",), ("cleanup",), ("run", "--dry-run"), ("status",), ("diff",)):
                result = disk.rollback(*verb)
                said = result.stderr + result.stdout
                if result.returncode == Exit.OK and verb in (
                    ("cleanup",),
                    ("run", "--dry-run"),
                    ("status",),
                    ("diff",),
                ):
                    # it could read, and wrote nothing: said so (the cleanup: its trash is empty; diff lists)
                    assert f"read-write at {elsewhere} over a read-only superblock" in said or (
                        f"the superblock, under the read-write mount at {elsewhere}" in said
                        or verb in (("cleanup",), ("diff",))
                    ), (verb, said)
                    continue
                assert result.returncode == Exit.REFUSED and "reason=read-only" in result.stderr, (verb, said)
                assert "forced" in result.stderr and "after an error" in result.stderr, (verb, result.stderr)
        finally:
            sh("umount", str(elsewhere))
        assert disk.state() == before  # (what the aborted transaction held never reached the disk)
        assert disk.rollback("run").returncode == Exit.OK


@pytest.mark.parametrize("layout", ["one device", "raid1"])
def test_a_superblock_remounted_read_only_elsewhere_is_said_and_the_run_goes_on(
    request: pytest.FixtureRequest, tmp_path: Path, layout: str
) -> None:
    """`mount -o remount,ro` of one of two mounts makes the superblock read-only under the other's
    read-write flag, as an error does: not refused (a reviewer: refusing named an error that was not);
    status and the run say it, the run's remount makes it writable and it rolls back. On a raid1 the
    mounts are through one member, the run through the other (every member shares the superblock)."""
    members: list[Disk] = (
        [request.getfixturevalue("disk")] if layout == "one device" else [*request.getfixturevalue("raid")]
    )
    disk, mounted_through = members[-1], members[0].device
    with disk.top() as top:
        populate(top)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    sh("mount", "-o", "subvol=persist", mounted_through, str(first))
    try:
        sh("mount", "-o", "subvol=home", mounted_through, str(second))
        try:
            sh("mount", "-o", "remount,ro", str(second))
            found = json.loads(disk.rollback("status", "--json").stdout)
            assert found["read_only_under"] == str(first), found
            result = disk.rollback("run")
            assert result.returncode == Exit.OK, result.stderr
            assert f"read-write at {first} over a read-only superblock" in result.stderr
        finally:
            sh("umount", str(second))
    finally:
        sh("umount", str(first))


@pytest.mark.parametrize("flags", [(), ("--mode", "snapshot"), ("--archive", "old")])
def test_a_run_the_kernel_forces_read_only_says_the_disk_holds_the_last_commit(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    """Writes failing under the run (a dying disk): its commit fails, the kernel aborts the transaction and
    forces the filesystem read-only. Was `step-failed`, "moving the old root back failed too: it is at
    .rollback/trash/..." while the disk had it in place (a tester with failing disks): now
    `forced-read-only`, saying the disk holds what the last commit wrote; it does, and once the disk
    works the next run rolls back."""
    require_root("fstrim")
    with _on_a_small_tmpfs(tmp_path) as (disk, filler):
        with disk.top() as top:
            populate(top, blank=True)
        _trimmed(disk)
        before = disk.state()
        _fill(filler)
        result = disk.rollback("run", *flags)
        filler.unlink()
        assert result.returncode == Exit.FAILED and "reason=forced-read-only" in result.stderr, result.stderr
        assert "the disk holds what the last commit wrote" in result.stderr and "is at" not in result.stderr
        assert disk.state() == before
        assert disk.rollback("run", *flags).returncode == Exit.OK
        after = disk.state()
        ids = [{s.id for s in state.subvolumes if s.path == "root"} for state in (before, after)]
        assert outside_root(after) == outside_root(before) and ids[0] != ids[1], "a new root, the rest intact"


def test_the_wait_for_the_kernels_cleaner_ends_when_the_filesystem_goes_read_only(
    disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's cleaner met a bad block and forced the filesystem read-only: the run's wait went on
    for its whole minute, the cleanup's for up to an hour, for space that never comes (a tester with
    failing disks). The wait ends at once, as a failing step (here: a cleaner that never finishes, and
    our mount made read-only under the wait, as the kernel's abort makes it)."""
    from rollback.effects import btrfs, mount
    from rollback.plan import Reclaim

    other = disk.workdir / "other"
    other.mkdir()
    with disk.top() as top:
        monkeypatch.setattr(btrfsutil, "deleted_subvolumes", lambda _path: [999])
        sh("mount", "-o", "subvolid=5", disk.device, str(other))
        try:  # the superblock read-only under our read-write mount, as the kernel's abort leaves it
            sh("mount", "-o", "remount,ro", str(other))
            with pytest.raises(OSError) as raised:  # (before: no error, once the 20 s were over)
                btrfs.execute(Reclaim(timeout_s=20.0), top)
            assert raised.value.errno == errno.EROFS, raised.value
            assert mount.read_only_under(top) == str(top)  # what the run's failure then says (verbs._aborted)
        finally:
            sh("umount", str(other))


@pytest.mark.parametrize(
    "verb", [("run",), ("run", "--dry-run"), ("cleanup",), ("cleanup", "--dry-run"), ("skip-next",)], ids=" ".join
)
def test_a_filesystem_mounted_elsewhere_with_rescue_options_is_refused_saying_so(
    disk: Disk, tmp_path: Path, verb: tuple[str, ...]
) -> None:
    """Mounted elsewhere `-o ro,rescue=nologreplay` (an admin looking at a suspect disk), the remount
    read-write fails EINVAL as after an error: the refusal named an error there was not, and the dry
    runs, which do not remount, said exit 0 and their plan (testers with failing disks). Every writing
    verb and its dry run names the rescue option, and unmounted, the verb does its job."""
    with disk.top() as top:
        populate(top)
    assert disk.rollback("run", "--cleanup", "after-boot").returncode == Exit.OK  # (the cleanup's work)
    before = disk.state()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sh("mount", "-o", "ro,rescue=nologreplay", disk.device, str(elsewhere))
    try:
        result = disk.rollback(*verb)
        assert result.returncode == Exit.REFUSED and "reason=read-only" in result.stderr, result.stderr
        assert "mounted elsewhere with rescue=nologreplay" in result.stderr and "after an error" not in result.stderr
        assert ("the run would be refused" in result.stderr) == ("--dry-run" in verb), result.stderr
    finally:
        sh("umount", str(elsewhere))
    assert disk.state() == before
    assert disk.rollback(*verb).returncode == Exit.OK
