"""Lint, types and unit files are tests: a warning fails the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.environment import unavailable

pytestmark = pytest.mark.static

ROOT = Path(__file__).parents[2]
UNITS = ROOT / "units"


def _tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else (shutil.which(name) or name)


def test_ruff_check() -> None:
    result = subprocess.run(
        [_tool("ruff"), "check", "rollback", "tests", "packaging", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = subprocess.run(
        [_tool("ruff"), "format", "--check", "rollback", "tests", "packaging", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("policy", ["boot-on", "stop-boot"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, policy: str) -> None:
    """verify exits 0 even on unknown keys here (systemd 252): any output is a failure too."""
    if not shutil.which("systemd-analyze"):
        unavailable("systemd-analyze is not installed")
    for name in ("rollback@.service", "rollback-early@.service"):  # the commands, where they are here
        unit = (UNITS / name).read_text().replace("/usr/lib/rollback/rollback-trigger", str(UNITS / "rollback-trigger"))
        (tmp_path / name).write_text(unit.replace("/usr/bin/rollback", _tool("rollback")))
    if policy == "stop-boot":
        (tmp_path / "rollback@.service.d").mkdir()
        shutil.copy(UNITS / "rollback-stop-boot.conf", tmp_path / "rollback@.service.d" / "stop-boot.conf")
    instances = [str(tmp_path / f"{u}@dev-disk-by\\x2dlabel-nixos.service") for u in ("rollback", "rollback-early")]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *instances],
        capture_output=True,
        text=True,
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_cleanup_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        unavailable("systemd-analyze is not installed")
    unit = (UNITS / "rollback-cleanup@.service").read_text().replace("/usr/bin/rollback", _tool("rollback"))
    (tmp_path / "rollback-cleanup@.service").write_text(unit)
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(tmp_path / "rollback-cleanup@dev-disk-by\\x2dlabel-nixos.service"),
        ],
        capture_output=True,
        text=True,
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_cleanup_holds_no_start_job_while_it_deletes() -> None:
    """A oneshot's start job lasts until it exits, and systemd counts the boot as finished only when no
    job is left: the boot was 'starting' for the whole delete (up to an hour; a unit reviewer's)."""
    lines = (UNITS / "rollback-cleanup@.service").read_text().splitlines()
    settings = [line.partition("=") for line in lines if "=" in line and not line.startswith("#")]
    assert ("Type", "=", "exec") in settings
    assert any(key == "After" and "multi-user.target" in value.split() for key, _, value in settings)


def test_the_early_process_is_bound_to_the_unit_that_triggers_it() -> None:
    """Its trigger killed without its trap running (SIGKILL, the OOM killer): rollback@ failed, and the
    early process's run went on beside sysroot.mount (a unit reviewer's finding). Ordered before it,
    so the binding waits for rollback@'s own start job rather than stopping at once."""
    lines = (UNITS / "rollback-early@.service").read_text().splitlines()
    settings = [line.partition("=")[::2] for line in lines if "=" in line and not line.startswith("#")]
    assert ("BindsTo", "rollback@%i.service") in settings and ("Before", "rollback@%i.service") in settings
