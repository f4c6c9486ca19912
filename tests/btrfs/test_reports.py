"""status, diff and skip-next against real layouts."""

from __future__ import annotations

from pathlib import Path

import btrfsutil
import pytest

from rollback.errors import Exit
from tests.support.disks import Disk, parse_json
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
    kept = disk.rollback("run")
    assert kept.returncode == Exit.SKIPPED
    assert "skip-next mark was set" in kept.stderr
    after = disk.state()
    assert after.subvolumes[1:] == before.subvolumes[1:]  # the mark lived in the top level: only it changed
    assert after.under("root") == before.under("root")
    assert disk.rollback("run").returncode == Exit.OK
    assert "root/tmp/cruft" not in disk.state().files
