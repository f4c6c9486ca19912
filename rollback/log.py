"""structlog, configured once by cli.main: journal fields in the initrd, readable lines on a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Any

from rollback import lazy

lazy.defer(*lazy.STRUCTLOG_UNUSED)

import structlog  # noqa: E402  (after the deferral above)

from rollback.events import EVENTS  # noqa: E402

JOURNAL_SOCKET = "/run/systemd/journal/socket"

Processor = Any  # structlog's processor protocol is loosely typed


def configure(*, journal: bool | None = None, console: bool | None = None, notify: bool | None = None) -> None:
    """Choose sinks: the journal when its socket exists; stderr when there is no journal or a terminal."""
    if journal is None:
        journal = os.path.exists(JOURNAL_SOCKET)
    if console is None:
        console = not journal or sys.stderr.isatty()
    if notify is None:
        notify = bool(os.environ.get("NOTIFY_SOCKET"))
    systemd = _systemd_processors(journal=journal, notify=notify, keep=console)
    processors = [
        structlog.processors.add_log_level,
        *systemd,
        _drop_callsite,
        structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(0),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _systemd_processors(*, journal: bool, notify: bool, keep: bool) -> list[Processor]:
    """Journal and sd_notify processors; none (so events reach stderr) when pystemd cannot load."""
    if not (journal or notify):
        return []
    try:
        from rollback.effects import journal as sinks  # pystemd only when something will use it

        sinks.load()
    except (ImportError, OSError) as error:  # logging must never stop the rollback
        print(f"rollback: journal/notify unavailable ({error!r}); logging to stderr", file=sys.stderr)
        return []
    found: list[Processor] = [sinks.notify_status] if notify else []
    if journal:
        callsite = structlog.processors.CallsiteParameter
        found += [
            structlog.processors.CallsiteParameterAdder(
                {callsite.PATHNAME, callsite.LINENO, callsite.FUNC_NAME},
                additional_ignores=[__name__],  # report emit()'s caller
            ),
            sinks.JournalSink(keep=keep),
        ]
    return found


def _drop_callsite(_logger: object, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in ("pathname", "lineno", "func_name"):
        event.pop(key, None)
    return event


def emit(kind: str, message: str, **fields: object) -> None:
    """Log one operator event of a kind listed in rollback.events.EVENTS."""
    structlog.get_logger().log(EVENTS[kind].level, message, kind=kind, **fields)
