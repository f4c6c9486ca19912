"""The options the initrd mounts the root with, from the sysroot.mount unit its generators wrote
(systemd's fstab generator from root=/rootflags= or the initrd's fstab; dracut's rootfs generator
from its own command line, /etc/cmdline.d included). Absent outside an initrd: None then."""

from __future__ import annotations

import os

SYSROOT_UNIT = "/run/systemd/generator/sysroot.mount"
SYSROOT_UNIT_ENV = "ROLLBACK_TEST_SYSROOT_UNIT"  # test hook: read this file instead


def root_mount() -> tuple[str, tuple[str, ...]] | None:
    """The unit's What= and Options= (the last of each, as systemd reads them), the options split; None
    without the unit."""
    try:
        with open(os.environ.get(SYSROOT_UNIT_ENV, SYSROOT_UNIT), encoding="utf-8", errors="surrogateescape") as unit:
            text = unit.read(1 << 16)
    except OSError:
        return None
    found = {"What": "", "Options": ""}
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() in found:
            found[key.strip()] = value.strip()
    options = found["Options"].replace("%%", "%").split(",")
    return found["What"].replace("%%", "%"), tuple(option for option in options if option)
