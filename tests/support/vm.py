"""Build initramfs images with dracut, boot them under qemu, and read back what the guest collected.

Shared by the VM test tier and the benchmarks. Everything lives under a work directory; the host
kernel (Debian's linux-image-cloud-amd64) is only read.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rollback.events import EVENTS
from tests.support.layout import State, outside_root, sh, snapshot_state

REPO = Path(__file__).parents[2]
ARTIFACTS = Path(os.environ.get("ROLLBACK_VM_ARTIFACTS", REPO / "test-artifacts" / "vm"))
DEVICE = "/dev/vda"  # the guest's first disk: the image under test
ACCEL = os.environ.get("ROLLBACK_VM_ACCEL", "tcg,thread=multi")  # KVM hangs on these hosts
# what a dracut systemd initramfs has on a real system (dracut-systemd brings emergency.service)
BASE_MODULES = (
    "base",
    "systemd",
    "systemd-initrd",
    "dracut-systemd",
    "systemd-journald",
    "systemd-udevd",
    "udev-rules",
    "btrfs",
    "qemu",
    "kernel-modules",
    "rollback-test",
)
REQUIRED_TOOLS = ("dracut", "qemu-system-x86_64", "mkfs.btrfs", "losetup", "zstd", "cryptsetup")


@dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: Path


def find_kernel() -> Kernel | None:
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"), reverse=True):
        version = vmlinuz.removeprefix("/boot/vmlinuz-")
        if Path("/lib/modules", version).is_dir():
            return Kernel(version, Path(vmlinuz))
    return None


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]


@dataclass(frozen=True)
class Variant:
    """One initramfs: which device the rollback waits for, and what a failure does."""

    name: str
    policy: str = "boot-on"
    device: str = "/dev/vda"
    modules: tuple[str, ...] = ("rollback",)
    config: str = ""  # extra lines for /etc/rollback.toml
    includes: tuple[tuple[str, str], ...] = ()  # (host file, path in the initramfs)


def present(modules: tuple[str, ...], base: Path) -> tuple[str, ...]:
    """The modules this dracut has: a variant names what any platform's dracut may need (dracut-ng
    split systemd-cryptsetup out of crypt; dracut 059 has no such module), as a default build would
    pick them."""
    have = {entry.name[2:] for entry in (base / "modules.d").iterdir()}
    return tuple(module for module in modules if module in have)


def dracut_base(work: Path) -> Path:
    """A private copy of dracut's module tree with our modules linked in (nothing written to /usr)."""
    base = work / "dracut"
    if not base.exists():
        shutil.copytree("/usr/lib/dracut", base, symlinks=True)
        (base / "modules.d" / "90rollback").symlink_to(REPO / "packaging" / "dracut" / "90rollback")
        (base / "modules.d" / "99rollback-test").symlink_to(REPO / "tests" / "vm" / "guest" / "99rollback-test")
        (base / "modules.d" / "90rollback-baseline").symlink_to(REPO / "bench" / "dracut" / "90rollback-baseline")
    return base


def build_initramfs(kernel: Kernel, variant: Variant, work: Path, python: str) -> Path:
    out = work / f"initramfs-{variant.name}.img"
    config = work / f"rollback-{variant.name}.toml"
    config.write_text(f'device = "{variant.device}"\n{variant.config}')
    (work / "dracut.conf.d").mkdir(exist_ok=True)
    env = {
        "dracutbasedir": str(dracut_base(work)),
        "rollback_python": python,
        "rollback_config": str(config),
        "rollback_policy": variant.policy,
    }
    modules = present((*BASE_MODULES, *variant.modules), dracut_base(work))
    return _dracut(kernel, out, work, env, modules, work / "dracut.conf.d", variant.includes)


def build_installed_initramfs(kernel: Kernel, work: Path) -> Path:
    """As `dracut --force` after scripts/install: the installed module and the machine's dracut
    configuration (which adds it), plus only the test module that collects the guest's facts."""
    base = work / "dracut-installed"
    if not base.exists():
        shutil.copytree("/usr/lib/dracut", base, symlinks=True)
        (base / "modules.d" / "99rollback-test").symlink_to(REPO / "tests" / "vm" / "guest" / "99rollback-test")
    out = work / "initramfs-installed.img"
    return _dracut(kernel, out, work, {"dracutbasedir": str(base)}, BASE_MODULES, Path("/etc/dracut.conf.d"), ())


def dracut_argv(
    kernel: Kernel,
    out: str,
    modules: tuple[str, ...],
    confdir: str,
    includes: tuple[tuple[str, str], ...],
    *,
    tmpdir: str | None = None,
) -> list[str]:
    """The dracut command line of every VM-tier initramfs, on any platform: a generic (not host-only)
    systemd initramfs of exactly `modules`, no configuration but `confdir`, the virtio and btrfs
    drivers; `includes` as (file, path in the initramfs)."""
    return [
        "dracut",
        "--force",
        "--no-hostonly",
        "--no-early-microcode",
        "--kver",
        kernel.version,
        "--modules",
        " ".join(modules),
        "--conf",
        "/dev/null",
        "--confdir",
        confdir,
        *(["--tmpdir", tmpdir] if tmpdir else []),
        "--zstd",
        "--add-drivers",
        "virtio_blk virtio_pci btrfs",
        *(arg for source, dest in includes for arg in ("--include", source, dest)),
        out,
    ]


def _dracut(
    kernel: Kernel,
    out: Path,
    work: Path,
    env: dict[str, str],
    modules: tuple[str, ...],
    confdir: Path,
    includes: tuple[tuple[str, str], ...],
) -> Path:
    argv = dracut_argv(kernel, str(out), modules, str(confdir), includes, tmpdir=str(work))
    result = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
    if result.returncode != 0 or not out.exists():
        raise RuntimeError(f"dracut failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return out


@dataclass
class Boot:
    name: str
    seconds: float
    facts: dict[str, bytes]
    serial: str
    timed_out: bool
    exit_status: int | None = None  # qemu's: 0 when the guest powered off or reset (-no-reboot)

    @property
    def stage(self) -> str:
        return self.facts.get("stage", b"").decode().strip()

    def console_tail(self, lines: int = 60) -> str:
        """The serial console's last lines without systemd's colours (for a failure's report)."""
        return "\n".join(_ANSI.sub("", self.serial).splitlines()[-lines:])

    def journal(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.facts.get("journal.json", b"").decode().splitlines() if line]

    def unit(self, name: str) -> dict[str, str]:
        text = self.facts.get(f"unit-{name}.txt", b"").decode()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def units(self, prefix: str) -> list[str]:
        return sorted(n[5:-4] for n in self.facts if n.startswith(f"unit-{prefix}") and n.endswith(".txt"))


def boot(
    kernel: Kernel,
    initramfs: Path,
    disk: Path,
    append: str,
    *,
    name: str,
    root: str = "/dev/vda",
    timeout: float = 240,
    cut_power: tuple[str, float] | None = None,
    extra_disks: tuple[Path, ...] = (),
) -> Boot:
    """Boot once; the guest writes its facts to a second disk and powers off.

    cut_power=(marker, delay): kill qemu `delay` seconds after `marker` appears on the console.
    """
    run = disk.parent / f"boot-{name}"
    run.mkdir(exist_ok=True)
    facts_disk = run / "facts.img"
    serial = ARTIFACTS / name / "serial.log"  # written live: `tail -f` it to watch the console
    serial.parent.mkdir(parents=True, exist_ok=True)
    serial.unlink(missing_ok=True)  # a stale log would fool the power-cut watcher
    with facts_disk.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    cmdline = f"console=ttyS0 root={root} rootfstype=btrfs rootflags=subvol=root rw panic=-1 {append}".strip()
    argv = [
        "qemu-system-x86_64",
        "-accel",
        ACCEL,
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "1024",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{serial}",
        "-kernel",
        str(kernel.vmlinuz),
        "-initrd",
        str(initramfs),
        "-append",
        cmdline,
        "-drive",
        f"file={disk},format=raw,if=virtio,cache=unsafe",
        "-drive",
        f"file={facts_disk},format=raw,if=virtio,cache=unsafe",
        *(arg for extra in extra_disks for arg in ("-drive", f"file={extra},format=raw,if=virtio,cache=unsafe")),
    ]
    began = time.monotonic()
    timed_out = False
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as qemu:
        try:
            if cut_power:
                _cut_after(qemu, serial, *cut_power, deadline=began + timeout)
            qemu.wait(timeout=max(1.0, timeout - (time.monotonic() - began)))
        except subprocess.TimeoutExpired:
            timed_out = True
            qemu.kill()
    seconds = time.monotonic() - began
    console = serial.read_text(errors="replace")
    return Boot(name, seconds, _read_facts(facts_disk), console, timed_out, None if timed_out else qemu.returncode)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # systemd's colours on the console


def _cut_after(qemu: subprocess.Popen[bytes], serial: Path, marker: str, delay: float, *, deadline: float) -> None:
    """Kill qemu (a power cut: nothing flushed) `delay` s after `marker` shows on the serial console."""
    while qemu.poll() is None:
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired("qemu", 0)
        console = _ANSI.sub("", serial.read_text(errors="replace")) if serial.exists() else ""
        if marker in console:
            time.sleep(delay)
            qemu.kill()
            return
        time.sleep(0.05)


def _read_facts(facts_disk: Path) -> dict[str, bytes]:
    data = facts_disk.read_bytes()
    if not data.strip(b"\0"):
        return {}
    facts: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            handle = archive.extractfile(member)
            if handle is not None:
                facts[member.name.removeprefix("./")] = handle.read()
    return facts


def keep_artifacts(boot_: Boot) -> Path:
    """Next to the serial log, keep what the guest collected (for a failed boot)."""
    where = ARTIFACTS / boot_.name
    where.mkdir(parents=True, exist_ok=True)
    for name, content in boot_.facts.items():
        (where / name.replace("/", "_")).write_bytes(content)
    return where


@contextmanager
def loop(image: Path, *, read_only: bool = False) -> Iterator[str]:
    """The image on a loop device, detached afterwards."""
    device = sh("losetup", "-f", "--show", *(["-r"] if read_only else []), str(image))
    try:
        yield device
    finally:
        sh("losetup", "-d", device)


@contextmanager
def attached(image: Path, *, read_only: bool) -> Iterator[Path]:
    """The image's top level (subvolid=5) mounted on the host, then detached again."""
    mnt = image.parent / f"mnt-{image.stem}"
    mnt.mkdir(exist_ok=True)
    with loop(image, read_only=read_only) as device:
        options = "subvolid=5,ro,rescue=nologreplay" if read_only else "subvolid=5"
        sh("mount", "-o", options, device, str(mnt))
        try:
            yield mnt
        finally:
            sh("umount", str(mnt))


def image_state(image: Path) -> State:
    with attached(image, read_only=True) as top:
        return snapshot_state(top)


def new_image(path: Path, size_mib: int = 512, *, spare_mib: int = 0) -> Path:
    """A btrfs image; `spare_mib` at the end stay unused (room for a LUKS header, see encrypt)."""
    with path.open("wb") as handle:
        handle.truncate(size_mib * 1024 * 1024)
    sh("mkfs.btrfs", "-q", "-b", str((size_mib - spare_mib) * 1024 * 1024), str(path))
    return path


LUKS_SPARE_MIB = 32


def encrypt(image: Path, keyfile: Path) -> str:
    """Turn a btrfs image into LUKS2 in place, offline (no dm-crypt on the host); returns its UUID."""
    sh(
        "cryptsetup",
        "reencrypt",
        "--encrypt",
        "--type",
        "luks2",
        "--reduce-device-size",
        f"{LUKS_SPARE_MIB}M",
        "--force-offline-reencrypt",
        "--key-file",
        str(keyfile),
        "--batch-mode",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        str(image),
    )
    return sh("cryptsetup", "luksUUID", str(image))


def copy_image(template: Path, dest: Path) -> Path:
    sh("cp", "--sparse=always", str(template), str(dest))
    return dest


@dataclass
class Timings:
    """Per-boot figures for the closing note and the benchmark."""

    rows: list[tuple[str, float, float | None]] = field(default_factory=list)

    def add(self, boot_: Boot, unit_seconds: float | None) -> None:
        self.rows.append((boot_.name, boot_.seconds, unit_seconds))


# --- what a boot's journal and units say, as the scenarios check it ---------------------------


def events(boot: Boot, kind: str) -> list[dict[str, object]]:
    wanted = EVENTS[kind].message_id
    return [e for e in boot.journal() if e.get("MESSAGE_ID") == wanted]


def rollback_unit(boot: Boot) -> dict[str, str]:
    names = boot.units("rollback@")
    assert names, "the rollback unit never loaded"
    return boot.unit(names[0])


def assert_rolled_back(boot: Boot, before: State, after: State, *, deleted: int, device: str = DEVICE) -> None:
    """The oracle of a normal boot: used by the scenarios and by the negative check."""
    assert boot.stage == "boot" and boot.facts.get("sysroot") == b"mounted\n"
    finished = events(boot, "finished")
    assert len(finished) == 1, "no rollback finished entry in the journal"
    entry = finished[0]
    assert entry["ROLLBACK_DEVICE"] == device and entry["ROLLBACK_SUBVOLUME"] == "root"
    assert entry["ROLLBACK_DELETED"] == str(deleted) and entry["PRIORITY"] == "6"
    assert float(str(entry["ROLLBACK_DURATION_MS"])) > 0
    assert len(events(boot, "started")) == 1 and events(boot, "step")
    assert_ran_before_sysroot(boot)
    assert outside_root(after) == outside_root(before)
    assert "root/tmp/cruft" not in after.files


def assert_ran_before_sysroot(boot: Boot) -> None:
    finished = int(rollback_unit(boot)["ActiveEnterTimestampMonotonic"])
    sysroot_started = int(boot.unit("sysroot.mount")["InactiveExitTimestampMonotonic"])
    assert 0 < finished <= sysroot_started, (finished, sysroot_started)
