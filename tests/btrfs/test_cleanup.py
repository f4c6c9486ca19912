"""Deletion after boot (cleanup = after-boot): the boot only renames and creates, `rollback cleanup`
deletes on the running system; kills in either part converge; the trash never holds more than one
boot's worth; the cleanup refuses what a run refuses and then changes nothing."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import btrfsutil
import pytest

from rollback import verbs
from rollback.effects import btrfs
from rollback.errors import Exit
from rollback.verbs import CRASH_AFTER_ENV
from tests.support.disks import Disk, parse_json, stopped
from tests.support.factory import config
from tests.support.layout import State, outside_root, populate, sh

pytestmark = pytest.mark.btrfs

TRASH = ".rollback/trash/"
AFTER_BOOT = ("--cleanup", "after-boot")


def trash(state: State) -> list[str]:
    """Trash entries (not what they hold)."""
    return [p for p in state.subvolume_paths() if p.startswith(TRASH) and p.count("/") == 2]


def boot(disk: Disk) -> None:
    """A boot with cleanup after boot; then the running system writes cruft into the new root."""
    result = disk.rollback("run", *AFTER_BOOT)
    assert result.returncode == Exit.OK, result.stderr
    with disk.top() as top:
        (top / "root" / "cruft").write_text("written by the running system\n")
        sh("btrfs", "subvolume", "create", str(top / "root" / "machines"))


def test_the_boot_leaves_the_old_root_and_the_cleanup_deletes_it(disk: Disk) -> None:
    with disk.top() as top:
        populate(top, nested=[f"root/srv/n{i}" for i in range(20)])
    before = disk.state()
    result = disk.rollback("run", *AFTER_BOOT)
    assert result.returncode == Exit.OK, result.stderr
    assert "0 subvolume(s) deleted" in result.stderr
    booted = disk.state()
    assert booted.under("root") == {"root": "dir:40755"}
    assert len(trash(booted)) == 1
    assert outside_root(booted) == outside_root(before)
    pending = parse_json(disk.rollback("status", "--json"))["pending"]["trash"]
    assert pending == trash(booted)

    cleaned = disk.rollback("cleanup")
    assert cleaned.returncode == Exit.OK, cleaned.stderr
    held = len([p for p in booted.subvolume_paths() if p.startswith(TRASH)])  # the old root and its nested
    assert held == 21 and f"{held} subvolume(s) deleted" in cleaned.stderr
    assert "deleting 1 old root(s) from the trash" in cleaned.stderr  # it counted the wait for the cleaner too
    after = disk.state()
    assert trash(after) == [] and outside_root(after) == outside_root(before)
    assert after.under("root") == booted.under("root")
    again = disk.rollback("cleanup")
    assert again.returncode == Exit.OK and "nothing to do" in again.stderr
    assert disk.state().subvolumes == after.subvolumes  # nothing written, generations included


def test_without_the_cleanup_the_trash_holds_one_boots_worth(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    before = disk.state()
    for _ in range(4):
        boot(disk)
        assert len(trash(disk.state())) == 1
    assert outside_root(disk.state()) == outside_root(before)


def test_cleanup_dry_run_prints_the_plan_and_changes_nothing(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    boot(disk)
    before = disk.state()
    shown = disk.rollback("cleanup", "--dry-run")
    assert shown.returncode == Exit.OK
    assert shown.stdout.startswith("1. delete .rollback/trash/")
    assert disk.state() == before


def test_cleanup_refuses_when_something_in_the_trash_is_mounted(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    boot(disk)
    state = disk.state()
    (entry,) = trash(state)
    where = disk.workdir / "held"
    where.mkdir()
    sh("mount", "-o", f"subvol={entry}/var/lib/machines", disk.device, str(where))
    try:
        before = disk.state()
        result = disk.rollback("cleanup")
        assert result.returncode == Exit.REFUSED and "reason=mounted" in result.stderr, result.stderr
        assert disk.state() == before
    finally:
        sh("umount", str(where))


@pytest.mark.parametrize("after_step", [1, 2])
def test_a_cleanup_killed_between_deletes_is_finished_by_the_next(disk: Disk, after_step: int) -> None:
    with disk.top() as top:
        populate(top)
    boot(disk)
    with disk.top() as top:  # a second entry: what a boot left while an earlier cleanup was pending
        sh("btrfs", "subvolume", "create", str(top / TRASH / "20200101T000000Z"))
    assert len(trash(disk.state())) == 2
    killed = disk.rollback("cleanup", env={CRASH_AFTER_ENV: str(after_step)})
    assert killed.returncode == -9
    assert len(trash(disk.state())) == 2 - after_step
    assert disk.rollback("cleanup").returncode == Exit.OK
    assert trash(disk.state()) == []


def test_the_cleanups_wait_for_the_kernel_holds_no_lock(disk: Disk) -> None:
    """Stopped in its wait for the kernel's cleaner (up to an hour), the cleanup has changed all it will:
    skip-next and a run are not refused `locked` meanwhile, and the cleanup then ends as usual."""
    with disk.top() as top:
        populate(top)
    boot(disk)
    cleanup = _stopped_cleanup(disk)
    try:
        skipped = disk.rollback("skip-next")
        assert skipped.returncode == Exit.OK, skipped.stderr
        ran = disk.rollback("run", *AFTER_BOOT)  # consumes the mark: the root kept once
        assert ran.returncode == Exit.SKIPPED, ran.stderr
    finally:
        os.kill(cleanup.pid, signal.SIGCONT)
        _, errors = cleanup.communicate(timeout=120)
    assert cleanup.returncode == Exit.OK, errors
    assert trash(disk.state()) == []


def test_a_second_cleanup_of_the_same_filesystem_waits_for_the_first(disk: Disk) -> None:
    """Two cleanups of one filesystem (rollback-cleanup@ enabled under two of its device names, or one by
    hand while the unit runs): the second was refused `locked`, a failed unit at every boot. It waits
    while the first holds the lock, then deletes what is left (here: nothing) and ends 0."""
    with disk.top() as top:
        populate(top)
    boot(disk)
    with disk.top() as top:  # two entries: the first cleanup is stopped after one delete, the lock held
        sh("btrfs", "subvolume", "create", str(top / TRASH / "20200101T000000Z"))
    before = disk.state()
    assert len(trash(before)) == 2
    first = _stopped_cleanup(disk)
    try:
        second = subprocess.Popen(disk.rollback_argv("cleanup"), stderr=subprocess.PIPE, text=True)
        assert second.stderr is not None
        said = second.stderr.readline()  # its first line: the wait (a refusal was its last)
        assert "waiting for it" in said and f"pid {first.pid}" in said, said + second.communicate()[1]
        assert second.poll() is None, "the second cleanup did not wait"
    finally:
        os.kill(first.pid, signal.SIGCONT)
        _, first_said = first.communicate(timeout=120)
    _, second_said = second.communicate(timeout=120)
    assert first.returncode == Exit.OK, first_said
    assert second.returncode == Exit.OK, said + second_said
    after = disk.state()
    assert trash(after) == []
    assert outside_root(after) == outside_root(before) and after.under("root") == before.under("root")


def test_a_filesystem_the_host_unmounts_during_a_cleanup_is_released(disk: Disk, tmp_path: Path) -> None:
    """The cleanup's private mount namespace starts with copies of the host's mounts. Private copies
    kept a filesystem the user unmounted meanwhile mounted (a USB disk, a LUKS volume not released)
    for as long as the cleanup ran, up to its hour-long wait (found by a sequence fuzzer); slave
    copies receive the host's unmount."""
    shared = tmp_path / "shared"  # a shared mount, as a systemd host's / is (this machine's is private)
    shared.mkdir()
    sh("mount", "-t", "tmpfs", "tmpfs", str(shared))
    try:
        sh("mount", "--make-shared", str(shared))
        (shared / "usb").mkdir()
        sh("mount", "-t", "tmpfs", "usb", str(shared / "usb"))
        with disk.top() as top:
            populate(top)
        boot(disk)
        cleanup = _stopped_cleanup(disk)
        try:
            seen = Path(f"/proc/{cleanup.pid}/mountinfo")
            assert f" {shared / 'usb'} " in seen.read_text()  # its copy
            sh("umount", str(shared / "usb"))
            assert f" {shared / 'usb'} " not in seen.read_text(), "the host's unmount did not reach the cleanup"
        finally:
            os.kill(cleanup.pid, signal.SIGCONT)
            _, errors = cleanup.communicate(timeout=120)
        assert cleanup.returncode == Exit.OK, errors
    finally:
        sh("umount", "-R", str(shared))


def _stopped_cleanup(disk: Disk) -> subprocess.Popen[str]:
    """A `rollback cleanup` stopped (SIGSTOP) after its first delete: before its wait for the kernel's
    cleaner (the lock released) if the trash held one entry, else before its next delete (the lock held)."""
    return stopped(disk, "cleanup", after=1)


def test_kills_at_random_moments_of_the_cleanup_and_the_boot_converge(disk: Disk) -> None:
    """SIGKILL at seeded random delays into a cleanup deleting 300 nested subvolumes, then a boot: the
    boot deletes what the cleanup left (an earlier boot's), moves today's root, and data stays."""
    rng = random.Random(20261127)
    nested = [f"root/srv/n{i}" for i in range(300)]
    with disk.top() as top:
        populate(top, nested=nested)
    boot(disk)
    began = time.monotonic()
    assert disk.rollback("cleanup").returncode == Exit.OK
    whole = time.monotonic() - began
    outcomes = []
    for attempt in range(8):
        with disk.top() as top:
            for path in nested:
                os.makedirs(top / os.path.dirname(path), exist_ok=True)
                sh("btrfs", "subvolume", "create", str(top / path))
        boot(disk)
        before = disk.state()
        delay = rng.uniform(0.3, 1.0) * whole
        with subprocess.Popen(disk.rollback_argv("cleanup"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as p:
            time.sleep(delay)
            p.kill()
        left = disk.state()
        assert outside_root(left) == outside_root(before), attempt
        outcomes.append(
            (round(delay, 3), p.returncode, len([s for s in left.subvolume_paths() if s.startswith(TRASH)]))
        )
        result = disk.rollback("run", *AFTER_BOOT)  # the next boot, the cleanup not run again
        assert result.returncode == Exit.OK, (attempt, result.stderr)
        after = disk.state()
        assert len(trash(after)) == 1 and after.under("root") == {"root": "dir:40755"}
        assert outside_root(after) == outside_root(before)
        assert disk.rollback("cleanup").returncode == Exit.OK
    print("cleanup kills (delay s, return code, trash subvolumes left):", outcomes)
    assert any(0 < left < 302 for _, _, left in outcomes), f"no kill landed inside the delete: {outcomes}"


def test_the_cleanup_runs_at_idle_priority() -> None:
    """SCHED_IDLE for the CPU and the idle I/O class, as ionice (util-linux) reads them back."""
    code = (
        "import os, subprocess; from rollback.effects import priority; priority.idle(); "
        "print(os.sched_getscheduler(0) == os.SCHED_IDLE, "
        "subprocess.run(['ionice', '-p', str(os.getpid())], capture_output=True, text=True).stdout.strip())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["True", "idle"], result.stderr


@pytest.mark.parametrize("change", ["moved-in", "mounted", "swap"])
def test_an_entry_changed_while_the_cleanup_ran_is_not_deleted(disk: Disk, tmp_path: Path, change: str) -> None:
    """The cleanup checks once, then deletes entry after entry (idle priority, a wait of up to an hour).
    Meanwhile `persist` moved into an entry (a slip of mv), or a subvolume of one mounted (yesterday's
    root, to fetch a file): the recursive delete took them, under their mount too (found by a reviewer).
    Or a swap file in one turned on (the kernel refuses that delete: a failure halfway through the entry).
    Each entry is compared with what the checks saw just before its delete: not deleted, exit 1, and
    the next cleanup refuses or goes on as its checks say."""
    with disk.top() as top:
        populate(top)
        (top / ".rollback" / "trash").mkdir(parents=True)
        for entry in ("20200101T000000Z", "20200102T000000Z"):
            sh("btrfs", "subvolume", "create", str(top / ".rollback" / "trash" / entry))
        sh("btrfs", "subvolume", "create", str(top / ".rollback" / "trash" / "20200102T000000Z" / "var"))
        (top / "persist" / "data").write_text("the machine's own\n")
        swap = top / ".rollback" / "trash" / "20200102T000000Z" / "var" / "swap.img"
        swap.touch(mode=0o600)
        sh("chattr", "+C", str(swap))  # (no copy-on-write: what swapon needs on btrfs)
        sh("fallocate", "-l", "16M", str(swap))
        sh("mkswap", "-q", str(swap))
    cleanup = _stopped_cleanup(disk)  # after deleting the first entry
    later = ".rollback/trash/20200102T000000Z"
    live = tmp_path / "live"
    live.mkdir()
    try:
        with disk.top() as top:
            if change == "moved-in":
                os.rename(top / "persist", top / later / "persist")
            elif change == "mounted":
                sh("mount", "-o", f"subvol={later}/var", disk.device, str(live))
            else:  # through a mount of the top level (no subvolume of the entry mounted)
                sh("mount", "-o", "subvolid=5", disk.device, str(live))
                sh("swapon", str(live / later / "var" / "swap.img"))
        cleanup.send_signal(signal.SIGCONT)
        _, err = cleanup.communicate(timeout=120)
        assert cleanup.returncode == Exit.FAILED, err
        assert "changed since the checks" in err and "reason=step-failed" in err, err
        assert ("an active swap file" in err) is (change == "swap"), err
        with disk.top() as top:
            assert (top / later).is_dir()
            if change == "moved-in":
                assert (top / later / "persist" / "data").read_text() == "the machine's own\n"
                os.rename(top / later / "persist", top / "persist")
        if change == "swap":  # the next cleanup, swap still on: refused before any change
            before = disk.state()
            again = disk.rollback("cleanup")
            assert again.returncode == Exit.REFUSED and "reason=swap-active" in again.stderr, again.stderr
            assert disk.state() == before
    finally:
        for line in Path("/proc/swaps").read_text().splitlines()[1:]:  # (else the image stays attached)
            if line.split()[0].startswith(f"{live}/"):
                sh("swapoff", line.split()[0])
        subprocess.run(["umount", str(live)], capture_output=True)
    assert disk.rollback("cleanup").returncode == Exit.OK
    assert "persist" in disk.state().subvolume_paths()


def _entry_of_three(top: Path) -> tuple[Path, int]:
    """The usual layout, and a trash entry holding subvolumes a, b and c; the entry and its subvolume count."""
    populate(top)
    entry = top / ".rollback" / "trash" / "20200101T000000Z"
    entry.parent.mkdir(parents=True)
    btrfsutil.create_subvolume(str(entry))
    for name in ("a", "b", "c"):
        btrfsutil.create_subvolume(str(entry / name))
    return entry, len(btrfs.ids_within(top, ".rollback/trash/20200101T000000Z"))


@pytest.mark.parametrize("when", ["before-the-walk", "during-the-walk", "in-place-of-one-read"])
def test_a_subvolume_moved_into_an_entry_while_it_is_deleted_is_not_deleted(
    disk: Disk, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """`mv /persist` into a trash entry while the cleanup deletes that entry (seconds to minutes: idle
    priority, 20,000 nested subvolumes): libbtrfsutil's recursive delete took it with the rest, exit 0,
    "trash emptied" (found by a concurrency tester; the re-check before each entry could not see it).
    The delete now takes only what the checks counted: more found before the walk stops it before any
    delete; one moved in during the walk makes the kernel refuse its holder's delete; one renamed into
    the name of one the walk read (`c` moved aside, `persist` moved to `c`) was deleted in its place (a
    reviewer): every name is checked to be the subvolume read before it is deleted. Each way `persist`
    and its data stay, the delete stops with its reason, and the next cleanup refuses (`persist` is a
    protected name) until it is moved back."""
    with disk.top() as top:
        entry, checked = _entry_of_three(top)  # (what the checks saw: 4)
        (top / "persist" / "data").write_text("the machine's own\n")
        real = btrfsutil.delete_subvolume
        moved: list[bool] = []

        def moving(path: str | bytes, *args: bool) -> None:
            if not moved:  # the first delete of the walk: persist moved into one not deleted yet
                if when == "in-place-of-one-read":
                    os.rename(entry / "c", entry / "c.aside")
                    os.rename(top / "persist", entry / "c")
                else:
                    os.rename(top / "persist", entry / "c" / "persist")
                moved.append(True)
            real(path, *args)

        if when == "before-the-walk":
            os.rename(top / "persist", entry / "c" / "persist")
        else:
            monkeypatch.setattr(btrfsutil, "delete_subvolume", moving)
        with pytest.raises(OSError) as stopped:
            btrfs._delete(entry, checked)
        monkeypatch.undo()
        assert stopped.value.errno == errno.ESTALE, stopped.value
        persist = entry / "c" if when == "in-place-of-one-read" else entry / "c" / "persist"
        assert (persist / "data").read_text() == "the machine's own\n"
        assert (entry / "c").is_dir() and (when == "before-the-walk") is (entry / "a").exists()
    if when == "in-place-of-one-read":  # (named c now: not a protected name; the next cleanup would take it)
        with disk.top() as top:
            os.rename(entry / "c", top / "persist")
            os.rename(entry / "c.aside", entry / "c")
    else:
        refused = disk.rollback("cleanup")
        assert refused.returncode == Exit.REFUSED and "reason=protected-inside" in refused.stderr, refused.stderr
        with disk.top() as top:
            os.rename(entry / "c" / "persist", top / "persist")
    assert disk.rollback("cleanup").returncode == Exit.OK
    with disk.top() as top:
        assert (top / "persist" / "data").read_text() == "the machine's own\n"
        assert not entry.exists()


@pytest.mark.parametrize("mounted", ["c", ""], ids=["one-it-holds", "the-entry-itself"])
def test_a_subvolume_mounted_while_its_entry_is_deleted_is_not_deleted(
    disk: Disk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounted: str
) -> None:
    """Yesterday's root (or one nested in it) mounted to fetch a file while the cleanup deletes its trash
    entry: deleted under its mount (an empty directory there, the file gone), and the cleanup then waited
    up to an hour for the kernel, which cannot free it while mounted (found by a concurrency tester). The
    walk reads what is in use again every quarter second (verbs._in_use, as the cleanup does): it stops
    before deleting what is mounted or held by what is mounted (the entry itself mounted: what it holds
    is seen through it; a reviewer), exit 1, the file still there; once unmounted, the next cleanup
    finishes."""
    with disk.top() as top:
        entry, checked = _entry_of_three(top)
        (entry / "c" / "wanted").write_text("yesterday's\n")
        live = tmp_path / "fetch"
        live.mkdir()
        real = btrfsutil.delete_subvolume
        done: list[bool] = []
        source = "/".join(p for p in (".rollback/trash/20200101T000000Z", mounted) if p)

        def mounting(path: str | bytes, *args: bool) -> None:
            if not done:  # the first delete of the walk: the user mounts what is not deleted yet
                sh("mount", "-o", f"subvol={source}", disk.device, str(live))
                done.append(True)
                time.sleep(btrfs._Busy.READ_AGAIN_S)  # (the walk reads the mounts again after this long)
            real(path, *args)

        monkeypatch.setattr(btrfsutil, "delete_subvolume", mounting)
        try:
            with pytest.raises(OSError) as stopped:
                btrfs._delete(entry, checked, btrfs._Busy(partial(verbs._in_use, config(device=disk.device), top)))
            monkeypatch.undo()
            assert stopped.value.errno == errno.EBUSY, stopped.value
            assert (live / ("wanted" if mounted else "c/wanted")).read_text() == "yesterday's\n"
            assert mounted or (live / "b").is_dir()  # (a was deleted before the mount)
        finally:
            monkeypatch.undo()
            subprocess.run(["umount", str(live)], capture_output=True)
    assert disk.rollback("cleanup").returncode == Exit.OK
    with disk.top() as top:
        assert not entry.exists()


def test_a_wait_for_the_kernel_held_up_by_an_open_file_is_said(disk: Disk, tmp_path: Path) -> None:
    """A file held open in a trash entry: the cleanup deletes it, and the kernel cannot free it until the
    file is closed; the cleanup waited minutes without a word (a concurrency tester). Said once, after
    btrfs.SLOW_RECLAIM_S, with what keeps it; it ends once the file is closed."""
    with disk.top() as top:
        populate(top)
    boot(disk)
    (entry,) = trash(disk.state())
    held = tmp_path / "held"
    held.mkdir()
    sh("mount", "-o", "subvolid=5", disk.device, str(held))
    try:
        holder = subprocess.Popen(
            ["sh", "-c", f"exec 3<'{held / entry / 'tmp' / 'cruft'}'; exec sleep {btrfs.SLOW_RECLAIM_S + 8}"]
        )
        try:
            result = disk.rollback("cleanup")
        finally:
            holder.kill()
            holder.wait()
    finally:
        sh("umount", str(held))
    assert result.returncode == Exit.OK, result.stderr
    said = [line for line in result.stderr.splitlines() if "kind=warning" in line]
    assert len(said) == 1 and "still freeing 1 deleted subvolume(s) after" in said[0], result.stderr
    assert "a file open in one" in said[0] and trash(disk.state()) == []
