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
from tests.support.layout import populate, rolled_back, sh

pytestmark = pytest.mark.btrfs

TRIGGER = Path(__file__).parents[2] / "units/rollback-trigger"


def published(directory: Path, process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Wait until an early process (real or fake) has published its pid: its imports done, waiting."""
    deadline = time.monotonic() + 30
    while not (directory / "pid").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no pid file"
        time.sleep(0.01)


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
        published(directory, process)
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


def test_the_early_process_waits_then_runs_when_triggered(disk: Disk, tmp_path: Path) -> None:
    with disk.top() as top:
        populate(top)
    before = disk.state()
    directory = tmp_path / "standby"
    with early(disk, directory) as process:
        time.sleep(0.3)
        assert disk.state() == before  # imported, waiting: nothing read or written yet
        result = trigger(disk, directory, early=process)
        assert result.returncode == Exit.OK, result.stderr
        assert process.returncode == Exit.OK
    rolled_back(before, disk.state())


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
            result = trigger(disk, directory, *disk.rollback_argv("run", cmdline=str(cmdline)), early=process)
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
    rolled_back(before, disk.state())


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
    rolled_back(before, disk.state())


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
    rolled_back(before, disk.state())
    assert not [p for p in disk.state().subvolume_paths() if p.startswith(".rollback/trash/")]


FAKE_EARLY = (  # the protocol of rollback/effects/standby.py, with a run of argv[2] s exiting argv[3]
    "import os, sys, time\n"
    "d, seconds, code = sys.argv[1], float(sys.argv[2]), sys.argv[3]; os.makedirs(d)\n"
    "for n in ('go', 'wake'): os.mkfifo(f'{d}/{n}')\n"
    "go, wake = (os.open(f'{d}/{n}', os.O_RDWR) for n in ('go', 'wake'))\n"
    "def publish(n, text):\n"  # as rollback/effects/standby.py does: complete, or not there
    "    open(f'{d}/{n}.new', 'w').write(text); os.rename(f'{d}/{n}.new', f'{d}/{n}')\n"
    "publish('argv', 'x\\0'); publish('pid', f'{os.getpid()}\\n')\n"
    "os.read(go, 64); os.unlink(f'{d}/pid')\n"
    "time.sleep(seconds)\n"
    "open(f'{d}/status.new', 'w').write(f'{code}\\n'); os.rename(f'{d}/status.new', f'{d}/status')\n"
    "if len(sys.argv) > 4: os.write(wake, b'\\n')\n"
)
FALLBACK = ("sh", "-c", "exit 99", "x")  # the trigger's own command: it must never run after a run ended


@contextmanager
def fake_early(directory: Path, seconds: float, code: int, *, wake: bool = True) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-c", FAKE_EARLY, str(directory), str(seconds), str(code), *(["wake"] if wake else [])]
    with subprocess.Popen(argv) as process:
        try:
            published(directory, process)
            yield process
        finally:  # a test failing while it waits for `go` must fail, not hang in Popen's exit
            if process.poll() is None:
                process.kill()


# runs that end at every moment relative to the trigger's looks (every 50 ms), with or without the
# line on `wake`: the exit status is passed on each time, and the command never runs a second time
TIMINGS = [(seconds, wake) for seconds in (0, 0.001, 0.01, 0.049, 0.05, 0.051, 0.099, 0.2) for wake in (True, False)]


@pytest.mark.parametrize(("seconds", "wake"), TIMINGS)
def test_the_exit_status_is_never_lost_and_the_run_never_repeated(tmp_path: Path, seconds: float, wake: bool) -> None:
    for attempt, code in enumerate((0, 1, 3, 77)):
        directory = tmp_path / f"standby-{attempt}"
        with fake_early(directory, seconds, code, wake=wake) as early:
            result = subprocess.run(["bash", str(TRIGGER), str(directory), *FALLBACK], capture_output=True, timeout=30)
            early.wait(timeout=10)
        assert (result.returncode, result.stderr) == (code, b"")


STOPPED_AT_THE_END = (  # the real early process, whose run is sent a SIGTERM as it ends, then exits 3
    "import os, signal, sys\n"
    "from rollback.cli import _STOPPING, die_of\n"
    "from rollback.effects import standby\n"
    "def run(argv):\n"
    "    os.kill(os.getpid(), signal.SIGTERM)\n"
    "    return 3\n"
    "sys.exit(standby.serve(sys.argv[1], ['x'], run, _STOPPING, die_of))\n"
)


def test_a_stop_signal_as_the_run_ends_waits_for_its_status(tmp_path: Path) -> None:
    """systemd stopping the early unit just as its run ends (the verb's own handler put back): it died
    before publishing the status, and the trigger ran the command a second time (or, caught a moment
    earlier, published 1 for a run that had succeeded; a reviewer). The status is published, then it
    dies of the signal."""
    directory = tmp_path / "standby"
    argv = [sys.executable, "-c", STOPPED_AT_THE_END, str(directory)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    with subprocess.Popen(argv, env=env, stderr=subprocess.PIPE) as process:
        published(directory, process)
        result = subprocess.run(["bash", str(TRIGGER), str(directory), *FALLBACK], capture_output=True, timeout=60)
        process.wait(timeout=30)
    assert (result.returncode, result.stderr) == (3, b"")
    assert process.returncode == -signal.SIGTERM


def test_a_finished_early_process_not_yet_reaped_still_passes_its_status_on(tmp_path: Path) -> None:
    """A zombie answers kill -0 like a live process: the status decides, not the pid."""
    directory = tmp_path / "standby"
    with fake_early(directory, 0, 3, wake=False) as early:
        result = subprocess.run(["bash", str(TRIGGER), str(directory), *FALLBACK], capture_output=True, timeout=30)
        assert early.poll() is not None  # reaped only now: it was a zombie while the trigger looked
    assert (result.returncode, result.stderr) == (3, b"")


def test_stopping_the_trigger_stops_the_run(tmp_path: Path) -> None:
    """rollback@ stopped or timed out: the run must not go on alone while the boot continues."""
    directory = tmp_path / "standby"
    with fake_early(directory, 60, 0) as early:  # a long run
        with subprocess.Popen(["bash", str(TRIGGER), str(directory), "false", "x"]) as trigger:
            time.sleep(0.5)
            trigger.terminate()
            early.wait(timeout=10)  # reaped here: the trigger waits for it to be gone
            assert trigger.wait(timeout=10) == 143
        assert early.returncode == -signal.SIGKILL


def test_an_early_process_for_another_command_line_is_not_used(disk: Disk, tmp_path: Path) -> None:
    """A drop-in changed rollback@'s command: the early process (started for the old one) must not run
    it; the trigger runs its own command line."""
    with disk.top() as top:
        populate(top)
    before = disk.state()
    directory = tmp_path / "standby"
    with early(disk, directory) as process:
        result = trigger(disk, directory, *disk.rollback_argv("run", "--subvolume", "root"))
        assert process.poll() is None  # never triggered: still waiting
    assert result.returncode == Exit.OK, result.stderr
    assert "the early process runs" in result.stderr
    rolled_back(before, disk.state())


def test_a_second_trigger_after_a_finished_run_runs_the_command(disk: Disk, tmp_path: Path) -> None:
    """The early process triggers once: a later trigger (a restarted unit) must not wait on its pid."""
    with disk.top() as top:
        populate(top)
    directory = tmp_path / "standby"
    with early(disk, directory) as process:
        assert trigger(disk, directory, early=process).returncode == Exit.OK
    assert not (directory / "pid").exists()
    again = trigger(disk, directory)
    assert again.returncode == Exit.OK, again.stderr


def test_a_run_that_ends_in_an_exception_still_passes_its_status_on(tmp_path: Path) -> None:
    """A usage error raises SystemExit inside the early process: its status is published all the same,
    and the trigger does not run the command a second time."""
    directory = tmp_path / "standby"
    argv = rollback_argv("standby", str(directory), "run", "--no-such-flag", cmdline=None)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        published(directory, process)
        command = ["sh", "-c", "exit 99", "run", "--no-such-flag"]  # ends with the early process's argv
        result = subprocess.run(["bash", str(TRIGGER), str(directory), *command], capture_output=True, timeout=60)
        process.communicate(timeout=30)
    assert (result.returncode, result.stderr) == (Exit.USAGE, b"")
    assert process.returncode == Exit.USAGE
