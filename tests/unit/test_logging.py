"""Events: journal fields, the catalog, and what lands on stderr without a journal."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from rollback import log
from rollback.effects.journal import JournalSink, notify_status
from rollback.events import EVENTS, journal_fields

CATALOG = Path(__file__).parents[2] / "units" / "rollback.catalog"


def test_message_ids_are_unique_128_bit_ids() -> None:
    ids = [e.message_id for e in EVENTS.values()]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_catalog_documents_exactly_the_message_ids() -> None:
    documented = re.findall(r"^-- ([0-9a-f]{32})$", CATALOG.read_text(), flags=re.M)
    assert sorted(documented) == sorted(e.message_id for e in EVENTS.values())


def test_journal_fields_carry_priority_id_and_rollback_fields() -> None:
    fields = journal_fields(
        {
            "event": "refused: root is mounted",
            "level": "error",
            "kind": "refused",
            "device": "/dev/vda2",
            "reason": "mounted",
            "pathname": "/x/verbs.py",
            "lineno": 3,
        }
    )
    assert fields[:3] == ["MESSAGE=refused: root is mounted", "PRIORITY=3", "SYSLOG_IDENTIFIER=rollback"]
    assert f"MESSAGE_ID={EVENTS['refused'].message_id}" in fields
    assert {
        "ROLLBACK_DEVICE=/dev/vda2",
        "ROLLBACK_REASON=mounted",
        "ROLLBACK_EVENT=refused",
        "CODE_FILE=/x/verbs.py",
        "CODE_LINE=3",
    } <= set(fields)


@pytest.mark.parametrize(("level", "priority"), [("info", 6), ("warning", 4), ("error", 3), ("critical", 2)])
def test_priorities_are_syslog_not_python(level: str, priority: int) -> None:
    assert f"PRIORITY={priority}" in journal_fields({"event": "x", "level": level})


def test_emit_uses_the_kind_level_and_names_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, ...]] = []
    monkeypatch.setattr("rollback.effects.journal.JournalSink.__call__", _recording(sent))
    log.configure(journal=True, console=False, notify=False)
    log.emit("skipped", "kept", reason="skip-next")
    fields = set(sent[0])
    assert {"PRIORITY=4", "ROLLBACK_EVENT=skipped", "ROLLBACK_REASON=skip-next", "MESSAGE=kept"} <= fields
    assert f"CODE_FILE={__file__}" in fields
    assert "CODE_FUNC=test_emit_uses_the_kind_level_and_names_the_caller" in fields


def _recording(sent: list[tuple[str, ...]]) -> object:
    def call(_self: object, _logger: object, _name: str, event: dict[str, object]) -> object:
        sent.append(tuple(journal_fields(dict(event))))
        raise structlog.DropEvent

    return call


def test_the_core_imported_directly_is_what_structlog_exports() -> None:
    """log.py imports structlog's core from its defining modules (skipping the package init)."""
    from structlog._log_levels import add_log_level
    from structlog._native import make_filtering_bound_logger
    from structlog._output import PrintLogger
    from structlog.exceptions import DropEvent

    assert make_filtering_bound_logger is structlog.make_filtering_bound_logger
    assert PrintLogger is structlog.PrintLogger
    assert add_log_level is structlog.processors.add_log_level
    assert DropEvent is structlog.DropEvent
    # and those are all the names rollback imports from structlog's modules (structlog.dev is public): a new
    # one must be checked above too
    imported = {
        (node.module, alias.name)
        for path in (Path(__file__).parents[2] / "rollback").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "structlog"
        for alias in node.names
    }
    assert imported == {
        ("structlog._log_levels", "add_log_level"),
        ("structlog._native", "make_filtering_bound_logger"),
        ("structlog._output", "PrintLogger"),
        ("structlog.exceptions", "DropEvent"),
        ("structlog.dev", "ConsoleRenderer"),
    }


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    log.configure(journal=False, console=True, notify=False)


def test_console_lines_without_a_journal(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure(journal=False, console=True, notify=False)
    log.emit("refused", "refused: root is mounted at /", hint="use the initrd", device="/dev/x")
    err = capsys.readouterr().err
    assert "refused: root is mounted at /" in err and "device=/dev/x" in err and "error" in err


def test_journal_sink_sends_fields_and_drops_unless_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, ...]] = []
    sink = JournalSink(keep=False)
    monkeypatch.setattr(sink, "_sendv", lambda *fields: sent.append(fields))
    with pytest.raises(structlog.DropEvent):
        sink(None, "info", {"event": "hello", "level": "info", "kind": "started"})
    assert "MESSAGE=hello" in sent[0] and f"MESSAGE_ID={EVENTS['started'].message_id}" in sent[0]
    kept = JournalSink(keep=True)
    monkeypatch.setattr(kept, "_sendv", lambda *fields: sent.append(fields))
    assert kept(None, "info", {"event": "again", "level": "info"})["event"] == "again"
    assert "MESSAGE=again" in sent[1]


NOT_UTF8 = "/top/.rollback/trash/caf\udce9"  # os.fsdecode(b"caf\xe9"): a name on the device, not UTF-8


def test_journal_fields_spell_bytes_that_are_not_utf8_as_the_console_does() -> None:
    """pystemd encodes each field strictly: a refusal naming such a path crashed the sink, and the run
    ended as exit 1 (at every boot while the name is there) instead of its refusal."""
    fields = journal_fields({"event": f"refused: {NOT_UTF8}", "kind": "refused", "path": NOT_UTF8, "level": "error"})
    assert [f.encode() for f in fields]  # strict, as pystemd does
    assert "MESSAGE=refused: /top/.rollback/trash/caf\\xe9" in fields
    assert "ROLLBACK_PATH=/top/.rollback/trash/caf\\xe9" in fields


def test_the_console_spells_bytes_that_are_not_utf8_as_the_journal_and_diff_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log.configure(journal=False, console=True, notify=False)
    log.emit("refused", f"refused: {NOT_UTF8}", path=NOT_UTF8)
    err = capsys.readouterr().err
    assert "refused: /top/.rollback/trash/caf\\xe9" in err and "path=/top/.rollback/trash/caf\\xe9" in err, err


def test_a_journal_that_fails_loses_nothing_and_stops_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = JournalSink(keep=False)

    def fail(*fields: str) -> None:
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(sink, "_sendv", fail)
    with pytest.raises(structlog.DropEvent):
        sink(None, "error", {"event": f"refused: {NOT_UTF8}", "level": "error", "kind": "refused"})
    assert "rollback: refused: /top/.rollback/trash/caf\\xe9 (journal: [Errno 111] Connection refused)" in (
        capsys.readouterr().err
    )


def test_a_journal_socket_nobody_holds_means_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A socket file left by a journald that is gone refuses datagrams, and pystemd drops
    sd_journal_sendv's error: chosen as the journal, every event would be lost without a word."""
    from rollback.effects.journal import listening

    path = str(tmp_path / "socket")
    held = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    held.bind(path)
    try:
        assert listening(path)
    finally:
        held.close()  # the file stays, nobody reads it
    assert os.path.exists(path) and not listening(path) and not listening(str(tmp_path / "none"))
    monkeypatch.setattr(log, "JOURNAL_SOCKET", path)
    log.configure(target="journal", notify=False)
    log.emit("started", "replacing root on /dev/vda")
    assert "replacing root on /dev/vda" in capsys.readouterr().err


def test_a_status_with_bytes_that_are_not_utf8_reaches_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(address))
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        notify_status(None, "info", {"event": f"refused: {NOT_UTF8}"})
        assert server.recv(4096) == b"STATUS=refused: /top/.rollback/trash/caf\\xe9"


def test_notify_status_reaches_the_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(address))
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        notify_status(None, "info", {"event": "step 2/5 done"})
        assert server.recv(4096) == b"STATUS=step 2/5 done"


def test_without_pystemd_events_still_reach_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import rollback.effects.journal as sinks

    def broken() -> None:
        raise ImportError("cannot import name _elementpath")

    monkeypatch.setattr(sinks, "load", broken)
    log.configure(journal=True, console=False, notify=True)
    log.emit("started", "replacing root on /dev/vda")
    err = capsys.readouterr().err
    assert "journal/notify unavailable" in err and "replacing root on /dev/vda" in err


_SITE = [str(Path(__file__).parents[2]), *(p for p in sys.path if p.endswith("site-packages"))]
_BOOT_PATH = """
import sys
sys.path[:0] = PATHS  # isolated and without site, as the initramfs runs the service

def ran(name):
    module = sys.modules.get(name)
    return module is not None and module.__dict__.get("_loaded", type(module).__name__ != "_Deferred")

import rollback.entry, rollback.cli, rollback.verbs, rollback.log
rollback.log.configure(journal=True, notify=True, console=False)
for processor in rollback.log._logger._processors:  # loaded for real, but sends nowhere: no host journal
    if hasattr(processor, "_sendv"):
        processor._sendv = lambda *fields: None
rollback.log.emit("started", "x")
print(*(ran(m) for m in NAMES))
import pystemd, inspect
pystemd.__version__, inspect.signature
print(ran("pystemd"), ran("inspect"))
"""


def test_deferred_modules_run_only_when_used() -> None:
    """What the libraries import but the boot path does not use stays unexecuted, until used."""
    names = ["asyncio", "pystemd", "structlog", "structlog.dev", "structlog.processors", "json", "logging", "inspect"]
    code = _BOOT_PATH.replace("PATHS", repr(_SITE)).replace("NAMES", repr(names))
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"] * len(names) + ["True", "True"]  # used -> really loaded


def test_eager_imports_switch_turns_deferral_off() -> None:
    code = "import sys, rollback.entry, rollback.log; print('asyncio.base_events' in sys.modules)"
    env = {**os.environ, "ROLLBACK_EAGER_IMPORTS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "True", result.stderr


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        (None, {}, "auto"),
        ("console", {"ROLLBACK_LOG_TARGET": "journal"}, "console"),
        (None, {"ROLLBACK_LOG_TARGET": "journal", "SYSTEMD_LOG_TARGET": "console"}, "journal"),
        (None, {"SYSTEMD_LOG_TARGET": "console"}, "console"),
        (None, {"SYSTEMD_LOG_TARGET": "journal-or-kmsg"}, "journal"),
        (None, {"SYSTEMD_LOG_TARGET": "null"}, "auto"),
        (None, {"ROLLBACK_LOG_TARGET": ""}, "auto"),
    ],
)
def test_requested_target_precedence(flag: str | None, environ: dict[str, str], expected: str) -> None:
    assert log.requested_target(flag, environ) == expected


def test_an_unknown_target_of_ours_is_rejected() -> None:
    with pytest.raises(ValueError, match="'syslog' is not one of auto, console, journal"):
        log.requested_target(None, {"ROLLBACK_LOG_TARGET": "syslog"})


def test_auto_means_the_journal_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        st = os.fstat(stream.fileno())
        mine = f"{st.st_dev}:{st.st_ino}"
        assert log.wants_journal("auto", {"JOURNAL_STREAM": mine}, stream.fileno())
        for other in ("", f"{st.st_dev}:{st.st_ino + 1}", "garbage", f"{st.st_dev}:"):
            assert not log.wants_journal("auto", {"JOURNAL_STREAM": other}, stream.fileno())
        assert not log.wants_journal("auto", {"JOURNAL_STREAM": mine}, -1)
        assert not log.wants_journal("console", {"JOURNAL_STREAM": mine}, stream.fileno())
        assert log.wants_journal("journal", {}, stream.fileno())


def test_the_cli_rejects_an_invalid_target_before_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rollback.cli import main

    monkeypatch.setenv("ROLLBACK_LOG_TARGET", "jounral")
    assert main(["config", "--kernel-cmdline", "/dev/null", "--config", "/dev/null"]) == 2
    assert "ROLLBACK_LOG_TARGET" in capsys.readouterr().err


def test_importing_the_package_defers_nothing_only_the_entry_point_does() -> None:
    """Tests and the benchmark import rollback.cli, .log, .verbs: sys.modules must stay as they find it."""
    code = (
        "import sys, rollback.cli, rollback.log, rollback.verbs, rollback.effects.journal\n"
        "print(sorted(n for n, m in sys.modules.items() if type(m).__module__ == 'rollback.lazy'))\n"
        "import rollback.entry\n"
        "print(sorted(n for n, m in sys.modules.items() if type(m).__module__ == 'rollback.lazy'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.splitlines()
    assert before == "[]"
    assert after != "[]"  # the entry point still defers what it can (what is already imported stays)
