"""Real btrfs on loop devices (root only): every image lives in a temp dir and every loop is detached."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import btrfsutil

from tests.support.cli import rollback_argv
from tests.support.environment import require_root
from tests.support.layout import State, sh, snapshot_state


def stopped(disk: Disk, *args: str, after: int) -> subprocess.Popen[str]:
    """`rollback ARGS` stopped (SIGSTOP, the crash tests' hook) after its step `after`: a run or a
    cleanup in the middle of its plan, for a test to act on the filesystem; SIGCONT lets it go on."""
    from rollback.verbs import CRASH_AFTER_ENV, CRASH_SIGNAL_ENV

    env = {**os.environ, CRASH_AFTER_ENV: str(after), CRASH_SIGNAL_ENV: "STOP"}
    process = subprocess.Popen(disk.rollback_argv(*args), env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while process_state(process.pid) != "T":
        assert process.poll() is None and time.monotonic() < deadline, f"rollback {args} never stopped"
        time.sleep(0.05)
    return process


def process_state(pid: int) -> str:
    """A process's state letter (T: stopped)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rpartition(")")[2].split()[0]


@dataclass
class Disk:
    device: str
    mnt: Path
    workdir: Path

    @contextmanager
    def top(self, *, read_only: bool = False) -> Iterator[Path]:
        sh("mount", "-o", "subvolid=5" + (",ro" if read_only else ""), self.device, str(self.mnt))
        try:
            yield self.mnt
        finally:
            sh("umount", str(self.mnt))

    def rollback_argv(self, *args: str, cmdline: str = "/dev/null") -> list[str]:
        return rollback_argv(*args, device=self.device, cmdline=cmdline)

    def rollback(
        self, *args: str, env: dict[str, str] | None = None, cmdline: str = "/dev/null"
    ) -> subprocess.CompletedProcess[str]:
        argv = self.rollback_argv(*args, cmdline=cmdline)
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)

    def state(self) -> State:
        """What is on the device. A commit first: a run's unmount need not commit while another mount
        namespace (any other run's, copied from the host) still holds the filesystem."""
        with self.top(read_only=True) as top:
            btrfsutil.sync(str(top))
            return snapshot_state(top)


@contextmanager
def loop_device(image: Path, size: int) -> Iterator[str]:
    """A sparse image of `size` bytes attached to a loop device, detached afterwards."""
    with image.open("wb") as handle:
        handle.truncate(size)
    with attached(image) as device:
        yield device


@contextmanager
def attached(image: Path) -> Iterator[str]:
    """An existing image attached to a loop device, detached afterwards."""
    device = sh("losetup", "-f", "--show", str(image))
    try:
        yield device
    finally:
        sh("losetup", "-d", device)
        _forget_lock(image)


def released(image: Path, timeout: float = 30.0) -> None:
    """Wait until the kernel no longer holds the filesystem whose copy `image` is (/sys/fs/btrfs/<fsid>
    gone). A run's private mount namespace is torn down after it exits, by the kernel's delayed work, and
    so is any namespace another process made meanwhile (its copy of our mounts): the filesystem can
    stay mounted a moment after our last unmount, and a copy attached then is refused `mounted`."""
    with image.open("rb") as handle:
        superblock = os.pread(handle.fileno(), 0x48, 0x10000)
    fsid = superblock[0x20:0x30].hex()
    held = Path("/sys/fs/btrfs", f"{fsid[:8]}-{fsid[8:12]}-{fsid[12:16]}-{fsid[16:20]}-{fsid[20:]}")
    deadline = time.monotonic() + timeout
    while held.exists():
        assert time.monotonic() < deadline, f"the kernel still holds {held.name} after {timeout:g} s"
        time.sleep(0.05)


def _forget_lock(image: Path) -> None:
    """Remove the run lock's file the tool left for the image's filesystem (/run/rollback-locks/<fsid>,
    kept on a real machine: one per filesystem), so that the tests leave nothing on the host."""
    with image.open("rb") as handle:
        superblock = os.pread(handle.fileno(), 0x48, 0x10000)
    if len(superblock) == 0x48 and superblock[0x40:0x48] == b"_BHRfS_M":
        Path("/run/rollback-locks", superblock[0x20:0x30].hex()).unlink(missing_ok=True)


@contextmanager
def single_disk(tmp_path: Path, size: int, *mkfs_options: str) -> Iterator[Disk]:
    """A one-device btrfs on a loop device, with a mount point that is emptied afterwards."""
    require_root("mkfs.btrfs", "losetup", "mount")
    with loop_device(tmp_path / "disk.img", size) as device:
        sh("mkfs.btrfs", "-q", *mkfs_options, device)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        try:
            yield Disk(device, mnt, tmp_path)
        finally:
            subprocess.run(["umount", "-R", str(mnt)], capture_output=True)


def parse_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
