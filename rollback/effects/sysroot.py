"""The options the initrd mounts the root with, from the sysroot.mount unit its generators wrote
(systemd's fstab generator from root=/rootflags= or the initrd's fstab; dracut's rootfs generator
from its own command line, /etc/cmdline.d included; gpt-auto's for root=gpt-auto). Absent outside an
initrd: None then. Options= set in a drop-in (sysroot.mount.d/*.conf) count, as systemd applies them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rollback.mountinfo import Mount

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
    """The unit's What= and Options= (the last of each, as systemd reads them, drop-ins after the unit),
    the options split; None without the unit."""
    env = os.environ.get(SYSROOT_UNIT_ENV)
    units = [env] if env else [f"{directory}/sysroot.mount" for directory in UNIT_DIRS]
    text = next((found for found in map(_read, units) if found is not None), None)
    if text is None:
        return None
    found = {"What": "", "Options": ""}
    for part in [text, *(_read(path) or "" for path in _drop_ins(env))]:
        for line in part.splitlines():
            key, _, value = line.strip().partition("=")
            if key.strip() in found:
                found[key.strip()] = value.strip()
    options = found["Options"].replace("%%", "%").split(",")
    return found["What"].replace("%%", "%"), tuple(option for option in options if option)


def _drop_ins(env: str | None) -> list[str]:
    """sysroot.mount.d/*.conf in systemd's order: by file name, a name in an earlier directory hiding
    the same name in a later one (the test hook's file: the .d directory beside it)."""
    found: dict[str, str] = {}
    for directory in [os.path.dirname(env)] if env else UNIT_DIRS:
        try:
            names = os.listdir(f"{directory}/sysroot.mount.d")
        except OSError:
            continue
        for name in names:
            if name.endswith(".conf"):
                found.setdefault(name, f"{directory}/sysroot.mount.d/{name}")
    return [found[name] for name in sorted(found)]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as unit:
            return unit.read(1 << 16)
    except OSError:
        return None


def system_elsewhere(cmdline: str) -> str | None:
    """What starts the operating system from outside the root this filesystem's run replaces, as far as
    can be seen (plan.check_bootable does not judge it): init=, mount.usr= or usrhash= on the kernel
    command line; in the initrd, a sysroot-usr.mount (its generators write one for mount.usr= and for
    the initrd's own fstab); on the running system, /usr mounted on its own. None: nothing seen."""
    from rollback.cmdline import split_cmdline
    from rollback.sources import in_initrd

    for word in split_cmdline(cmdline):
        key, given, _ = word.partition("=")
        if given and key in ("init", "mount.usr", "usrhash"):
            return f"{key}= on the kernel command line"
    if in_initrd():
        found = next((f"{d}/sysroot-usr.mount" for d in UNIT_DIRS if os.path.exists(f"{d}/sysroot-usr.mount")), None)
        return None if found is None else f"{found} in the initrd"
    return "/usr mounted on its own" if any(m.mount_point == "/usr" for m in _own_mounts()) else None


def _own_mounts() -> list[Mount]:
    from rollback import mountinfo

    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        return mountinfo.parse(table.read())
