"""The options the initrd mounts the root with, from the sysroot.mount unit its generators wrote
(systemd's fstab generator from root=/rootflags= or the initrd's fstab; dracut's rootfs generator
from its own command line, /etc/cmdline.d included; gpt-auto's for root=gpt-auto). Absent outside an
initrd: None then. Options= set in a drop-in (sysroot.mount.d) are not read."""

from __future__ import annotations

import os

# where systemd looks for the unit, first found wins: fstab's generator writes it to the normal generator
# directory, gpt-auto's (root=gpt-auto, or no root=) to the late one, which anything before it overrides
UNIT_DIRS = (
    "/run/systemd/generator.early",
    "/etc/systemd/system",
    "/run/systemd/system",
    "/run/systemd/generator",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
    "/run/systemd/generator.late",
)
SYSROOT_UNIT_ENV = "ROLLBACK_TEST_SYSROOT_UNIT"  # test hook: read this file instead


def root_mount() -> tuple[str, tuple[str, ...]] | None:
    """The unit's What= and Options= (the last of each, as systemd reads them), the options split; None
    without the unit."""
    env = os.environ.get(SYSROOT_UNIT_ENV)
    for path in [env] if env else [f"{directory}/sysroot.mount" for directory in UNIT_DIRS]:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as unit:
                text = unit.read(1 << 16)
            break
        except OSError:
            continue
    else:
        return None
    found = {"What": "", "Options": ""}
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() in found:
            found[key.strip()] = value.strip()
    options = found["Options"].replace("%%", "%").split(",")
    return found["What"].replace("%%", "%"), tuple(option for option in options if option)
