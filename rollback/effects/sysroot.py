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
    units = [env] if env else [f"{directory}/sysroot.mount" for directory in _unit_dirs()]
    text = next((found for found in map(_read, units) if found is not None), None)
    if text is None:
        return None
    found = {"What": "", "Options": ""}
    for part in [text, *(_read(path) or "" for path in _drop_ins())]:
        for line in part.splitlines():
            key, _, value = line.strip().partition("=")
            if key.strip() in found:
                found[key.strip()] = value.strip()
    options = found["Options"].replace("%%", "%").split(",")
    return found["What"].replace("%%", "%"), tuple(option for option in options if option)


def _unit_dirs() -> tuple[str, ...]:
    """Where the initrd's units are looked for: systemd's search path, or the test hook's file's directory."""
    env = os.environ.get(SYSROOT_UNIT_ENV)
    return (os.path.dirname(env),) if env else UNIT_DIRS


def _drop_ins() -> list[str]:
    """sysroot.mount.d/*.conf in systemd's order: by file name, a name in an earlier directory hiding
    the same name in a later one (the test hook's file: the .d directory beside it)."""
    found: dict[str, str] = {}
    for directory in _unit_dirs():
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


def system_elsewhere(cmdlines: tuple[str, str], *, usr_mount: bool = True) -> str | None:
    """What starts the operating system from outside the root this filesystem's run replaces, as far as
    the boot can see before the root is mounted (plan.check_bootable does not judge it): on the settings'
    or the kernel's own command line (`cmdlines`: systemd's words, read even with --kernel-cmdline
    /dev/null or NixOS's kernelCommandLine = false) a mount.usr*= or usrhash= word, a
    systemd.mount-extra= for /usr, or an init= outside the system's own directories (NixOS's
    /nix/store/...; init=/usr/lib/systemd/systemd is the root's); in the initrd, a sysroot-usr.mount
    (its generators write one for those words, gpt-auto's usr partition and the initrd's own fstab);
    on the running system, a /usr mount that is not an overlay (systemd-sysext's): made in the initrd,
    which then sees its source too (not `usr_mount`: a run by hand, where this system's /usr is not the
    machine's). None: nothing seen. (A root's own fstab mounting /usr is in the
    observation: model.SystemSigns.)

    rd.systemd.mount-extra= is not counted: the initrd prefixes systemd.mount-extra='s mount point
    with /sysroot, not the rd. spelling's, so rd.systemd.mount-extra=…:/usr mounts the initrd's own
    /usr, gone at the switch (a reviewer), and one for /sysroot/usr makes the sysroot-usr.mount."""
    from rollback.cmdline import split_cmdline

    for word in [w for text in cmdlines for w in split_cmdline(text)]:
        key, _, value = word.partition("=")
        usr = (
            key.startswith("mount.usr")
            or key == "usrhash"
            or (key == "systemd.mount-extra" and _extra_mounts_usr(value))
        )
        if (usr and value) or (key == "init" and _outside_the_system(value)):
            return f"{word} on the kernel command line"
    if in_the_initrd():
        found = next((u for u in (f"{d}/sysroot-usr.mount" for d in _unit_dirs()) if os.path.exists(u)), None)
        return None if found is None else f"{found} in the initrd"
    return "/usr mounted on its own" if usr_mount and _usr_mounted() else None


def in_the_initrd() -> bool:
    """Running in the initrd, or as the test hook has it (its units read from the hook's directory)."""
    from rollback.sources import in_initrd

    return bool(os.environ.get(SYSROOT_UNIT_ENV)) or in_initrd()


def _extra_mounts_usr(extra: str) -> bool:
    """systemd.mount-extra=WHAT:WHERE[:TYPE[:OPTIONS]] mounts /usr."""
    fields = extra.split(":")
    return len(fields) > 1 and fields[1].rstrip("/") == "/usr"


def _outside_the_system(init: str) -> bool:
    """An init= path that is not in the directories a root holding the system has it in."""
    inside = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc")
    return init.startswith("/") and not any(init == d or init.startswith(d + "/") for d in inside)


def _usr_mounted() -> bool:
    """/usr is a mount of its own here: not an overlay (systemd-sysext's extensions over the root's), nor
    a bind of the root's own usr/ (`/usr /usr none bind,ro`, a unit's ProtectSystem=), which the boot
    does not count either (a tester: status said the next boot goes on, and it refused)."""
    from rollback import mountinfo

    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            return usr_apart(mountinfo.parse(table.read()))
    except OSError:
        return False


def usr_apart(mounts: list[Mount]) -> bool:
    """_usr_mounted()'s answer for this mount table."""
    root = next((m for m in mounts if m.mount_point == "/"), None)
    own = None if root is None else (root.dev, root.root.rstrip("/") + "/usr")
    return any(m.mount_point == "/usr" and m.fstype != "overlay" and (m.dev, m.root) != own for m in mounts)
