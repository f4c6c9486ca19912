"""The hibernation guard on a real swap area whose header carries the kernel's hibernation signature."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollback.errors import Exit
from rollback.verbs import PROC_CMDLINE_ENV
from tests.support.disks import Disk
from tests.support.layout import populate, rolled_back, sh
from tests.support.swap import write_signature

pytestmark = pytest.mark.btrfs


@pytest.fixture
def swap(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A 32 MiB swap area (mkswap) on its own loop device."""
    image = tmp_path / "swap.img"
    with image.open("wb") as handle:
        handle.truncate(32 << 20)
    sh("mkswap", str(image))
    device = sh("losetup", "-f", "--show", str(image))
    try:
        yield device, image
    finally:
        sh("losetup", "-d", device)


def run_with_cmdline(disk: Disk, cmdline: str, *args: str) -> tuple[int, str]:
    path = disk.workdir / "cmdline"
    path.write_text(cmdline + "\n")
    result = disk.rollback("run", *args, cmdline=str(path))
    return result.returncode, result.stderr


def test_plain_swap_does_not_stop_the_rollback(disk: Disk, swap: tuple[str, Path]) -> None:
    with disk.top() as top:
        populate(top)
    code, err = run_with_cmdline(disk, f"root=/dev/vda2 resume={swap[0]}")
    assert code == Exit.OK, err


@pytest.mark.parametrize("signature", [b"S1SUSPEND", b"ULSUSPEND", b"LINHIB0001"])
def test_pending_image_is_refused_and_nothing_changes(disk: Disk, swap: tuple[str, Path], signature: bytes) -> None:
    with disk.top() as top:
        populate(top)
    write_signature(swap[0], signature)
    before = disk.state()
    code, err = run_with_cmdline(disk, f"resume={swap[0]}")
    assert code == Exit.REFUSED, err
    assert f"a hibernation image ({signature.decode()}) is waiting on {swap[0]}" in err
    assert disk.state() == before


def test_swap_file_offset_is_honoured(disk: Disk, swap: tuple[str, Path]) -> None:
    """A swap file's header sits at resume_offset pages into the device that holds it."""
    with disk.top() as top:
        populate(top)
    write_signature(swap[0], b"S1SUSPEND", offset_pages=100)
    before = disk.state()
    assert run_with_cmdline(disk, f"resume={swap[0]}")[0] == Exit.OK  # page 0 is plain swap
    rolled_back(before, disk.state())  # the default mode: recreate
    before = disk.state()
    code, err = run_with_cmdline(disk, f"resume={swap[0]} resume_offset=100")
    assert code == Exit.REFUSED and "hibernation image (S1SUSPEND)" in err
    assert disk.state() == before


def test_explicit_option_overrides(disk: Disk, swap: tuple[str, Path]) -> None:
    with disk.top() as top:
        populate(top)
    write_signature(swap[0], b"S1SUSPEND")
    code, err = run_with_cmdline(disk, f"resume={swap[0]} rollback.ignore-hibernation")
    assert code == Exit.OK, err


@pytest.mark.parametrize("cmdline", ["resume={dev} noresume", "noresume resume={dev} resume_offset=0"])
def test_noresume_discards_the_image_and_the_run_goes_on(disk: Disk, swap: tuple[str, Path], cmdline: str) -> None:
    """`noresume`: the user boots without the image (the kernel and systemd's resume skip it; the boot
    mounts the root read-write anyway). It was refused at every such boot (under stop-boot: emergency)."""
    with disk.top() as top:
        populate(top)
    write_signature(swap[0], b"S1SUSPEND")
    before = disk.state()
    code, err = run_with_cmdline(disk, cmdline.format(dev=swap[0]))
    assert code == Exit.OK, err
    rolled_back(before, disk.state())


def test_unreadable_resume_device_is_refused(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    before = disk.state()
    code, err = run_with_cmdline(disk, "resume=/dev/disk/by-uuid/does-not-exist")
    assert code == Exit.REFUSED and "cannot check the resume device" in err
    assert disk.state() == before


@pytest.mark.parametrize("pages", [10**20, 100_000], ids=["beyond-any-file", "beyond-this-device"])
def test_an_offset_beyond_the_device_is_refused_not_a_crash(disk: Disk, swap: tuple[str, Path], pages: int) -> None:
    """Nothing read is not "no image": past the end of the 32 MiB swap device, or of any file (OverflowError)."""
    with disk.top() as top:
        populate(top)
    before = disk.state()
    code, err = run_with_cmdline(disk, f"resume={swap[0]} resume_offset={pages}")
    assert code == Exit.REFUSED and "cannot check the resume device" in err, err
    assert disk.state() == before


def test_ignoring_the_command_line_does_not_ignore_the_kernels_resume(
    disk: Disk, swap: tuple[str, Path], tmp_path: Path
) -> None:
    """--kernel-cmdline /dev/null (NixOS kernelCommandLine = false) ignores rollback.* options; the
    kernel's resume= (here a file bound over /proc/cmdline in a mount namespace of the run's own)
    is still checked."""
    with disk.top() as top:
        populate(top)
    write_signature(swap[0], b"S1SUSPEND")
    kernel = tmp_path / "proc-cmdline"
    kernel.write_text(f"root=/dev/vda2 resume={swap[0]} quiet\n")
    before = disk.state()
    bind = 'mount --bind "$0" /proc/cmdline && exec "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", bind, str(kernel), *disk.rollback_argv("run")]
    environ = {k: v for k, v in os.environ.items() if k != PROC_CMDLINE_ENV}  # the real /proc/cmdline
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=environ)
    assert result.returncode == Exit.REFUSED, result.stderr
    assert f"a hibernation image (S1SUSPEND) is waiting on {swap[0]}" in result.stderr
    assert disk.state() == before


@pytest.mark.parametrize("verb", [("status",), ("diff",), ("skip-next",), ("cleanup",), ("cleanup", "--dry-run")])
def test_every_verb_leaves_a_hibernated_filesystem_unmounted(
    disk: Disk, swap: tuple[str, Path], verb: tuple[str, ...]
) -> None:
    """Only the run checked: `status` said nothing of the image, `skip-next` mounted the filesystem and
    committed its mark, `cleanup` ran (a tester walking the docs; a rescue shell's, beside a hibernated
    system). Even a read-only mount replays the log under the hibernated kernel. Mounted already (the
    running system's), the mount is not ours to prevent: the verb goes on."""
    with disk.top() as top:
        populate(top)
    write_signature(swap[0], b"S1SUSPEND")
    path = disk.workdir / "cmdline"
    path.write_text(f"resume={swap[0]}\n")
    before = disk.state()
    result = disk.rollback(*verb, cmdline=str(path))
    assert result.returncode == Exit.REFUSED and "reason=hibernated" in result.stderr, result.stderr
    assert disk.state() == before
    with disk.top():  # mounted by someone else
        assert disk.rollback(*verb, cmdline=str(path)).returncode in (Exit.OK, Exit.SKIPPED)
