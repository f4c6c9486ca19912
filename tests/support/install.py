"""The installer (scripts/install) as tests use it: run it, and list what a machine holds where it writes."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).parents[2]
INSTALL = REPO / "scripts" / "install"
# every tree the installer writes into, whole: "nothing left" is judged on all of them
WATCHED = (
    "/etc",
    "/opt",
    "/usr/local",
    "/usr/lib/dracut",
    "/usr/lib/systemd",
    "/var/lib/rollback",
    "/var/lib/systemd/catalog",
)


def install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(INSTALL), *args], capture_output=True, text=True, timeout=900)


def listing(roots: tuple[str, ...] = WATCHED) -> dict[str, str]:
    """path -> kind and content (a file's hash, a link's target): directories' times are left out."""
    found: dict[str, str] = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        found[root] = "dir"
        for where, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(where, name)
                if os.path.islink(path):
                    found[path] = "link " + os.readlink(path)
                elif os.path.isdir(path):
                    found[path] = "dir"
                elif os.path.isfile(path):
                    found[path] = "file " + hashlib.sha256(Path(path).read_bytes()).hexdigest()
                else:
                    found[path] = "other"
    return found
