"""The test layout shared by the real-btrfs and VM tiers: building it, and reading it back."""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import btrfsutil

# The standard impermanence layout; nested subvolumes like systemd-tmpfiles and nspawn make them.
NESTED = ["root/var/lib/machines", "root/var/lib/machines/guest", "root/var/lib/machines/guest/srv"]


def sh(*argv: str) -> str:
    """Run a command; its output, stripped. A failure raises with what the command said on stderr."""
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout.strip()


class Subvolume(NamedTuple):
    """One subvolume as the tests compare it: any write inside it moves `generation` and `ctransid`."""

    path: str  # "" for the top level
    id: int
    read_only: bool
    generation: int
    ctransid: int


@dataclass(frozen=True)
class State:
    """Everything observable on the filesystem: subvolumes (with ids and generations, the top level
    included) and every file's content. Equal states mean nothing was written, not even an atime."""

    subvolumes: tuple[Subvolume, ...]
    files: dict[str, str]

    def under(self, prefix: str) -> dict[str, str]:
        return {p: d for p, d in self.files.items() if p == prefix or p.startswith(prefix + "/")}

    def subvolume_paths(self) -> list[str]:
        return [s.path for s in self.subvolumes if s.path]


def _digest(path: Path) -> str:
    st = path.lstat()
    if path.is_symlink():
        return "link:" + os.readlink(path)
    if path.is_dir():
        return f"dir:{st.st_mode:o}"
    return f"file:{st.st_mode:o}:" + hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot_state(top: Path) -> State:
    """Every subvolume (the top level first) and every file's digest, below a top-level mount."""
    found = [("", btrfsutil.subvolume_info(str(top), 5))]
    found += [(os.fsdecode(p), i) for p, i in btrfsutil.SubvolumeIterator(str(top), top=5, info=True)]
    subvols = tuple(sorted(Subvolume(p, i.id, bool(i.flags & 1), i.generation, i.ctransid) for p, i in found))
    files = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            files[str(full.relative_to(top))] = _digest(full)
    return State(subvols, files)


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


def rolled_back(before: State, after: State) -> None:
    """A finished run: one new, empty root; nested subvolumes and the trash gone; the rest intact."""
    assert after.subvolume_paths() == ["home", "nix", "persist", "root"]
    assert after.under("root") == {"root": after.files["root"]}
    assert [p for p in after.files if p.startswith(".rollback/trash/")] == []
    assert outside_root(after) == outside_root(before)
