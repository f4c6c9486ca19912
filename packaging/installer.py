"""scripts/install: put rollback on a dracut machine's boot, or take it off again (--uninstall).

Same shape as the tool: observe the machine, plan every path and command (every refusal before the
first write), then act; --dry-run prints the plan. Standard library only: it runs on the
distribution's python3 before anything of ours is installed. What it writes is listed in a manifest
(/var/lib/rollback/install-manifest, JSON lines, written before the first change), and --uninstall
removes exactly that: a file only if it is still what was written (an edited config file stays).

Exit codes: 0 done; 1 a step failed midway (run it again: it rewrites the same files); 2 usage, or
a kept config file that every boot would refuse;
3 refused, nothing written (not root, no dracut or no systemd in its initrd, the device is not
btrfs or its root is the default subvolume, Python older than 3.11, no compiler or headers for the
dependencies, a path or prefix that is not ours, a kept config file that contradicts an option, the
running root's filesystem's subvolume replaced in recreate mode while /usr or the files this installer
writes lie in it or in a subvolume nested in it).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.dont_write_bytecode = True  # nothing written into the checkout (rollback/__pycache__)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rollback import mountinfo, names, settings  # noqa: E402  (pure, standard library only)
from rollback.devspec import TAGS, device_path, unit_path_escape  # noqa: E402
from rollback.errors import ConfigError  # noqa: E402
from rollback.settings import Value  # noqa: E402
from rollback.sources import load_config_file  # noqa: E402

MANIFEST = Path("/var/lib/rollback/install-manifest")
BIN = Path("/usr/local/bin/rollback")
DRACUT_MODULES = Path("/usr/lib/dracut/modules.d")
MODULE = DRACUT_MODULES / "90rollback"
DRACUT_CONF = Path("/etc/dracut.conf.d/90-rollback.conf")
CATALOG = Path("/usr/lib/systemd/catalog/rollback.catalog")
UNITS = Path("/usr/local/lib/systemd/system")
WANTS = Path("/etc/systemd/system/multi-user.target.wants")
CONFIG = Path("/etc/rollback.toml")
CLEANUP_UNIT = UNITS / "rollback-cleanup@.service"
# copied as they are: (where, from the repository, mode): the dracut module with the initrd's units
SHIPPED = (
    *(
        (MODULE / name, Path("packaging/dracut/90rollback") / name, 0o755)
        for name in ("module-setup.sh", "python_closure.py")
    ),
    *(
        (MODULE / "units" / name, Path("units") / name, 0o755 if name == "rollback-trigger" else 0o644)
        for name in (
            "rollback@.service",
            "rollback-early@.service",
            "rollback-stop-boot.conf",
            "rollback-trigger",
            "rollback.catalog",
        )
    ),
    (CATALOG, Path("units/rollback.catalog"), 0o644),
)
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "rollback")  # what pip builds the package from
SOURCE = "<a copy of the package's files>"  # in a planned command: replaced by that copy's path
BUILD_NEEDS = {  # what building btrfsutil and pystemd from PyPI needs -> Debian and Fedora packages
    "a C compiler (cc)": "gcc / gcc",
    "Python's headers (Python.h)": "python3-dev / python3-devel",
    "pkg-config": "pkg-config / pkgconf-pkg-config",
    "libbtrfsutil's headers": "libbtrfsutil-dev / btrfs-progs-devel",
    "libsystemd's headers": "libsystemd-dev / systemd-devel",
    "venv": "python3-venv / (python3)",
}


class Refused(Exception):
    """The machine or the request is unsupported: nothing was written (exit 3; 2 for usage)."""

    def __init__(self, message: str, code: int = 3) -> None:
        super().__init__(message)
        self.code = code


class Failed(Exception):
    """A step failed after changes began (exit 1: running the installer again finishes)."""


@dataclass(frozen=True)
class Machine:
    """What the plan depends on, read once."""

    euid: int
    python: tuple[int, int]
    dracut: str | None
    systemd_modules: bool  # dracut's systemd and systemd-initrd modules
    root: dict[str, str] | None  # findmnt's SOURCE, FSTYPE, UUID, FSROOT of /
    root_is_default: bool  # the running root is the filesystem's default subvolume
    node: str | None  # the --device's node here (UUID= and the like found by blkid, without udev)
    fstype: str | None  # of the --device, if it exists here
    installed_prefix: str | None  # the prefix an earlier install made (the manifest's tree)
    prefix_exists: bool
    foreign: frozenset[str]  # paths the installer may write that exist and its manifest does not list
    # /etc/rollback.toml if it exists and is not ours unchanged: its settings as the CLI reads them
    # (setting name -> value), or {"__error__": why it cannot be read}
    config: dict[str, Value] | None
    missing: tuple[str, ...] = ()  # build prerequisites (BUILD_NEEDS keys)
    device_uuid: str | None = None  # the filesystem UUID the device names here (blkid; --unchecked too)
    # where /usr (the running operating system) and each path the installer writes (`written`) lie
    # on the running root's filesystem: path -> its places there, as paths from the top level (a
    # path on another filesystem: none). A subvolume nested in another is not mounted, so its files
    # lie below its parent's path: whether a path goes with a replaced subvolume is whether one of
    # its places is that subvolume's path or below it (not st_dev: a nested subvolume has its own).
    places: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    device: str
    subvolume: str
    node: str | None  # where to check it here (None: --unchecked)
    cleanup: str
    mode: str = "recreate"  # the installer's own config sets none: recreate


@dataclass
class Plan:
    files: list[tuple[Path, str, int]] = field(default_factory=list)  # path, content, mode
    links: list[tuple[Path, str]] = field(default_factory=list)
    keep: set[Path] = field(default_factory=set)  # files not written: a config file that is not ours
    commands: list[list[str]] = field(default_factory=list)  # [:2] make the prefix; the rest after the files
    checks: list[list[str]] = field(default_factory=list)  # after the commands: must exit 0
    warnings: list[str] = field(default_factory=list)  # printed with the plan and after installing

    def paths(self) -> list[Path]:
        return [path for path, _, _ in self.files if path not in self.keep] + [path for path, _ in self.links]


# --- observing ----------------------------------------------------------------------------------


def observe(args: argparse.Namespace) -> Machine:
    modules = [name[2:] for name in os.listdir(DRACUT_MODULES)] if DRACUT_MODULES.is_dir() else []
    root = None
    found = _run(["findmnt", "-n", "-J", "-o", "SOURCE,FSTYPE,UUID,FSROOT", "/"])
    if found:
        root = {k.upper(): v or "" for k, v in json.loads(found)["filesystems"][0].items()}
    old = read_manifest()
    config = None if _unchanged(_entry(old, CONFIG)) or not CONFIG.exists() else _read_config()
    device = args.device or (str(config.get("device", "")) if config else "") or None
    node, fstype, uuid = identify(device, args.unchecked)
    trees = [entry["path"] for entry in old if entry["kind"] == "tree"]
    return Machine(
        os.geteuid(),
        sys.version_info[:2],
        shutil.which("dracut"),
        "systemd" in modules and "systemd-initrd" in modules,
        root,
        bool(root and root["FSTYPE"] == "btrfs" and _is_default("/")),
        node,
        fstype,
        trees[0] if trees else None,
        os.path.lexists(args.prefix),
        frozenset(path for path in _candidates() if os.path.lexists(path) and _entry(old, Path(path)) is None),
        config,
        missing_build(),
        uuid,
        places(["/usr", *written(args.prefix)], mountinfo.parse(_read_text("/proc/self/mountinfo"))),
    )


def written(prefix: str) -> list[str]:
    """Every place an install writes below (the wants link: its directory)."""
    paths = [prefix, str(BIN), str(DRACUT_CONF), str(CLEANUP_UNIT), str(CONFIG), str(MANIFEST), str(WANTS)]
    return paths + [str(where) for where, _, _ in SHIPPED]


def places(paths: list[str], mounts: list[mountinfo.Mount]) -> dict[str, tuple[str, ...]]:
    """Each path's places on the filesystem mounted at / (see Machine.places)."""
    root = _place("/", mounts)
    if root is None:
        return {}
    found = {}
    for path in paths:
        links, real = _hops(path, [40])
        at = [_place(where, mounts) for where in [*links, real]]
        found[path] = tuple(dict.fromkeys(place[1] for place in at if place is not None and place[0] == root[0]))
    return found


def _hops(path: str, budget: list[int]) -> tuple[list[str], str]:
    """What reaching `path` depends on: every symbolic link met on the way (the link itself, in the
    directory without links that holds it: where it lies) and, last, the path it leads to, made or
    not. A link that vanishes takes what it leads to with it: /usr, /opt or /etc/rollback.toml a
    link into a surviving subvolume, the link itself in the replaced one, is gone at the first boot
    (the kernel's limit of 40 links, as ELOOP; past it, a name is taken as it is)."""
    links: list[str] = []
    current = "/"  # a directory path without links
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        entry = os.path.join(current, name)
        try:
            target = os.readlink(entry) if budget[0] > 0 else None
        except OSError:  # not a link, or not there
            target = None
        if target is None:
            current = entry
            continue
        budget[0] -= 1
        links.append(entry)
        more, current = _hops(os.path.join(current, target), budget)
        links += more
    return links, current


def _place(real: str, mounts: list[mountinfo.Mount]) -> tuple[str, str] | None:
    """(filesystem, path from its top level) of an absolute path without symbolic links, made or
    not: by the mount with the nearest mount point (the last mounted there: it hides the others)."""
    best = None
    for mount in mounts:
        point = mount.mount_point
        if (point == "/" or names.is_within(real, point)) and (best is None or len(point) >= len(best.mount_point)):
            best = mount
    if best is None:
        return None
    below = real.removeprefix(best.mount_point)
    return best.dev, "/".join(part for part in f"{best.root}/{below}".split("/") if part)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return ""


def _candidates() -> list[str]:
    """Every path an install may write (a wants link for any device included)."""
    paths = [str(BIN), str(DRACUT_CONF), str(CLEANUP_UNIT), *(str(where) for where, _, _ in SHIPPED)]
    return paths + glob.glob(str(WANTS / "rollback-cleanup@*.service"))


def _read_config() -> dict[str, Value]:
    """The config file's settings, read by the CLI's own reader (TOML, the keys it knows, their
    types), or {"__error__": the reason} (not UTF-8, not TOML, too deep, an unknown key)."""
    try:
        layer, _ = load_config_file(str(CONFIG), str(CONFIG))
    except ConfigError as error:
        return {"__error__": f"{error.reason}{f'; {error.hint}' if error.hint else ''}"}
    return dict(layer)


def _is_default(path: str) -> bool:
    default = _run(["btrfs", "subvolume", "get-default", path]) or ""
    mine = (_run(["btrfs", "inspect-internal", "rootid", path]) or "").strip()
    return bool(mine) and default.split()[1:2] == [mine]  # "ID 256 gen ... path root"


def missing_build() -> tuple[str, ...]:
    include = sysconfig.get_paths().get("include", "")
    present = {
        "a C compiler (cc)": bool(shutil.which("cc") or shutil.which("gcc")),
        "Python's headers (Python.h)": os.path.exists(os.path.join(include, "Python.h")),
        "pkg-config": bool(shutil.which("pkg-config")),
        "libbtrfsutil's headers": _run(["pkg-config", "--exists", "libbtrfsutil"]) is not None
        or os.path.exists("/usr/include/btrfsutil.h"),
        "libsystemd's headers": _run(["pkg-config", "--exists", "libsystemd"]) is not None,
        "venv": _run([sys.executable, "-c", "import ensurepip, venv"]) is not None,
    }
    return tuple(name for name, ok in present.items() if not ok)


def identify(device: str | None, unchecked: bool) -> tuple[str | None, str | None, str | None]:
    """The device's node here (None with --unchecked: not checked), its filesystem type, and its
    filesystem UUID. The UUID is looked for even with --unchecked, however the device is spelled
    (LABEL=, a /dev/disk/by-*/ link, /dev/sdX): a device that names the running root's filesystem
    here is that filesystem for the refusal to replace what the running system needs."""
    found = resolve(device) if device else None
    if found is None:
        return None, None, None
    fstype = _run(["blkid", "-p", "-o", "value", "-s", "TYPE", found])
    uuid = _run(["blkid", "-p", "-o", "value", "-s", "UUID", found])
    return None if unchecked else found, fstype.strip() if fstype else None, uuid.strip() if uuid else None


def resolve(device: str) -> str | None:
    """The device node a --device names on this machine, or None. UUID=, LABEL=, ... (and their
    /dev/disk/by-*/ links where udev made none) are read from the disks: this machine may have no udev."""
    if device.startswith("/"):
        if os.path.exists(device):
            return device
        tagged = _tag_of(device)
        if tagged is None:
            return None
        device = tagged
    found = _run(["blkid", "-c", "/dev/null", "-o", "device", "-t", device])  # no cache: a detached loop
    return found.splitlines()[0] if found else None


def _tag_of(path: str) -> str | None:
    """`LABEL=my root` for /dev/disk/by-label/my\\x20root (udev's escapes undone), or None."""
    for tag, directory in TAGS.items():
        name = path.removeprefix(f"/dev/disk/{directory}/")
        if name != path and name and "/" not in name:
            raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), os.fsencode(name))
            return f"{tag}={os.fsdecode(raw)}"
    return None


def _run(argv: list[str]) -> str | None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return result.stdout if result.returncode == 0 else None


# --- deciding -----------------------------------------------------------------------------------


def check(machine: Machine, args: argparse.Namespace) -> None:
    if machine.euid != 0 and not args.dry_run:
        raise Refused("run as root (it writes to /usr, /etc and the prefix); --dry-run needs no root")
    if machine.python < (3, 11):
        raise Refused(f"Python {machine.python[0]}.{machine.python[1]} is older than 3.11 (tomllib)")
    if machine.dracut is None:
        raise Refused("no dracut: rollback runs in a dracut-built systemd initramfs (NixOS: docs/nixos.md)")
    if not machine.systemd_modules:
        raise Refused(f"dracut has no systemd/systemd-initrd modules in {DRACUT_MODULES}: no systemd in the initrd")
    if machine.installed_prefix and machine.installed_prefix != args.prefix:
        raise Refused(f"rollback is installed in {machine.installed_prefix}: --uninstall first to move it")
    if machine.prefix_exists and machine.installed_prefix != args.prefix:
        raise Refused(f"{args.prefix} exists and was not made by this installer: choose another --prefix")
    if machine.missing:
        packages = ", ".join(BUILD_NEEDS[name] for name in machine.missing)
        raise Refused(f"missing {', '.join(machine.missing)}; install (Debian / Fedora): {packages}")


def target(args: argparse.Namespace, machine: Machine) -> Target:
    """The device, subvolume and cleanup the config names: a kept config file's, --device, or the
    running root's."""
    if machine.config is not None:
        return _kept(args, machine, machine.config)
    cleanup = args.cleanup or "boot"
    if args.device:
        if not args.unchecked and machine.node is None:
            raise Refused(f"--device {args.device}: no such device here (an image for another machine: --unchecked)")
        if not args.unchecked and machine.fstype != "btrfs":
            raise Refused(f"--device {args.device} holds {machine.fstype or 'no filesystem'}, not btrfs")
        return _own(Target(args.device, (args.subvolume or "root").strip("/"), machine.node, cleanup))
    root = machine.root
    if root is None or root["FSTYPE"] != "btrfs":
        kind = root["FSTYPE"] if root else "unknown"
        raise Refused(f"the root filesystem is {kind}, not btrfs (for another device: --device DEV)")
    subvolume = root["FSROOT"].strip("/")
    if not subvolume:
        raise Refused("the root is btrfs's top level, not a subvolume: rollback replaces a subvolume")
    if machine.root_is_default and not args.subvolume:
        raise Refused(
            "the root is the filesystem's default subvolume, which rollback refuses to delete at every boot: "
            "btrfs subvolume set-default 5 /, and mount the root with subvol= (fstab, kernel command line)"
        )
    node = root["SOURCE"].partition("[")[0]  # /dev/vda2[/root]: the subvolume follows the node
    return _own(Target(f"UUID={root['UUID']}", (args.subvolume or subvolume).strip("/"), node, cleanup))


def _own(chosen: Target) -> Target:
    """The config this installer writes, checked as the boot will read it (a --subvolume the CLI
    refuses: before any write, not at the check after installing)."""
    layer: dict[str, Value] = {"device": chosen.device, "subvolume": chosen.subvolume, "cleanup": chosen.cleanup}
    valid = _valid(layer, f"the {CONFIG} it would write")
    # as the boot will read it: `./root` and `root/.` are `root` there, and the refusals compare with that
    return replace(chosen, subvolume=valid.subvolume)


def _kept(args: argparse.Namespace, machine: Machine, config: dict[str, Value]) -> Target:
    """A config file that is not ours (or edited since) stays: it decides, and options may not
    contradict it. What every boot would refuse in it is refused now (exit 2, as the CLI's)."""
    if "__error__" in config:
        raise Refused(f"{CONFIG} is not ours and cannot be read: {config['__error__']}: fix or move it", 2)
    valid = _valid(config, f"{CONFIG} (kept: not written by this installer)")
    device = str(config.get("device") or "")  # as written (valid.device: as its /dev/disk/ link)
    asked = {
        "--device": (args.device and device_path(args.device), valid.device, device),
        "--subvolume": (
            args.subvolume and _valid({"subvolume": args.subvolume.strip("/")}, "--subvolume").subvolume,
            valid.subvolume,
            valid.subvolume,
        ),
        "--cleanup": (args.cleanup, valid.cleanup, valid.cleanup),
    }
    for flag, (value, kept, shown) in asked.items():
        if value and value != kept:
            given = getattr(args, flag[2:])
            raise Refused(
                f"{CONFIG} (kept: not written by this installer) has {flag[2:]} {shown!r}, "
                f"not {given!r}: edit it, or move it away to have it written"
            )
    if not device:
        raise Refused(f"{CONFIG} (kept) names no device: add device = ...")
    if not args.unchecked and machine.node is None:
        raise Refused(f"{CONFIG} (kept) names device {device!r}, not found here (an image: --unchecked)")
    if not args.unchecked and machine.fstype != "btrfs":
        raise Refused(f"{CONFIG} (kept) names device {device!r}, which holds {machine.fstype or 'nothing'}")
    node = None if args.unchecked else machine.node
    return Target(device, valid.subvolume, node, valid.cleanup, valid.mode)


def _valid(layer: dict[str, Value], what: str) -> settings.Config:
    """The settings resolved and checked as every boot's `rollback run` does (the file alone: the
    kernel command line is the boot's), or refused with the CLI's reason (exit 2, as the CLI's)."""
    try:
        return settings.resolve(layer, {}, {}, f"config file {CONFIG}")
    except ConfigError as error:
        hint = f" ({error.hint})" if error.hint else ""
        raise Refused(f"{what} is invalid, and every boot would refuse it: {error.reason}{hint}", 2) from None


def on_running_root_filesystem(chosen: Target, machine: Machine) -> bool:
    """The boot would replace a subvolume of the filesystem the running system is booted from (its
    UUID: named so, or found on the device here, however the device is spelled)."""
    root = machine.root
    if root is None or root["FSTYPE"] != "btrfs" or not root["UUID"]:
        return False
    uuid = root["UUID"].lower()
    try:
        named = device_path(chosen.device).lower() == f"/dev/disk/by-uuid/{uuid}"
    except ValueError:  # not a device (a kept config's): refused as such elsewhere
        named = False
    return named or (machine.device_uuid or "").lower() == uuid


def vanishing(chosen: Target, machine: Machine, paths: list[str]) -> tuple[str | None, list[str]]:
    """What replacing the subvolume at every boot would take of the running system: a refusal (the
    operating system, or the install's own files, emptied at the first boot in recreate mode), or the
    warnings of snapshot mode (only a blank made after installing keeps them). A path goes with the
    subvolume when it lies in it or in a subvolume nested anywhere below it (moved and deleted with
    it); a path not observed lies where its directory does (the wants link)."""
    if not on_running_root_filesystem(chosen, machine):
        return None, []

    def goes(path: str) -> bool:
        found = machine.places.get(path, machine.places.get(str(Path(path).parent), ()))
        return any(names.is_within(place, chosen.subvolume.strip("/")) for place in found)

    lost = [path for path in paths if goes(path)]
    where = f"subvolume {chosen.subvolume!r} of the running root's filesystem"
    if chosen.mode == "recreate" and goes("/usr"):
        return (
            f"{where} holds the operating system (/usr is in it, or in a subvolume nested in it), and "
            "recreate mode (no mode = in the config) replaces it with a new EMPTY subvolume at every boot: "
            "the first boot would delete the system, keep no copy, and not come up. Either move /usr (and "
            "what must survive) to a subvolume that is not replaced, or use snapshot mode: write "
            '/etc/rollback.toml yourself with device, subvolume, mode = "snapshot" (it is kept), install, '
            'then make the read-only blank from this root (README, "Install (dracut ...)"): every boot then '
            "starts from that blank, and changes to the operating system (updates included) are undone at "
            "every boot until you make the blank again",
            [],
        )
    if chosen.mode == "recreate" and lost:
        return (
            f"these paths are in {where} (or in a subvolume nested in it), which recreate mode empties at "
            "every boot: "
            + ", ".join(lost)
            + ". They would vanish at the first boot, and the next initramfs build (a kernel update) would "
            "leave rollback out without a word. Put them on a subvolume that survives (e.g. mount or bind "
            "mount /etc and /var/lib from /persist, --prefix on a surviving subvolume), or use snapshot mode "
            "with a blank made after installing",
            [],
        )
    warnings = []
    if lost:
        warnings.append(
            f"snapshot mode replaces {where} with a snapshot of its blank at every boot, and these paths are "
            "in it: " + ", ".join(lost) + ". Make the blank AFTER installing (and again after re-installing "
            "or updating the system): otherwise they vanish at the first boot, and the next initramfs build "
            "(a kernel update) leaves rollback out without a word."
        )
    if goes("/usr"):
        warnings.append(
            "the blank holds the operating system (/usr is in the replaced subvolume): every change to it, "
            "updates included, is undone at every boot until the blank is made again."
        )
    return None, warnings


def plan(args: argparse.Namespace, machine: Machine) -> Plan:
    check(machine, args)
    chosen = target(args, machine)
    prefix = Path(args.prefix)
    out = Plan()
    python = prefix / "bin" / "python3"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir", SOURCE]
    out.commands += [[sys.executable, "-m", "venv", "--clear", str(prefix)], pip]
    out.links.append((BIN, str(prefix / "bin" / "rollback")))
    out.files += [(where, _read(REPO / source), mode) for where, source, mode in SHIPPED]
    cleanup = _read(REPO / "units/rollback-cleanup@.service").replace("/usr/bin/rollback", str(BIN))
    out.files.append((CLEANUP_UNIT, cleanup, 0o644))
    out.files.append((DRACUT_CONF, dracut_conf(python, args.policy), 0o644))
    out.files.append((CONFIG, config_text(chosen), 0o644))
    if machine.config is not None:
        out.keep.add(CONFIG)
    if chosen.cleanup == "after-boot":
        unit = f"rollback-cleanup@{unit_path_escape(device_path(chosen.device))}.service"
        out.links.append((WANTS / unit, str(CLEANUP_UNIT)))
    taken = sorted(str(path) for path in out.paths() if str(path) in machine.foreign)
    if taken:
        raise Refused("these exist and were not written by this installer (move them away): " + ", ".join(taken))
    out.commands.append(["journalctl", "--update-catalog"])
    rollback = [str(BIN), "--config", str(CONFIG), "--kernel-cmdline", "/dev/null"]
    out.checks.append([*rollback, "config"])
    refusal, warnings = vanishing(chosen, machine, [*(str(path) for path in out.paths()), str(prefix), str(MANIFEST)])
    if refusal:
        raise Refused(refusal)
    out.warnings += warnings
    if chosen.node:  # read through its own private mount; by node: this machine may have no udev links
        out.checks.append([*rollback, "status", "--device", chosen.node])
    return out


def dracut_conf(python: Path, policy: str) -> str:
    return (
        "# Written by rollback's scripts/install (removed by scripts/install --uninstall).\n"
        'add_dracutmodules+=" rollback "\n'
        f"rollback_python={shlex.quote(str(python))}\n"
        "# boot-on: a failed or refused rollback boots yesterday's root; stop-boot: emergency mode\n"
        f"rollback_policy={shlex.quote(policy)}\n"
    )


def config_text(chosen: Target) -> str:
    def toml(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string

    return f"""# rollback's settings (README: Settings). Written by scripts/install; it keeps this file if you edit it.
# Changes reach the boot when the initramfs is rebuilt: sudo dracut --force

# The btrfs filesystem whose subvolume is replaced at every boot.
device = {toml(chosen.device)}
subvolume = {toml(chosen.subvolume)}

# recreate: a new empty subvolume; snapshot: a writable snapshot of the read-only `blank`
# mode = "snapshot"
# blank = "root-blank"

# Keep old roots in a directory of the top level instead of deleting them:
# archive = "old-roots"
# keep-days = 30
# keep-count = 0

# Refused if a subvolume of one of these names is inside what would be deleted (the default):
# protect = ["persist", "nix", "home"]

# boot: old roots are deleted during boot; after-boot: by rollback-cleanup@.service
cleanup = {toml(chosen.cleanup)}
"""


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the manifest -------------------------------------------------------------------------------


def read_manifest() -> list[dict[str, str]]:
    if not MANIFEST.is_file():
        return []
    return [json.loads(line) for line in MANIFEST.read_text(encoding="utf-8").splitlines() if line]


def write_manifest(entries: list[dict[str, str]]) -> None:
    _write(MANIFEST, "".join(json.dumps(entry) + "\n" for entry in entries), 0o644)


def manifest(out: Plan, prefix: Path, old: list[dict[str, str]]) -> list[dict[str, str]]:
    """What this install owns: the directories it made (before, and now in creation order), the
    prefix, every file it writes (its content's hash) and link; a kept config file keeps its old
    entry (ours but edited: uninstall keeps it) or has none (never ours)."""
    entries = [entry for entry in old if entry["kind"] == "dir"]
    entries += [{"path": path, "kind": "dir"} for path in new_directories(out, prefix, entries)]
    entries.append({"path": str(prefix), "kind": "tree"})
    entries += [entry for entry in old if Path(entry["path"]) in out.keep]
    for path, content, _ in out.files:
        if path not in out.keep:
            entries.append({"path": str(path), "kind": "file", "sha256": hashlib.sha256(content.encode()).hexdigest()})
    entries += [{"path": str(path), "kind": "link", "target": target} for path, target in out.links]
    return entries


def new_directories(out: Plan, prefix: Path, known: list[dict[str, str]]) -> list[str]:
    made = {entry["path"] for entry in known}
    found = []
    for path in [prefix, *out.paths(), MANIFEST]:
        for parent in reversed(path.parents):
            if not parent.exists() and str(parent) not in made:
                made.add(str(parent))
                found.append(str(parent))
    return found


def _entry(entries: list[dict[str, str]], path: Path) -> dict[str, str] | None:
    return next((entry for entry in entries if entry["path"] == str(path)), None)


def _unchanged(entry: dict[str, str] | None) -> bool:
    """The config file is still as the installer wrote it (one of the contents an interrupted run may
    have left); any other path the manifest lists is the installer's whatever it holds now."""
    if entry is None:
        return False
    path = Path(entry["path"])
    if entry["kind"] == "file":
        hashes = entry["sha256"] if isinstance(entry["sha256"], list) else [entry["sha256"]]
        return path.is_file() and not path.is_symlink() and _sha(path) in hashes
    return True


def merged(old: list[dict[str, str]], new: list[dict[str, str]]) -> list[dict[str, str]]:
    """The manifest while an install runs: everything the old one listed and the new one will, a
    file's old and new hashes both (interrupted anywhere, a re-run or --uninstall still knows it all)."""
    by_path = {entry["path"]: dict(entry) for entry in old}
    for entry in new:
        before = by_path.get(entry["path"])
        if before and before["kind"] == entry["kind"] == "file":
            hashes = [*_hashes(before), *_hashes(entry)]
            entry = {**entry, "sha256": list(dict.fromkeys(hashes))}  # type: ignore[dict-item]
        by_path[entry["path"]] = entry
    dirs = [e for e in by_path.values() if e["kind"] == "dir"]
    rest = [e for e in by_path.values() if e["kind"] != "dir"]
    return dirs + sorted(rest, key=lambda e: e["kind"] != "tree")


def _hashes(entry: dict[str, str]) -> list[str]:
    value: object = entry["sha256"]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# --- acting: the manifest first, then the prefix, files and links, then the checks -------------


def install(out: Plan, prefix: Path) -> None:
    old = read_manifest()
    entries = manifest(out, prefix, old)
    write_manifest(merged(old, entries))  # before any change: an interrupted run can be re-run or uninstalled
    with tempfile.TemporaryDirectory(prefix="rollback-install.") as source:
        for name in PACKAGE_FILES:  # pip builds in the source tree: a copy, not the user's checkout
            copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
            copy(REPO / name, Path(source) / name)
        for command in out.commands[:2]:  # the prefix: a venv, then the package and its dependencies
            _command([source if arg == SOURCE else arg for arg in command])
    for path, content, mode in out.files:
        if path in out.keep:
            print(f"install: kept {path} (not written by this installer, or edited since)", file=sys.stderr)
        else:
            _write(path, content, mode)
    for path, link in out.links:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()  # ours (refused otherwise)
        path.symlink_to(link)
    owned = {entry["path"] for entry in entries}
    remove([e for e in old if e["path"] not in owned and e["kind"] in ("file", "link")])  # e.g. a wants link
    write_manifest(entries)  # done: exactly what this install owns
    for command in out.commands[2:]:
        _command(command, optional=True)
    for command in out.checks:
        _command(command)


def _write(path: Path, content: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = path.with_name(path.name + ".rollback-new")
    new.write_text(content, encoding="utf-8")
    new.chmod(mode)
    new.replace(path)


def _command(argv: list[str], *, optional: bool = False) -> None:
    if optional and not shutil.which(argv[0]):
        return
    print("install: " + " ".join(shlex.quote(arg) for arg in argv), file=sys.stderr)
    with subprocess.Popen(argv) as child:
        try:
            code = child.wait()
        except BaseException:  # interrupted: the child (pip writing into the prefix) stops with us
            child.terminate()
            child.wait()
            raise
    if code != 0 and not optional:
        raise Failed(f"{' '.join(argv)} exited {code}")


class Interrupted(Exception):
    """SIGTERM, SIGHUP or Ctrl-C: stopped midway (exit 1: running the installer again finishes)."""


def _interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def remove(entries: list[dict[str, str]]) -> tuple[list[str], list[dict[str, str]]]:
    """Remove what the entries name, newest first: (what was kept, edited since; what could not be
    removed)."""
    kept: list[str] = []
    failed: list[dict[str, str]] = []
    for entry in reversed(entries):
        path = Path(entry["path"])
        try:
            if entry["kind"] == "tree":
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
            elif entry["kind"] == "dir":
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
            elif path == CONFIG and path.exists() and not _unchanged(entry):
                kept.append(str(path))  # the user's settings, edited since: theirs now
            elif path.is_symlink() or path.is_file():
                path.unlink()  # ours, edited or not (a dracut conf naming a removed module would break dracut)
        except OSError as error:
            print(f"install: cannot remove {path}: {error}", file=sys.stderr)
            failed.insert(0, entry)
    return kept, failed


def uninstall(dry_run: bool) -> int:
    entries = read_manifest()
    if not entries:
        print(f"install: nothing to uninstall ({MANIFEST} does not exist)", file=sys.stderr)
        return 0
    if dry_run:
        for entry in reversed(entries):
            print(f"would remove {entry['kind']} {entry['path']} (if still as written)")
        print(f"would remove {MANIFEST}")
        return 0
    MANIFEST.unlink()  # first: the directories it sits in are in the manifest too
    kept, failed = remove(entries)
    if failed:  # what is left stays listed: --uninstall again finishes
        write_manifest([*(e for e in entries if e["kind"] == "dir"), *failed])
        return 1
    _command(["journalctl", "--update-catalog"], optional=True)
    for path in kept:
        print(f"install: kept {path}: edited since it was installed", file=sys.stderr)
    print("install: removed; rebuild the initramfs so the boot no longer runs rollback: sudo dracut --force")
    return 0


def show(out: Plan, prefix: Path) -> None:
    old = read_manifest()
    for directory in new_directories(out, prefix, [e for e in old if e["kind"] == "dir"]):
        print(f"would make {directory}/")
    for command in out.commands[:2]:
        print("would run  " + " ".join(command))
    for path, _, mode in out.files:
        print(
            f"would keep  {path} (not written by this installer)"
            if path in out.keep
            else f"would write {path} ({mode:o})"
        )
    for path, link in out.links:
        print(f"would link {path} -> {link}")
    print(f"would write {MANIFEST}")
    owned = {str(path) for path in [*out.paths(), *out.keep]}
    for entry in old:
        if entry["kind"] in ("file", "link") and entry["path"] not in owned:
            print(f"would remove {entry['path']} (an earlier install's)")
    for command in [*out.commands[2:], *out.checks]:
        print("would run  " + " ".join(command))


NEXT = """
rollback is installed. Next:
  1. Read /etc/rollback.toml (device = {device}); `rollback status` shows what the boot will replace.
  2. Failure policy ({policy}): boot-on boots yesterday's root when the rollback fails or refuses;
     stop-boot never mounts a dirty root (emergency mode instead). Change: scripts/install --policy ...
  3. Rebuild the initramfs, then reboot:  sudo dracut --force
  4. After the reboot: rollback status; journalctl -b -u 'rollback@*' -u 'rollback-early@*'
"""


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default="/opt/rollback", help="where the self-contained copy goes (absolute)")
    parser.add_argument("--device", help="the btrfs device (default: the running root's, as UUID=...)")
    parser.add_argument("--subvolume", help="the subvolume to replace (default: the running root's)")
    parser.add_argument("--unchecked", action="store_true", help="with --device: for another machine, not checked")
    parser.add_argument("--policy", choices=("boot-on", "stop-boot"), default="boot-on")
    parser.add_argument("--cleanup", choices=("boot", "after-boot"), help="where old roots are deleted (boot)")
    parser.add_argument("--dry-run", action="store_true", help="print every path and command, change nothing")
    parser.add_argument("--uninstall", action="store_true", help=f"remove what {MANIFEST} lists")
    args = parser.parse_args(argv)
    if args.unchecked and not args.device:
        parser.error("--unchecked needs --device")
    if not os.path.isabs(args.prefix) or os.path.normpath(args.prefix) in ("/", "/usr", "/opt", "/usr/local"):
        parser.error(f"--prefix {args.prefix}: an absolute path of its own (e.g. /opt/rollback)")
    args.prefix = os.path.normpath(args.prefix)
    for path in (MANIFEST.parent, BIN, MODULE, UNITS, CONFIG, DRACUT_CONF, CATALOG, WANTS):
        if args.prefix == str(path) or path.is_relative_to(args.prefix) or Path(args.prefix).is_relative_to(path):
            parser.error(f"--prefix {args.prefix} overlaps {path}, which the installer writes: choose another")
    try:
        device_path(args.device or "/")
    except ValueError as error:
        parser.error(f"--device {args.device} {error}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted)
    try:
        if args.uninstall:
            if os.geteuid() != 0 and not args.dry_run:
                raise Refused("run as root")
            return uninstall(args.dry_run)
        out = plan(args, observe(args))
        warn(out)
        if args.dry_run:
            show(out, Path(args.prefix))
            return 0
        install(out, Path(args.prefix))
    except Refused as error:
        print(f"install: refused: {error}", file=sys.stderr)
        return error.code
    except (Failed, OSError, Interrupted, KeyboardInterrupt) as error:
        what = "interrupted" if isinstance(error, Interrupted | KeyboardInterrupt) else "failed"
        print(f"install: {what}: {error or 'SIGINT'}; run it again to finish, or --uninstall", file=sys.stderr)
        return 1
    device = _read_config().get("device", "?")
    print(NEXT.format(device=json.dumps(device), policy=args.policy))
    warn(out)  # again, last: the blank must be made now, after installing
    return 0


def warn(out: Plan) -> None:
    for warning in out.warnings:
        print(f"install: WARNING: {warning}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
