"""structlog, set up once by cli.main: journal fields when stderr is the journal, readable lines otherwise.

The boot path uses structlog's core only: a filtering bound logger over a PrintLogger, with our
processors. `import structlog` would run the package init, which imports every processor, the
console renderer and the stdlib integration (json, logging, datetime, dataclasses, inspect,
asyncio, ...): about half of the service's start-up (docs/boot-path.md). So the package init is
deferred (rollback.lazy, applied by rollback.entry) and the core is imported from the modules that
define it; a unit test checks they are the very objects structlog exports, so an upgrade that moves them fails CI, not a
boot. The console renderer (structlog.dev) is imported only when events go to stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from structlog._log_levels import add_log_level  # the core, not the package init (see above)
from structlog._native import make_filtering_bound_logger
from structlog._output import PrintLogger

from rollback.events import EVENTS, utf8

JOURNAL_SOCKET = "/run/systemd/journal/socket"

Processor = Any  # structlog's processor protocol is loosely typed

_logger: Any = None  # the bound logger configure() made


TARGET_ENV = "ROLLBACK_LOG_TARGET"
TARGETS = ("auto", "console", "journal")
# systemd's own variable, honoured as systemd tools do; its other values (kmsg, syslog, null) mean auto here
_SYSTEMD_TARGETS = {"auto": "auto", "console": "console", "journal": "journal", "journal-or-kmsg": "journal"}


def requested_target(flag: str | None, environ: Mapping[str, str]) -> str:
    """The target asked for: --log-target, then $ROLLBACK_LOG_TARGET, then $SYSTEMD_LOG_TARGET, then auto.

    Raises ValueError for a value of ours that is not a target (systemd's variable is not ours to judge).
    """
    for value in (flag, environ.get(TARGET_ENV)):
        if value:
            if value not in TARGETS:
                raise ValueError(f"log target {value!r} is not one of {', '.join(TARGETS)}")
            return value
    return _SYSTEMD_TARGETS.get(environ.get("SYSTEMD_LOG_TARGET", ""), "auto")


def stderr_is_journal(journal_stream: str, stderr_fd: int) -> bool:
    """systemd's rule: $JOURNAL_STREAM is `<dev>:<ino>` of the stream journald gave us; is stderr that stream?"""
    dev, _, ino = journal_stream.partition(":")
    try:
        st = os.fstat(stderr_fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


def wants_journal(target: str, environ: Mapping[str, str], stderr_fd: int) -> bool:
    """Native journal protocol when asked for, or (auto) when stderr already goes to the journal."""
    if target == "journal":
        return True
    return target == "auto" and stderr_is_journal(environ.get("JOURNAL_STREAM", ""), stderr_fd)


def configure(
    *, target: str = "auto", journal: bool | None = None, console: bool | None = None, notify: bool | None = None
) -> None:
    """Choose sinks: the journal when `target` says so and its socket exists, else stderr (see wants_journal)."""
    global _logger
    if journal is None:
        journal = wants_journal(target, os.environ, _fileno(sys.stderr)) and _listening(JOURNAL_SOCKET)
    if console is None:
        console = not journal
    if notify is None:
        notify = bool(os.environ.get("NOTIFY_SOCKET"))
    systemd = _systemd_processors(journal=journal, notify=notify, keep=console)
    processors: list[Processor] = [add_log_level, *systemd]
    if console or not (journal and systemd):  # else every event ends in the journal sink
        from structlog.dev import ConsoleRenderer

        processors += [_drop_callsite, ConsoleRenderer(colors=False, pad_event_to=0)]
    bound: Any = make_filtering_bound_logger(0)  # a BoundLoggerBase: (logger, processors, context)
    _logger = bound(PrintLogger(_Console(sys.stderr)), processors, {})  # type: ignore[arg-type]


class _Console:
    """stderr for the console sink. A reader gone (`rollback run 2>&1 | head -1`: EPIPE) loses the
    lines, never the run: a write failing mid-run ended it early, reported as exit 0."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except (OSError, ValueError, AttributeError):  # EPIPE, EIO; closed; None: started with `2>&-`
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self._stream.flush()


def to_stderr(text: str) -> None:
    """A line for stderr outside the sinks, lost rather than raising when stderr is gone."""
    _Console(sys.stderr).write(text)


def _fileno(stream: Any) -> int:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):  # replaced by a test's capture, or closed
        return -1


def _listening(path: str) -> bool:
    from rollback.effects.journal import listening

    return listening(path)


def _systemd_processors(*, journal: bool, notify: bool, keep: bool) -> list[Processor]:
    """Journal and sd_notify processors; none (so events reach stderr) when pystemd cannot load."""
    if not (journal or notify):
        return []
    try:
        from rollback.effects import journal as sinks  # pystemd only when something will use it

        sinks.load()
    except (ImportError, OSError) as error:  # logging must never stop the rollback
        to_stderr(f"rollback: journal/notify unavailable ({error!r}); logging to stderr\n")
        return []
    found: list[Processor] = [sinks.notify_status] if notify else []
    if journal:
        found.append(sinks.JournalSink(keep=keep))
    return found


def _drop_callsite(_logger: object, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """For the console: no code location; bytes that are not UTF-8 spelled \\xNN, as in the journal."""
    for key in ("pathname", "lineno", "func_name"):
        event.pop(key, None)
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = utf8(value)
    return event


def emit(kind: str, message: str, **fields: object) -> None:
    """Log one operator event of a kind listed in rollback.events.EVENTS, with the caller as its CODE_*."""
    if _logger is None:
        configure()
    caller = sys._getframe(1)
    code = caller.f_code
    _logger.log(
        EVENTS[kind].level,
        message,
        kind=kind,
        pathname=code.co_filename,
        lineno=caller.f_lineno,
        func_name=code.co_name,
        **fields,
    )
