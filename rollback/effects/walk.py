"""Walk a tree below the top-level mount for `diff`: no path length limit, and a live tree allowed."""

from __future__ import annotations

import errno
import os
import resource
import stat
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import NoReturn

from rollback.errors import ReadFailed
from rollback.report import Signature

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk(top: Path, relative: str) -> Iterator[tuple[str, Signature]]:
    """(path relative to `relative`, signature) for everything below it, not following symlinks.

    A file's signature is its mode, owner, group, size, mtime and ctime: content rewritten with the size
    and mtime put back (`touch -r`, `cp -p`, `rsync -t`), a chown or an xattr change moves the ctime,
    which no one can set from userspace; a snapshot shares the blank's inodes, so what is untouched has
    the blank's ctime. A directory's is its mode, owner and group ('/' ends its path): it survives if the
    blank has it (its ctime moves with every entry added or removed in it, and those are listed).
    Every system call names one entry relative to an open directory, so no path is too long; one
    directory is open per level (the soft limit on open files is raised to the hard one for that).
    `diff` is for live systems: what vanishes meanwhile, or stops being a directory, is
    not listed (os.fwalk would end the whole walk there). Any other error (EIO...) ends the walk
    (reason tree-unreadable): a silently shorter list would hide what the next run erases.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    base = str(top / relative)
    frames: list[tuple[int, str, list[str]]] = []  # (open directory, its path + "/", subdirectories left)
    try:
        fd = _open_dir(base, None, base)
        if fd is None:
            return
        frames.append((fd, "", []))
        frames[-1][2].extend((yield from _entries(fd, "", base)))
        while frames:
            fd, prefix, subdirs = frames[-1]
            if not subdirs:
                os.close(frames.pop()[0])
                continue
            path = prefix + subdirs.pop()
            child = _open_dir(os.path.basename(path), fd, f"{base}/{path}")
            if child is not None:
                frames.append((child, path + "/", []))
                frames[-1][2].extend((yield from _entries(child, path + "/", f"{base}/{path}")))
    finally:
        for fd, _, _ in frames:
            os.close(fd)


def _entries(fd: int, prefix: str, shown: str) -> Generator[tuple[str, Signature], None, list[str]]:
    """Yield what the directory open at `fd` holds; return the names of its subdirectories."""
    try:
        with os.scandir(fd) as found:
            names = [entry.name for entry in found]
    except FileNotFoundError:  # removed while we held it open
        return []
    except OSError as error:
        _unreadable(error, shown)
    subdirs = []
    for name in names:
        try:
            st = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            continue
        except OSError as error:
            _unreadable(error, f"{shown}/{name}")
        if stat.S_ISDIR(st.st_mode):
            subdirs.append(name)
            yield f"{prefix}{name}/", (st.st_mode, st.st_uid, st.st_gid, 0, 0, 0)
        else:
            yield prefix + name, (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return subdirs


def _open_dir(name: str, dir_fd: int | None, shown: str) -> int | None:
    """The directory opened, never through a symlink; None if it vanished or is no longer a directory."""
    try:
        return os.open(name, _DIRECTORY, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        _unreadable(error, shown)


def _unreadable(error: OSError, path: str) -> NoReturn:
    raise ReadFailed(
        f"cannot read {path}: {error.strerror}; the list would be incomplete",
        "see dmesg; btrfs scrub start <mount point> checks the filesystem",
        code="tree-unreadable",
    ) from error
