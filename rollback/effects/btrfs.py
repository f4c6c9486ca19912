"""Observe the top level with btrfsutil, and carry out plan steps. Nothing else calls btrfsutil."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import assert_never

import btrfsutil

from rollback.effects import refs
from rollback.model import SKIP_MARK, TOP_LEVEL_ID, Examined, Kind, Observation, Subvol
from rollback.plan import (
    Commit,
    Create,
    Delete,
    MakeDir,
    Reclaim,
    RemoveMark,
    Rename,
    Snapshot,
    Step,
    Unlock,
    WriteMark,
)

_READ_ONLY = 1  # BTRFS_SUBVOL_RDONLY
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602  # x86_64/arm64 (long-sized argument)
_PINNING = 0x10 | 0x20  # FS_IMMUTABLE_FL | FS_APPEND_FL
_DIRS = (Kind.SUBVOLUME, Kind.DIRECTORY)
_FS_CODEC = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())  # os.fsdecode's, without its checks


def list_subvolumes(top: Path) -> tuple[Subvol, ...]:
    """Every subvolume, by id and path: no per-subvolume record read (that is what examine() does)."""
    return tuple(Subvol(i, os.fsdecode(path)) for path, i in btrfsutil.SubvolumeIterator(str(top), top=TOP_LEVEL_ID))


def list_bounded(top: Path, shallow: Callable[[str], bool]) -> tuple[Subvol, ...]:
    """Every subvolume, except those nested in a subvolume directly inside one that `shallow` names:
    there the listing stops one level down (plan.only_moved). One tree search per subvolume it looks
    into, one inode lookup per directory holding subvolumes."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        found: list[Subvol] = []
        pending = [(TOP_LEVEL_ID, "")]
        while pending:
            tree, path = pending.pop()
            descend = not (path and shallow(path))
            held_in: dict[int, bytes] = {}  # directory inode -> its path inside `tree` (b"" or ending in b"/")
            for child, inode, name in refs.children(fd, tree):
                if inode not in held_in:
                    held_in[inode] = refs.directory(fd, tree, inode)
                sub = Subvol(child, f"{path}/" * bool(path) + (held_in[inode] + name).decode(*_FS_CODEC))
                found.append(sub)
                if descend:
                    pending.append((child, sub.path))
        return tuple(found)
    finally:
        os.close(fd)


def _by_id(top: Path, ids: Iterable[int], listed: tuple[Subvol, ...]) -> tuple[Subvol, ...]:
    """Those of `ids` (mounted, the default) the listing left out, by their paths: a bounded listing
    does not reach every depth, and the checks must see them wherever they are."""
    known = {s.id for s in listed} | {TOP_LEVEL_ID}
    extra: list[Subvol] = []
    for i in dict.fromkeys(i for i in ids if i not in known):
        try:
            extra.append(Subvol(i, os.fsdecode(btrfsutil.subvolume_path(str(top), i))))
        except btrfsutil.BtrfsUtilError as error:
            if error.errno != errno.ENOENT:  # deleted, still mounted: nothing of it is in any tree
                raise
    return tuple(extra)


def examine(top: Path, sub: Subvol) -> Examined | None:
    """The record of the subvolume listed as `sub`, by its id: by path, a name renamed meanwhile would
    give the record of whatever holds that path now. None if it was deleted since it was listed (a
    `status` while a cleanup runs): it is not there."""
    try:
        info = btrfsutil.subvolume_info(str(top), sub.id)
    except btrfsutil.BtrfsUtilError as error:
        if error.errno == errno.ENOENT:
            return None
        raise
    return Examined(
        sub.id,
        sub.path,
        read_only=bool(info.flags & _READ_ONLY),
        otime=info.otime,
        otransid=info.otransid,
        changed=info.ctransid > info.otransid,
        uuid=info.uuid.hex(),
        parent_uuid=info.parent_uuid.hex(),
    )


def _kind(top: Path, path: str, subvol_paths: set[str]) -> Kind:
    if path in subvol_paths:
        return Kind.SUBVOLUME
    try:
        mode = os.lstat(top / path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return Kind.MISSING
    return Kind.DIRECTORY if stat.S_ISDIR(mode) else Kind.OTHER


def _is_empty(directory: Path) -> bool:
    with os.scandir(directory) as found:
        return next(found, None) is None


@contextmanager
def _inode_flags(path: Path) -> Iterator[tuple[int, int]]:
    """(an open fd, its inode flags) for the directory at `path`, never following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd, struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8)))[0]
    finally:
        os.close(fd)


def _pinned(path: Path) -> bool:
    """chattr +i or +a on this directory: it cannot be renamed, and nothing in it unlinked."""
    try:
        with _inode_flags(path) as (_fd, flags):
            return bool(flags & _PINNING)
    except FileNotFoundError:  # deleted since it was listed (a cleanup, while `status` looks)
        return False


def _unpin(path: Path) -> None:
    with _inode_flags(path) as (fd, flags):
        if flags & _PINNING:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", flags & ~_PINNING))


def unlock(path: Path) -> None:
    """Make a subvolume deletable: clear its read-only property and +i/+a on its top directory."""
    _unpin(path)
    if btrfsutil.get_subvolume_read_only(str(path)):
        btrfsutil.set_subvolume_read_only(str(path), False)


def unlock_tree(path: Path) -> None:
    """Everything the recursive delete of `path` could trip on: read-only subvolumes holding nested
    ones, and +i/+a on a subvolume's top directory or on the directory holding a nested subvolume."""
    unlock(path)
    for relative in btrfsutil.SubvolumeIterator(str(path)):
        nested = path / os.fsdecode(relative[0])
        _unpin(nested.parent)
        unlock(nested)


def observe(
    top: Path,
    paths: Iterable[str],
    holders: Iterable[str],
    mounted: Mapping[int, str],
    now: datetime,
    shallow: Callable[[str], bool] | None = None,
) -> Observation:
    """What the plan needs: every subvolume listed (with `shallow`, as list_bounded() bounds it, and the
    mounted and default ones wherever they are); examined (and checked for +i/+a) only the `paths` it
    asks about and the entries directly inside `holders` (the trash, the archive). Nothing here reads a
    subvolume nested in the root: the boot's cost does not grow with them."""
    default_id = btrfsutil.get_default_subvolume(str(top))
    listed = list_subvolumes(top) if shallow is None else list_bounded(top, shallow)
    listed += _by_id(top, [*mounted, default_id], listed)
    subvol_paths = {s.path for s in listed}
    kinds = {p: _kind(top, p, subvol_paths) for p in paths}
    dirs = {p for p, k in kinds.items() if k in _DIRS}
    holding = {h for h in holders if h in dirs}
    entries = {s.path for s in listed if s.path.rpartition("/")[0] in holding}  # archived roots, trash entries
    wanted = entries | {p for p, k in kinds.items() if k is Kind.SUBVOLUME}
    return Observation(
        subvols=tuple(found for s in listed if (found := examine(top, s) if s.path in wanted else s)),
        default_id=default_id,
        kinds=kinds,
        empty=frozenset(p for p in dirs if _is_empty(top / p)),
        mounted=dict(mounted),
        skip_mark=os.path.lexists(top / SKIP_MARK),
        pending_cleanup=tuple(btrfsutil.deleted_subvolumes(str(top))),
        immutable=frozenset(p for p in {"", *dirs, *entries} if _pinned(top / p)),
        now=now,
    )


def execute(step: Step, top: Path) -> None:
    """Carry out one step; every path in a step is relative to the top level."""
    if isinstance(step, MakeDir):
        os.makedirs(top / step.path, mode=0o700, exist_ok=True)
    elif isinstance(step, Rename):
        if os.path.lexists(top / step.dest):  # rename(2) would replace an empty directory
            raise FileExistsError(f"{step.dest} exists")
        os.rename(top / step.source, top / step.dest)
    elif isinstance(step, Create):
        btrfsutil.create_subvolume(str(top / step.path))
    elif isinstance(step, Snapshot):
        btrfsutil.create_snapshot(str(top / step.source), str(top / step.dest), read_only=False)
    elif isinstance(step, Delete):
        _delete(top / step.path)
    elif isinstance(step, Unlock):
        unlock(top / step.path)
    elif isinstance(step, Reclaim):
        _reclaim(top, step.timeout_s)
    elif isinstance(step, Commit):
        btrfsutil.sync(str(top))
    elif isinstance(step, WriteMark):
        (top / step.path).write_text("kept once by rollback skip-next\n")
    elif isinstance(step, RemoveMark):
        os.unlink(top / step.path)
    else:
        assert_never(step)


def _delete(path: Path) -> None:
    """Delete recursively. What is in the trash is ours: if a read-only subvolume or an immutable
    directory inside stops the delete (EROFS, EPERM), clear those flags and delete the rest."""
    try:
        btrfsutil.delete_subvolume(str(path), recursive=True)
    except btrfsutil.BtrfsUtilError as error:
        if error.errno not in (errno.EROFS, errno.EPERM):
            raise
        unlock_tree(path)
        btrfsutil.delete_subvolume(str(path), recursive=True)


def _reclaim(top: Path, timeout_s: float) -> None:
    """A commit starts the cleaner at once (else up to 30 s); then poll until nothing is pending. On
    timeout go on: a step that still lacks space fails, and the next run starts from here again."""
    btrfsutil.sync(str(top))
    deadline = time.monotonic() + timeout_s
    while btrfsutil.deleted_subvolumes(str(top)) and time.monotonic() < deadline:
        time.sleep(0.01)
