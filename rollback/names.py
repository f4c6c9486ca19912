"""Subvolume path rules, archive/trash entry names, and retention (all pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_COMPONENT = re.compile(r"[A-Za-z0-9_@+.-]+")
_ENTRY = re.compile(r"(\d{8}T\d{6}Z)(?:-(\d+))?")
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def check_path(value: str) -> str | None:
    """Why `value` is not an acceptable path below the top level, or None.

    Deliberately strict: a boot job that deletes things should never have to
    guess what a name with spaces, newlines or odd bytes was meant to be.
    """
    if not value:
        return "is empty"
    if value.startswith("/"):
        return "is absolute (names are relative to the btrfs top level)"
    for part in value.rstrip("/").split("/"):
        if part in ("", ".", ".."):
            return f"has a '{part or '//'}' component (must stay below the top level)"
        if not _COMPONENT.fullmatch(part):
            return "may only use letters, digits and _ @ + . - (separated by /)"
    return None


def normalize(value: str) -> str:
    return value.rstrip("/")


def is_within(path: str, parent: str) -> bool:
    """True when `path` is `parent` itself or lies below it."""
    return path == parent or path.startswith(parent + "/")


def prefixes(path: str) -> list[str]:
    """`a`, `a/b`, `a/b/c` for `a/b/c`: the path and every parent below the top level."""
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


@dataclass(frozen=True, order=True)
class EntryName:
    """An archived root or trash entry: a UTC timestamp plus a collision counter."""

    stamp: datetime
    serial: int = 0

    def __str__(self) -> str:
        text = self.stamp.strftime(_STAMP_FORMAT)
        return f"{text}-{self.serial}" if self.serial else text


def parse_entry(name: str) -> EntryName | None:
    match = _ENTRY.fullmatch(name)
    if not match:
        return None
    stamp = datetime.strptime(match.group(1), _STAMP_FORMAT).replace(tzinfo=UTC)
    return EntryName(stamp, int(match.group(2) or 0))


def fresh_entry(now: datetime, taken: Iterable[str]) -> EntryName:
    """The entry name for `now` that collides with nothing in `taken`."""
    stamp = now.astimezone(UTC).replace(microsecond=0)
    used = set(taken)
    serial = 0
    while str(EntryName(stamp, serial)) in used:
        serial += 1
    return EntryName(stamp, serial)


def to_prune(entries: Sequence[EntryName], now: datetime, keep_days: int, keep_count: int) -> list[EntryName]:
    """Entries beyond the retention: older than keep_days, or past the newest keep_count.

    A limit of 0 means no limit of that kind.
    """
    newest_first = sorted(entries, reverse=True)
    doomed: set[EntryName] = set()
    if keep_count:
        doomed.update(newest_first[keep_count:])
    if keep_days:
        cutoff = now - timedelta(days=keep_days)
        doomed.update(e for e in newest_first if e.stamp < cutoff)
    return sorted(doomed)
