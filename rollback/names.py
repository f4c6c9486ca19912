"""Subvolume path rules, archive/trash entry names, and retention (all pure)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_COMPONENT = re.compile(r"[A-Za-z0-9_@+.-]+")
_ENTRY = re.compile(r"([0-9]{8}T[0-9]{6}Z)(?:-([0-9]+))?")  # ASCII digits: \d takes any script's
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


NAME_MAX = 255  # bytes in one component (the kernel's limit)
PATH_LIMIT = 1024  # bytes in a whole name: ours, far below PATH_MAX, so no path we build can exceed it


def canonical(value: str) -> str:
    """The one spelling of a path below the top level, or ValueError saying why there is none.

    Every name a user gives (flags, kernel command line, config file) goes through here once, so
    no rule compares two spellings of one path: `persist/`, `./persist` and `persist//` are
    `persist`. Deliberately strict otherwise: a boot job that deletes things should never have to
    guess what a name with spaces, newlines, odd bytes or `..` was meant to be.
    """
    if value.startswith("/"):
        raise ValueError("is absolute (names are relative to the btrfs top level)")
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if not parts:
        raise ValueError("names nothing below the top level")
    for part in parts:
        if part == "..":
            raise ValueError("has a '..' component (must stay below the top level)")
        if not _COMPONENT.fullmatch(part):
            raise ValueError("may only use ASCII letters, digits and _ @ + . - (separated by /)")
        if len(part) > NAME_MAX:
            raise ValueError(f"has a component longer than {NAME_MAX} characters")
    path = "/".join(parts)
    if len(path) > PATH_LIMIT:
        raise ValueError(f"is longer than {PATH_LIMIT} characters")
    return path


def shown(name: str) -> str:
    r"""`name` quoted for a message, as repr() quotes it, but a byte that is not UTF-8 (os.fsdecode made
    it a lone surrogate) spelled \xNN, as the events spell it everywhere, not \udcNN."""
    if not any("\udc80" <= char <= "\udcff" for char in name):
        return repr(name)
    return "'" + "".join(_shown_char(char) for char in name) + "'"


def _shown_char(char: str) -> str:
    if "\udc80" <= char <= "\udcff":
        return f"\\x{ord(char) - 0xDC00:02x}"
    return "\\'" if char == "'" else repr(char)[1:-1]


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
    try:
        stamp = datetime.strptime(match.group(1), _STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:  # shaped like ours, not a date (month 13): not ours, so refused as foreign
        return None
    return EntryName(stamp, int(match.group(2) or 0))


def fresh_entry(now: datetime, taken: AbstractSet[str], first: int = 0) -> EntryName:
    """The entry name for `now` that collides with nothing in `taken`; its serial from `first` (a run
    naming many: the one after its last, else each call tried every serial before it again)."""
    stamp = now.astimezone(UTC).replace(microsecond=0)
    serial = first
    while str(EntryName(stamp, serial)) in taken:
        serial += 1
    return EntryName(stamp, serial)


def to_prune(
    stamps: Sequence[datetime],
    now: datetime,
    *,
    keep_days: int,
    keep_count: int,
    keep_min: int,
    pinned: Sequence[bool] = (),
) -> list[int]:
    """Which archived roots retention removes: indexes into `stamps`, the entries' clock times listed
    in the order the filesystem created them (oldest first; never sorted by the clock).

    Past the newest `keep_count` (0: no limit), or older than `keep_days` (0: no limit) except the
    newest `keep_min`. Clocks lie (dead RTC, no RTC, firmware reset), so an entry is never taken as
    older than one created before it: a clock set back cannot make the newest root look oldest,
    and a clock set ahead can age out everything but the newest `keep_min`. A stamp still in the
    future means one of two clocks is wrong. If it is the newest entry's (the root archived by this
    run, stamped `now`, aside), the clock may be behind now: nothing is aged out this run. Otherwise
    it was a clock ahead then: that entry keeps its own stamp but passes it on to no later entry,
    or one boot with a clock years ahead would stop all pruning by age for years. A `pinned` entry is
    never pruned nor counted by keep-count and keep-min; its stamp still vouches for those after it.
    """
    newest_first = [i for i in range(len(stamps))[::-1] if not (i < len(pinned) and pinned[i])]
    doomed: set[int] = set(newest_first[keep_count:]) if keep_count else set()
    earlier = [stamp for stamp in stamps if stamp != now]  # the root archived now carries `now`
    if keep_days and not (earlier and earlier[-1] > now):
        cutoff = now - timedelta(days=keep_days)
        earliest = min(stamps, default=now)
        past = [stamp if stamp <= now else earliest for stamp in stamps]  # a future stamp passes on nothing
        before = [earliest, *itertools.accumulate(past, max)]  # the latest believable stamp before each
        effective = [max(stamp, before[i]) for i, stamp in enumerate(stamps)]
        doomed.update(i for i in newest_first[keep_min:] if effective[i] < cutoff)
    return sorted(doomed)
