"""Real btrfs on loop devices (root only): every image lives in a temp dir and every loop is detached."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import btrfsutil
import pytest

from tests.conftest import unavailable

pytestmark = pytest.mark.btrfs

# The standard impermanence layout; nested subvolumes like systemd-tmpfiles and nspawn make them.
NESTED = ["root/var/lib/machines", "root/var/lib/machines/guest", "root/var/lib/machines/guest/srv"]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@dataclass(frozen=True)
class State:
    """Everything observable on the filesystem: subvolumes (with ids) and every file's content."""

    subvolumes: tuple[tuple[str, int, bool], ...]
    files: dict[str, str]

    def under(self, prefix: str) -> dict[str, str]:
        return {p: d for p, d in self.files.items() if p == prefix or p.startswith(prefix + "/")}

    def subvolume_paths(self) -> list[str]:
        return [p for p, _, _ in self.subvolumes]


def _digest(path: Path) -> str:
    st = path.lstat()
    if path.is_symlink():
        return "link:" + os.readlink(path)
    if path.is_dir():
        return f"dir:{st.st_mode:o}"
    return f"file:{st.st_mode:o}:" + hashlib.sha256(path.read_bytes()).hexdigest()


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

    def rollback(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "rollback", *args, "--device", self.device, "--kernel-cmdline", "/dev/null"]
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)

    def state(self) -> State:
        with self.top(read_only=True) as top:
            subvols = tuple(
                sorted(
                    (os.fsdecode(p), i.id, bool(i.flags & 1))
                    for p, i in btrfsutil.SubvolumeIterator(str(top), top=5, info=True)
                )
            )
            files = {}
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    full = Path(dirpath, name)
                    files[str(full.relative_to(top))] = _digest(full)
        return State(subvols, files)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    if os.geteuid() != 0:
        unavailable("real-btrfs tests need root (loop devices, mount)")
    for tool in ("mkfs.btrfs", "losetup", "mount"):
        if not shutil.which(tool):
            unavailable(f"{tool} is not installed")
    image = tmp_path / "disk.img"
    with image.open("wb") as handle:
        handle.truncate(512 * 1024 * 1024)
    sh("mkfs.btrfs", "-q", str(image))
    device = sh("losetup", "-f", "--show", str(image))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        yield Disk(device, mnt, tmp_path)
    finally:
        subprocess.run(["umount", "-R", str(mnt)], capture_output=True)
        sh("losetup", "-d", device)


def populate(top: Path, *, nested: list[str] | None = None, blank: bool = False) -> None:
    """root (with cruft and nested subvolumes), persist, nix, home; optionally a read-only blank."""
    for name in ("root", "persist", "nix", "home"):
        btrfsutil.create_subvolume(str(top / name))
    if blank:
        (top / "root" / "etc").mkdir()
        (top / "root" / "etc" / "machine-id").write_text("blank\n")
        btrfsutil.create_snapshot(str(top / "root"), str(top / "root-blank"), read_only=True)
    (top / "root" / "tmp").mkdir()
    (top / "root" / "tmp" / "cruft").write_text("left over from the last boot\n")
    (top / "root" / "persist").mkdir()  # the mount point of /persist lives in root
    for path in NESTED if nested is None else nested:
        (top / path).parent.mkdir(parents=True, exist_ok=True)
        btrfsutil.create_subvolume(str(top / path))
        (top / path / "data").write_text(f"inside {path}\n")
    (top / "persist" / "etc").mkdir()
    (top / "persist" / "etc" / "ssh_host_key").write_bytes(hashlib.sha256(b"host key").digest() * 2)
    (top / "nix" / "store").mkdir()
    (top / "nix" / "store" / "abc-hello").write_text("#!/bin/sh\necho hello\n")
    os.symlink("abc-hello", top / "nix" / "store" / "link")


def outside_root(state: State) -> dict[str, str]:
    """What must survive every run: persist, nix, home (and a blank)."""
    return {p: d for p, d in state.files.items() if p.split("/")[0] in ("persist", "nix", "home", "root-blank")}


def parse_json(result: subprocess.CompletedProcess[str]) -> Any:
    import json

    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
