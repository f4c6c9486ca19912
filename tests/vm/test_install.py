"""scripts/install on this machine, as a user runs it: the initramfs dracut then builds from what was
installed boots and rolls back; --uninstall leaves every tree it wrote into as it found it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import vm as harness
from tests.support.install import INSTALL, install, listing
from tests.support.layout import sh
from tests.support.vm import assert_rolled_back
from tests.support.vm_session import Vm

pytestmark = pytest.mark.vm
MANIFEST = Path("/var/lib/rollback/install-manifest")
PREFIX = "/opt/rollback"


def written(dry_run: str) -> set[str]:
    return {line.split()[2] for line in dry_run.splitlines() if line.startswith(("would write", "would link"))}


def outside_prefix(found: dict[str, str]) -> dict[str, str]:
    return {path: kind for path, kind in found.items() if not path.startswith(PREFIX + "/")}


def interrupted(uuid: str) -> None:
    """A re-run with other options, stopped (SIGTERM) while pip builds: exit 1, no pip left running;
    what it was changing stays listed, so --uninstall still removes all of it."""
    argv = [str(INSTALL), "--device", f"UUID={uuid}", "--cleanup", "after-boot", "--policy", "stop-boot"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        deadline = time.monotonic() + 60
        while "pip install" not in " ".join(_children(run.pid)):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
    assert run.returncode == 1 and "interrupted" in stderr, stderr
    assert not [cmd for cmd in _all_commands() if PREFIX in cmd and "pip" in cmd], "pip still runs"


def _children(pid: int) -> list[str]:
    found = subprocess.run(["ps", "-o", "args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return found.splitlines()


def _all_commands() -> list[str]:
    return subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout.splitlines()


def test_install_then_boot_then_uninstall_leaves_nothing(vm: Vm, tmp_path: Path) -> None:
    assert not MANIFEST.exists(), "rollback is installed on this machine already: uninstall it first"
    before = listing()
    image = vm.image("standard", tmp_path / "disk.img")
    layout = harness.image_state(image)
    with harness.loop(image) as node:  # the installer checks the device it is given, as blkid finds it
        uuid = sh("blkid", "-o", "value", "-s", "UUID", node)
        dry = install("--device", f"UUID={uuid}", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert listing() == before, "--dry-run wrote something"
        try:
            first = install("--device", f"UUID={uuid}")
            assert first.returncode == 0, first.stderr
            installed = listing()
            entries = [json.loads(line) for line in MANIFEST.read_text().splitlines()]
            owned = {e["path"] for e in entries if e["kind"] in ("file", "link")}
            assert owned | {str(MANIFEST)} == written(dry.stdout), "the dry run and the manifest disagree"
            again = install("--device", f"UUID={uuid}")  # idempotent: the same files again
            assert again.returncode == 0, again.stderr
            assert outside_prefix(listing()) == outside_prefix(installed)
            assert 'device = "UUID=' + uuid + '"' in Path("/etc/rollback.toml").read_text()
            initramfs = harness.build_installed_initramfs(vm.kernel, vm.work)
            interrupted(uuid)
            with Path("/etc/dracut.conf.d/90-rollback.conf").open("a") as conf:
                conf.write("# the user's edit: still the installer's file (it names the module it installed)\n")
        except BaseException:
            install("--uninstall")
            raise
    gone = install("--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert listing() == before, "the uninstall left something behind, or removed something"
    boot = vm.boot_initramfs(initramfs, image, name="installed")
    assert_rolled_back(boot, layout, harness.image_state(image), deleted=4, device=f"/dev/disk/by-uuid/{uuid}")


def test_a_path_that_is_not_its_own_is_refused_before_anything_is_written(vm: Vm, tmp_path: Path) -> None:
    """Another /usr/local/bin/rollback, or a module copied by hand: exit 3, every watched tree as it was."""
    assert not MANIFEST.exists(), "rollback is installed on this machine already: uninstall it first"
    image = vm.image("standard", tmp_path / "disk.img")
    theirs = Path("/usr/local/bin/rollback")
    assert not theirs.exists()
    theirs.write_text("#!/bin/sh\necho someone else's\n")
    try:
        before = listing()
        with harness.loop(image) as node:
            uuid = sh("blkid", "-o", "value", "-s", "UUID", node)
            refused = install("--device", f"UUID={uuid}")
        assert refused.returncode == 3, refused.stderr
        assert "/usr/local/bin/rollback" in refused.stderr and "refused" in refused.stderr
        assert listing() == before
        again = install("--uninstall")  # nothing installed: nothing to do, nothing touched
        assert again.returncode == 0 and listing() == before
    finally:
        theirs.unlink()
