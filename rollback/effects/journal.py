"""structlog processors that talk to systemd: journal entries and sd_notify STATUS=."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from structlog.exceptions import DropEvent

from rollback.events import journal_fields, utf8


def load() -> None:
    """Import pystemd's journal and notify bindings now, so a failure shows at configuration time."""
    import pystemd.daemon
    import pystemd.journal  # noqa: F401


def listening(path: str) -> bool:
    """Whether something takes datagrams at `path`. A socket file nobody holds (a journald gone, in a
    rescue environment or a chroot) refuses them: sd_journal_sendv then fails, and pystemd drops its
    result, so every event would be lost without a word. (`_socket`, not `socket`: 6 ms less to import.)"""
    import _socket

    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class JournalSink:
    """Send the event to journald with sd_journal_sendv; drop it afterwards unless `keep`."""

    def __init__(self, *, keep: bool) -> None:
        import pystemd.journal

        self._sendv = pystemd.journal.sendv
        self._keep = keep

    def __call__(self, _logger: object, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        try:
            self._sendv(*journal_fields(dict(event)))
        except (OSError, ValueError) as error:  # logging must never stop the run, nor change its exit code
            if not self._keep:  # then the console has no copy: the event goes to stderr, not nowhere
                from rollback.log import to_stderr

                to_stderr(f"rollback: {utf8(str(event.get('event', '')))} (journal: {error})\n")
        if not self._keep:
            raise DropEvent
        return event


def notify_status(_logger: object, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mirror every event as the unit's STATUS= (a oneshot needs NotifyAccess=main)."""
    import pystemd.daemon

    pystemd.daemon.notify(False, utf8(f"STATUS={event.get('event', '')}"))
    return event
