"""Parse /proc/self/mountinfo: which btrfs subvolumes are mounted, and where."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo, the fields the safety checks use."""

    mount_point: str
    fstype: str
    source: str
    subvolid: int | None


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
        except ValueError:
            continue
        fstype, source, options = fields[dash + 1 : dash + 4]
        subvolid = None
        for option in options.split(","):
            key, _, value = option.partition("=")
            if key == "subvolid" and value.isdigit():
                subvolid = int(value)
        mounts.append(Mount(_unescape(fields[4]), fstype, _unescape(source), subvolid))
    return mounts
