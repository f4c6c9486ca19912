"""Every refusal leaves the device exactly as it was: all subvolumes (with ids) and every file."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import btrfsutil
import pytest

from rollback.effects import btrfs
from rollback.effects.sysroot import SYSROOT_UNIT_ENV
from rollback.errors import Exit
from rollback.model import SKIP_MARK
from rollback.plan import RemoveMark, Step, WriteMark
from rollback.verbs import PROC_CMDLINE_ENV
from tests.support.cli import rollback_argv
from tests.support.disks import Disk, loop_device
from tests.support.layout import outside_root, populate, sh

pytestmark = pytest.mark.btrfs


def refused(disk: Disk, *args: str, code: Exit = Exit.REFUSED) -> str:
    before = disk.state()
    result = disk.rollback("run", *args)
    assert result.returncode == code, result.stderr
    assert disk.state() == before
    assert "hint=" in result.stderr
    return result.stderr


def setup(disk: Disk, change: Callable[[Path], None], **layout: object) -> None:
    with disk.top() as top:
        populate(top, **layout)  # type: ignore[arg-type]
        change(top)


def test_target_is_a_plain_directory(disk: Disk) -> None:
    setup(disk, lambda top: (top / "plain").mkdir())
    assert "'plain' is a plain directory" in refused(disk, "--subvolume", "plain")


# A run that deletes the root at boot lists its whole tree; one that leaves the delete to the cleanup lists
# what is directly inside it and finds mounted and default subvolumes by id (plan.only_moved): both refuse.
CLEANUPS = pytest.mark.parametrize("cleanup", [(), ("--cleanup", "after-boot")], ids=["delete-at-boot", "after-boot"])


@CLEANUPS
@pytest.mark.parametrize("subvol", ["root", "root/var/lib/machines", "root/var/lib/machines/guest/srv"])
def test_target_or_nested_is_the_default_subvolume(disk: Disk, subvol: str, cleanup: tuple[str, ...]) -> None:
    setup(disk, lambda top: btrfsutil.set_default_subvolume(str(top / subvol)))
    assert f"'{subvol}' is the default subvolume" in refused(disk, *cleanup)


@CLEANUPS
@pytest.mark.parametrize("keep", [(), ("--archive", "old_roots")], ids=["recreate", "keep"])
@pytest.mark.parametrize("where", ["root/persist2", "root/a/b/persist2", "root/var/lib/machines/guest/x/persist2"])
def test_protected_subvolume_inside_root(
    disk: Disk, where: str, keep: tuple[str, ...], cleanup: tuple[str, ...]
) -> None:
    """At any depth, whether the run deletes the root, archives it, or moves it into the trash for the
    cleanup (a run that then knows below the root's direct subvolumes only names: plan.bounds)."""

    def change(top: Path) -> None:
        (top / where).parent.mkdir(parents=True, exist_ok=True)
        btrfsutil.create_subvolume(str(top / where))
        (top / where / "precious").write_text("made by hand on the running system")

    setup(disk, change)
    assert f"protected subvolume '{where}'" in refused(disk, "--protect", "persist2", *keep, *cleanup)


@CLEANUPS
def test_default_protected_name_inside_root(disk: Disk, cleanup: tuple[str, ...]) -> None:
    setup(disk, lambda top: btrfsutil.create_subvolume(str(top / "root" / "tmp" / "home")))
    assert "protected subvolume 'root/tmp/home'" in refused(disk, *cleanup)


def test_archive_holding_foreign_subvolumes(disk: Disk) -> None:
    def change(top: Path) -> None:
        (top / "old_roots").mkdir()
        btrfsutil.create_subvolume(str(top / "old_roots" / "my-backup"))

    setup(disk, change)
    assert "rollback did not put there: 'old_roots/my-backup'" in refused(disk, "--archive", "old_roots")


def test_blank_missing_in_snapshot_mode(disk: Disk) -> None:
    setup(disk, lambda top: None)
    assert "blank snapshot 'root-blank' does not exist" in refused(disk, "--mode", "snapshot")


def test_blank_not_read_only(disk: Disk) -> None:
    setup(disk, lambda top: btrfsutil.create_subvolume(str(top / "root-blank")))
    assert "is not read-only" in refused(disk, "--mode", "snapshot")


@pytest.mark.parametrize("flag", ["+i", "+a"])
def test_blank_immutable_or_append_only(disk: Disk, flag: str) -> None:
    """A snapshot copies its top directory's flags: the first run made a root with nothing creatable
    in /, and every run after refused it as immutable (stop-boot: emergency mode at every boot)."""

    def pinned_blank(top: Path) -> None:
        btrfsutil.create_subvolume(str(top / "root-blank"))
        (top / "root-blank" / "etc").mkdir()
        sh("chattr", flag, str(top / "root-blank"))
        btrfsutil.set_subvolume_read_only(str(top / "root-blank"))

    setup(disk, pinned_blank)
    said = refused(disk, "--mode", "snapshot")
    assert "blank snapshot 'root-blank' is immutable or append-only" in said and "reason=blank-immutable" in said


@pytest.mark.parametrize(
    ("what", "blank"),
    [
        ("link", lambda top: os.symlink("root-blank-v2", top / "root-blank")),
        ("dir", lambda top: (top / "root-blank").mkdir()),
    ],
    ids=["link", "dir"],
)
def test_a_blank_that_is_not_a_subvolume_is_named_as_what_it_is(
    disk: Disk, what: str, blank: Callable[[Path], None]
) -> None:
    """A link to the real snapshot, or a directory: "does not exist", and its hint (create it) failed."""

    def layout(top: Path) -> None:
        btrfsutil.create_snapshot(str(top / "root"), str(top / "root-blank-v2"), read_only=True)
        blank(top)

    setup(disk, layout)
    said = refused(disk, "--mode", "snapshot")
    shown = "is not a subvolume (a symbolic link" if what == "link" else "is a plain directory, not a snapshot"
    assert f"blank snapshot 'root-blank' {shown}" in said and "does not exist" not in said, said
    assert "reason=no-blank" in said and "move 'root-blank' away" in said


def _restore_persist_from_a_snapshot(top: Path) -> None:
    """`persist` holding a subvolume (the archive), replaced by a snapshot of itself (snapper, btrbk, by
    hand): the snapshot holds an empty stand-in where the subvolume was."""
    btrfsutil.create_subvolume(str(top / "persist" / "old-roots"))
    btrfsutil.create_snapshot(str(top / "persist"), str(top / "persist.snap"))
    os.rename(top / "persist", top / "persist.bad")
    os.rename(top / "persist.snap", top / "persist")
    assert os.lstat(top / "persist" / "old-roots").st_ino == 2


PLACEHELD = [
    ("--archive", "persist/old-roots"),
    ("--archive", "persist/old-roots/x"),
    ("--subvolume", "persist/old-roots"),
    ("--mode", "snapshot", "--blank", "persist/old-roots"),
]


@pytest.mark.parametrize("flags", PLACEHELD, ids=["archive", "below-it", "target", "blank"])
def test_a_placeholder_where_the_run_works_is_refused_naming_it(disk: Disk, flags: tuple[str, ...]) -> None:
    """Its flags cannot be read (ENOTTY) nor anything made in it: every verb was an internal error, at
    every boot (found by an auditing helper). Refused, whole device unchanged; status says the next
    boot refuses; a verb that does not use the name is not in its way."""
    setup(disk, _restore_persist_from_a_snapshot)
    said = refused(disk, *flags)
    assert "reason=placeholder" in said and "'persist/old-roots' is the empty stand-in" in said, said
    assert "rmdir <top>/persist/old-roots" in said
    before = disk.state()
    status = disk.rollback("status", *flags)
    assert status.returncode == Exit.OK, status.stderr
    assert "REFUSED: 'persist/old-roots' is the empty stand-in" in status.stdout, status.stdout
    skip = disk.rollback("skip-next", *flags)
    target = "--subvolume" in flags
    assert skip.returncode == (Exit.REFUSED if target else Exit.OK), skip.stderr
    assert ("reason=placeholder" in skip.stderr) == target
    assert disk.rollback("cleanup", *flags).returncode == Exit.OK
    if target:
        assert disk.state() == before


def test_a_placeholder_at_a_name_the_run_does_not_use_is_not_in_its_way(disk: Disk) -> None:
    """The blank in recreate mode is never used: a placeholder there was an internal error too."""
    setup(disk, _restore_persist_from_a_snapshot)
    result = disk.rollback("run", "--blank", "persist/old-roots")
    assert result.returncode == Exit.OK, result.stderr
    with disk.top() as top:
        assert os.lstat(top / "persist" / "old-roots").st_ino == 2


@pytest.mark.parametrize(
    "options", ["subvolid=256", "subvol=root,subvolid=256", "subvol=@", "subvol=/@/root"], ids=lambda o: o
)
@pytest.mark.parametrize("flags", [(), ("--cleanup", "after-boot"), ("--archive", "old")], ids=lambda f: " ".join(f))
def test_an_initrd_mounting_the_root_by_id_or_from_another_subvolume_is_refused(
    disk: Disk, tmp_path: Path, options: str, flags: tuple[str, ...]
) -> None:
    """By id, the renamed old root kept it: the boot mounted yesterday's root from the trash, and the next
    boot, deleting the trash first, left none to mount; from another subvolume, every boot replaced one
    nothing used and said it was done (a unit reviewer's finding: NixOS's module asserts it, dracut's
    path did nothing). Read from the generated sysroot.mount, as the initrd has it."""
    setup(disk, lambda top: None)
    unit = tmp_path / "sysroot.mount"
    unit.write_text(f"[Mount]\nWhat={disk.device}\nWhere=/sysroot\nType=btrfs\nOptions={options},rw\n")
    before = disk.state()
    result = disk.rollback("run", *flags, env={SYSROOT_UNIT_ENV: str(unit)})
    assert result.returncode == Exit.REFUSED and "reason=root-options" in result.stderr, result.stderr
    assert disk.state() == before
    unit.write_text(f"[Mount]\nWhat={disk.device}\nWhere=/sysroot\nOptions=subvol=/root,rw\n")
    assert disk.rollback("run", *flags, env={SYSROOT_UNIT_ENV: str(unit)}).returncode == Exit.OK


@pytest.mark.parametrize("default", ["", "persist", "root"], ids=lambda d: d or "top level")
@pytest.mark.parametrize("flags", [(), ("--cleanup", "after-boot"), ("--archive", "old")], ids=lambda f: " ".join(f))
def test_an_initrd_mounting_the_default_subvolume_is_refused_unless_named(
    disk: Disk, tmp_path: Path, default: str, flags: tuple[str, ...]
) -> None:
    """Neither subvol= nor subvolid= (rootflags= forgotten): the kernel mounts the default subvolume. The
    top level (as set by mkfs) booted, `root` was its /root (root's home) and was replaced at every boot,
    exit 0; `root` itself as the default: the old root kept the id, the boot mounted it."""

    def set_default(top: Path) -> None:
        btrfsutil.set_default_subvolume(str(top), btrfsutil.subvolume_id(str(top / default)) if default else 5)

    setup(disk, set_default)
    unit = tmp_path / "sysroot.mount"
    unit.write_text(f"[Mount]\nWhat={disk.device}\nWhere=/sysroot\nType=btrfs\nOptions=ro\n")
    before = disk.state()
    result = disk.rollback("run", *flags, env={SYSROOT_UNIT_ENV: str(unit)})
    assert result.returncode == Exit.REFUSED and "reason=root-options" in result.stderr, result.stderr
    assert "neither subvol= nor subvolid=" in result.stderr and "rootflags=subvol=root" in result.stderr
    assert disk.state() == before
    with disk.top() as top:
        btrfsutil.set_default_subvolume(str(top), 5)
    unit.write_text(f"[Mount]\nWhat={disk.device}\nWhere=/sysroot\nOptions=subvol=root,ro\n")
    assert disk.rollback("run", *flags, env={SYSROOT_UNIT_ENV: str(unit)}).returncode == Exit.OK


def test_the_root_mount_of_another_filesystem_is_none_of_its_business(disk: Disk, tmp_path: Path) -> None:
    """rollback set up for one btrfs while the root is another (`subvol=@` there), or the initramfs shared
    by a boot entry with another root: checked, every boot was refused (a reviewer's finding on this
    session's check). Only a root on this filesystem is compared; a device not there is not known to be."""
    setup(disk, lambda top: None)
    unit = tmp_path / "sysroot.mount"
    with loop_device(tmp_path / "other.img", 128 << 20) as other:
        sh("mkfs.btrfs", "-q", other)
        for what in (other, "/dev/disk/by-uuid/not-there"):
            unit.write_text(f"[Mount]\nWhat={what}\nWhere=/sysroot\nType=btrfs\nOptions=subvol=@,rw\n")
            result = disk.rollback("run", env={SYSROOT_UNIT_ENV: str(unit)})
            assert result.returncode == Exit.OK, result.stderr


@pytest.mark.parametrize("named", ["ours-by-label", "root-by-label", "root-by-partuuid", "neither"])
@pytest.mark.parametrize("twin", ["copy", "alike"])
def test_a_root_on_another_filesystem_with_this_ones_label_is_refused(
    disk: Disk, tmp_path: Path, twin: str, named: str
) -> None:
    """A copy of the disk given a new UUID (the `mounted` hint for copies said so) keeps its label, and so
    does a second disk set up alike: a LABEL= names whichever udev saw last. The run replaced the other
    filesystem's root, exit 0, and the root booted stayed dirty (a multi-device tester). Refused before
    any change when the initrd's root is another filesystem carrying this one's label and either is named
    by it; both unchanged. Named otherwise (UUID=, as the hint says), none of its business (a reviewer)."""
    setup(disk, lambda top: None)
    sh("btrfs", "filesystem", "label", disk.device, "nixos")
    unit = tmp_path / "sysroot.mount"
    size = int(sh("blockdev", "--getsize64", disk.device))
    with loop_device(tmp_path / "other.img", size) as other:
        if twin == "copy":
            sh("dd", f"if={disk.device}", f"of={other}", "bs=1M", "status=none")
            sh("btrfstune", "-f", "-u", other)
        else:
            sh("mkfs.btrfs", "-q", "-L", "nixos", other)
        # as udev names them (none here): the last one seen wins; a dd copy keeps its PARTUUID too
        links = tmp_path / "disk" / ("by-partuuid" if named == "root-by-partuuid" else "by-label")
        links.mkdir(parents=True)
        (links / "nixos").symlink_to(other if named.startswith("root-") else disk.device)
        ours = str(links / "nixos") if named == "ours-by-label" else disk.device
        what = str(links / "nixos") if named.startswith("root-") else other
        theirs = (tmp_path / "other.img").read_bytes()
        before = disk.state()
        unit.write_text(f"[Mount]\nWhat={what}\nWhere=/sysroot\nType=btrfs\nOptions=subvol=root,rw\n")
        argv = rollback_argv("run", device=ours)
        result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, SYSROOT_UNIT_ENV: str(unit)})
        if named == "neither":
            assert result.returncode == Exit.OK, result.stderr
            return
        assert result.returncode == Exit.REFUSED and "reason=same-label" in result.stderr, result.stderr
        assert "both carry the label" in result.stderr and "nixos" in result.stderr, result.stderr
        assert "name both by UUID=" in result.stderr
        assert disk.state() == before and (tmp_path / "other.img").read_bytes() == theirs
        sh("btrfs", "filesystem", "label", other, "backup")  # as the hint says: relabelled, none of its business
        result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, SYSROOT_UNIT_ENV: str(unit)})
        assert result.returncode == Exit.OK, result.stderr


def test_a_device_held_exclusively_elsewhere_is_named_in_use_not_damaged(disk: Disk) -> None:
    """EBUSY from btrfs's mount (a replace target, a device another holder claimed): the hint was
    "btrfs check --readonly", as for damage (a multi-device tester's finding)."""
    setup(disk, lambda top: None)
    before = disk.state()
    held = os.open(disk.device, os.O_RDONLY | os.O_EXCL)  # a block device's exclusive claim, as a holder's
    try:
        result = disk.rollback("status")
    finally:
        os.close(held)
    assert result.returncode == Exit.REFUSED and "reason=mount-failed" in result.stderr, result.stderr
    assert "in use otherwise" in result.stderr and "btrfs check" not in result.stderr, result.stderr
    assert disk.state() == before


def test_state_dir_taken_by_a_file(disk: Disk) -> None:
    setup(disk, lambda top: (top / ".rollback").touch())
    assert ".rollback exists but is not a plain directory" in refused(disk)


def _symlinked_state_dir(top: Path) -> None:
    """`.rollback` a symlink into the root, with a file there named as the mark: not ours to unlink."""
    (top / "root" / "etc").mkdir(exist_ok=True)
    (top / "root" / "etc" / "skip-next").write_text("the machine's own file\n")
    (top / ".rollback").symlink_to("root/etc")


def _mark_a_directory(top: Path) -> None:
    (top / ".rollback" / "skip-next").mkdir(parents=True)


def _mark_a_symlink(top: Path) -> None:
    """skip-next wrote through it: here onto the machine's own file (any path on the host, too)."""
    (top / "persist" / "victim").write_text("the machine's own file\n")
    (top / ".rollback").mkdir()
    (top / ".rollback" / "skip-next").symlink_to("../persist/victim")


def _mark_pinned(flag: str) -> Callable[[Path], None]:
    def change(top: Path) -> None:
        (top / ".rollback").mkdir()
        (top / ".rollback" / "skip-next").write_text("kept once by rollback skip-next\n")
        sh("chattr", flag, str(top / ".rollback" / ("skip-next" if flag == "+i" else "")))

    return change


def _mark_in_a_read_only_top_level(top: Path) -> None:
    """`status` said nothing was wrong: it checked the mark alone, not the plan that removes it."""
    (top / ".rollback").mkdir()
    (top / ".rollback" / "skip-next").write_text("kept once\n")
    btrfsutil.set_subvolume_read_only(str(top), True)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (_symlinked_state_dir, ".rollback exists but is not a plain directory"),
        (_mark_a_directory, "the skip-next mark .rollback/skip-next is a directory"),
        (_mark_pinned("+i"), "'.rollback/skip-next' is immutable or append-only"),
        (_mark_pinned("+a"), "'.rollback' is immutable or append-only"),
        (_mark_a_symlink, "the skip-next mark .rollback/skip-next is not a regular file"),
        (_mark_in_a_read_only_top_level, "'.rollback' lies in the read-only top level"),
    ],
    ids=["state-dir-symlink", "mark-directory", "mark-immutable", "state-dir-append-only", "mark-symlink", "ro-top"],
)
def test_a_skip_mark_is_removed_only_from_rollbacks_own_directory(
    disk: Disk, change: Callable[[Path], None], said: str
) -> None:
    """The mark's run changes nothing else, so it was honoured before any check: through a symlink it
    unlinked the machine's file; a directory there, or +i/+a, failed (exit 1) at every boot. And
    `rollback skip-next` refuses to write a mark there (it failed halfway, or left one refused later)."""
    setup(disk, change)
    assert said in refused(disk)
    status = json.loads(disk.rollback("status", "--json").stdout)
    if change is _symlinked_state_dir:  # a mark reached through a link is not rollback's: not looked up
        assert status["skip_next"] is False and status["skip_next_refused"] is None
    else:
        assert status["skip_next"] is True and said in status["skip_next_refused"]
    before = disk.state()
    result = disk.rollback("skip-next")
    assert result.returncode == Exit.REFUSED and said in result.stderr, result.stderr
    assert disk.state() == before


@CLEANUPS
@pytest.mark.parametrize("subvol", ["root", "root/var/lib/machines", "root/var/lib/machines/guest/srv"])
def test_target_or_nested_mounted_elsewhere(disk: Disk, tmp_path: Path, subvol: str, cleanup: tuple[str, ...]) -> None:
    setup(disk, lambda top: None)
    live = tmp_path / "live"
    live.mkdir()
    sh("mount", "-o", f"subvol={subvol}", disk.device, str(live))
    try:
        assert f"'{subvol}' is mounted at {live}" in refused(disk, *cleanup)
    finally:
        sh("umount", str(live))


@CLEANUPS
@pytest.mark.parametrize("subvol", ["root", "root/var/lib/machines/guest/srv"])
def test_a_mark_is_not_used_up_by_a_run_on_the_running_root(
    disk: Disk, tmp_path: Path, subvol: str, cleanup: tuple[str, ...]
) -> None:
    """`rollback run` by hand on the running system, with skip-next set: the mark is for the boot. That
    run used it up (exit 77, 'kept this once') and the next boot replaced the root the user meant to
    keep; it is refused as without the mark, and status there still says the next boot keeps it."""
    setup(disk, lambda top: None)
    assert disk.rollback("skip-next").returncode == Exit.OK
    live = tmp_path / "live"
    live.mkdir()
    sh("mount", "-o", f"subvol={subvol}", disk.device, str(live))
    try:
        said = refused(disk, *cleanup)  # the whole device, the mark included, unchanged
        assert f"'{subvol}' is mounted at {live}" in said and "reason=mounted" in said
        status = disk.rollback("status", "--json", *cleanup)
        assert json.loads(status.stdout)["skip_next_refused"] is None, status.stdout
    finally:
        sh("umount", str(live))
    before = disk.state()
    assert disk.rollback("run", *cleanup).returncode == Exit.SKIPPED  # the boot: the root kept
    after = disk.state()
    assert [(s.path, s.id) for s in after.subvolumes] == [(s.path, s.id) for s in before.subvolumes]
    assert {k: v for k, v in after.files.items() if k.startswith("root")} == {
        k: v for k, v in before.files.items() if k.startswith("root")
    }


def test_a_mark_is_used_only_by_the_root_it_was_set_for(disk: Disk, tmp_path: Path) -> None:
    """skip-next for `root`, then a boot for another subvolume (a second boot entry, an edited config, an
    initramfs not rebuilt with it): that boot used the mark up, and the next boot of `root` replaced the
    root the user meant to keep (found by a sequence fuzzer). Now the other boot rolls its own root
    back as usual, says why the mark is left, and `root`'s boot keeps it."""
    setup(disk, lambda top: btrfsutil.create_subvolume(str(top / "other")))
    with disk.top() as top:
        (top / "root" / "keep-me").write_text("the user's\n")
    assert disk.rollback("skip-next").returncode == Exit.OK
    shown = json.loads(disk.rollback("status", "--json", "--subvolume", "other").stdout)
    assert shown["skip_next"] is False and shown["skip_next_for"] is not None
    other = disk.rollback("run", "--subvolume", "other")
    assert other.returncode == Exit.OK, other.stderr
    assert "the skip-next mark is for subvolume id" in other.stderr and "kind=warning" in other.stderr
    kept = disk.rollback("run")
    assert kept.returncode == Exit.SKIPPED, kept.stderr
    with disk.top() as top:
        assert (top / "root" / "keep-me").read_text() == "the user's\n"
    assert disk.rollback("run").returncode == Exit.OK  # used up by its own root's boot


def test_a_mark_for_a_root_that_is_not_there_leaves_no_boot_without_a_root(disk: Disk) -> None:
    """The subvolume setting changed to one that does not exist yet: the boot took the mark ("kept")
    and had no root to mount. It makes the root, as a first run does."""
    setup(disk, lambda top: None)
    assert disk.rollback("skip-next").returncode == Exit.OK
    result = disk.rollback("run", "--subvolume", "@")
    assert result.returncode == Exit.OK and "@ created (none was there)" in result.stderr, result.stderr
    assert "@" in disk.state().subvolume_paths()


def test_a_mark_without_a_subvolume_id_is_any_roots(disk: Disk) -> None:
    """A mark written by hand, or by a version before marks named their root: kept as it was read."""
    setup(disk, lambda top: None)
    with disk.top() as top:
        (top / ".rollback").mkdir()
        (top / ".rollback" / "skip-next").write_text("")
    assert disk.rollback("run").returncode == Exit.SKIPPED


@pytest.mark.parametrize("name", ["live\nroot", "live root", "live\troot", "live\udcffroot"])
def test_a_mount_point_with_an_unprintable_name_is_shown_escaped(disk: Disk, tmp_path: Path, name: str) -> None:
    """The refusal names where the root is mounted: a newline there broke the one-line event in two, a
    space hid where the path ends (found by an adversarial tester)."""
    setup(disk, lambda top: None)
    live = tmp_path / name
    live.mkdir()
    sh("mount", "-o", "subvol=root", disk.device, str(live))
    try:
        said = refused(disk)
    finally:
        sh("umount", str(live))
    line = next(line for line in said.splitlines() if "reason=mounted" in line)
    assert "'root' is mounted at '" in line and "live" in line and "root (" not in line, said


def test_a_second_skip_next_for_another_root_is_refused_not_a_silent_overwrite(disk: Disk) -> None:
    """skip-next for `root`, then for `other`: the second overwrote the first without a word, and root's
    next boot replaced it (found by a sequence fuzzer). Refused (one mark at a time), nothing changed."""
    setup(disk, lambda top: btrfsutil.create_subvolume(str(top / "other")))
    assert disk.rollback("skip-next").returncode == Exit.OK
    before = disk.state()
    second = disk.rollback("skip-next", "--subvolume", "other")
    assert second.returncode == Exit.REFUSED and "reason=mark-taken" in second.stderr, second.stderr
    assert "(subvolume id 256, 'root' now)" in second.stderr and "rm <top>/.rollback/skip-next" in second.stderr
    assert disk.state() == before
    assert disk.rollback("run").returncode == Exit.SKIPPED


def test_skip_next_replaces_a_mark_for_a_subvolume_no_longer_there(disk: Disk) -> None:
    """skip-next, then the root replaced by hand and the old one deleted: the mark named a subvolume
    no boot can keep, and skip-next for the new root was refused mark-taken for ever, its hint ("let
    that root's next boot use it") impossible (found by a layouts tester). Such a mark is replaced;
    one for a subvolume still there (moved aside) is refused, named by its path now."""
    setup(disk, lambda top: None)
    assert disk.rollback("skip-next").returncode == Exit.OK
    with disk.top() as top:
        (top / "root").rename(top / "root-before-restore")
        btrfsutil.create_subvolume(str(top / "root"))
    moved = disk.rollback("skip-next")
    assert moved.returncode == Exit.REFUSED and "'root-before-restore' now" in moved.stderr, moved.stderr
    with disk.top() as top:
        btrfsutil.delete_subvolume(str(top / "root-before-restore"), recursive=True)
    assert disk.rollback("skip-next").returncode == Exit.OK
    assert disk.rollback("run").returncode == Exit.SKIPPED  # the new root kept


def test_skip_next_for_a_read_only_root_is_refused_before_a_boot_keeps_it(disk: Disk) -> None:
    """The README's restore done with `snapshot -r`: skip-next set the mark, the kept boot ran on a
    read-only root and every run after it was refused read-only-target, status silent meanwhile
    (found by a recovery tester). Refused at once, saying why; nothing written."""
    setup(disk, lambda top: None)
    with disk.top() as top:
        (top / "root").rename(top / "root-before-restore")
        btrfsutil.create_snapshot(str(top / "root-before-restore"), str(top / "root"), read_only=True)
    before = disk.state()
    result = disk.rollback("skip-next")
    assert result.returncode == Exit.REFUSED and "reason=read-only-target" in result.stderr, result.stderr
    assert "a root kept read-only boots read-only" in result.stderr, result.stderr
    assert disk.state() == before


def test_a_mark_for_a_root_deleted_since_is_removed_by_the_next_run(disk: Disk) -> None:
    """skip-next, then a restore by hand and the marked root deleted: every run warned "the mark is for
    subvolume id N, not 'root' (another subvolume)", for ever, and status said the next boot replaces
    it (found by a recovery tester). status says the next run removes it; the run does, once."""
    setup(disk, lambda top: None)
    assert disk.rollback("skip-next").returncode == Exit.OK
    with disk.top() as top:
        btrfsutil.delete_subvolume(str(top / "root"), recursive=True)
        btrfsutil.create_subvolume(str(top / "root"))
    status = disk.rollback("status")
    assert "which no longer exists: the next run removes it" in status.stdout, status.stdout
    first = disk.rollback("run")
    assert first.returncode == Exit.OK and "which no longer exists (deleted since skip-next): removed" in first.stderr
    assert "remove mark .rollback/skip-next" in first.stderr, first.stderr  # a step of the run's
    with disk.top() as top:
        assert not (top / ".rollback" / "skip-next").exists()
    again = disk.rollback("run")
    assert again.returncode == Exit.OK and "kind=warning" not in again.stderr, again.stderr


def test_a_run_by_hand_without_the_machines_archive_is_refused(disk: Disk, tmp_path: Path) -> None:
    """A rescue shell has no /etc/rollback.toml: `rollback run --device ...` there deleted the root that
    the machine's boots archive (exit 0, no warning; found by a recovery tester). Refused, nothing
    written; given the archive it archives; `--archive ''` deletes as asked; with a config file (the
    machine's settings, the archive turned off in them), no refusal."""
    setup(disk, lambda top: None)
    assert disk.rollback("run", "--archive", "old_roots").returncode == Exit.OK
    with disk.top() as top:
        (top / "root" / "used").write_text("a day's work\n")  # (an untouched root loses nothing: no refusal)
    before = disk.state()
    for dry in ((), ("--dry-run",)):
        result = disk.rollback("run", *dry)
        assert result.returncode == Exit.REFUSED and "reason=archive-unset" in result.stderr, result.stderr
        assert "--archive 'old_roots'" in result.stderr, result.stderr
    assert disk.state() == before
    config = tmp_path / "rollback.toml"
    config.write_text('archive = "old_roots"\n')
    with disk.top() as top:
        (top / "root" / "used").write_text("kept by the machine's settings\n")
    assert disk.rollback("run", "--config", str(config)).returncode == Exit.OK
    result = disk.rollback("run", "--archive", "")
    assert result.returncode == Exit.OK and "deleted" in result.stderr, result.stderr
    archived = [p for p in disk.state().subvolume_paths() if p.startswith("old_roots/") and p.count("/") == 1]
    assert len(archived) == 2, archived
    with disk.top() as top:
        (top / "root" / "used").write_text("the machine's settings keep no archive\n")
    machines = tmp_path / "machines.toml"  # a config file: the machine's settings, archive turned off in them
    machines.write_text("")
    assert disk.rollback("run", "--config", str(machines)).returncode == Exit.OK


def test_a_mark_without_an_id_keeps_no_root_that_is_not_there(disk: Disk) -> None:
    """An empty mark (by hand, an older version) and no root: the run said "kept" (exit 77) and the boot
    had no root to mount (found by a sequence fuzzer). It makes the root and leaves the mark."""
    setup(disk, lambda top: btrfsutil.delete_subvolume(str(top / "root"), recursive=True))
    with disk.top() as top:
        (top / ".rollback").mkdir()
        (top / ".rollback" / "skip-next").write_text("")
    result = disk.rollback("run")
    assert result.returncode == Exit.OK and "root created (none was there)" in result.stderr, result.stderr
    assert "the skip-next mark is for any root" in result.stderr


def test_a_leftover_draft_of_the_mark_is_in_no_ones_way(disk: Disk) -> None:
    """skip-next writes the mark under a draft name first; a directory there (a crash, a hand) made
    every skip-next fail (found by a sequence fuzzer). Each writes its own draft."""
    setup(disk, lambda top: None)
    with disk.top() as top:
        (top / ".rollback" / ".skip-next.new").mkdir(parents=True)
    assert disk.rollback("skip-next").returncode == Exit.OK
    assert disk.rollback("run").returncode == Exit.SKIPPED


def _old_entries(top: Path) -> None:
    """An archived root due for pruning and a trash leftover, each with a directory to mount on."""
    for holder in ("old", ".rollback/trash"):
        (top / holder).mkdir(parents=True)
        btrfsutil.create_subvolume(str(top / holder / "20200101T000000Z"))
        (top / holder / "20200101T000000Z" / "var").mkdir()


@pytest.mark.parametrize("namespace", ["host", "other"])
@pytest.mark.parametrize(
    ("on", "verb"),
    [
        ("root", ("run", "--archive", "")),  # (an archive there, none configured: as told, row 226)
        ("root/tmp", ("run", "--archive", "")),
        ("root/tmp", ("run", "--cleanup", "after-boot", "--archive", "")),
        ("old/20200101T000000Z/var", ("run", "--archive", "old", "--keep-count", "1")),
        (".rollback/trash/20200101T000000Z/var", ("run", "--archive", "")),
        (".rollback/trash/20200101T000000Z/var", ("cleanup",)),
    ],
)
def test_a_filesystem_mounted_on_a_path_the_verb_moves_or_deletes_is_refused(
    disk: Disk, tmp_path: Path, on: str, verb: tuple[str, ...], namespace: str
) -> None:
    """A tmpfs (any filesystem) mounted through a top-level mount on the root, inside it, inside an
    archived root retention prunes or a trash entry: renaming its mount point failed with EBUSY (exit 1
    "the next run finishes the job", at every run; in keep mode after the root was moved), and a delete
    detached it from whoever used it. Refused before any change, whichever namespace holds the mount."""
    setup(disk, _old_entries)
    held = tmp_path / "held"
    held.mkdir()
    script = f"mount -o subvolid=5 {disk.device} {held} && mount -t tmpfs tmpfs {held}/{on}"
    if namespace == "host":
        sh("sh", "-c", script)
        holder = None
    else:  # only a process in its own mount namespace has it
        holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{script} && exec sleep 600"]
        )
        deadline = time.monotonic() + 10
        while f" {held}/{on} " not in Path(f"/proc/{holder.pid}/mountinfo").read_text():
            assert holder.poll() is None and time.monotonic() < deadline, "the namespace's mounts failed"
            time.sleep(0.05)
    try:
        before = disk.state()
        result = disk.rollback(*verb)
        assert result.returncode == Exit.REFUSED and "reason=mounted" in result.stderr, result.stderr
        assert f"'{on}' has a filesystem mounted on it" in result.stderr
        assert disk.state() == before
    finally:
        if holder is None:
            subprocess.run(["umount", "-R", str(held)], capture_output=True)
        else:
            holder.kill()
            holder.wait()
    assert disk.rollback(*verb).returncode == Exit.OK  # unmounted, it goes on


def test_a_lock_held_on_the_device_node_past_the_wait_is_refused(disk: Disk) -> None:
    setup(disk, lambda top: None)
    fd = os.open(disk.device, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        began = time.monotonic()
        said = refused(disk)
        assert f"has held the lock on the device node {disk.device} for 10 s, pid {os.getpid()}: '" in said, said
        assert time.monotonic() - began >= 10  # waited: udev holds it for as long as an event takes
    finally:
        os.close(fd)


def test_the_run_waits_for_udev_to_finish_with_the_device_node(disk: Disk) -> None:
    """udev holds a shared lock on the disk's node while it processes an event: the run refused at
    once, "another rollback (or a disk tool)" (found by a reviewing helper); now it waits."""
    setup(disk, lambda top: None)
    fd = os.open(disk.device, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # as udev does
    releasing = threading.Timer(1.0, os.close, (fd,))
    releasing.start()
    try:
        result = disk.rollback("run")
    finally:
        releasing.join()
    assert result.returncode == Exit.OK, result.stderr


def test_not_btrfs(disk: Disk) -> None:
    sh("wipefs", "-a", disk.device)
    result = disk.rollback("run")
    assert result.returncode == Exit.REFUSED and "does not hold a btrfs filesystem" in result.stderr


def test_config_error_touches_nothing(disk: Disk) -> None:
    setup(disk, lambda top: None)
    assert "invalid:" in refused(disk, "--subvolume", "root/../persist", code=Exit.USAGE)


def test_unmountable_btrfs(disk: Disk) -> None:
    with open(disk.device, "r+b") as handle:  # keep the magic, break the superblock checksum
        handle.seek(0x10000)
        handle.write(b"\xff" * 32)
    result = disk.rollback("run")
    assert result.returncode == Exit.REFUSED and "cannot mount" in result.stderr


def test_dry_run_refuses_the_same_way(disk: Disk) -> None:
    setup(disk, lambda top: btrfsutil.create_subvolume(str(top / "root" / "persist2")))
    assert "protected subvolume 'root/persist2'" in refused(disk, "--dry-run", "--protect", "persist2")


# a dry run refuses as the run does: the run's remount read-write fails, a dry run must not try it
@pytest.mark.parametrize("verb", [("run",), ("run", "--dry-run"), ("cleanup", "--dry-run")], ids=" ".join)
def test_read_only_device_is_refused(disk: Disk, tmp_path: Path, verb: tuple[str, ...]) -> None:
    setup(disk, lambda top: None)
    assert disk.rollback("run", "--cleanup", "after-boot").returncode == Exit.OK  # something in the trash
    before = disk.state()
    image = tmp_path / "disk.img"  # the fixture's image, attached a second time, read-only
    read_only = sh("losetup", "-f", "--show", "-r", str(image))
    try:
        result = subprocess.run(
            rollback_argv(*verb, device=read_only),
            capture_output=True,
            text=True,
        )
    finally:
        sh("losetup", "-d", read_only)
    assert result.returncode == Exit.REFUSED and "reason=read-only" in result.stderr, result.stderr
    assert "cannot write to the filesystem" in result.stderr
    assert disk.state() == before


def test_another_subvolume_mounted_read_only_does_not_matter(disk: Disk, tmp_path: Path) -> None:
    setup(disk, lambda top: None)
    before = disk.state()
    live = tmp_path / "persist-ro"
    live.mkdir()
    sh("mount", "-o", "ro,subvol=persist", disk.device, str(live))
    try:
        assert disk.rollback("run").returncode == Exit.OK
    finally:
        sh("umount", str(live))
    assert outside_root(disk.state()) == outside_root(before)


def test_a_full_filesystem_still_rolls_back(disk: Disk) -> None:
    """Data space exhausted (ENOSPC for writes): the rollback needs only metadata, and frees space."""

    def fill(top: Path) -> None:
        with (top / "persist" / "fill").open("wb") as handle:
            try:
                while True:
                    handle.write(b"\xa5" * (1 << 20))
                    handle.flush()
            except OSError:
                pass

    setup(disk, fill)
    before = disk.state()
    result = disk.rollback("run")
    assert result.returncode == Exit.OK, result.stderr
    after = disk.state()
    assert outside_root(after) == outside_root(before) and "root/tmp/cruft" not in after.files


@pytest.mark.parametrize("code", [errno.EIO, errno.EUCLEAN], ids=["EIO", "EUCLEAN"])
@pytest.mark.parametrize("verb", ["run", "cleanup", "skip-next"])
def test_a_damaged_filesystem_while_observing_is_refused(disk: Disk, verb: str, code: int) -> None:
    """A tree block that fails its checksum or reads as garbage while the run looks (observe raises the
    kernel's EIO or EUCLEAN, injected): the same at every boot, nothing changed, so a refusal naming
    the damage (was: exit 1 `internal`, "a bug: report it", at every boot)."""
    setup(disk, lambda top: None)
    before = disk.state()
    inject = (
        "import os, sys\n"
        "from rollback.effects import btrfs\n"
        "def damaged(*args, **kwargs):\n"
        f"    raise OSError({code}, os.strerror({code}), 'root')\n"
        "btrfs.observe = damaged\n"
        "from rollback.cli import run\n"
        "run()\n"
    )
    argv = [sys.executable, "-c", inject, *disk.rollback_argv(verb)[3:]]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == Exit.REFUSED and "reason=unreadable" in result.stderr, result.stderr
    assert os.strerror(code) in result.stderr and "btrfs check" in result.stderr
    assert disk.state() == before


@pytest.mark.parametrize("step", [WriteMark(SKIP_MARK, 256), RemoveMark(SKIP_MARK)], ids=["write", "remove"])
def test_the_mark_is_never_written_or_removed_through_a_swapped_in_link(tmp_path: Path, step: Step) -> None:
    """The plan refuses a `.rollback` that is a symbolic link; one swapped in after it looked (a race)
    fails the step instead of reaching through (the executor opens `.rollback` O_NOFOLLOW)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "skip-next").write_text("someone else's\n")
    top = tmp_path / "top"
    top.mkdir()
    (top / ".rollback").symlink_to(elsewhere)
    with pytest.raises(OSError):
        btrfs.execute(step, top)
    assert (elsewhere / "skip-next").read_text() == "someone else's\n"


def test_a_device_gone_between_probe_and_lock_is_refused_not_internal(tmp_path: Path) -> None:
    """The node is opened for its lock after probe(): a disk unplugged (a dm device removed) between the
    two raised a bare OSError, exit 1 `internal` "report it", though nothing had changed (found by a
    code auditor)."""
    from rollback.effects import device
    from rollback.errors import Refused

    with pytest.raises(Refused) as caught, device.locked(str(tmp_path / "gone"), "0" * 32):
        pass
    assert caught.value.code == "no-device" and "cannot open" in caught.value.reason, caught.value.reason


def _system_in_root(top: Path, *, nested_usr: bool = False, fstab: bool = False) -> None:
    if fstab:
        _fstab(top, "root")
    if nested_usr:  # /usr a subvolume of its own, nested in the root: it goes with the root
        btrfsutil.create_subvolume(str(top / "root/usr"))
    (top / "root/usr/lib/systemd").mkdir(parents=True)
    (top / "root/usr/lib/systemd/systemd").write_text("the system manager\n")


def _sysroot_unit(disk: Disk, tmp_path: Path) -> dict[str, str]:
    """The environment of a run whose initrd boots `root` of this device (its sysroot.mount)."""
    unit = tmp_path / "sysroot.mount"
    unit.write_text(f"[Mount]\nWhat={disk.device}\nWhere=/sysroot\nType=btrfs\nOptions=subvol=/root,rw\n")
    return {SYSROOT_UNIT_ENV: str(unit)}


@pytest.mark.parametrize(
    ("flags", "nested_usr", "fstab"),
    [
        ((), False, False),
        (("--cleanup", "after-boot"), False, False),
        (("--cleanup", "after-boot"), True, False),
        ((), True, True),  # its fstab mounts /usr: its own nested subvolume, which goes with it
        ((), False, True),  # its fstab mounts /usr, which the empty new root would not
        (("--archive", "old"), False, False),
        (("--mode", "snapshot"), False, False),
    ],
    ids=[
        "recreate",
        "after-boot",
        "after-boot, usr nested",
        "usr nested, in its fstab",
        "usr in its fstab",
        "keep",
        "snapshot, a blank without it",
    ],
)
def test_a_root_holding_the_system_is_not_replaced_by_one_without_it(
    disk: Disk, tmp_path: Path, flags: tuple[str, ...], nested_usr: bool, fstab: bool
) -> None:
    """The installer refuses a root holding the operating system in recreate mode; a config edited since
    (`mode` dropped, another blank) reached the boot, which made an empty root (the machine did not come
    up) and, deleting at boot, deleted the system (a tester of settings changed between boots). Refused
    where the initrd boots this subvolume (its sysroot.mount), an init= into the root's own /usr too,
    unless the system is started from elsewhere (init= outside the root's directories: NixOS)."""
    setup(disk, partial(_system_in_root, nested_usr=nested_usr, fstab=fstab), blank=True)
    env = _sysroot_unit(disk, tmp_path)
    cmdline = tmp_path / "cmdline"
    for words in ("quiet", "quiet init=/usr/lib/systemd/systemd"):
        cmdline.write_text(words + "\n")
        before = disk.state()
        result = disk.rollback("run", *flags, env=env, cmdline=str(cmdline))
        assert result.returncode == Exit.REFUSED and "reason=holds-system" in result.stderr, result.stderr
        assert "would not come up" in result.stderr and disk.state() == before
    cmdline.write_text("quiet init=/nix/store/0000-nixos-system/init\n")
    started = disk.rollback("run", *flags, env=env, cmdline=str(cmdline))
    assert started.returncode == Exit.OK, started.stderr


def _fstab(top: Path, subvolume: str) -> None:
    (top / subvolume / "etc").mkdir(exist_ok=True)
    (top / subvolume / "etc/fstab").write_text("# /usr from a subvolume of its own\nUUID=x /usr btrfs subvol=usr 0 0\n")


def _blank_mounting_usr(top: Path) -> None:
    _system_in_root(top)
    btrfsutil.delete_subvolume(str(top / "root-blank"))
    btrfsutil.create_subvolume(str(top / "root-blank"))
    _fstab(top, "root-blank")
    btrfsutil.set_subvolume_read_only(str(top / "root-blank"))


@pytest.mark.parametrize(
    ("change", "flags", "unit", "words"),
    [
        (_system_in_root, (), False, ""),  # the initrd does not boot this subvolume (no sysroot.mount)
        (_system_in_root, (), True, "mount.usr=/dev/vdb1"),  # /usr from elsewhere
        (_system_in_root, (), "usr", ""),  # the initrd mounts /usr itself (sysroot-usr.mount)
        (_blank_mounting_usr, ("--mode", "snapshot"), True, ""),  # the new root mounts /usr
    ],
    ids=[
        "no sysroot.mount",
        "mount.usr=",
        "sysroot-usr.mount",
        "the blank's fstab mounts /usr",
    ],
)
def test_the_system_check_leaves_what_it_cannot_judge(
    disk: Disk, tmp_path: Path, change: Callable[[Path], None], flags: tuple[str, ...], unit: bool | str, words: str
) -> None:
    setup(disk, change, blank=True)
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"quiet {words}\n")
    env = _sysroot_unit(disk, tmp_path) if unit else {SYSROOT_UNIT_ENV: str(tmp_path / "sysroot.mount")}  # none
    if unit == "usr":
        (tmp_path / "sysroot-usr.mount").write_text("[Mount]\nWhat=/dev/vdb1\nWhere=/sysroot/usr\n")
    result = disk.rollback("run", *flags, env=env, cmdline=str(cmdline))
    assert result.returncode == Exit.OK, result.stderr


@pytest.mark.parametrize("flags", [(), ("--cleanup", "after-boot")])
def test_a_run_by_hand_keeps_a_root_holding_the_system(disk: Disk, tmp_path: Path, flags: tuple[str, ...]) -> None:
    """Outside the initrd nothing says which subvolume the machine boots: a run by hand (a rescue shell)
    replaced a root holding the system with an empty one, exit 0, the system deleted, while the boot
    refused it (a tester walking the docs). Judged as the boot's is, /usr from elsewhere read only from a
    command line given: the running kernel's is the rescue system's (a reviewer)."""
    setup(disk, _system_in_root, blank=True)
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("quiet\n")
    # the rescue system's own command line (a NixOS installer's init=) says nothing of the machine's boot
    rescue = tmp_path / "proc-cmdline"
    rescue.write_text("init=/nix/store/0000-nixos-system/init mount.usr=/dev/sr0\n")
    before = disk.state()
    env = {**os.environ, PROC_CMDLINE_ENV: str(rescue)}
    unset = rollback_argv("run", *flags, device=disk.device, cmdline=None)  # no --kernel-cmdline: the running one
    runs = [disk.rollback_argv(*verb, *flags, cmdline=str(cmdline)) for verb in (("run", "--dry-run"), ("run",))]
    for argv in (*runs, unset):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == Exit.REFUSED and "reason=holds-system" in result.stderr, result.stderr
        assert "A run by hand: give it the machine's settings (--config" in result.stderr
        assert disk.state() == before
    cmdline.write_text("quiet mount.usr=/dev/vdb1\n")  # the machine's, given
    started = disk.rollback("run", *flags, env={PROC_CMDLINE_ENV: str(rescue)}, cmdline=str(cmdline))
    assert started.returncode == Exit.OK, started.stderr


def test_a_blank_holding_the_system_makes_roots_that_boot(disk: Disk, tmp_path: Path) -> None:
    def blank_with_system(top: Path) -> None:
        _system_in_root(top)
        btrfsutil.delete_subvolume(str(top / "root-blank"))
        btrfsutil.create_snapshot(str(top / "root"), str(top / "root-blank"), read_only=True)

    setup(disk, blank_with_system, blank=True)
    for _ in range(2):  # the first root a snapshot of the blank, the second too
        result = disk.rollback("run", "--mode", "snapshot", env=_sysroot_unit(disk, tmp_path))
        assert result.returncode == Exit.OK, result.stderr
    with disk.top(read_only=True) as top:
        assert (top / "root/usr/lib/systemd/systemd").read_text() == "the system manager\n"


def test_a_system_installed_into_a_root_made_from_an_empty_blank_is_not_replaced(disk: Disk, tmp_path: Path) -> None:
    """An empty blank first, the root a snapshot of it, the system installed into the root, then snapshot
    mode: the first boot made an empty root and deleted the system (a tester; the root, made from this
    blank, was taken to have got the system since it last booted)."""

    def installed(top: Path) -> None:
        btrfsutil.delete_subvolume(str(top / "root-blank"))
        btrfsutil.create_subvolume(str(top / "root-blank"))
        btrfsutil.set_subvolume_read_only(str(top / "root-blank"))
        sh("mv", str(top / "root"), str(top / "root-first"))  # (populate's, with persist's mount point)
        btrfsutil.create_snapshot(str(top / "root-blank"), str(top / "root"))
        _system_in_root(top)

    setup(disk, installed, blank=True)
    before = disk.state()
    result = disk.rollback("run", "--mode", "snapshot", env=_sysroot_unit(disk, tmp_path))
    assert result.returncode == Exit.REFUSED and "reason=holds-system" in result.stderr, result.stderr
    assert disk.state() == before
