"""Observe the top level with btrfsutil, and carry out plan steps. Nothing else calls btrfsutil."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import btrfsutil

from rollback.model import SKIP_MARK, TOP_LEVEL_ID, Kind, Observation, Subvol
from rollback.plan import Commit, Create, Delete, MakeDir, RemoveMark, Rename, Snapshot, Step, WriteMark

_READ_ONLY = 1  # BTRFS_SUBVOL_RDONLY
_DIRS = (Kind.SUBVOLUME, Kind.DIRECTORY)


def list_subvolumes(top: Path) -> tuple[Subvol, ...]:
    return tuple(
        Subvol(
            info.id,
            os.fsdecode(path),
            info.parent_id,
            bool(info.flags & _READ_ONLY),
            info.otime,
            otransid=info.otransid,
            changed=info.ctransid > info.otransid,
            uuid=info.uuid.hex(),
            parent_uuid=info.parent_uuid.hex(),
        )
        for path, info in btrfsutil.SubvolumeIterator(str(top), top=TOP_LEVEL_ID, info=True)
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


def observe(top: Path, paths: Iterable[str], mounted: Mapping[int, str], now: datetime) -> Observation:
    subvols = list_subvolumes(top)
    subvol_paths = {s.path for s in subvols}
    kinds = {p: _kind(top, p, subvol_paths) for p in paths}
    return Observation(
        subvols=subvols,
        default_id=btrfsutil.get_default_subvolume(str(top)),
        kinds=kinds,
        empty=frozenset(p for p, k in kinds.items() if k in _DIRS and _is_empty(top / p)),
        mounted=dict(mounted),
        skip_mark=os.path.lexists(top / SKIP_MARK),
        pending_cleanup=tuple(btrfsutil.deleted_subvolumes(str(top))),
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
        btrfsutil.delete_subvolume(str(top / step.path), recursive=True)
    elif isinstance(step, Commit):
        btrfsutil.sync(str(top))
    elif isinstance(step, WriteMark):
        (top / step.path).write_text("kept once by rollback skip-next\n")
    elif isinstance(step, RemoveMark):
        os.unlink(top / step.path)
