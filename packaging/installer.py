"""scripts/install: put rollback on a dracut machine's boot, or take it off again (--uninstall).

Same shape as the tool: observe the machine, plan every path and command (every refusal before the
first write), then act; --dry-run prints the plan. Standard library only: it runs on the
distribution's python3 before anything of ours is installed. What it writes is listed in a manifest
(/var/lib/rollback/install-manifest, JSON lines, written before the first change), and --uninstall
removes exactly that: a file only if it is still what was written (an edited config file stays).

Exit codes: 0 done; 1 a command failed midway (run it again: it rewrites the same files); 2 usage;
3 refused, nothing written (not root, no dracut or no systemd in its initrd, the device is not
btrfs, Python older than 3.11, a prefix that is not ours).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rollback.devspec import device_path, unit_path_escape  # noqa: E402  (pure, standard library only)

MANIFEST = Path("/var/lib/rollback/install-manifest")
BIN = Path("/usr/local/bin/rollback")
DRACUT_MODULES = Path("/usr/lib/dracut/modules.d")
MODULE = DRACUT_MODULES / "90rollback"
DRACUT_CONF = Path("/etc/dracut.conf.d/90-rollback.conf")
CATALOG = Path("/usr/lib/systemd/catalog/rollback.catalog")
UNITS = Path("/usr/local/lib/systemd/system")
WANTS = Path("/etc/systemd/system/multi-user.target.wants")
CONFIG = Path("/etc/rollback.toml")
MODULE_FILES = ("module-setup.sh", "python_closure.py")
INITRD_UNITS = ("rollback@.service", "rollback-early@.service", "rollback-stop-boot.conf", "rollback-trigger")


class Refused(Exception):
    """The machine or the request is unsupported: nothing was written (exit 3; 2 for usage)."""

    def __init__(self, message: str, code: int = 3) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Machine:
    """What the plan depends on, read once."""

    euid: int
    python: tuple[int, int]
    dracut: str | None
    systemd_modules: bool  # dracut's systemd and systemd-initrd modules
    root: dict[str, str] | None  # findmnt's SOURCE, FSTYPE, UUID, FSROOT of /
    node: str | None  # the --device's node here (UUID= and the like found by blkid, without udev)
    fstype: str | None  # of the --device, if it exists here
    prefix_ours: bool | None  # None: no prefix yet (or empty); True: our manifest lists it


@dataclass(frozen=True)
class Target:
    device: str
    subvolume: str
    node: str | None  # where to check it here (None: --unchecked)


@dataclass
class Plan:
    files: list[tuple[Path, str, int]] = field(default_factory=list)  # path, content, mode
    links: list[tuple[Path, str]] = field(default_factory=list)
    keep_if_present: set[Path] = field(default_factory=set)
    commands: list[list[str]] = field(default_factory=list)  # after the files
    checks: list[list[str]] = field(default_factory=list)  # after the commands: must exit 0

    def paths(self) -> list[Path]:
        return [path for path, _, _ in self.files] + [path for path, _ in self.links]


def observe(args: argparse.Namespace) -> Machine:
    dracut = shutil.which("dracut")
    modules = [name[2:] for name in os.listdir(DRACUT_MODULES)] if DRACUT_MODULES.is_dir() else []
    root = None
    found = _run(["findmnt", "-n", "-J", "-o", "SOURCE,FSTYPE,UUID,FSROOT", "/"])
    if found:
        root = {k.upper(): v or "" for k, v in json.loads(found)["filesystems"][0].items()}
    node = fstype = None
    if args.device and not args.unchecked:
        node = resolve(args.device)
        fstype = _run(["blkid", "-p", "-o", "value", "-s", "TYPE", node]) if node else None
    prefix = Path(args.prefix)
    listed = {entry["path"] for entry in read_manifest() if entry["kind"] == "tree"}
    ours = str(prefix) in listed if prefix.exists() and any(prefix.iterdir()) else None
    return Machine(
        os.geteuid(),
        sys.version_info[:2],
        dracut,
        "systemd" in modules and "systemd-initrd" in modules,
        root,
        node,
        fstype.strip() if fstype else None,
        ours,
    )


def resolve(device: str) -> str | None:
    """The device node a --device names on this machine, or None."""
    if device.startswith("/"):
        return device if os.path.exists(device) else None
    found = _run(["blkid", "-o", "device", "-t", device])  # UUID=..., LABEL=...: read from the disks
    return found.splitlines()[0] if found else None


def _run(argv: list[str]) -> str | None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return result.stdout if result.returncode == 0 else None


def target(args: argparse.Namespace, machine: Machine) -> Target:
    """The device and subvolume to write into the config: --device, or the running root's."""
    if args.device:
        if not args.unchecked and machine.node is None:
            raise Refused(f"--device {args.device}: no such device here (an image for another machine: --unchecked)")
        if not args.unchecked and machine.fstype != "btrfs":
            raise Refused(f"--device {args.device} holds {machine.fstype or 'no filesystem'}, not btrfs")
        return Target(args.device, args.subvolume or "root", machine.node)
    root = machine.root
    if root is None or root["FSTYPE"] != "btrfs":
        kind = root["FSTYPE"] if root else "unknown"
        raise Refused(f"the root filesystem is {kind}, not btrfs (for another device: --device DEV)")
    subvolume = root["FSROOT"].strip("/")
    if not subvolume:
        raise Refused("the root is btrfs's top level, not a subvolume: rollback replaces a subvolume")
    node = root["SOURCE"].partition("[")[0]  # /dev/vda2[/root]: the subvolume follows the node
    return Target(f"UUID={root['UUID']}", args.subvolume or subvolume, node)


def check(machine: Machine, args: argparse.Namespace) -> None:
    if machine.euid != 0:
        raise Refused("run as root (it writes to /usr, /etc and the prefix)")
    if machine.python < (3, 11):
        raise Refused(f"Python {machine.python[0]}.{machine.python[1]} is older than 3.11 (tomllib)")
    if machine.dracut is None:
        raise Refused("no dracut: rollback runs in a dracut-built systemd initramfs (NixOS: docs/nixos.md)")
    if not machine.systemd_modules:
        raise Refused(f"dracut has no systemd/systemd-initrd modules in {DRACUT_MODULES}: no systemd in the initrd")
    if machine.prefix_ours is False:
        raise Refused(f"{args.prefix} exists and was not made by this installer (not in {MANIFEST}): choose --prefix")


def plan(args: argparse.Namespace, machine: Machine) -> Plan:
    check(machine, args)
    chosen = target(args, machine)
    prefix = Path(args.prefix)
    out = Plan()
    python = prefix / "bin" / "python3"
    out.commands += [
        [sys.executable, "-m", "venv", "--clear", str(prefix)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir", str(REPO)],
    ]
    out.links.append((BIN, str(prefix / "bin" / "rollback")))
    for name in MODULE_FILES:
        out.files.append((MODULE / name, _read(REPO / "packaging/dracut/90rollback" / name), 0o755))
    for name in (*INITRD_UNITS, "rollback.catalog"):
        mode = 0o755 if name == "rollback-trigger" else 0o644
        out.files.append((MODULE / "units" / name, _read(REPO / "units" / name), mode))
    out.files.append((CATALOG, _read(REPO / "units/rollback.catalog"), 0o644))
    cleanup = _read(REPO / "units/rollback-cleanup@.service").replace("/usr/bin/rollback", str(BIN))
    out.files.append((UNITS / "rollback-cleanup@.service", cleanup, 0o644))
    out.files.append((DRACUT_CONF, dracut_conf(python, args.policy), 0o644))
    out.files.append((CONFIG, config_text(chosen, args.cleanup), 0o644))
    out.keep_if_present.add(CONFIG)
    if args.cleanup == "after-boot":
        unit = f"rollback-cleanup@{unit_path_escape(device_path(chosen.device))}.service"
        out.links.append((WANTS / unit, str(UNITS / "rollback-cleanup@.service")))
    out.commands.append(["journalctl", "--update-catalog"])
    rollback = [str(BIN), "--config", str(CONFIG), "--kernel-cmdline", "/dev/null"]
    out.checks.append([*rollback, "config"])
    if chosen.node:  # read through its own private mount; by node: this machine may have no udev links
        out.checks.append([*rollback, "status", "--device", chosen.node])
    return out


def dracut_conf(python: Path, policy: str) -> str:
    return (
        "# Written by rollback's scripts/install (removed by scripts/install --uninstall).\n"
        'add_dracutmodules+=" rollback "\n'
        f'rollback_python="{python}"\n'
        f"# boot-on: a failed or refused rollback boots yesterday's root; stop-boot: emergency mode\n"
        f'rollback_policy="{policy}"\n'
    )


def config_text(chosen: Target, cleanup: str) -> str:
    return f"""# rollback's settings (README: Settings). Written by scripts/install; it keeps this file if you edit it.
# Changes reach the boot when the initramfs is rebuilt: sudo dracut --force

# The btrfs filesystem whose subvolume is replaced at every boot.
device = "{chosen.device}"
subvolume = "{chosen.subvolume}"

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
cleanup = "{cleanup}"
"""


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- acting: the manifest first, then the commands, files and links, then the checks ----------


def read_manifest() -> list[dict[str, str]]:
    if not MANIFEST.is_file():
        return []
    return [json.loads(line) for line in MANIFEST.read_text(encoding="utf-8").splitlines() if line]


def kept_files(out: Plan, old: list[dict[str, str]]) -> set[Path]:
    """Files of keep_if_present that exist and are not (or no longer) what an install wrote."""
    previous = {entry["path"]: entry for entry in old}
    return {p for p in out.keep_if_present if p.exists() and not _unchanged(previous.get(str(p)))}


def manifest(out: Plan, prefix: Path, old: list[dict[str, str]], kept: set[Path]) -> list[dict[str, str]]:
    """What this install owns: the directories it made (before, and now in creation order), the
    prefix, every file it writes (its content's hash) and link; a kept file keeps its old entry
    (ours but edited: uninstall keeps it) or has none (never ours)."""
    entries = [entry for entry in old if entry["kind"] == "dir"]
    made = {entry["path"] for entry in entries}
    for path in [prefix, *out.paths(), MANIFEST]:
        for parent in reversed(path.parents):
            if not parent.exists() and str(parent) not in made:
                made.add(str(parent))
                entries.append({"path": str(parent), "kind": "dir"})
    entries.append({"path": str(prefix), "kind": "tree"})
    entries += [entry for entry in old if Path(entry["path"]) in kept]
    for path, content, _ in out.files:
        if path not in kept:
            entries.append({"path": str(path), "kind": "file", "sha256": hashlib.sha256(content.encode()).hexdigest()})
    entries += [{"path": str(path), "kind": "link", "target": target} for path, target in out.links]
    return entries


def _unchanged(entry: dict[str, str] | None) -> bool:
    """Still what the installer wrote (so it may be rewritten or removed)."""
    if entry is None:
        return False
    path = Path(entry["path"])
    if entry["kind"] == "file":
        return path.is_file() and not path.is_symlink() and _sha(path) == entry["sha256"]
    if entry["kind"] == "link":
        return path.is_symlink() and os.readlink(path) == entry["target"]
    return True


def install(out: Plan, prefix: Path) -> None:
    old = read_manifest()
    kept = kept_files(out, old)
    entries = manifest(out, prefix, old, kept)
    _write(MANIFEST, "".join(json.dumps(entry) + "\n" for entry in entries), 0o644)  # before any change
    for command in out.commands[:2]:  # the prefix: a venv, then the package and its dependencies
        _command(command)
    for path, content, mode in out.files:
        if path in kept:
            print(f"install: kept {path} (not written by this installer, or edited since): check it", file=sys.stderr)
        else:
            _write(path, content, mode)
    for path, link in out.links:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(link)
    owned = {entry["path"] for entry in entries}
    remove([e for e in old if e["path"] not in owned and e["kind"] in ("file", "link")])  # e.g. a wants link
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


class Failed(Exception):
    """A command failed after changes began (exit 1: running the installer again finishes)."""


def _command(argv: list[str], *, optional: bool = False) -> None:
    if optional and not shutil.which(argv[0]):
        return
    result = subprocess.run(argv, check=False)
    if result.returncode != 0 and not optional:
        raise Failed(f"{' '.join(argv)} exited {result.returncode}")


def remove(entries: list[dict[str, str]]) -> list[str]:
    """Remove what the entries name, newest first; returns what was kept (edited since)."""
    kept = []
    for entry in reversed(entries):
        path = Path(entry["path"])
        if entry["kind"] == "tree":
            shutil.rmtree(path, ignore_errors=True)
        elif entry["kind"] == "dir":
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        elif _unchanged(entry):
            path.unlink()
        elif path.exists() or path.is_symlink():
            kept.append(str(path))
    return kept


def uninstall(dry_run: bool) -> int:
    entries = read_manifest()
    if not entries:
        print(f"install: nothing to uninstall ({MANIFEST} does not exist)", file=sys.stderr)
        return 0
    if dry_run:
        for entry in reversed(entries):
            print(f"would remove {entry['kind']} {entry['path']}")
        return 0
    MANIFEST.unlink()  # first: the directories it sits in are in the manifest too
    kept = remove(entries)
    _command(["journalctl", "--update-catalog"], optional=True)
    for path in kept:
        print(f"install: kept {path}: edited since it was installed", file=sys.stderr)
    print("install: removed; rebuild the initramfs so the boot no longer runs rollback: sudo dracut --force")
    return 0


def show(out: Plan) -> None:
    for command in out.commands[:2]:
        print("would run  " + " ".join(command))
    for path, _, mode in out.files:
        note = " (kept if it exists and is not ours)" if path in out.keep_if_present else ""
        print(f"would write {path} ({mode:o}){note}")
    for path, link in out.links:
        print(f"would link {path} -> {link}")
    print(f"would write {MANIFEST}")
    for command in [*out.commands[2:], *out.checks]:
        print("would run  " + " ".join(command))


NEXT = """
rollback is installed. Next:
  1. Read /etc/rollback.toml (device = {device}); `rollback status` shows what the boot will replace.
  2. Failure policy ({policy}): boot-on boots yesterday's root when the rollback fails or refuses;
     stop-boot never mounts a dirty root (emergency mode instead). Change: scripts/install --policy ...
  3. Rebuild the initramfs, then reboot:  sudo dracut --force
  4. After the reboot: rollback status; journalctl -b -u 'rollback@*'
"""


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default="/opt/rollback", help="where the self-contained copy goes")
    parser.add_argument("--device", help="the btrfs device (default: the running root's, as UUID=...)")
    parser.add_argument("--subvolume", help="the subvolume to replace (default: the running root's)")
    parser.add_argument("--unchecked", action="store_true", help="with --device: for another machine, not checked")
    parser.add_argument("--policy", choices=("boot-on", "stop-boot"), default="boot-on")
    parser.add_argument("--cleanup", choices=("boot", "after-boot"), default="boot")
    parser.add_argument("--dry-run", action="store_true", help="print every path and command, change nothing")
    parser.add_argument("--uninstall", action="store_true", help=f"remove what {MANIFEST} lists")
    args = parser.parse_args(argv)
    if args.unchecked and not args.device:
        parser.error("--unchecked needs --device")
    try:
        device_path(args.device or "/")
    except ValueError as error:
        parser.error(f"--device {args.device} {error}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.uninstall:
            if os.geteuid() != 0 and not args.dry_run:
                raise Refused("run as root")
            return uninstall(args.dry_run)
        machine = observe(args)
        out = plan(args, machine)
        if args.dry_run:
            show(out)
            return 0
        install(out, Path(args.prefix))
    except Refused as error:
        print(f"install: refused: {error}", file=sys.stderr)
        return error.code
    except Failed as error:
        print(f"install: failed: {error}; run it again to finish, or --uninstall", file=sys.stderr)
        return 1
    device = next(line for line in CONFIG.read_text().splitlines() if line.startswith("device"))
    print(NEXT.format(device=device.partition("=")[2].strip(), policy=args.policy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
