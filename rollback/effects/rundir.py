"""rollback's own directories in /run (the mount point, the locks): made if
missing, and refused if something else holds the name (a file, a symbolic link), which every verb met
as an internal error. /run is emptied at each boot, so this is a state of a running system only."""

from __future__ import annotations

import os
import stat

from rollback.errors import Refused


def ensure(path: str) -> None:
    """Make `path` (0700) unless it is there; refuse unless it is a real directory."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        mode = os.lstat(path).st_mode
    except (FileExistsError, NotADirectoryError):  # a file or a link to nowhere holds the name, or is on the way
        mode = 0
    if not stat.S_ISDIR(mode):
        raise Refused(
            f"{path} is not a directory (a file or a symbolic link is there)",
            f"remove it (rm {path}): rollback keeps its mount point and locks in /run/rollback*",
            code="run-dir",
        )
