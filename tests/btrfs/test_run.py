"""`rollback run` on real btrfs: every mode, first run, re-run, nested subvolumes, retention."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import btrfsutil
import pytest

from rollback.errors import Exit
from rollback.verbs import FAIL_AT_ENV, FAIL_ERRNO_ENV
from tests.support.disks import Disk, attached, parse_json, released, stopped
from tests.support.layout import outside_root, populate, sh

pytestmark = pytest.mark.btrfs


def test_recreate_deletes_nested_subvolumes_and_keeps_the_rest(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    before = disk.state()
    result = disk.rollback("run")
    assert result.returncode == Exit.OK, result.stderr
    after = disk.state()
    assert after.under("root") == {"root": after.files["root"]}  # empty
    assert outside_root(after) == outside_root(before)
    assert after.subvolume_paths() == ["home", "nix", "persist", "root"]
    assert {s.path: s.id for s in after.subvolumes}["root"] not in {s.id for s in before.subvolumes}
    assert "4 subvolume(s) deleted" in result.stderr


def test_snapshot_mode_restores_the_blank(disk: Disk) -> None:
    with disk.top() as top:
        populate(top, blank=True)
    before = disk.state()
    assert disk.rollback("run", "--mode", "snapshot").returncode == Exit.OK
    after = disk.state()
    assert sorted(after.under("root")) == ["root", "root/etc", "root/etc/machine-id"]
    assert outside_root(after) == outside_root(before)
    with disk.top() as top:
        assert not btrfsutil.get_subvolume_read_only(str(top / "root"))
        (top / "root" / "writable").write_text("yes")  # the new root is writable


@pytest.mark.parametrize("umask", [0o077, 0o027, 0o000])
def test_the_new_root_is_0755_whatever_the_callers_umask(disk: Disk, umask: int) -> None:
    """The kernel gives a new subvolume's top directory 0777 & ~umask: a run from a root shell with
    umask 077 made / 0700 (kept by skip-next or rollback.skip, every service not running as root failed)."""
    with disk.top() as top:
        populate(top)
    argv = ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *disk.rollback_argv("run")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == Exit.OK, result.stderr
    with disk.top() as top:
        assert (top / "root").stat().st_mode & 0o7777 == 0o755


def test_first_run_without_root(disk: Disk) -> None:
    with disk.top() as top:
        btrfsutil.create_subvolume(str(top / "persist"))
    status = disk.rollback("status").stdout  # says what the run makes of it, not only "root missing"
    assert "root:       root missing: the next run creates it (a first run, a run cut short" in status, status
    result = disk.rollback("run")
    assert result.returncode == Exit.OK, result.stderr
    assert disk.state().subvolume_paths() == ["persist", "root"]
    assert "root created (none was there), 0 subvolume(s) deleted" in result.stderr  # a misspelt name shows
    assert "root replaced" in disk.rollback("run").stderr


def test_rerun_on_a_clean_device_is_harmless(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    assert disk.rollback("run").returncode == Exit.OK
    first = disk.state()
    assert disk.rollback("run").returncode == Exit.OK
    second = disk.state()
    assert second.files == first.files
    assert second.subvolume_paths() == first.subvolume_paths()


def test_keeping_old_roots_archives_and_prunes_by_count(disk: Disk) -> None:
    with disk.top() as top:
        populate(top, nested=["root/var/lib/machines"])
    for boot in range(3):
        with disk.top() as top:
            (top / "root" / f"boot-{boot}").write_text(str(boot))
        result = disk.rollback("run", "--archive", "old_roots", "--keep-count", "2")
        assert result.returncode == Exit.OK, result.stderr
    state = disk.state()
    archived = sorted(p for p in state.subvolume_paths() if p.startswith("old_roots/") and p.count("/") == 1)
    assert len(archived) == 2
    assert [p for p in state.files if p.endswith(("boot-0", "boot-1", "boot-2"))] == [
        f"{archived[0]}/boot-1",
        f"{archived[1]}/boot-2",
    ]
    assert f"{archived[1]}/var/lib/machines" not in state.subvolume_paths()  # root had no nested left at boot 2
    assert state.under(".rollback/trash") == {".rollback/trash": state.files[".rollback/trash"]}


def test_keeping_prunes_by_age_recursively(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
        (top / "old").mkdir()
        btrfsutil.create_snapshot(str(top / "root"), str(top / "old" / "20200101T000000Z"))
        btrfsutil.create_subvolume(str(top / "old" / "20200101T000000Z" / "nested"))
    result = disk.rollback("run", "--archive", "old", "--keep-days", "30", "--keep-min", "1")
    assert result.returncode == Exit.OK, result.stderr
    archived = [p for p in disk.state().subvolume_paths() if p.startswith("old/")]
    assert len(archived) == 4 and not any(p.startswith("old/20200101T000000Z") for p in archived)


def test_archive_names_never_collide_within_one_second(disk: Disk) -> None:
    with disk.top() as top:
        populate(top, nested=[])
    for boot in range(3):
        with disk.top() as top:
            (top / "root" / "used").write_text(str(boot))
        assert disk.rollback("run", "--archive", "old").returncode == Exit.OK
    assert len([p for p in disk.state().subvolume_paths() if p.startswith("old/")]) == 3


def _readme_block(after: str) -> str:
    """The README's first shell block after the sentence starting with `after`."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text[text.index(after) :].split("```sh\n", 1)[1].split("```", 1)[0]
    return block


def test_a_root_brought_back_as_the_readme_says_is_archived_as_the_newest(disk: Disk) -> None:
    """README's recipe, its shell lines as written (the device's own paths put in): snapshot the archived
    root into place, move its nested subvolumes over, skip-next. The snapshot alone left the nested
    subvolumes behind as empty directories, pruned later with the archived root (found by a recovery
    tester). Retention orders by the transaction that created each subvolume: the snapshot is new, so
    once archived again it is the last to be pruned (a root moved back with mv went first)."""
    keep = ("--archive", "old_roots", "--keep-count", "3")
    nested = ["root/var/lib/machines", "root/var/lib/machines/guest", "root/srv data"]
    with disk.top() as top:
        populate(top, nested=[])
    for boot in range(3):
        with disk.top() as top:
            (top / "root" / "used").write_text(f"boot {boot}\n")
            for path in nested:
                (top / path).parent.mkdir(parents=True, exist_ok=True)
                btrfsutil.create_subvolume(str(top / path))
                (top / path / "data").write_text(f"{path} at boot {boot}\n")
        assert disk.rollback("run", *keep).returncode == Exit.OK
    oldest = sorted(p for p in disk.state().subvolume_paths() if p.startswith("old_roots/") and p.count("/") == 1)[0]
    lines = _readme_block("Bring an archived root back").replace("old_roots/20261127T060000Z", oldest)
    assert lines.count("sudo rollback skip-next --device /dev/vda2\n") == 1
    with disk.top() as top:
        script = lines.replace("sudo rollback skip-next --device /dev/vda2\n", "").replace("/mnt", str(top))
        sh("bash", "-e", "-o", "pipefail", "-c", script.replace("sudo ", ""))
    assert disk.rollback("skip-next").returncode == Exit.OK
    assert disk.rollback("run", *keep).returncode == Exit.SKIPPED
    with disk.top() as top:  # the root as it was, its nested subvolumes too
        assert (top / "root" / "used").read_text() == "boot 0\n"
        for path in nested:
            assert (top / path / "data").read_text() == f"{path} at boot 0\n", path
    for day in ("restored", "next", "after"):
        with disk.top() as top:
            (top / "root" / "used").write_text(f"{day}\n")
        assert disk.rollback("run", *keep).returncode == Exit.OK
    with disk.top(read_only=True) as top:
        kept = sorted((top / "old_roots" / name / "used").read_text() for name in os.listdir(top / "old_roots"))
    assert kept == ["after\n", "next\n", "restored\n"], "the restored root was pruned first"


def test_a_root_taken_from_the_trash_as_the_readme_says_holds_the_runs_lock(disk: Disk) -> None:
    """README: take an old root back from the trash holding the run lock. Without it, a cleanup deleting
    that entry went on deleting its nested subvolumes after the move (found by a recovery tester). The
    README's command names the tool's own lock: a cleanup meanwhile waits for it (it was refused `locked`:
    a failed unit), then finds the trash empty; nothing of the moved root deleted."""
    with disk.top() as top:
        populate(top, nested=["root/srv"])
    assert disk.rollback("run", "--cleanup", "after-boot").returncode == Exit.OK
    with disk.top() as top:
        (entry,) = os.listdir(top / ".rollback" / "trash")
        lines = _readme_block("is rollback's to delete").replace("20261128T060000Z", entry).replace("/mnt", str(top))
        held = lines.replace("mv ", "sh -c 'sleep 3 && mv ", 1).rstrip("\n") + "'"
        holder = subprocess.Popen(["bash", "-c", held.replace("sudo ", "")])
        try:
            time.sleep(1)
            cleanup = disk.rollback("cleanup", "--cleanup", "after-boot")
        finally:
            assert holder.wait(timeout=30) == 0
        assert cleanup.returncode == Exit.OK and "waiting for it" in cleanup.stderr, cleanup.stderr
        assert "the trash is empty: nothing to do" in cleanup.stderr, cleanup.stderr
        assert (top / "root-from-trash" / "srv" / "data").read_text() == "inside root/srv\n"
        assert os.listdir(top / ".rollback" / "trash") == []


def _in_an_initrd(argv: list[str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """`argv` run as the initramfs runs it: systemd's mark /etc/initrd-release, on an overlay over /etc
    in a mount namespace of its own (the host's /etc is not written)."""
    layers = [workdir / name for name in ("upper", "work")]
    for layer in layers:
        layer.mkdir(parents=True, exist_ok=True)
    marked = (
        "mount --make-rprivate / && mount -t overlay overlay -o lowerdir=/etc,upperdir=$1,workdir=$2 /etc "
        '&& echo NAME=test > /etc/initrd-release && shift 2 && exec "$@"'
    )
    command = ["unshare", "-m", "sh", "-c", marked, "sh", *map(str, layers), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_rd_options_are_read_on_the_running_system_as_the_boot_reads_them(disk: Disk, tmp_path: Path) -> None:
    """rd.rollback.* on the kernel command line (dracut users' spelling) is read by the boot, in the
    initrd. On the running system it was ignored (systemd's rule for rd. options): with
    rd.rollback.subvolume=@root, skip-next said "the next boot keeps root", marked `root`, and the boot
    replaced @root, its data gone (found by a tester). Now every verb reads it as the boot does."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("quiet rd.rollback.subvolume=@root\n")
    with disk.top() as top:
        populate(top)
    boot = partial(_in_an_initrd, workdir=tmp_path / "initrd")
    first = boot(disk.rollback_argv("run", cmdline=str(cmdline)))
    assert first.returncode == Exit.OK, first.stderr
    with disk.top() as top:
        (top / "@root" / "important").write_text("keep me\n")
    skipped = disk.rollback("skip-next", cmdline=str(cmdline))  # the running system
    assert skipped.returncode == Exit.OK and "keeps @root" in skipped.stdout, skipped.stderr + skipped.stdout
    status = parse_json(disk.rollback("status", "--json", cmdline=str(cmdline)))
    assert status["root"]["path"] == "@root" and status["skip_next"] is True, status
    before = disk.state()
    kept = boot(disk.rollback_argv("run", cmdline=str(cmdline)))
    assert kept.returncode == Exit.SKIPPED, kept.stderr
    after = disk.state()
    assert after.under("@root") == before.under("@root") and outside_root(after) == outside_root(before)


def test_rerun_when_keeping_does_not_archive_the_empty_root(disk: Disk) -> None:
    with disk.top() as top:
        populate(top, nested=[])
    for _ in range(3):
        assert disk.rollback("run", "--archive", "old", "--keep-count", "1").returncode == Exit.OK
    state = disk.state()
    archived = [p for p in state.subvolume_paths() if p.startswith("old/")]
    assert len(archived) == 1 and f"{archived[0]}/tmp/cruft" in state.files  # the real old root survives


def _write_and_sync(root: Path, write: str) -> None:
    """What a used system does before a power cut: a write made durable by fsync alone."""
    made = root / "used"
    if write == "file":
        made.write_text("fsynced")
        target = os.open(made, os.O_RDONLY)
    else:
        made.mkdir()
        target = os.open(root, os.O_RDONLY)
    try:
        os.fsync(target)
    finally:
        os.close(target)


@pytest.mark.parametrize("write", ["file", "directory"])
@pytest.mark.parametrize("mode", ["recreate", "snapshot"])
def test_a_root_used_only_up_to_a_power_cut_is_archived(disk: Disk, tmp_path: Path, mode: str, write: str) -> None:
    """Writes made durable by fsync and then a power cut before the next commit live only in the log
    tree; the next mount replays them without moving the root's ctransid. Keep mode must still see a
    used root and archive it (it replaced such a root with the data in it gone)."""
    flags = ["--archive", "old"] + (["--mode", "snapshot"] if mode == "snapshot" else [])
    with disk.top() as top:
        populate(top, nested=[], blank=True)
    assert disk.rollback("run", *flags).returncode == Exit.OK  # root: a fresh one, cruft archived
    before = [p for p in disk.state().subvolume_paths() if p.startswith("old/")]
    image = tmp_path / "power-cut.img"
    with disk.top() as top:
        _write_and_sync(top / "root", write)
        shutil.copyfile(tmp_path / "disk.img", image)  # the device as a power cut leaves it
    (tmp_path / "mnt-cut").mkdir()
    released(image)  # (the original, still held by a namespace being torn down, would make the copy refused)
    with attached(image) as device:
        cut = Disk(device, tmp_path / "mnt-cut", tmp_path)
        result = cut.rollback("run", *flags)  # its own (read-only) mount replays the log
        assert result.returncode == Exit.OK, result.stderr
        state = cut.state()
    archived = [p for p in state.subvolume_paths() if p.startswith("old/")]
    assert len(archived) == len(before) + 1, (before, archived)
    newest = max(set(archived) - set(before))
    assert f"{newest}/used" in state.files
    assert "used" not in {p.rpartition("/")[2] for p in state.under("root")}


def test_dry_run_prints_the_plan_and_changes_nothing(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    before = disk.state()
    result = disk.rollback("run", "--dry-run")
    assert result.returncode == Exit.OK, result.stderr
    assert "move root -> .rollback/trash/" in result.stdout
    assert "create empty subvolume root" in result.stdout
    assert "recursively (4 subvolumes)" in result.stdout
    assert disk.state() == before


def test_nested_target_path(disk: Disk) -> None:
    with disk.top() as top:
        (top / "@").mkdir()
        btrfsutil.create_subvolume(str(top / "@" / "root"))
        (top / "@" / "root" / "junk").write_text("x")
    assert disk.rollback("run", "--subvolume", "@/root").returncode == Exit.OK
    assert disk.state().under("@/root") == {"@/root": "dir:40755"}


def test_the_mount_does_not_outlive_the_process(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    assert disk.rollback("run").returncode == Exit.OK
    assert disk.device not in Path("/proc/self/mountinfo").read_text()
    assert list(Path("/run/rollback").iterdir()) == []  # the private mount point, empty out here


@pytest.mark.parametrize("step", [2, 3])
def test_a_failing_step_exits_1_and_the_next_run_finishes(disk: Disk, step: int) -> None:
    """A step fails after changes began (an I/O error): exit 1, and the next run converges."""
    with disk.top() as top:
        populate(top)
    before = disk.state()
    failed = disk.rollback("run", env={FAIL_AT_ENV: str(step)})
    assert failed.returncode == Exit.FAILED, failed.stderr
    assert f"failed: step {step}/7 failed:" in failed.stderr and "the next run finishes the job" in failed.stderr
    assert disk.rollback("run").returncode == Exit.OK
    after = disk.state()
    assert outside_root(after) == outside_root(before) and after.under("root") == {"root": "dir:40755"}
    assert [p for p in after.subvolume_paths() if p.startswith((".rollback/", "root/"))] == []


MODES = {"recreate": (), "keep": ("--archive", "old", "--keep-min", "0"), "snapshot": ("--mode", "snapshot")}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize(
    ("code", "reason", "exit_"),
    [
        (errno.ENOSPC, "no-space", Exit.REFUSED),
        (errno.EDQUOT, "over-quota", Exit.REFUSED),
        (errno.EIO, "step-failed", Exit.FAILED),
    ],
)
def test_when_the_new_root_cannot_be_made_the_old_one_is_moved_back(
    disk: Disk, mode: str, code: int, reason: str, exit_: Exit
) -> None:
    """The old root was set aside (into the trash or the archive), then making the new one fails: the
    old root goes back, so this boot has a root (yesterday's) rather than none, and so does the next
    one if space never comes back. No room for it is a refusal, the same at the next boot (it was
    no-space-midway, exit 1 at every boot); an I/O error a failure. With the space back, the next run
    finishes the job."""
    with disk.top() as top:
        populate(top, blank=True)
    flags = MODES[mode]
    before = disk.state()
    for _ in range(2 if exit_ == Exit.REFUSED else 1):
        making = _making_step(disk, *flags)  # fewer steps once the first run made the trash or the archive
        failed = disk.rollback("run", *flags, env={FAIL_AT_ENV: str(making), FAIL_ERRNO_ENV: str(code)})
        assert failed.returncode == exit_, failed.stderr
        assert f"reason={reason}" in failed.stderr and "the old root was moved back" in failed.stderr, failed.stderr
        assert "put back: move " in failed.stderr  # its own step event, before the failure
        after = disk.state()
        ids = {s.path: s.id for s in after.subvolumes}
        assert ids["root"] == {s.path: s.id for s in before.subvolumes}["root"]  # the same subvolume, back
        assert after.under("root") == before.under("root") and outside_root(after) == outside_root(before)
    assert disk.rollback("run", *flags).returncode == Exit.OK
    assert disk.state().under("root") != before.under("root")


_CHROOT = """set -e
case "$1" in bound) mount --bind "$0" "$0" ;; subvol=*) mount -o "$1" "$ROLLBACK_DEVICE" "$0" ;; esac
for d in bin sbin lib lib64 usr etc root dev proc sys tmp run $ROLLBACK_TOPS; do
  [ -e "/$d" ] || continue
  # ours over what is there (an empty directory, or what an earlier call left, is bound over)
  case " $ROLLBACK_TOPS " in *" $d "*) ;; *)
    if [ -L "$0/$d" ] || [ -n "$(ls -A "$0/$d" 2>/dev/null)" ]; then continue; fi ;;
  esac
  case " ${ROLLBACK_UNBOUND-} " in *" $d "*) mkdir "$0/$d"; continue ;; esac
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$0/$d"; else mkdir -p "$0/$d"; mount --rbind "/$d" "$0/$d"; fi
done
shift
exec chroot "$0" "$@"
"""


def _chroot_env(unbound: str = "") -> dict[str, str]:
    """The top-level directories holding this checkout and its interpreter (CI clones it anywhere:
    /work, /check/work, /tmp), for the chroot to see the same paths; `unbound`: left empty there."""
    here = [Path(__file__).resolve(), Path(sys.executable), Path(sys.executable).resolve(), Path(sys.prefix).resolve()]
    tops = sorted({p.parts[1] for p in here if len(p.parts) > 1})
    return {**os.environ, "ROLLBACK_TOPS": " ".join(tops), "ROLLBACK_UNBOUND": unbound}


def _in_chroot(
    disk: Disk, root: Path, how: str, verb: str, unbound: str = "", *more: str
) -> subprocess.CompletedProcess[str]:
    """`verb` run in a chroot of the host at `root` (`how`: plain, bound on itself first, or `subvol=X`:
    that subvolume of the disk mounted there first, as a booted root), built in a private mount
    namespace of its own: nothing of it reaches the host."""
    root.mkdir()
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", _CHROOT, str(root), how]
    argv += disk.rollback_argv(verb, *more)
    env = {**_chroot_env(unbound), "ROLLBACK_DEVICE": disk.device}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/", env=env)


@pytest.mark.parametrize(
    ("booted", "said", "json_"),
    [
        ("persist", "from 'persist' (id 257), not root", {"path": "persist", "id": 257}),
        ("/", "from the top level, not root", {"path": "", "id": 5}),
        ("root", "", None),
    ],
    ids=["persist", "top level", "root"],
)
def test_status_on_a_system_booted_from_another_subvolume_says_a_boot_so_is_refused(
    disk: Disk, tmp_path: Path, booted: str, said: str, json_: dict[str, object] | None
) -> None:
    """rootflags= forgotten (the top level boots) or naming another subvolume: `status` on the running
    system looked healthy, and the boot after was refused root-options. Shown where / is that
    subvolume: a chroot into it, as a booted root."""
    with disk.top() as top:
        populate(top)
    result = _in_chroot(disk, tmp_path / "booted", f"subvol={booted}", "status")
    assert result.returncode == Exit.OK, result.stderr
    line = [found for found in result.stdout.splitlines() if found.startswith("booted:")]
    assert line == (
        [
            f"booted:     {said}: a boot that mounts the root so again is refused (root-options); "
            "boot with rootflags=subvol=root"
        ]
        if said
        else []
    ), result.stdout
    result = _in_chroot(disk, tmp_path / "booted-json", f"subvol={booted}", "status", "", "--json")
    assert result.returncode == Exit.OK, result.stderr
    assert json.loads(result.stdout)["booted_from"] == json_, result.stdout  # path and id, not a display string


@pytest.mark.parametrize("verb", ["status", "run", "cleanup", "skip-next"])
def test_in_a_plain_chroot_it_refuses_and_says_how(disk: Disk, tmp_path: Path, verb: str) -> None:
    """A rescue shell's plain `chroot DIR`: "/" is no mount's root, so it cannot be made a slave (EINVAL)
    and the run was an internal error with a traceback. Refused, naming the fix; with the directory
    bound on itself first (arch-chroot), every verb works. The chroot is built in a private mount
    namespace of its own: nothing of it reaches the host."""
    with disk.top() as top:
        populate(top)
    before = disk.state()
    result = _in_chroot(disk, tmp_path / "chroot", "plain", verb)
    assert result.returncode == Exit.REFUSED, result.stderr
    assert "reason=chroot" in result.stderr and "mount --bind DIR DIR" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and disk.state() == before
    done = _in_chroot(disk, tmp_path / "bound", "bound", verb)
    assert done.returncode == Exit.OK, done.stderr


@pytest.mark.parametrize("verb", ["status", "run", "cleanup", "skip-next"])
@pytest.mark.parametrize("unbound", ["proc", "sys", "proc sys"])
def test_in_a_chroot_without_proc_or_sys_it_refuses_before_mounting(
    disk: Disk, tmp_path: Path, verb: str, unbound: str
) -> None:
    """Without /sys nothing showed the filesystem mounted through another device, and our read-only
    mount replayed its log and committed under it; without /proc every verb was an internal error
    (found by a multi-device tester). Refused before any mount, naming what to mount."""
    with disk.top() as top:
        populate(top)
    before = disk.state()
    result = _in_chroot(disk, tmp_path / "chroot", "bound", verb, unbound)
    assert result.returncode == Exit.REFUSED, result.stderr
    assert "reason=chroot" in result.stderr and "mount -t proc proc /proc" in result.stderr, result.stderr
    said = result.stderr.split("hint=")[0]
    assert all(f"/{name}" in said for name in unbound.split()), said
    assert "Traceback" not in result.stderr and disk.state() == before


@pytest.mark.parametrize("verb", ["status", "run", "cleanup", "skip-next"])
@pytest.mark.parametrize("mode", [0o666, 0o600], ids=["device-readable", "device-unreadable"])
def test_without_root_privileges_it_refuses_clearly(disk: Disk, verb: str, mode: int) -> None:
    """A user who can read the device (group disk) met the lock directory (internal error, exit 1);
    one who cannot was told `unreadable`, "see dmesg" (found by a reviewing helper)."""
    with disk.top() as top:
        populate(top)
    before = disk.state()
    os.chmod(disk.device, mode)
    try:
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *disk.rollback_argv(verb)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[2],
        )
    finally:
        os.chmod(disk.device, 0o660)
    assert result.returncode == Exit.REFUSED, result.stderr
    assert "reason=not-root" in result.stderr and "root" in result.stderr.split("reason=")[0], result.stderr
    assert disk.state() == before


def _with_output_gone(argv: list[str], how: str) -> int:
    """Run `argv` with stderr a pipe whose reader is gone (every write: EPIPE), or stderr or stdout
    closed (`2>&-`, `>&-`: Python starts with that stream None); its exit code."""
    if how != "broken-pipe":
        fd = {"closed-stderr": 2, "closed-stdout": 1}[how]
        return subprocess.run(["bash", "-c", f'exec {fd}>&-; exec "$@"', "rollback", *argv], timeout=120).returncode
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=writer, timeout=120).returncode
    finally:
        os.close(writer)


@pytest.mark.parametrize("how", ["broken-pipe", "closed-stderr", "closed-stdout"])
@pytest.mark.parametrize(
    "verbs",
    [
        [("run",)],
        [("run", "--keep-count", "2", "--archive", "old")],
        [("run", "--cleanup", "after-boot"), ("cleanup",)],  # the first one as usual: it fills the trash
    ],
    ids=["run", "run-archive", "cleanup"],
)
def test_output_that_cannot_be_written_stops_nothing(disk: Disk, verbs: list[tuple[str, ...]], how: str) -> None:
    """`rollback run 2>&1 | head -1` by hand: the events after the first line cannot be written (EPIPE).
    That ended the run after step 1 and reported exit 0; a closed stderr ended it before it began
    (exit 1), a closed stdout turned a finished run into exit 1. Now the lines are lost, the run
    finishes, its exit code is its own."""
    with disk.top() as top:
        populate(top)
    before = disk.state()
    *first, last = verbs
    for verb in first:
        assert disk.rollback(*verb).returncode == Exit.OK
    assert _with_output_gone(disk.rollback_argv(*last, "--log-target", "console"), how) == Exit.OK
    after = disk.state()
    assert after.under("root") == {"root": after.files["root"]}  # the whole plan ran: an empty root
    assert not [p for p in after.subvolume_paths() if p.startswith(".rollback/")]  # and the trash empty
    assert outside_root(after) == outside_root(before)


@pytest.mark.parametrize("cleanup", ["boot", "after-boot"])
def test_no_room_for_the_first_change_deletes_the_pruned_archived_roots_first(disk: Disk, cleanup: str) -> None:
    """ENOSPC at step 1 (nothing changed) in keep mode with archived roots due: they are deleted
    straight from the archive, then the run goes on. It was a no-space refusal at every boot, whose
    message said there was nothing of rollback's to free."""
    with disk.top() as top:
        populate(top)
        (top / "old").mkdir()
        for stamp in ("20200101T000000Z", "20200102T000000Z"):
            btrfsutil.create_snapshot(str(top / "root"), str(top / "old" / stamp))
            btrfsutil.create_subvolume(str(top / "old" / stamp / "nested"))  # counted, and deleted too
        btrfsutil.set_subvolume_read_only(str(top / "old" / "20200101T000000Z"), True)
    before = disk.state()
    flags = ("--archive", "old", "--keep-count", "1", "--keep-min", "0", "--cleanup", cleanup)
    env = {FAIL_AT_ENV: "1", FAIL_ERRNO_ENV: str(errno.ENOSPC)}
    result = disk.rollback("run", *flags, env=env)
    assert result.returncode == Exit.OK, result.stderr
    assert "nothing changed: first deleting 2 pruned root(s)" in result.stderr
    assert "4 subvolume(s) deleted" in result.stderr  # a bounded listing (after-boot) counted 2
    after = disk.state()
    archived = [p for p in after.subvolume_paths() if p.startswith("old/") and p.count("/") == 1]
    assert len(archived) == 1 and archived[0] not in before.subvolume_paths()  # today's root, archived
    assert not [p for p in after.subvolume_paths() if p.startswith(("old/2020", ".rollback/"))]
    assert after.under("root") == {"root": "dir:40755"} and outside_root(after) == outside_root(before)


@pytest.mark.parametrize(
    "verb", [("status",), ("status", "--json"), ("diff",), ("diff", "--json"), ("run", "--dry-run")]
)
def test_a_verb_that_prints_with_stdout_closed_exits_0_and_changes_nothing(disk: Disk, verb: tuple[str, ...]) -> None:
    """Its output goes nowhere, as print()'s does with `>&-`; `diff`'s own writer was an internal error."""
    with disk.top() as top:
        populate(top)
    before = disk.state()
    assert _with_output_gone(disk.rollback_argv(*verb, "--log-target", "console"), "closed-stdout") == Exit.OK
    assert disk.state() == before


def _making_step(disk: Disk, *flags: str) -> int:
    """The number of the step that makes the new root, as --dry-run prints the plan."""
    planned = disk.rollback("run", "--dry-run", *flags).stdout.splitlines()
    return next(n for n, line in enumerate(planned, 1) if " subvolume root" in line or "-> root (" in line)


def _step(disk: Disk, text: str, *flags: str) -> int:
    """The number of the first step whose line, as --dry-run prints the plan, holds `text`."""
    planned = disk.rollback("run", "--dry-run", *flags).stdout.splitlines()
    return next(n for n, line in enumerate(planned, 1) if text in line)


def test_no_room_for_the_trash_of_the_first_prune_keeps_the_archived_roots(disk: Disk) -> None:
    """Keep mode, the new root made, then no room for the directory the trash needs (its first prune):
    exit 1 `no-space-midway` (the root was made and in use; stop-boot: emergency mode), since the
    directory was not counted as the prune's step (found by a full-disk tester). Now every root due is
    kept, said in a warning, exit 0; the next run with room prunes them."""
    with disk.top() as top:
        populate(top)
        (top / "old").mkdir()
        for stamp in ("20200101T000000Z", "20200102T000000Z"):
            btrfsutil.create_subvolume(str(top / "old" / stamp))
        btrfsutil.set_subvolume_read_only(str(top / "old" / "20200101T000000Z"))  # (btrfs send's): stays so
    flags = ("--archive", "old", "--keep-count", "1", "--keep-min", "0")
    step = _step(disk, ". make directory .rollback", *flags)
    result = disk.rollback("run", *flags, env={FAIL_AT_ENV: str(step), FAIL_ERRNO_ENV: str(errno.ENOSPC)})
    assert result.returncode == Exit.OK and "kind=warning" in result.stderr, result.stderr
    assert "are kept, not pruned (the new root is made)" in result.stderr, result.stderr
    assert "20200101T000000Z" in result.stderr and "20200102T000000Z" in result.stderr, result.stderr
    with disk.top() as top:
        assert len(os.listdir(top / "old")) == 3 and not any((top / "root").iterdir())
        assert btrfsutil.get_subvolume_read_only(str(top / "old" / "20200101T000000Z"))  # (a reviewer)
    assert disk.rollback("run", *flags).returncode == Exit.OK
    with disk.top() as top:
        assert len(os.listdir(top / "old")) == 1


@pytest.mark.parametrize("mode", ["recreate", "keep"])
def test_no_room_for_the_move_after_its_directories_is_a_refusal(disk: Disk, mode: str) -> None:
    """Room for the directories a first run makes (.rollback, its trash, the archive) but not for the
    old root's move: exit 1, "the next run finishes the job", then refused at every boot (found by a
    full-disk tester). Empty directories change nothing: refused from the first, saying so."""
    with disk.top() as top:
        populate(top)
    flags = MODES[mode]
    before = disk.state()
    for boot in range(2):  # and the same at the next boot, with the directories there
        step = _step(disk, ". move root -> ", *flags)
        assert (step > 1) is (boot == 0)  # directories first
        result = disk.rollback("run", *flags, env={FAIL_AT_ENV: str(step), FAIL_ERRNO_ENV: str(errno.ENOSPC)})
        assert result.returncode == Exit.REFUSED and "reason=no-space" in result.stderr, result.stderr
        said = "before any change (but empty directories made for it)" if boot == 0 else "before any change;"
        assert said in result.stderr, result.stderr
    after = disk.state()  # every subvolume as it was (the top level holds the new directories)
    assert [s for s in after.subvolumes if s.id != 5] == [s for s in before.subvolumes if s.id != 5]
    assert outside_root(after) == outside_root(before) and after.under("root") == before.under("root")


def test_no_room_for_the_new_root_in_keep_mode_deletes_the_pruned_roots_first(disk: Disk) -> None:
    """Keep mode, archived roots due: a put-back refusal is where deleting them first helps (it never
    ran: the failure was no-space-midway, not the no-space refusal prune-first answers)."""
    with disk.top() as top:
        populate(top)
        (top / "old").mkdir()
        for stamp in ("20200101T000000Z", "20200102T000000Z"):
            btrfsutil.create_snapshot(str(top / "root"), str(top / "old" / stamp))
    before = disk.state()
    flags = ("--archive", "old", "--keep-count", "1", "--keep-min", "0")
    env = {FAIL_AT_ENV: str(_making_step(disk, *flags)), FAIL_ERRNO_ENV: str(errno.ENOSPC)}
    result = disk.rollback("run", *flags, env=env)
    assert result.returncode == Exit.OK, result.stderr
    assert "nothing changed: first deleting 2 pruned root(s)" in result.stderr
    after = disk.state()
    archived = [p for p in after.subvolume_paths() if p.startswith("old/") and p.count("/") == 1]
    assert len(archived) == 1 and archived[0] not in before.subvolume_paths()  # today's root, archived
    assert after.under("root") == {"root": "dir:40755"} and outside_root(after) == outside_root(before)


def test_no_room_even_to_delete_the_pruned_roots_says_so_and_the_next_run_goes_on(disk: Disk) -> None:
    """The prune-first delete itself fails with ENOSPC (injected: step 1 of both plans, before the
    delete removed anything): a refusal that says what happened (it said rollback's leftovers had been
    deleted first; then, counted again, "nothing of rollback's is due"); with room, the next run
    finishes. Failing after part of the tree went, it is exit 1, and the next run goes on from there."""
    with disk.top() as top:
        populate(top)
        (top / "old").mkdir()
        btrfsutil.create_snapshot(str(top / "root"), str(top / "old" / "20200101T000000Z"))
    before = disk.state()
    flags = ("--archive", "old", "--keep-count", "1", "--keep-min", "0")
    failed = disk.rollback("run", *flags, env={FAIL_AT_ENV: "1,1", FAIL_ERRNO_ENV: str(errno.ENOSPC)})
    assert failed.returncode == Exit.REFUSED, failed.stderr
    assert "reason=no-space" in failed.stderr and "nothing of rollback's" not in failed.stderr
    assert "nor to delete the archived roots retention prunes" in failed.stderr
    assert disk.state() == before  # both failures injected before their step did anything
    assert disk.rollback("run", *flags).returncode == Exit.OK
    after = disk.state()
    assert not [p for p in after.subvolume_paths() if p.startswith(("old/2020", ".rollback/"))]
    assert after.under("root") == {"root": "dir:40755"} and outside_root(after) == outside_root(before)


def test_no_room_for_a_leftovers_delete_is_refused_as_such(disk: Disk) -> None:
    """ENOSPC at the trash leftover's delete, the first step, nothing of it deleted (injected): a refusal
    that does not say "nothing of rollback's is due" (the leftover is), and no prune-first, whose plan
    starts with the same delete."""
    with disk.top() as top:
        populate(top)
        (top / ".rollback" / "trash").mkdir(parents=True)
        btrfsutil.create_subvolume(str(top / ".rollback" / "trash" / "20200101T000000Z"))
        (top / "old").mkdir()
        btrfsutil.create_snapshot(str(top / "root"), str(top / "old" / "20200101T000000Z"))
    before = disk.state()
    flags = ("--archive", "old", "--keep-count", "1", "--keep-min", "0")
    refused = disk.rollback("run", *flags, env={FAIL_AT_ENV: "1,1", FAIL_ERRNO_ENV: str(errno.ENOSPC)})
    assert refused.returncode == Exit.REFUSED and "reason=no-space" in refused.stderr, refused.stderr
    assert "nothing of rollback's" not in refused.stderr and "first deleting" not in refused.stderr
    assert disk.state() == before


_RUN_STATES = {
    "mount-point-a-file": "touch /run/rollback",
    "mount-point-a-link": "mkdir /run/elsewhere && ln -s elsewhere /run/rollback",
    "mount-point-a-dangling-link": "ln -s nowhere /run/rollback",
    "locks-a-file": "touch /run/rollback-locks",
}


@pytest.mark.parametrize(
    ("state", "verb"),
    # status takes no lock: the locks' directory is not its
    [
        (s, v)
        for s in _RUN_STATES
        for v in ("status", "run", "cleanup")
        if not (s.startswith("locks") and v == "status")
    ],
)
def test_a_file_or_link_at_rollbacks_own_names_in_run_is_refused(disk: Disk, state: str, verb: str) -> None:
    """Something else at /run/rollback or /run/rollback-locks on a running system: every verb was an
    internal error (a link: the mount went where it pointed, and the mount table had no /run/rollback).
    Refused, naming it; nothing written. In a private mount namespace with its own /run."""
    with disk.top() as top:
        populate(top)
    before = disk.state()
    script = f'set -e; mount -t tmpfs tmpfs /run; {_RUN_STATES[state]}; exec "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *disk.rollback_argv(verb)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == Exit.REFUSED, result.stderr
    assert "reason=run-dir" in result.stderr and "is not a directory" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and disk.state() == before


def test_a_root_written_through_another_mount_and_not_yet_committed_is_archived(disk: Disk) -> None:
    """Snapshot mode with an archive deletes a root still as the blank made it and archives a written
    one. A file written through another mount of the top level (a rescue shell's /mnt) leaves the root's
    item uncommitted for up to 30 s: the run judged it untouched and deleted it (found by a tester)."""
    with disk.top() as top:
        populate(top, blank=True, nested=[])
    args = ("--mode", "snapshot", "--archive", "old_roots")
    assert disk.rollback("run", *args).returncode == Exit.OK
    with disk.top() as top:
        os.sync()
        (top / "root" / "etc" / "notes").write_text("written, not committed\n")
        dry = disk.rollback("run", "--dry-run", *args)
        result = disk.rollback("run", *args)
        archived = sorted(entry.name for entry in (top / "old_roots").iterdir())[1:]  # the first run archived one
        assert [(top / "old_roots" / name / "etc" / "notes").read_text() for name in archived] == [
            "written, not committed\n"
        ], (dry.stdout, result.stderr)
    assert result.returncode == Exit.OK and "-> old_roots/" in dry.stdout, dry.stdout


def test_files_in_a_protected_subvolumes_mount_point_are_warned_of(disk: Disk) -> None:
    """Written into the root's /persist while persist was not mounted: erased with the root, said."""
    with disk.top() as top:
        populate(top)
    assert "kind=warning" not in disk.rollback("run").stderr  # the empty mount point: nothing to say
    with disk.top() as top:
        (top / "root" / "persist").mkdir()
        (top / "root" / "persist" / "notes").write_text("written while persist was not mounted\n")
    result = disk.rollback("run")
    assert result.returncode == Exit.OK, result.stderr
    assert "'root/persist' is a directory with something in it" in result.stderr, result.stderr


def test_files_the_blank_holds_at_a_mount_point_are_not_warned_of_at_every_boot(disk: Disk) -> None:
    """A blank snapshotted from a root whose /persist held files: every root has them, and said at every
    boot it would be noise; what a root holds there that the blank's is empty still is said."""
    with disk.top() as top:
        for name in ("persist", "nix", "home", "root"):
            btrfsutil.create_subvolume(str(top / name))
        (top / "root" / "persist").mkdir()
        (top / "root" / "persist" / "from-the-installer").write_text("kept in the blank\n")
        (top / "root" / "home").mkdir()  # empty in the blank
        btrfsutil.create_snapshot(str(top / "root"), str(top / "root-blank"), read_only=True)
    assert "kind=warning" not in disk.rollback("run", "--mode", "snapshot").stderr
    with disk.top() as top:
        (top / "root" / "persist" / "written").write_text("written while persist was not mounted\n")
        (top / "root" / "home" / "alice").mkdir()
    result = disk.rollback("run", "--mode", "snapshot")
    assert result.returncode == Exit.OK, result.stderr
    assert "'root/home' is a directory" in result.stderr and "'root/persist'" not in result.stderr, result.stderr


@pytest.mark.parametrize("code", [errno.EIO, errno.EUCLEAN])
def test_a_leftover_that_cannot_be_read_is_left_and_the_root_still_replaced(disk: Disk, code: int) -> None:
    """A damaged block in a subvolume nested in what the trash holds (no observation reads it before the
    delete does): the delete failed at step 1 of every boot, exit 1, and no root was replaced again (a
    reviewer). Left in the trash with a warning, the run goes on; the cleanup alike; once readable, the
    next run deletes it."""
    with disk.top() as top:
        populate(top)
    assert disk.rollback("run", "--cleanup", "after-boot").returncode == Exit.OK  # the old root in the trash
    before = disk.state()
    trashed = [p for p in before.subvolume_paths() if p.count("/") == 2 and p.startswith(".rollback/trash/")]
    env = {FAIL_AT_ENV: "1", FAIL_ERRNO_ENV: str(code)}
    result = disk.rollback("run", env=env)
    assert result.returncode == Exit.OK, result.stderr
    assert "part of it cannot be read" in result.stderr and "left in the trash" in result.stderr
    after = disk.state()
    assert set(trashed) <= set(after.subvolume_paths()) and outside_root(after) == outside_root(before)
    roots = [{s.id for s in state.subvolumes if s.path == "root"} for state in (before, after)]
    assert roots[0] != roots[1], "the root replaced"
    cleanup = disk.rollback("cleanup", env=env)
    assert cleanup.returncode == Exit.OK and "left in the trash" in cleanup.stderr, cleanup.stderr
    assert set(trashed) <= set(disk.state().subvolume_paths())
    assert disk.rollback("cleanup").returncode == Exit.OK
    assert [p for p in disk.state().subvolume_paths() if p.startswith(".rollback/trash/")] == []


def test_no_room_to_delete_the_old_root_once_the_new_one_is_made_leaves_it_in_the_trash(disk: Disk) -> None:
    """ENOSPC at the delete of this run's own old root, at boot, the new root made: exit 1
    `no-space-midway` (stop-boot: a boot whose root was fine stopped), while a pruned root there was left
    with a warning (a reviewer). Left in the trash alike, exit 0; the next run deletes it first."""
    with disk.top() as top:
        populate(top)
    planned = disk.rollback("run", "--dry-run").stdout.splitlines()
    assert "delete .rollback/trash/" in planned[-2] and planned[-1].endswith(". commit the transaction"), planned
    result = disk.rollback("run", env={FAIL_AT_ENV: str(len(planned) - 1), FAIL_ERRNO_ENV: str(errno.ENOSPC)})
    assert result.returncode == Exit.OK, result.stderr
    assert (
        "no room to delete it (no space left on the filesystem; the new root is made): left in the trash; the run"
        in (result.stderr)
    ), result.stderr
    assert [p for p in disk.state().subvolume_paths() if p.startswith(".rollback/trash/")]
    assert disk.rollback("run").returncode == Exit.OK
    assert [p for p in disk.state().subvolume_paths() if p.startswith(".rollback/trash/")] == []


def test_no_room_to_remove_the_skip_next_mark_keeps_the_root_and_says_the_mark_stays(disk: Disk) -> None:
    """The kept boot's removal of the mark failing for room: was no-space-midway, exit 1 at every boot,
    then (a refusal) the make-room path, saying it deleted 0 pruned roots (reviewers). Refused saying
    the mark stays, nothing changed; with room, the next boot keeps the root once, as asked."""
    with disk.top() as top:
        populate(top)
    assert disk.rollback("skip-next").returncode == Exit.OK
    before = disk.state()
    result = disk.rollback("run", env={FAIL_AT_ENV: "1", FAIL_ERRNO_ENV: str(errno.ENOSPC)})
    assert result.returncode == Exit.REFUSED and "reason=no-space" in result.stderr, result.stderr
    assert "the mark stays, so every boot keeps it until there is room" in result.stderr, result.stderr
    assert "pruned" not in result.stderr
    assert disk.state() == before
    assert disk.rollback("run").returncode == Exit.SKIPPED


# --- a run by hand while others act on the filesystem ------------------------------------------


def _trashed(disk: Disk) -> str:
    """The one entry of the trash (a run stopped before its delete)."""
    with disk.top(read_only=True) as top:
        (entry,) = os.listdir(top / ".rollback" / "trash")
    return f".rollback/trash/{entry}"


@pytest.mark.parametrize("act", ["mount", "move-in"])
def test_a_run_by_hand_checks_its_old_root_again_before_deleting_it(disk: Disk, tmp_path: Path, act: str) -> None:
    """A run by hand (deleting at boot) stopped after its new root's commit; meanwhile one of the old
    root's nested subvolumes is mounted (to fetch a file), or a read-only snapshot is put into it. The
    mount was deleted under its user, exit 0 (the cleanup stopped; the run never looked again), and the
    snapshot stopped it as "changed meanwhile" without naming it (a concurrency tester). Not deleted,
    named, exit 1; once undone, the next run deletes what is rollback's."""
    with disk.top() as top:
        populate(top)
    committed = _step(disk, ". commit the transaction", "--cleanup", "boot")
    run = stopped(disk, "run", "--cleanup", "boot", after=committed)
    entry, held = _trashed(disk), tmp_path / "held"
    held.mkdir()
    try:
        if act == "mount":
            sh("mount", "-o", f"subvol={entry}/var/lib/machines", disk.device, str(held))
        else:
            with disk.top() as top:
                btrfsutil.create_snapshot(str(top / "persist"), str(top / entry / "backup"), read_only=True)
        before = disk.state()
    finally:
        os.kill(run.pid, signal.SIGCONT)
        _, errors = run.communicate(timeout=120)
    try:
        assert run.returncode == Exit.FAILED and "changed since the checks" in errors, errors
        said = f" at {held}" if act == "mount" else "moved in"
        assert said in errors and "not deleted" in errors, errors
        assert "the next run deletes all it holds, at boot without checking it again" in errors, errors
        assert disk.state().subvolumes == before.subvolumes
        if act == "mount":
            assert (held / "data").read_text() == "inside root/var/lib/machines\n"
    finally:
        if act == "mount":
            sh("umount", str(held))
    if act == "move-in":
        with disk.top() as top:
            sh("btrfs", "subvolume", "delete", str(top / entry / "backup"))
    assert disk.rollback("run", "--cleanup", "boot").returncode == Exit.OK
    assert [p for p in disk.state().subvolume_paths() if p.startswith(".rollback/")] == []


@pytest.mark.parametrize(
    ("at", "code"),
    [("clear read-only", errno.EPERM), ("move old/", errno.ENOENT), ("move old/", errno.EROFS)],
)
def test_a_pruning_step_failing_keeps_that_root_and_the_run_goes_on(disk: Disk, at: str, code: int) -> None:
    """A step pruning an archived root fails, the new root made: a btrfs send of it under way (the
    kernel refuses its unlock, EPERM), deleted or made read-only by hand meanwhile (its move: ENOENT,
    EROFS). Each was exit 1 after the root was made (stop-boot: emergency mode), the rest of the
    pruning not done (a concurrency tester). That root is kept with a warning, exit 0; the next run
    prunes it."""
    with disk.top() as top:
        populate(top)
        (top / "old").mkdir()
        for stamp in ("20200101T000000Z", "20200102T000000Z"):
            btrfsutil.create_subvolume(str(top / "old" / stamp))
            btrfsutil.set_subvolume_read_only(str(top / "old" / stamp))
    flags = ("--archive", "old", "--keep-count", "1", "--keep-min", "0")
    step = _step(disk, f". {at}", *flags)
    result = disk.rollback("run", *flags, env={FAIL_AT_ENV: str(step), FAIL_ERRNO_ENV: str(code)})
    assert result.returncode == Exit.OK and "kind=warning" in result.stderr, result.stderr
    assert f"{os.strerror(code)}" in result.stderr and "is kept, not pruned" in result.stderr, result.stderr
    assert "1 archived root(s) not pruned (see the warnings)" in result.stderr, result.stderr
    if code == errno.EPERM:
        assert "a btrfs send of it is under way" in result.stderr, result.stderr
    with disk.top() as top:
        kept = sorted(os.listdir(top / "old"))
        assert len(kept) == 2 and "20200101T000000Z" in kept, kept  # the other pruned, today's archived
        assert btrfsutil.get_subvolume_read_only(str(top / "old" / "20200101T000000Z"))
    assert disk.rollback("run", *flags).returncode == Exit.OK
    with disk.top() as top:
        assert len(os.listdir(top / "old")) == 1


def test_a_btrfs_send_of_an_archived_root_under_way_keeps_it_from_this_runs_pruning(disk: Disk) -> None:
    """btrbk's use of a read-only archive: a send of the oldest root runs while the boot prunes it. The
    kernel refuses to make it writable; the run keeps it with a warning, exit 0 (was exit 1 after the
    new root was made: a concurrency tester)."""
    with disk.top() as top:
        populate(top)
        (top / "old").mkdir()
        oldest = top / "old" / "20200101T000000Z"
        btrfsutil.create_subvolume(str(oldest))
        (oldest / "big").write_bytes(os.urandom(4 << 20))  # (more than a pipe holds: the send waits)
        btrfsutil.set_subvolume_read_only(str(oldest))
    flags = ("--archive", "old", "--keep-count", "1", "--keep-min", "0")
    with disk.top(read_only=True) as top:
        send = subprocess.Popen(
            ["btrfs", "send", str(top / "old" / "20200101T000000Z")],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)  # (it fills the pipe, then waits for a reader)
            result = disk.rollback("run", *flags)
        finally:
            send.kill()
            send.wait()
    assert result.returncode == Exit.OK, result.stderr
    assert "a btrfs send of it is under way" in result.stderr and "is kept, not pruned" in result.stderr
    assert disk.rollback("run", *flags).returncode == Exit.OK
    with disk.top() as top:
        assert len(os.listdir(top / "old")) == 1


def test_status_during_a_run_says_a_run_holds_the_lock(disk: Disk) -> None:
    """`status` while a run is half done (stopped after its old root's move): it said "root missing: the
    next run creates it (a run cut short...)" and nothing of the run under way (a concurrency tester).
    Names the lock's holder, read without taking the lock (which would refuse a boot's run then)."""
    with disk.top() as top:
        populate(top)
    moved = _step(disk, ". move root -> ")
    run = stopped(disk, "run", after=moved)
    try:
        shown = disk.rollback("status")
        as_json = parse_json(disk.rollback("status", "--json"))
    finally:
        os.kill(run.pid, signal.SIGCONT)
        _, errors = run.communicate(timeout=120)
    assert run.returncode == Exit.OK, errors
    assert shown.returncode == Exit.OK, shown.stderr
    assert f"RUNNING:    another rollback holds the filesystem's lock (pid {run.pid}: " in shown.stdout, shown.stdout
    assert str(as_json["locked_by"]).startswith(f"pid {run.pid}: "), as_json
    after = disk.rollback("status")
    assert after.returncode == Exit.OK and "RUNNING" not in after.stdout, after.stdout


@pytest.mark.parametrize("how", ["deleted", "read-only"])
def test_an_archived_root_changed_by_hand_during_the_run_is_not_pruned_and_said_so(disk: Disk, how: str) -> None:
    """The oldest archived root deleted by hand, or made read-only, while a run is at its new root's
    commit, before it prunes that root: exit 1 after the root was made (a concurrency tester); then a root
    deleted was reported kept, its read-only flag "could not be put back" (a reviewer). Said as it is,
    exit 0, the rest pruned."""
    with disk.top() as top:
        populate(top)
        (top / "old").mkdir()
        for stamp in ("20200101T000000Z", "20200102T000000Z"):
            btrfsutil.create_subvolume(str(top / "old" / stamp))
    flags = ("--archive", "old", "--keep-count", "1", "--keep-min", "0")
    run = stopped(disk, "run", *flags, after=_step(disk, ". commit the transaction", *flags))
    try:
        with disk.top() as top:
            oldest = str(top / "old" / "20200101T000000Z")
            if how == "deleted":
                btrfsutil.delete_subvolume(oldest)
            else:
                btrfsutil.set_subvolume_read_only(oldest)
    finally:
        os.kill(run.pid, signal.SIGCONT)
        _, errors = run.communicate(timeout=120)
    assert run.returncode == Exit.OK and "kind=warning" in errors, errors
    said = "is gone from there: not pruned by this run" if how == "deleted" else "is kept, not pruned"
    assert said in errors and "could not be put back" not in errors, errors
    with disk.top() as top:
        kept = sorted(os.listdir(top / "old"))
    assert ("20200101T000000Z" in kept) == (how == "read-only") and "20200102T000000Z" not in kept, kept
