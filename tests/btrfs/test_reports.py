"""status, diff and skip-next against real layouts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import btrfsutil
import pytest

from rollback.errors import Exit
from rollback.verbs import CRASH_AFTER_ENV, FAIL_AT_ENV, FAIL_ERRNO_ENV
from tests.support.cli import rollback_argv
from tests.support.disks import Disk, attached, parse_json, released
from tests.support.layout import populate, sh

pytestmark = pytest.mark.btrfs


def test_status_json_describes_the_layout(disk: Disk) -> None:
    with disk.top() as top:
        populate(top, blank=True)
        (top / "old").mkdir()
        btrfsutil.create_subvolume(str(top / "old" / "20260101T000000Z"))
        btrfsutil.create_subvolume(str(top / "root" / "home"))
    status = parse_json(disk.rollback("status", "--json", "--archive", "old"))
    assert status["root"]["kind"] == "subvolume" and status["root"]["nested"] == 4
    assert status["root"]["age_seconds"] >= 0
    assert status["blank"] == {"path": "root-blank", "exists": True, "read_only": True}
    assert [r["path"] for r in status["archive"]["roots"]] == ["old/20260101T000000Z"]
    assert {(p["path"], p["inside_root"]) for p in status["protected"]} == {
        ("persist", False),
        ("nix", False),
        ("home", False),
        ("root/home", True),
    }
    assert status["skip_next"] is False and status["pending"]["trash"] == []


def test_status_reports_pending_kernel_cleanup(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    deleted = {s.id for s in disk.state().subvolumes if s.path.startswith("root")}
    assert disk.rollback("run").returncode == Exit.OK
    status = parse_json(disk.rollback("status", "--json"))
    # the cleaner may have finished some; whatever is still pending is one of ours, by id
    assert set(status["pending"]["kernel_cleaner"]) <= deleted
    assert status["root"]["nested"] == 0


def test_status_text_is_readable(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    result = disk.rollback("status")
    assert result.returncode == Exit.OK
    assert "root:       root id" in result.stdout and "3 nested" in result.stdout
    assert "protected:  persist id" in result.stdout


def test_diff_lists_what_the_next_run_erases(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    result = disk.rollback("diff")
    assert result.returncode == Exit.OK, result.stderr
    lines = result.stdout.splitlines()
    assert "tmp/cruft" in lines and "tmp/" in lines
    assert "var/lib/machines/guest/srv/data" in lines  # inside nested subvolumes too
    assert not any("ssh_host_key" in line for line in lines)


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_diff_on_a_target_that_is_no_subvolume_refuses_as_the_run_does(disk: Disk, kind: str) -> None:
    """A plain directory at the target: diff printed nothing, exit 0 (nothing to lose, it seemed), while
    the run refuses it (found by a layouts tester). The run's refusal, the device untouched."""
    with disk.top() as top:
        populate(top, nested=[])
        btrfsutil.delete_subvolume(str(top / "root"))
        if kind == "directory":
            (top / "root" / "etc").mkdir(parents=True)
            (top / "root" / "etc" / "hostname").write_text("written\n")
        else:
            (top / "root").write_text("a file\n")
    before = disk.state()
    for verb in ("diff", "run"):
        result = disk.rollback(verb)
        assert result.returncode == Exit.REFUSED and "reason=not-subvolume" in result.stderr, (verb, result.stderr)
        assert result.stdout == "", result.stdout
    assert disk.state() == before


def test_diff_with_the_skip_next_mark_set_says_why_it_lists_nothing(disk: Disk) -> None:
    """The mark set: diff printed nothing, exit 0, no word why; read as nothing to lose after a restore
    (found by a recovery tester). Still nothing listed (the next run erases nothing), and said why."""
    with disk.top() as top:
        populate(top, nested=[])
    assert disk.rollback("skip-next").returncode == Exit.OK
    result = disk.rollback("diff")
    assert result.returncode == Exit.OK and result.stdout == "", result.stdout
    assert "the skip-next mark is set: the next run keeps the root and erases nothing" in result.stderr


def test_after_a_run_cut_short_each_verb_says_where_the_old_root_is(disk: Disk) -> None:
    """The root moved to the trash, no new one (a run cut short): status said only "1 in trash", diff
    printed nothing (exit 0) though the next run deletes that root, skip-next's hint pointed at `run`
    (found by a recovery tester). status names it, diff says the next run deletes it, skip-next says
    how to take it back; following that hint keeps it."""
    with disk.top() as top:
        populate(top, nested=[])
        (top / "root" / "etc").mkdir()
        (top / "root" / "etc" / "wanted").write_text("yesterday's\n")
        (top / ".rollback" / "trash").mkdir(parents=True)
        (top / "root").rename(top / ".rollback" / "trash" / "20261128T060000Z")
    before = disk.state()
    status = disk.rollback("status")
    assert "trash:      .rollback/trash/20261128T060000Z" in status.stdout, status.stdout
    diff = disk.rollback("diff")
    assert diff.returncode == Exit.OK and "there is no root: the next run creates it, and first deletes" in diff.stderr
    skip = disk.rollback("skip-next")
    assert skip.returncode == Exit.REFUSED and "mv <top>/.rollback/trash/NAME <top>/root" in skip.stderr, skip.stderr
    assert disk.state() == before
    with disk.top() as top:  # as the hint says
        (top / ".rollback" / "trash" / "20261128T060000Z").rename(top / "root")
    assert disk.rollback("skip-next").returncode == Exit.OK
    assert disk.rollback("run").returncode == Exit.SKIPPED
    with disk.top() as top:
        assert (top / "root" / "etc" / "wanted").read_text() == "yesterday's\n"


def test_status_says_skip_set_in_the_config_file_keeps_the_root(disk: Disk, tmp_path: Path) -> None:
    """`skip = true` in the file: every boot exit 77 and the root never replaced; status said nothing
    (found by a settings tester)."""
    with disk.top() as top:
        populate(top, nested=[])
    config = tmp_path / "rollback.toml"
    config.write_text("skip = true\n")
    result = disk.rollback("status", "--config", str(config))
    assert f"next boot:  SKIPPED: skip is set in {config}: every run keeps the root" in result.stdout, result.stdout
    assert disk.rollback("run", "--config", str(config)).returncode == Exit.SKIPPED


def test_diff_says_what_the_run_would_do_with_no_root_or_no_blank(disk: Disk) -> None:
    """`diff --subvolume nothere` printed nothing, exit 0; `diff --mode snapshot --blank missing` listed
    the whole root, while the run refuses no-blank (found by a settings tester)."""
    with disk.top() as top:
        populate(top, nested=[])
    before = disk.state()
    result = disk.rollback("diff", "--subvolume", "nothere")
    assert result.returncode == Exit.OK and "there is no nothere: the next run creates it" in result.stderr
    for verb in ("diff", "run"):
        result = disk.rollback(verb, "--mode", "snapshot", "--blank", "missing")
        assert result.returncode == Exit.REFUSED and "reason=no-blank" in result.stderr, (verb, result.stderr)
        assert result.stdout == "", result.stdout
    assert disk.state() == before


def test_status_names_an_archive_no_longer_set(disk: Disk) -> None:
    """archive changed from old_roots to another directory (or unset): the roots left in old_roots were
    never pruned, never listed, never said (found by a settings tester)."""
    with disk.top() as top:
        populate(top, nested=[])
        (top / "root" / "used").write_text("archived\n")
    assert disk.rollback("run", "--archive", "old_roots").returncode == Exit.OK
    for flags in (("--archive", "kept/elsewhere"), ("--archive", "")):
        result = disk.rollback("status", *flags)
        assert "elsewhere:  old_roots: 1 archived root(s), not this configuration's archive" in result.stdout
        assert parse_json(disk.rollback("status", "--json", *flags))["archives_elsewhere"] == {"old_roots": 1}
    assert "elsewhere:" not in disk.rollback("status", "--archive", "old_roots").stdout


def test_diff_ignores_persisted_bind_mounts_on_the_live_system(disk: Disk, tmp_path: Path) -> None:
    with disk.top() as top:
        populate(top)
    live = tmp_path / "live"
    live.mkdir()
    sh("mount", "-o", "subvol=root", disk.device, str(live))
    try:
        sh("mount", "-o", "subvol=persist", disk.device, str(live / "persist"))
        try:
            found = parse_json(disk.rollback("diff", "--json"))
        finally:
            sh("umount", str(live / "persist"))
    finally:
        sh("umount", str(live))
    assert "persist/" in found["paths"] and not any(p.startswith("persist/etc") for p in found["paths"])
    assert found["count"] == len(found["paths"])


def test_diff_in_snapshot_mode_skips_what_the_blank_restores(disk: Disk) -> None:
    with disk.top() as top:
        populate(top, blank=True, nested=[])
    paths = parse_json(disk.rollback("diff", "--json", "--mode", "snapshot"))["paths"]
    assert "etc/machine-id" not in paths and "etc/" not in paths
    assert "tmp/cruft" in paths


def test_skip_next_keeps_the_root_once(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    before = disk.state()
    marked = disk.rollback("skip-next")
    assert marked.returncode == Exit.OK, marked.stderr
    assert parse_json(disk.rollback("status", "--json"))["skip_next"] is True
    dry = disk.rollback("run", "--dry-run")  # as the run exits (it was 0, a plan, and no word of keeping)
    assert dry.returncode == Exit.SKIPPED and "the root would be kept this once" in dry.stderr, dry.stderr
    kept = disk.rollback("run")
    assert kept.returncode == Exit.SKIPPED
    assert "skip-next mark was set" in kept.stderr and "hint='nothing: as asked" in kept.stderr, kept.stderr
    after = disk.state()
    assert after.subvolumes[1:] == before.subvolumes[1:]  # the mark lived in the top level: only it changed
    assert after.under("root") == before.under("root")
    assert disk.rollback("run").returncode == Exit.OK
    assert "root/tmp/cruft" not in disk.state().files


def test_skip_next_removes_the_drafts_a_killed_one_left(disk: Disk) -> None:
    """A skip-next killed between writing its draft and renaming it left `.skip-next.<pid>.new` for
    ever: nothing removed it, nothing said it was there (a signals tester). The next one removes the
    drafts (regular files named as its own), nothing else."""

    def drafts(top: Path) -> None:
        (top / ".rollback").mkdir()
        (top / ".rollback" / ".skip-next.4242.new").write_text("257 x\n")
        (top / ".rollback" / ".skip-next.x.new").write_text("not ours\n")
        (top / ".rollback" / ".skip-next.4343.new").mkdir()

    with disk.top() as top:
        populate(top)
        drafts(top)
    assert disk.rollback("skip-next").returncode == Exit.OK
    with disk.top() as top:
        left = sorted(os.listdir(top / ".rollback"))
    assert left == [".skip-next.4343.new", ".skip-next.x.new", "skip-next"], left


@pytest.mark.parametrize("errno_", ["5", "28"], ids=["EIO", "ENOSPC"])
def test_a_skip_next_whose_commit_fails_says_the_mark_may_be_set(disk: Disk, errno_: str) -> None:
    """Its commit failed after the mark was made: it said "the next run finishes the job", yet the mark
    was there and the next boot kept the root (found by a sequence fuzzer)."""
    with disk.top() as top:
        populate(top)
        (top / ".rollback").mkdir(mode=0o700)  # so the plan is: 1. the mark, 2. the commit
    failed = disk.rollback("skip-next", env={FAIL_AT_ENV: "2", FAIL_ERRNO_ENV: errno_})
    assert failed.returncode == Exit.FAILED, failed.stderr
    assert "the mark may be set or not" in failed.stderr and "next run finishes" not in failed.stderr
    assert "rollback status shows whether the next boot keeps the root" in failed.stderr
    assert parse_json(disk.rollback("status", "--json"))["skip_next"] is True  # as status says: set


def _after_a_power_cut(disk: Disk, image: Path) -> Disk:
    """The device as a power cut right now leaves it: a copy of the image, as a second Disk (attach it)."""
    shutil.copyfile(disk.workdir / "disk.img", image)
    (disk.workdir / f"mnt-{image.stem}").mkdir()
    return Disk("", disk.workdir / f"mnt-{image.stem}", disk.workdir)


def test_skip_next_and_its_consumption_outlive_a_power_cut(disk: Disk) -> None:
    """On the running system the filesystem stays mounted: the verb's own unmount commits nothing, so a
    power cut seconds after "the next boot keeps root" found no mark, and that boot replaced the root
    (the mark had not reached the disk); a power cut right after a skipped boot skipped the next one too."""
    with disk.top() as top:
        populate(top)
    with disk.top():  # held, as the running system holds it
        assert disk.rollback("skip-next").returncode == Exit.OK
        marked = _after_a_power_cut(disk, disk.workdir / "marked.img")
        assert disk.rollback("run").returncode == Exit.SKIPPED
        consumed = _after_a_power_cut(disk, disk.workdir / "consumed.img")
    for cut, image, expected in [(marked, "marked.img", Exit.SKIPPED), (consumed, "consumed.img", Exit.OK)]:
        released(disk.workdir / image)  # (the original, still held by a namespace being torn down)
        with attached(disk.workdir / image) as device:
            cut.device = device
            result = cut.rollback("run")
            assert result.returncode == expected, (image, result.stderr)
            assert ("root/tmp/cruft" in cut.state().files) == (expected == Exit.SKIPPED)


def test_skip_next_without_a_root_to_keep_is_refused(disk: Disk) -> None:
    """A run cut short after moving the root away: a skipped boot would have no root to mount, and the
    old one, in the trash, would be deleted by the boot after it."""
    with disk.top() as top:
        populate(top)
    plan = disk.rollback("run", "--dry-run").stdout.splitlines()
    moved = next(n for n, line in enumerate(plan, 1) if line.startswith(f"{n}. move root -> "))
    assert disk.rollback("run", env={CRASH_AFTER_ENV: str(moved)}).returncode < 0
    assert "root" not in disk.state().subvolume_paths()
    before = disk.state()
    refused = disk.rollback("skip-next")
    assert refused.returncode == Exit.REFUSED and "reason=nothing-to-keep" in refused.stderr, refused.stderr
    assert disk.state() == before
    assert disk.rollback("run").returncode == Exit.OK


PRINTING = [
    ("status",),
    ("status", "--json"),
    ("diff",),
    ("diff", "--json"),
    ("config",),
    ("config", "--json"),
    ("skip-next",),
    ("run", "--dry-run"),
    ("cleanup", "--dry-run"),
]
# a device path each encoding cannot carry: non-ASCII for ascii, a byte that is not UTF-8 for strict utf-8
# (a path holding a byte that is not UTF-8 is refused since: unit/test_settings.py::test_invalid_settings)
ODD_DEVICE = {"ascii": ("disk-café", "disk-caf\\u00e9"), "latin-1": ("disk-Ωmega", "disk-\\u03a9mega")}


def _mark_set(disk: Disk) -> bool:
    return bool(parse_json(disk.rollback("status", "--json"))["skip_next"])


@pytest.mark.parametrize("verb", PRINTING, ids=" ".join)
def test_stdout_that_cannot_be_written_is_reason_output_failed(disk: Disk, verb: tuple[str, ...]) -> None:
    """`> /dev/full`: exit 1 with reason output-failed naming the error, not an internal error; skip-next
    says the mark is set (it is)."""
    with disk.top() as top:
        populate(top)
    with open("/dev/full", "w") as full:
        result = subprocess.run(disk.rollback_argv(*verb), stdout=full, stderr=subprocess.PIPE, text=True)
    assert result.returncode == Exit.FAILED, result.stderr
    assert "reason=output-failed" in result.stderr and "No space left on device" in result.stderr, result.stderr
    assert "internal" not in result.stderr and "Traceback" not in result.stderr
    if verb == ("skip-next",):
        assert "the mark is set" in result.stderr and _mark_set(disk)


@pytest.mark.parametrize("verb", PRINTING, ids=" ".join)
@pytest.mark.parametrize("encoding", sorted(ODD_DEVICE))
def test_output_the_encoding_cannot_carry_is_escaped(
    disk: Disk, tmp_path: Path, verb: tuple[str, ...], encoding: str
) -> None:
    """A device path stdout's encoding cannot carry (PYTHONIOENCODING): escaped as diff escapes paths,
    exit 0; it was a UnicodeEncodeError, an internal error (skip-next's after setting the mark)."""
    with disk.top() as top:
        populate(top)
    name, shown = ODD_DEVICE[encoding]
    device = os.path.join(tmp_path, name)
    os.symlink(disk.device, device)
    argv = rollback_argv(*verb, device=device)
    result = subprocess.run(argv, capture_output=True, env={**os.environ, "PYTHONIOENCODING": encoding})
    assert result.returncode == Exit.OK, result.stderr.decode(errors="replace")
    out = result.stdout.decode(encoding)  # strictly: what was written is that encoding's
    if verb in (("status",), ("config",), ("skip-next",)):
        assert shown in out, out
    if verb[-1] == "--json":
        json.loads(out)
    if verb == ("skip-next",):
        assert _mark_set(disk)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda top: btrfsutil.create_subvolume(str(top / ".rollback")), ".rollback exists but is not a plain"),
        (lambda top: btrfsutil.create_subvolume(str(top / "root" / "var" / "persist")), "protected subvolume"),
        (lambda top: btrfsutil.set_default_subvolume(str(top / "root")), "is the default subvolume"),
    ],
)
def test_status_says_when_the_next_boot_would_refuse(
    disk: Disk, tmp_path: Path, change: Callable[[Path], None], said: str
) -> None:
    """status, on the running system (the root mounted: not a reason at boot), says what the next boot's
    run would refuse, as that run decides it; it said nothing of most refusals (found by an
    adversarial tester)."""
    with disk.top() as top:
        populate(top)
        change(top)
    live = tmp_path / "live"
    live.mkdir()
    sh("mount", "-o", "subvol=root", disk.device, str(live))
    try:
        shown = disk.rollback("status")
        as_json = json.loads(disk.rollback("status", "--json").stdout)
    finally:
        sh("umount", str(live))
    assert shown.returncode == Exit.OK, shown.stderr
    assert "next boot:  REFUSED: " in shown.stdout and said in shown.stdout, shown.stdout
    assert said in as_json["next_boot_refused"]
    assert said in disk.rollback("run").stderr  # what the boot then says


# a directory in the root whose name holds a newline (and what a status line would say) and a byte that
# is not UTF-8, with a protected subvolume below it: status names it
FAKED = os.fsdecode(b"a\nprotected:  fake\xff")


def test_status_escapes_names_from_the_device_as_diff_does(disk: Disk) -> None:
    """A newline in a name split status's line and could fake one ("protected:  fake/persist ... INSIDE
    ROOT"); a byte that is not UTF-8 reached the JSON as a lone surrogate (jq: U+FFFD, the byte lost)
    and the text as the raw byte (a names tester)."""

    def odd(top: Path) -> None:
        (top / "root" / FAKED).mkdir()
        btrfsutil.create_subvolume(str(top / "root" / FAKED / "persist"))

    with disk.top() as top:
        populate(top)
        odd(top)
    text = disk.rollback("status")
    assert text.returncode == Exit.OK, text.stderr
    protected = [line for line in text.stdout.splitlines() if line.startswith("protected:")]
    assert "protected:  root/a\\nprotected:  fake\\xff/persist id" in text.stdout, text.stdout
    assert not any(line.startswith("protected:  fake") for line in text.stdout.splitlines())
    assert len(protected) == 4, protected  # persist, nix, home, and the one in the root
    found = json.loads(disk.rollback("status", "--json").stdout)
    paths = [p["path"] for p in found["protected"]]
    assert "root/a\\nprotected:  fake\\xff/persist" in paths, paths


def test_names_read_under_a_locale_that_is_not_utf8_are_reported_as_under_utf8(disk: Disk) -> None:
    """Python decodes names in the locale's encoding: under one that is not UTF-8 (here C with UTF-8
    mode off: ASCII) `diff --json` printed café's UTF-8 bytes as two escaped bytes, and a
    Latin locale as mojibake (a names tester). The program starts again in UTF-8 mode."""
    with disk.top() as top:
        populate(top)
        (top / "root" / "café").write_text("x")
        (top / "root" / os.fsdecode(b"\xff")).write_text("x")
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    found = subprocess.run(rollback_argv("diff", "--json", device=disk.device), capture_output=True, env=env)
    assert found.returncode == Exit.OK, found.stderr
    paths = json.loads(found.stdout)["paths"]
    assert "café" in paths and "\\xff" in paths, paths
    assert json.loads(disk.rollback("diff", "--json").stdout)["paths"] == paths
