"""Walk a tree below the top-level mount for `diff`: no path length limit, and a live tree allowed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from rollback.report import Signature


def walk(top: Path, relative: str) -> Iterator[tuple[str, Signature]]:
    """(path relative to `relative`, signature) for everything below it, not following symlinks.

    A directory's signature is only its mode ('/' ends its path): it survives if the blank has it.
    Directory file descriptors (os.fwalk) keep every system call's path short, however deep the
    tree; `diff` is for live systems, so what vanishes meanwhile is simply not listed.
    """
    base = top / relative
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(base, onerror=lambda error: None):
        prefix = os.path.relpath(dirpath, base)
        for name in dirnames + filenames:
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            path = name if prefix == "." else f"{prefix}/{name}"
            if stat.S_ISDIR(st.st_mode):
                yield path + "/", (st.st_mode, 0, 0)
            else:
                yield path, (st.st_mode, st.st_size, st.st_mtime_ns)
