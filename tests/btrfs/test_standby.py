"""Start-up ahead of the device: `rollback standby DIR COMMAND` imports and waits, units/rollback-trigger
(the device-ordered unit's command) makes it run and passes its exit status on; without a live early
process the trigger runs COMMAND itself. Same outcomes, same exit codes, either way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rollback.errors import Exit
from rollback.verbs import CRASH_AFTER_ENV
from tests.support.cli import rollback_argv
from tests.support.disks import Disk
from tests.support.layout import outside_root, populate, sh

pytestmark = pytest.mark.btrfs

TRIGGER = Path(__file__).parents[2] / "units/rollback-trigger"


@contextmanager
def early(
    disk: Disk, directory: Path, env: dict[str, str] | None = None, cmdline: str = "/dev/null"
) -> Iterator[subprocess.Popen[str]]:
    """The early unit's process, once it has published its pid (its imports done)."""
    argv = rollback_argv("standby", str(directory), *disk.rollback_argv("run", cmdline=cmdline)[3:], cmdline=None)
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    try:
        deadline = time.monotonic() + 30
        while not (directory / "pid").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no pid file"
            time.sleep(0.01)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def trigger(
    disk: Disk, directory: Path, *fallback: str, early: subprocess.Popen[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the trigger; reap the early process meanwhile, as systemd would (a zombie looks alive)."""
    command = list(fallback) or disk.rollback_argv("run")
    argv = ["bash", str(TRIGGER), str(directory), *command]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        if early is not None:
            early.wait(timeout=60)
        stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def rolled_back(disk: Disk, before: object) -> None:
    after = disk.state()
    assert after.under("root") == {"root": "dir:40755"}
    assert outside_root(after) == outside_root(before)  # type: ignore[arg-type]


def test_the_early_process_waits_then_runs_when_triggered(disk: Disk, tmp_path: Path) -> None:
    with disk.top() as top:
        populate(top)
    before = disk.state()
    directory = tmp_path / "standby"
    with early(disk, directory) as process:
        time.sleep(0.3)
        assert disk.state() == before  # imported, waiting: nothing read or written yet
        result = trigger(disk, directory, "false", early=process)  # the fallback must not be needed
        assert result.returncode == Exit.OK, result.stderr
        assert process.returncode == Exit.OK
    rolled_back(disk, before)


@pytest.mark.parametrize("outcome", ["refused", "skipped"])
def test_a_refusal_or_a_skip_passes_through_with_its_exit_status(disk: Disk, tmp_path: Path, outcome: str) -> None:
    """The device-ordered unit exits as the run did: 3 (its failure policy applies), or 77."""
    with disk.top() as top:
        populate(top)
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("rollback.skip\n" if outcome == "skipped" else "quiet\n")
    live = tmp_path / "live"
    live.mkdir()
    if outcome == "refused":  # the root is in use: the run must refuse
        sh("mount", "-o", "subvol=root", disk.device, str(live))
    try:
        before = disk.state()
        directory = tmp_path / "standby"
        with early(disk, directory, cmdline=str(cmdline)) as process:
            result = trigger(disk, directory, "false", early=process)
            expected = Exit.REFUSED if outcome == "refused" else Exit.SKIPPED
            assert result.returncode == expected, result.stderr
            assert process.returncode == expected
        assert disk.state() == before
    finally:
        if outcome == "refused":
            sh("umount", str(live))


def test_without_an_early_process_the_trigger_runs_the_command(disk: Disk, tmp_path: Path) -> None:
    with disk.top() as top:
        populate(top)
    before = disk.state()
    result = trigger(disk, tmp_path / "never-started")
    assert result.returncode == Exit.OK, result.stderr
    rolled_back(disk, before)


def test_an_early_process_killed_while_waiting_is_replaced_by_the_command(disk: Disk, tmp_path: Path) -> None:
    with disk.top() as top:
        populate(top)
    before = disk.state()
    directory = tmp_path / "standby"
    with early(disk, directory) as process:
        process.send_signal(signal.SIGKILL)
        process.wait()
        result = trigger(disk, directory)
    assert result.returncode == Exit.OK, result.stderr
    rolled_back(disk, before)


@pytest.mark.parametrize("after_step", [1, 2, 3])
def test_an_early_process_dying_mid_run_is_finished_by_the_command(disk: Disk, tmp_path: Path, after_step: int) -> None:
    with disk.top() as top:
        populate(top)
    before = disk.state()
    directory = tmp_path / "standby"
    with early(disk, directory, env={CRASH_AFTER_ENV: str(after_step)}) as process:
        result = trigger(disk, directory, early=process)
        assert process.returncode == -signal.SIGKILL
    assert result.returncode == Exit.OK, result.stderr
    assert "died" in result.stderr
    rolled_back(disk, before)
    assert not [p for p in disk.state().subvolume_paths() if p.startswith(".rollback/trash/")]


def test_an_exit_status_written_slowly_is_read_whole(tmp_path: Path) -> None:
    """A bash `read -t` that times out between two bytes keeps what it read; the trigger must not
    take the rest of the line for a whole one (seen under qemu TCG: `exit ""`)."""
    directory = tmp_path / "standby"
    fake = (
        "import os, sys, time\n"
        "d = sys.argv[1]; os.makedirs(d)\n"
        "for n in ('go', 'result'): os.mkfifo(f'{d}/{n}')\n"
        "go, result = (os.open(f'{d}/{n}', os.O_RDWR) for n in ('go', 'result'))\n"
        "open(f'{d}/pid', 'w').write(f'{os.getpid()}\\n')\n"
        "os.read(go, 64)\n"
        "for part in (b'7', b'7', b'\\n'):\n"
        "    os.write(result, part); time.sleep(0.15)\n"
    )
    with subprocess.Popen([sys.executable, "-c", fake, str(directory)]) as early:
        while not (directory / "pid").exists():
            time.sleep(0.01)
        result = subprocess.run(["bash", str(TRIGGER), str(directory), "false"], capture_output=True, text=True)
        early.wait()
    assert result.returncode == 77, result.stderr
