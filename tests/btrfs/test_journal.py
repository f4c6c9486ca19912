"""The journald path for real: pystemd's sd_journal_sendv into a stand-in journal socket."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import btrfsutil
import pytest

from rollback.errors import Exit
from rollback.events import EVENTS
from tests.support.disks import Disk
from tests.support.environment import unavailable
from tests.support.layout import populate

pytestmark = pytest.mark.btrfs
ROOT = Path(__file__).parents[2]


def run_with_journal(
    disk: Disk, *args: str, env: dict[str, str] | None = None, service: bool = True
) -> dict[str, object]:
    """Run the CLI on a host with journald: as a service (stderr is the journal stream) or piped by hand."""
    if not shutil.which("unshare"):
        unavailable("unshare (util-linux) is not installed")
    command = disk.rollback_argv(*args)
    listener = [sys.executable, "-m", "tests.support.journal_listener", *([] if service else ["--piped"]), *command]
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", *listener],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, object] = json.loads(result.stdout)
    return found


Entry = dict[str, list[str]]


def by_event(entries: list[Entry], kind: str) -> list[dict[str, str]]:
    """Entries of one kind, each field's first value (pystemd appends its own CODE_* after ours)."""
    return [{k: v[0] for k, v in e.items()} for e in entries if e.get("MESSAGE_ID") == [EVENTS[kind].message_id]]


def test_a_run_logs_every_event_to_the_journal_with_fields(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    found = run_with_journal(disk, "run")
    assert found["returncode"] == Exit.OK
    assert found["stderr"] == ""  # with a journal and no terminal, nothing is printed twice
    entries: list[Entry] = found["entries"]  # type: ignore[assignment]
    started, finished = by_event(entries, "started"), by_event(entries, "finished")
    steps = by_event(entries, "step")
    assert len(entries) == 9 and len(started) == 1 and len(finished) == 1 and len(steps) == 7
    assert finished[0]["ROLLBACK_DELETED"] == "4" and float(finished[0]["ROLLBACK_DURATION_MS"]) > 0
    for entry in started + steps + finished:
        assert entry["SYSLOG_IDENTIFIER"] == "rollback" and entry["PRIORITY"] == "6"
        assert entry["ROLLBACK_DEVICE"] == disk.device and entry["ROLLBACK_SUBVOLUME"] == "root"
        assert entry["CODE_FILE"].endswith("rollback/verbs.py"), entry["CODE_FILE"]  # the caller, not log.emit
    assert [s["ROLLBACK_STEP"] for s in steps] == ["1", "2", "3", "4", "5", "6", "7"]


def test_a_refusal_reaches_the_journal_as_an_error(disk: Disk, tmp_path: Path) -> None:
    with disk.top() as top:
        populate(top)
        (top / "root" / "persist2").mkdir()
    found = run_with_journal(disk, "run", "--subvolume", "root/persist2")
    assert found["returncode"] == Exit.REFUSED
    refused = by_event(found["entries"], "refused")  # type: ignore[arg-type]
    assert len(refused) == 1
    assert refused[0]["PRIORITY"] == "3" and refused[0]["ROLLBACK_REASON"] == "not-subvolume"
    assert refused[0]["ROLLBACK_HINT"] and refused[0]["ROLLBACK_EXIT"] == "3"


def test_a_refusal_naming_bytes_that_are_not_utf8_reaches_the_journal(disk: Disk) -> None:
    """A name on the device that is not UTF-8, in a refusal's message: pystemd's strict encoding
    crashed the sink, and the run ended as exit 1 (at every boot) instead of exit 3 with its reason."""
    with disk.top() as top:
        populate(top)
        (top / "old_roots").mkdir()
        btrfsutil.create_subvolume(os.fsencode(top / "old_roots") + b"/caf\xe9")
    before = disk.state()
    found = run_with_journal(disk, "run", "--archive", "old_roots")
    assert found["returncode"] == Exit.REFUSED, found["stderr"]
    refused = by_event(found["entries"], "refused")  # type: ignore[arg-type]
    assert len(refused) == 1 and refused[0]["ROLLBACK_REASON"] == "foreign-subvolume", refused
    assert "rollback did not put there: 'old_roots/caf\\xe9'" in refused[0]["MESSAGE"]
    assert disk.state() == before


def test_status_updates_reach_the_notify_socket(disk: Disk, tmp_path: Path) -> None:
    with disk.top() as top:
        populate(top)
    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(address))
        result = disk.rollback("run", env={"NOTIFY_SOCKET": str(address)})
        assert result.returncode == Exit.OK, result.stderr
        server.setblocking(False)
        messages = []
        while True:
            try:
                messages.append(server.recv(4096).decode())
            except BlockingIOError:
                break
    assert messages[0].startswith("STATUS=replacing root on")
    assert messages[-1] == "STATUS=root replaced, 4 subvolume(s) deleted"
    assert len(messages) == 9


def test_a_manual_run_piped_on_a_journald_host_prints_everything(disk: Disk) -> None:
    """`rollback run 2>&1 | tee log` on a normal install: stderr is a pipe, so nothing goes to the journal."""
    with disk.top() as top:
        populate(top)
    found = run_with_journal(disk, "run", service=False)
    assert found["returncode"] == Exit.OK
    assert found["entries"] == []
    stderr = str(found["stderr"])
    assert "replacing root on" in stderr and "root replaced, 4 subvolume(s) deleted" in stderr
    assert stderr.count("\n") == 9  # started, 7 steps (both commits included), finished


@pytest.mark.parametrize(
    ("env", "service", "to_journal"),
    [
        ({"ROLLBACK_LOG_TARGET": "journal"}, False, True),
        ({"ROLLBACK_LOG_TARGET": "console"}, True, False),
        ({"SYSTEMD_LOG_TARGET": "console"}, True, False),
        ({"SYSTEMD_LOG_TARGET": "journal"}, False, True),
        ({"SYSTEMD_LOG_TARGET": "kmsg"}, False, False),  # not ours to honour: auto
        ({"JOURNAL_STREAM": "1:2"}, True, False),  # a stale JOURNAL_STREAM (inherited, not our stderr)
        ({"ROLLBACK_LOG_TARGET": "console", "SYSTEMD_LOG_TARGET": "journal"}, False, False),  # ours first
    ],
)
def test_the_log_target_can_be_chosen(disk: Disk, env: dict[str, str], service: bool, to_journal: bool) -> None:
    found = run_with_journal(disk, "run", "--subvolume", "missing/../x", env=env, service=service)
    assert found["returncode"] == Exit.USAGE
    assert bool(found["entries"]) == to_journal
    assert ("bad-name" in str(found["stderr"])) != to_journal


def test_the_log_target_flag_wins(disk: Disk) -> None:
    found = run_with_journal(disk, "run", "--log-target", "console", "--subvolume", "a//..", service=True)
    assert found["returncode"] == Exit.USAGE and found["entries"] == [] and "bad-name" in str(found["stderr"])


def test_an_invalid_log_target_is_a_usage_error(disk: Disk) -> None:
    with disk.top() as top:
        populate(top)
    before = disk.state()
    found = run_with_journal(disk, "run", env={"ROLLBACK_LOG_TARGET": "jounral"})
    assert found["returncode"] == Exit.USAGE
    assert "ROLLBACK_LOG_TARGET" in str(found["stderr"]) and found["entries"] == []
    assert disk.state() == before
