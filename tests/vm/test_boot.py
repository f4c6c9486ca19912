"""Boot a dracut initramfs with the rollback under qemu; assert from inside (facts) and outside (the image)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import vm as harness
from tests.support.cli import rollback_argv
from tests.support.layout import State, outside_root
from tests.support.swap import read_signature, write_signature
from tests.support.vm import Boot, assert_ran_before_sysroot, assert_rolled_back, events, rollback_unit
from tests.support.vm_session import PLATFORMS, Vm

pytestmark = pytest.mark.vm
# the scenarios the Debian 13 (trixie) userland must pass too: its systemd, dracut and Python
ON_EVERY_PLATFORM = pytest.mark.parametrize("vm", PLATFORMS, indirect=True)


def boot_once(
    vm: Vm, tmp_path: Path, layout: str, append: str = "", *, name: str, variant: str = "boot-on"
) -> tuple[State, Boot, State]:
    """A fresh image of `layout`, booted once: (state before, the boot, state after)."""
    image = vm.image(layout, tmp_path / "disk.img")
    before = harness.image_state(image)
    boot = vm.boot(variant, image, append, name=name)
    return before, boot, harness.image_state(image)


@ON_EVERY_PLATFORM
def test_normal_boot(vm: Vm, tmp_path: Path) -> None:
    before, boot, after = boot_once(vm, tmp_path, "standard", name="normal")
    assert_rolled_back(boot, before, after, deleted=4)
    assert sorted(p for p in after.under("root")) == ["root"]
    assert not any(p.startswith("root/") for p in after.subvolume_paths())
    # the work was done by the early process, ready (imports done) before the trigger started
    (finished,) = events(boot, "finished")
    assert str(finished.get("_SYSTEMD_UNIT", "")).startswith("rollback-early@"), finished.get("_SYSTEMD_UNIT")
    (early,) = boot.units("rollback-early@")
    ready = int(boot.unit(early)["ActiveEnterTimestampMonotonic"])  # READY=1: imports done
    assert 0 < ready <= int(rollback_unit(boot)["ExecMainStartTimestampMonotonic"])
    # the root-options check had the generated sysroot.mount to read (this filesystem, subvol=root), and
    # the device's unit its timeout from rd.timeout (unset: no limit), as the generators wrote them
    mount = boot.facts.get("sysroot.mount", b"").decode()
    assert "What=/dev/vda" in mount and "subvol=root" in mount, mount
    timeout = boot.facts.get("device-timeout.conf", b"").decode()
    assert timeout == "[Unit]\nJobTimeoutSec=infinity\nJobRunningTimeoutSec=infinity\n", timeout


def test_without_the_early_unit_the_rollback_runs_alone(vm: Vm, tmp_path: Path) -> None:
    """The fallback: rollback-early masked, rollback@'s trigger runs the whole command itself."""
    before, boot, after = boot_once(
        vm, tmp_path, "standard", "rd.systemd.mask=rollback-early@dev-vda.service", name="no-early"
    )
    assert_rolled_back(boot, before, after, deleted=4)
    (finished,) = events(boot, "finished")
    assert str(finished.get("_SYSTEMD_UNIT", "")).startswith("rollback@"), finished.get("_SYSTEMD_UNIT")


def test_first_boot_without_root(vm: Vm, tmp_path: Path) -> None:
    before, boot, after = boot_once(vm, tmp_path, "no-root", name="no-root")
    assert_rolled_back(boot, before, after, deleted=0)
    assert after.subvolume_paths() == ["nix", "persist", "root"]


@ON_EVERY_PLATFORM
def test_snapshot_mode(vm: Vm, tmp_path: Path) -> None:
    before, boot, after = boot_once(vm, tmp_path, "standard", "rollback.mode=snapshot", name="snapshot")
    assert_rolled_back(boot, before, after, deleted=4)
    assert sorted(after.under("root")) == ["root", "root/etc", "root/etc/machine-id"]
    assert after.files["root/etc/machine-id"] == before.files["root-blank/etc/machine-id"]


@ON_EVERY_PLATFORM
def test_keeping_old_roots_across_three_boots(vm: Vm, tmp_path: Path) -> None:
    image = vm.image("standard", tmp_path / "disk.img")
    before = harness.image_state(image)
    for number in range(3):
        with harness.attached(image, read_only=False) as top:
            (top / "root" / f"boot-{number}").write_text(f"used during boot {number}\n")
        boot = vm.boot("boot-on", image, "rollback.archive=old rollback.keep-count=2", name=f"keep-{number}")
        assert events(boot, "finished"), boot.serial[-2000:]
    after = harness.image_state(image)
    archived = sorted(p for p in after.subvolume_paths() if p.startswith("old/") and p.count("/") == 1)
    assert len(archived) == 2
    markers = sorted(p.rsplit("/", 1)[1] for p in after.files if "/boot-" in p and p.startswith("old/"))
    assert markers == ["boot-1", "boot-2"]  # boot-0's root was pruned, recursively
    assert outside_root(after) == outside_root(before)


def test_skipped_from_the_kernel_command_line(vm: Vm, tmp_path: Path) -> None:
    before, boot, after = boot_once(vm, tmp_path, "standard", "rollback.skip", name="skip")
    skipped = events(boot, "skipped")
    assert len(skipped) == 1 and skipped[0]["ROLLBACK_REASON"] == "rollback.skip"
    assert rollback_unit(boot)["Result"] == "success"  # exit 77 is whitelisted
    assert after == before


def test_skip_next_mark_keeps_the_root_once(vm: Vm, tmp_path: Path) -> None:
    image = vm.image("standard", tmp_path / "disk.img")
    with harness.loop(image) as device:
        marked = subprocess.run(
            rollback_argv("skip-next", device=device),
            capture_output=True,
            text=True,
        )
        assert marked.returncode == 0, marked.stderr
    before = harness.image_state(image)
    first = vm.boot("boot-on", image, name="skip-next-1")
    kept = harness.image_state(image)
    assert [e["ROLLBACK_REASON"] for e in events(first, "skipped")] == ["skip-next"]
    assert kept.under("root") == before.under("root")
    assert ".rollback/skip-next" not in kept.files
    second = vm.boot("boot-on", image, name="skip-next-2")
    assert_rolled_back(second, before, harness.image_state(image), deleted=4)


def test_refusal_with_boot_on_policy_boots_the_old_root(vm: Vm, tmp_path: Path) -> None:
    before, boot, after = boot_once(vm, tmp_path, "protected-inside", name="refused-boot-on")
    assert after == before
    refused = events(boot, "refused")
    assert len(refused) == 1 and refused[0]["PRIORITY"] == "3"
    assert refused[0]["ROLLBACK_REASON"] == "protected-inside"
    unit = rollback_unit(boot)
    assert (unit["Result"], unit["ExecMainStatus"]) == ("exit-code", "3")
    assert boot.stage == "boot" and boot.facts.get("sysroot") == b"mounted\n"  # booted on, dirty


@ON_EVERY_PLATFORM
def test_refusal_with_stop_boot_policy_stops_the_boot(vm: Vm, tmp_path: Path) -> None:
    before, boot, after = boot_once(vm, tmp_path, "protected-inside", name="refused-stop-boot", variant="stop-boot")
    assert after == before
    assert len(events(boot, "refused")) == 1
    assert boot.stage == "emergency" and "sysroot" not in boot.facts  # never mounted dirty


@ON_EVERY_PLATFORM
def test_late_device_luks_unlocked_in_the_initrd(vm: Vm, tmp_path: Path) -> None:
    """The rollback waits for /dev/mapper/cryptroot, which exists only after the keyfile unlock."""
    image = vm.image("standard", tmp_path / "disk.img", encrypted=True)
    uuid = subprocess.run(["cryptsetup", "luksUUID", str(image)], capture_output=True, text=True).stdout.strip()
    append = f"rd.luks.name={uuid}=cryptroot rd.luks.key={uuid}=/etc/cryptroot.key"
    boot = vm.boot("luks", image, append, name="luks", root="/dev/mapper/cryptroot")
    finished = events(boot, "finished")
    assert len(finished) == 1 and finished[0]["ROLLBACK_DEVICE"] == "/dev/mapper/cryptroot"
    assert finished[0]["ROLLBACK_DELETED"] == "4"
    unlocked = boot.unit("systemd-cryptsetup@cryptroot.service")
    rollback = rollback_unit(boot)
    mapped = boot.unit("dev-mapper-cryptroot.device")  # appears as cryptsetup opens the volume
    started = int(rollback["ExecMainStartTimestampMonotonic"])
    assert 0 < int(unlocked["ExecMainStartTimestampMonotonic"]) <= started
    assert 0 < int(mapped["ActiveEnterTimestampMonotonic"]) <= started
    assert_ran_before_sysroot(boot)
    status = json.loads(boot.facts["status.json"])  # the guest's view: the host cannot open LUKS
    assert status["root"]["nested"] == 0 and status["pending"]["trash"] == []
    assert {p["path"] for p in status["protected"]} == {"persist", "nix", "home"}


def test_the_suite_catches_a_missing_rollback(vm: Vm, tmp_path: Path) -> None:
    """Negative check: with the unit masked, the normal-boot oracle must fail."""
    before, boot, after = boot_once(vm, tmp_path, "standard", "rd.systemd.mask=rollback@dev-vda.service", name="masked")
    with pytest.raises(AssertionError):
        assert_rolled_back(boot, before, after, deleted=4)
    assert "root/tmp/cruft" in after.files


def initramfs_paths(image: Path) -> set[str]:
    listing = subprocess.run(["lsinitrd", str(image)], capture_output=True, text=True, check=True).stdout
    return {line.split()[8] for line in listing.splitlines() if len(line.split()) >= 9 and line[0] in "-dl"}


def with_symbol_tables(image: Path, paths: set[str], where: Path) -> list[str]:
    """Those of `paths` (files in the image) that are ELF files still carrying a symbol table."""
    subprocess.run(["lsinitrd", "--unpack", str(image), *sorted(paths)], cwd=where, check=True, capture_output=True)
    found = [where / p for p in sorted(paths) if (where / p).is_file() and not (where / p).is_symlink()]
    elves = [f for f in found if f.read_bytes()[:4] == b"\x7fELF"]
    assert elves, "no ELF file among them"
    sections = {
        f: subprocess.run(["readelf", "-S", str(f)], capture_output=True, text=True, check=True).stdout for f in elves
    }
    return [str(f.relative_to(where)) for f, text in sections.items() if ".symtab" in text]


def test_initramfs_holds_the_closure_and_nothing_more(vm: Vm, tmp_path: Path) -> None:
    """The module adds the interpreter, the import closure with bytecode, units; sizes are reported.
    What it adds is stripped: dracut strips debug info only, pyenv's libpython kept 0.3 MB of symbols."""
    with_module = vm.build("boot-on")
    without = vm.build("baseline")
    files, base_files = initramfs_paths(with_module), initramfs_paths(without)
    added = files - base_files
    assert "usr/bin/rollback" in added and "usr/lib/systemd/system/rollback@.service" in added
    for wanted in (
        "/rollback/plan.pyc",
        "btrfsutil.cpython",
        "structlog/_native.pyc",
        "libbtrfsutil.so",
        "rollback.catalog",
    ):
        assert any(wanted in path for path in added), wanted
    for unwanted in ("psutil", "tkinter", "/test/", "/pip/", "setuptools"):
        assert not any(unwanted in path for path in files), unwanted
    assert not any(p.endswith(".py") or "__pycache__" in p for p in added)  # bytecode only, sourceless
    assert sum(p.endswith(".pyc") for p in added) > 100
    binaries = {p for p in added if ".so" in p or "/bin/python" in p}
    linked = subprocess.run(["ldd", os.path.realpath(sys.executable)], capture_output=True, text=True).stdout
    assert any("libpython" in p for p in binaries) == ("libpython" in linked), binaries  # pyenv's: shared
    assert any("/bin/python" in p for p in binaries), binaries
    assert with_symbol_tables(with_module, binaries, tmp_path) == []
    vm.sizes.update({"with rollback": with_module.stat().st_size, "without": without.stat().st_size})


@ON_EVERY_PLATFORM
def test_pending_hibernation_image_is_refused_in_the_initrd(vm: Vm, tmp_path: Path) -> None:
    """resume= names a swap disk holding a hibernation signature, but this initramfs has no resume
    support (a misconfiguration): the rollback must refuse instead of mounting the filesystem."""
    swap = tmp_path / "swap.img"
    with swap.open("wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["mkswap", str(swap)], check=True, capture_output=True)
    write_signature(str(swap), b"S1SUSPEND")  # what the kernel writes when it saves an image
    image = vm.image("standard", tmp_path / "disk.img")
    before = harness.image_state(image)
    boot = vm.boot("boot-on", image, "resume=/dev/vdc", name="hibernated", extra_disks=(swap,))
    assert harness.image_state(image) == before
    refused = events(boot, "refused")
    assert [e["ROLLBACK_REASON"] for e in refused] == ["hibernated"], boot.serial[-2000:]
    assert "S1SUSPEND" in str(refused[0]["MESSAGE"]) and "/dev/vdc" in str(refused[0]["MESSAGE"])
    assert boot.stage == "boot"  # boot-on policy: the old root boots
    assert read_signature(str(swap)) == b"S1SUSPEND"  # and the image is left for a proper resume
