"""The VM tier's session: initramfs variants built once, template images copied per test, boots with
their timings (the fixture is in tests/vm/conftest.py)."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import vm as harness
from tests.support.layout import populate
from tests.support.vm import Boot, Kernel, Variant

KEYFILE = "/etc/cryptroot.key"  # inside the initramfs
# the VM tier's userlands: the host's Debian 12, and Debian 13 from tests/support/trixie.py; a test
# runs on both with `@pytest.mark.parametrize("vm", PLATFORMS, indirect=True)`
PLATFORMS = ["debian12", "trixie"]


def variants(work: Path) -> dict[str, Variant]:
    return {
        "boot-on": Variant("boot-on"),
        "after-boot": Variant("after-boot", config='cleanup = "after-boot"'),
        "stop-boot": Variant("stop-boot", policy="stop-boot"),
        "baseline": Variant("baseline", modules=()),
        "luks": Variant(
            "luks",
            device="/dev/mapper/cryptroot",
            modules=("rollback", "crypt", "dm", "systemd-cryptsetup"),
            includes=((str(work / "cryptroot.key"), KEYFILE),),
        ),
    }


@dataclass
class Vm:
    kernel: Kernel
    work: Path
    platform: str = "debian12"  # the host's own userland; "trixie": tests/support/trixie.py
    builder: Callable[[Variant], Path] | None = None  # another platform's initramfs build
    initramfs: dict[str, Path] = field(default_factory=dict)
    templates: dict[str, Path] = field(default_factory=dict)
    timings: list[dict[str, object]] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    boots: list[Boot] = field(default_factory=list)  # of the running test, kept if it fails
    retries: list[dict[str, object]] = field(default_factory=list)  # boots repeated (boot_initramfs)

    @property
    def keyfile(self) -> Path:
        key = self.work / "cryptroot.key"
        if not key.exists():
            key.write_bytes(os.urandom(64))
        return key

    def named(self, boot: str) -> str:
        """A boot's name (its artifacts' directory), with the platform unless it is the host's."""
        return boot if self.platform == "debian12" else f"{self.platform}-{boot}"

    def image(self, layout: str, dest: Path, *, encrypted: bool = False) -> Path:
        """A fresh copy of a template image (built once per session); LUKS2 when `encrypted`."""
        key = f"{layout}-luks" if encrypted else layout
        if key not in self.templates:
            spare = harness.LUKS_SPARE_MIB if encrypted else 0
            template = harness.new_image(self.work / f"template-{key}.img", spare_mib=spare)
            with harness.attached(template, read_only=False) as top:
                LAYOUTS[layout](top)
            if encrypted:
                harness.encrypt(template, self.keyfile)
            self.templates[key] = template
        return harness.copy_image(self.templates[key], dest)

    def build(self, variant: str) -> Path:
        """The initramfs of a variant, built once per session."""
        if variant not in self.initramfs:
            self.keyfile  # noqa: B018 - the luks variant includes it
            chosen = variants(self.work)[variant]
            if self.builder is not None:
                self.initramfs[variant] = self.builder(chosen)
            else:
                self.initramfs[variant] = harness.build_initramfs(self.kernel, chosen, self.work, sys.executable)
        return self.initramfs[variant]

    def cut_power(self, variant: str, image: Path, delay: float, *, name: str) -> Boot:
        """Boot and pull the plug `delay` s after the rollback unit starts."""
        marker = "Starting rollback@"
        name = self.named(name)
        result = harness.boot(self.kernel, self.build(variant), image, "", name=name, cut_power=(marker, delay))
        self.timings.append({"boot": name, "seconds": round(result.seconds, 2), "power_cut_after_s": delay})
        return result

    def boot(
        self,
        variant: str,
        image: Path,
        append: str = "",
        *,
        name: str,
        root: str = "/dev/vda",
        extra_disks: tuple[Path, ...] = (),
    ) -> Boot:
        """Boot once (extra disks follow the facts disk: /dev/vdc, ...)."""
        return self.boot_initramfs(self.build(variant), image, append, name=name, root=root, extra_disks=extra_disks)

    def boot_initramfs(
        self,
        initramfs: Path,
        image: Path,
        append: str = "",
        *,
        name: str,
        root: str = "/dev/vda",
        extra_disks: tuple[Path, ...] = (),
    ) -> Boot:
        """Boot a given initramfs once; a boot that times out or leaves no facts fails the test.

        One exception, retried once: a guest that died on its own (no facts, no time-out) having
        written nothing to any disk. Nothing of the scenario ran (the rollback writes as soon as it
        mounts the device), so the same boot is repeated, with a warning that carries the first
        console; a failure that repeats still fails the test."""
        name = self.named(name)
        disks = (image, *extra_disks)
        stamps = [disk.stat().st_mtime_ns for disk in disks]
        result = harness.boot(self.kernel, initramfs, image, append, name=name, root=root, extra_disks=extra_disks)
        untouched = [disk.stat().st_mtime_ns for disk in disks] == stamps
        if untouched and not result.timed_out and not result.facts:
            first = harness.keep_artifacts(result) / "serial.first.log"
            (first.parent / "serial.log").replace(first)
            warnings.warn(
                f"boot {name}: the guest stopped (qemu exit {result.exit_status}) before writing to any disk; "
                f"booted again (first console in {first}):\n{result.console_tail()}",
                stacklevel=2,
            )
            self.retries.append({"boot": name, "exit_status": result.exit_status, "console": result.console_tail()})
            result = harness.boot(self.kernel, initramfs, image, append, name=name, root=root, extra_disks=extra_disks)
        if result.timed_out or not result.facts:
            where = harness.keep_artifacts(result)
            what = "timed out" if result.timed_out else f"left no facts (qemu exit {result.exit_status})"
            # the artifacts may not outlive the run (a CI checkout): the console's end goes in the report
            pytest.fail(f"boot {name} {what}; serial log in {where}; its last lines:\n{result.console_tail()}")
        self.boots.append(result)
        self.timings.append({"boot": name, "seconds": round(result.seconds, 2), "unit_seconds": unit_seconds(result)})
        return result


def unit_seconds(boot: Boot) -> float | None:
    """The rollback unit's own duration, from systemd's monotonic timestamps."""
    for name in boot.units("rollback@"):
        unit = boot.unit(name)
        start, end = unit.get("ExecMainStartTimestampMonotonic"), unit.get("ExecMainExitTimestampMonotonic")
        if start and end and int(end) >= int(start) > 0:
            return round((int(end) - int(start)) / 1e6, 3)
    return None


def _standard(top: Path) -> None:
    populate(top, blank=True)
    (top / "old").mkdir()


def _no_root(top: Path) -> None:
    import btrfsutil

    for name in ("persist", "nix"):
        btrfsutil.create_subvolume(str(top / name))
    (top / "persist" / "kept").write_text("kept\n")


def _protected_inside(top: Path) -> None:
    import btrfsutil

    populate(top)
    btrfsutil.create_subvolume(str(top / "root" / "home"))  # made by hand on the running system
    (top / "root" / "home" / "precious").write_text("precious\n")


def _heavy(top: Path) -> None:
    """A root with a lot to delete: 400 nested subvolumes (two levels) and 20,000 files."""
    import btrfsutil

    populate(top)
    for number in range(400):
        parent = top / "root" / "srv" / (f"n{number}" if number % 2 == 0 else f"n{number - 1}/n{number}")
        parent.parent.mkdir(parents=True, exist_ok=True)
        btrfsutil.create_subvolume(str(parent))
        for file in range(50):
            (parent / f"f{file}").write_text("x" * 100)


LAYOUTS: dict[str, Callable[[Path], None]] = {
    "standard": _standard,
    "heavy": _heavy,
    "no-root": _no_root,
    "protected-inside": _protected_inside,
}
