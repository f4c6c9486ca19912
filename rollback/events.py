"""The event kinds an operator sees, each with a stable journal MESSAGE_ID (units/rollback.catalog)."""

from __future__ import annotations

from dataclasses import dataclass

# Python's logging levels, as numbers: importing logging itself costs the boot path ~2 ms.
DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50


@dataclass(frozen=True)
class EventKind:
    """An event kind: its journal MESSAGE_ID, level and catalog subject."""

    message_id: str
    level: int  # Python logging level; the journal gets the syslog PRIORITY below
    subject: str


EVENTS: dict[str, EventKind] = {
    "started": EventKind("f4feb0dd8e5644f8850eb0a7c879fb8b", INFO, "rollback started"),
    "step": EventKind("bf1aef25953b4d69bc9358502cca9f52", INFO, "rollback step done"),
    "finished": EventKind("15172a831c89420d9344be4f4585af9d", INFO, "rollback finished"),
    "skipped": EventKind("1e5d07b623a8484ab725865351057de3", WARNING, "rollback skipped, root kept"),
    "warning": EventKind("d084cca554ef4789b9bc0f0e0a11e248", WARNING, "rollback goes on, with a warning"),
    "refused": EventKind("28727c172dd640449e6f3ddc3fb2f43d", ERROR, "rollback refused, nothing changed"),
    "failed": EventKind("0f4befd98853477c92192ac31952c506", ERROR, "rollback failed after changes began"),
    "invalid": EventKind("31decf99c34b4416b1a1de21550c5fda", ERROR, "rollback configuration invalid"),
}

_LEVEL_NUMBER = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "critical": CRITICAL}
_SYSLOG_PRIORITY = {DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3, CRITICAL: 2}


_CODE_FIELDS = {"pathname": "CODE_FILE", "lineno": "CODE_LINE", "func_name": "CODE_FUNC"}


def syslog_priority(level: int) -> int:
    return _SYSLOG_PRIORITY.get(level, 6)


def journal_fields(event: dict[str, object]) -> list[str]:
    """One structlog event dict -> journal fields (KEY=VALUE strings), each encodable as UTF-8."""
    fields = dict(event)
    message = str(fields.pop("event", ""))
    kind = str(fields.pop("kind", ""))
    spec = EVENTS.get(kind)
    level = _LEVEL_NUMBER.get(str(fields.pop("level", "info")).lower(), INFO)
    priority = syslog_priority(level)
    out = [f"MESSAGE={message}", f"PRIORITY={priority}", "SYSLOG_IDENTIFIER=rollback"]
    if spec:
        out += [f"MESSAGE_ID={spec.message_id}", f"ROLLBACK_EVENT={kind}"]
    for key, field in _CODE_FIELDS.items():  # set them, or pystemd stamps its own C location
        if key in fields:
            out.append(f"{field}={fields.pop(key)}")
    out += [f"ROLLBACK_{key.upper()}={value}" for key, value in fields.items()]
    return [utf8(field) for field in out]


def utf8(text: str) -> str:
    r"""`text` with each byte that is not UTF-8 (a name os.fsdecode read) spelled \xNN, as the console
    shows it: pystemd encodes strictly, and a name on the device must not make the event (and the run
    that reports it) fail."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
