"""Kill the process after every step of every mode; the next run must converge, losing nothing outside root."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from pathlib import Path

import btrfsutil
import pytest

from rollback.errors import Exit
from rollback.verbs import CRASH_AFTER_ENV, CRASH_SIGNAL_ENV
from tests.support.disks import Disk
from tests.support.layout import State, outside_root, populate, sh

pytestmark = pytest.mark.btrfs

MODES = {  # (`prepare` archived a root: a run by hand without an archive says so unless told, row 226)
    "recreate": ["run", "--archive", ""],
    "snapshot": ["run", "--mode", "snapshot", "--archive", ""],
    "archive": ["run", "--archive", "old", "--keep-count", "1"],
    # after boot, a cleanup that never ran: what the previous boot left is deleted and committed first
    "after-boot-leftover": ["run", "--archive", "", "--cleanup", "after-boot"],
}
STAMP = re.compile(r"\d{8}T\d{6}Z(-\d+)?")


def prepare(disk: Disk, leftover: bool = False) -> None:
    with disk.top() as top:
        populate(top, blank=True)
        (top / "old").mkdir()
    # an earlier boot already archived a root (to be pruned), then the root got cruft again
    assert disk.rollback("run", "--archive", "old").returncode == Exit.OK
    with disk.top() as top:
        populate_again(top)
        if leftover:  # the boot before left its old root in the trash
            (top / ".rollback" / "trash").mkdir(parents=True)
            btrfsutil.create_subvolume(str(top / ".rollback/trash/20260101T000000Z"))
            btrfsutil.create_subvolume(str(top / ".rollback/trash/20260101T000000Z/nested"))


def populate_again(top: Path) -> None:
    root = top / "root"
    (root / "cruft").write_text("again")
    btrfsutil.create_subvolume(str(root / "nested"))
    btrfsutil.create_subvolume(str(root / "nested" / "deeper"))


def normalized(state: State) -> tuple[list[str], dict[str, str]]:
    """Names of archived/trash entries depend on the clock: compare them as placeholders."""
    subvols = [STAMP.sub("STAMP", p) for p in state.subvolume_paths()]
    files = {STAMP.sub("STAMP", p): d for p, d in state.files.items() if not p.startswith(".rollback/trash/")}
    return subvols, files


def _outside_trash(found: tuple[list[str], dict[str, str]], drop: bool) -> tuple[list[str], dict[str, str]]:
    subvols, files = found
    return [p for p in subvols if not (drop and p.startswith(".rollback/trash/"))], files


def steps_of(disk: Disk, args: list[str]) -> int:
    result = disk.rollback(*args, "--dry-run")
    assert result.returncode == Exit.OK, result.stderr
    return len(result.stdout.splitlines())


@pytest.mark.parametrize("how", ["KILL", "TERM", "INT"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_crash_after_every_step_converges(disk: Disk, mode: str, how: str) -> None:
    """KILL: the process dies; TERM: what systemd sends when the unit is stopped (shutdown, a timeout):
    one line with its reason, then it dies of it; INT: Ctrl-C at a rescue shell (exit 1 with its reason,
    not a traceback)."""
    args, leftover = MODES[mode], mode == "after-boot-leftover"
    prepare(disk, leftover)
    steps = steps_of(disk, args)
    assert steps >= 3
    assert disk.rollback(*args).returncode == Exit.OK  # the reference: an uninterrupted run
    reference = normalized(disk.state())
    for step in range(1, steps + 1):
        sh("mkfs.btrfs", "-q", "-f", disk.device)  # the same layout again, from scratch
        prepare(disk, leftover)
        before = disk.state()
        crashed = disk.rollback(*args, env={CRASH_AFTER_ENV: str(step), CRASH_SIGNAL_ENV: how})
        if how == "INT":
            assert crashed.returncode == Exit.FAILED and "reason=interrupted" in crashed.stderr, crashed.stderr
        else:  # TERM: dies of it, as systemd expects, after saying so
            assert crashed.returncode == -signal.Signals[f"SIG{how}"], (step, crashed.stderr)
            assert ("reason=interrupted" in crashed.stderr) is (how == "TERM"), crashed.stderr
        assert "Traceback" not in crashed.stderr
        assert outside_root(disk.state()) == outside_root(before), f"lost data after crash at step {step}"
        finished = disk.rollback(*args)
        assert finished.returncode == Exit.OK, (step, finished.stderr)
        after = disk.state()
        assert outside_root(after) == outside_root(before)
        if leftover:  # after boot, today's old root waits in the trash, or, moved by the killed run (no
            # root made), was what earlier boots left to the run that finished: deleted by it
            trash = [p for p in after.subvolume_paths() if p.startswith(".rollback/trash/") and p.count("/") == 2]
            assert len(trash) <= 1, (step, trash)
        assert _outside_trash(normalized(after), leftover) == _outside_trash(reference, leftover), (
            f"did not converge after a crash at step {step}"
        )
        assert disk.rollback(*args, "--dry-run").returncode == Exit.OK


NESTED = [f"root/srv/n{i}" for i in range(300)]


def kill_at(disk: Disk, delay: float) -> tuple[float, int | None, int, str]:
    """One run of a fresh layout killed `delay` s after start, then a normal run that must finish the job.
    Returns (delay, return code, trash entries left, where the kill landed: before/inside/after the delete)."""
    sh("mkfs.btrfs", "-q", "-f", disk.device)
    with disk.top() as top:
        populate(top, nested=NESTED)
    before = disk.state()
    with subprocess.Popen(disk.rollback_argv("run"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        time.sleep(delay)
        process.kill()
    state = disk.state()
    assert outside_root(state) == outside_root(before), f"lost data after a kill at {delay:.3f}s"
    paths = state.subvolume_paths()
    trash = len([p for p in paths if p.startswith(".rollback/trash/")])
    # inside: the old root partly deleted (every one of its subvolumes in the trash: moved, none deleted yet)
    where = "inside" if 0 < trash <= len(NESTED) else "before" if trash or NESTED[0] in paths else "after"
    finished = disk.rollback("run")
    assert finished.returncode == Exit.OK, (delay, finished.stderr)
    after = disk.state()
    assert outside_root(after) == outside_root(before)
    assert after.under("root") == {"root": "dir:40755"}, delay
    assert not [p for p in after.subvolume_paths() if p.startswith((".rollback/", "root/"))]
    return round(delay, 3), process.returncode, trash, where


def test_kill_at_random_moments_converges(disk: Disk) -> None:
    """SIGKILL at seeded random delays after start: during imports, mounting, renames or in the middle of
    the recursive delete of 300 nested subvolumes. The next run must finish the job. The delays are aimed
    at this machine's uninterrupted run; where none of them landed inside the delete (a machine faster or
    slower than that first run), more kills are aimed by halving the gap between the latest kill that came
    before the delete and the earliest that came after it, so that one lands inside it."""
    rng = random.Random(20261125)
    with disk.top() as top:
        populate(top, nested=NESTED)
    began = time.monotonic()
    assert disk.rollback("run").returncode == Exit.OK
    whole = time.monotonic() - began  # this machine's uninterrupted run: aim the kills at all of it
    outcomes = [kill_at(disk, rng.uniform(0.4, 1.1) * whole) for _ in range(14)]
    for _ in range(12):
        if any(where == "inside" for *_, where in outcomes):
            break
        early = max((delay for delay, *_, where in outcomes if where == "before"), default=0.0)
        late = min((delay for delay, *_, where in outcomes if where == "after"), default=2 * whole)
        outcomes.append(kill_at(disk, (early + late) / 2 if late > early else late / 2))
    print("kills (delay s, return code, trash entries left, where):", outcomes)
    assert any(where == "inside" for *_, where in outcomes), f"no kill landed inside the delete: {outcomes}"
