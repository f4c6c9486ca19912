"""A device as users write it (a path, or UUID=/LABEL=/PARTUUID=/PARTLABEL= as in fstab) -> a device node path."""

from __future__ import annotations

import string

# fstab's tags and the udev symlink directories that name devices by them
TAGS = {"UUID": "by-uuid", "LABEL": "by-label", "PARTUUID": "by-partuuid", "PARTLABEL": "by-partlabel"}
_PLAIN = set(string.ascii_letters + string.digits + "#+-.:=@_")


def udev_escape(value: str) -> str:
    """How udev writes a tag value as a symlink name (systemd's encode_devnode_name): every valid
    multi-byte UTF-8 character kept, ASCII outside its plain set as \\xNN, a raw byte (a surrogate
    escape) as \\xNN."""
    out = []
    for char in value:
        if char in _PLAIN or (ord(char) > 127 and not 0xD800 <= ord(char) <= 0xDFFF):
            out.append(char)
        else:
            out += [f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogateescape")]
    return "".join(out)


def device_path(spec: str) -> str:
    """`/dev/...` as is; `UUID=...` etc. as their /dev/disk/by-*/ link, the value unquoted as systemd
    reads fstab (`UUID="..."`, as blkid prints it); ValueError for anything else."""
    if "\0" in spec:
        raise ValueError("holds a NUL byte")
    tag, has_tag, value = spec.partition("=")
    if has_tag and tag.upper() in TAGS:
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if not value:
            raise ValueError(f"names no {tag.upper()}")
        # (a byte that is not UTF-8, a tab: udev escapes them in the link; the NixOS module maps them so)
        if any(_control(char) and char != "\t" and not "\udc80" <= char <= "\udcff" for char in value):
            raise ValueError("holds a control character (an ESC, a newline, a line separator), printed as given")
        return f"/dev/disk/{TAGS[tag.upper()]}/{udev_escape(value)}"
    if not spec.startswith("/"):
        raise ValueError("is neither a device path (/dev/...) nor UUID=, LABEL=, PARTUUID= or PARTLABEL=")
    if any(_control(char) for char in spec):  # (printed as given, an ESC or a newline forged lines: a tester)
        raise ValueError(
            "holds a control character or a byte that is not UTF-8, which no device node's name has (udev writes "
            "such bytes \\xNN in its links; LABEL= takes a label as it is)"
        )
    return spec


def _control(char: str) -> bool:
    """A control character (C0, DEL, C1, a line or paragraph separator) or a byte that is not UTF-8 (a
    surrogate escape), none of which a device node's name (udev's, escaped) has."""
    point = ord(char)
    return point < 0x20 or 0x7F <= point < 0xA0 or point in (0x2028, 0x2029) or 0xDC80 <= point <= 0xDCFF


_UNIT_PLAIN = set(string.ascii_letters + string.digits + ":_.")


def unit_path_escape(path: str) -> str:
    """A path as `systemd-escape --path` writes it in a unit name (the instance of rollback@ and of
    its device unit): slashes trimmed and collapsed, then `/` as `-`, a leading `.` and every byte
    outside [A-Za-z0-9:_.] as \\xNN."""
    parts = [part for part in path.split("/") if part and part != "."]
    if not parts:
        return "-"
    out = []
    for index, char in enumerate("/".join(parts)):
        if char == "/":
            out.append("-")
        elif char in _UNIT_PLAIN and not (index == 0 and char == "."):
            out.append(char)
        else:
            out += [f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogateescape")]
    return "".join(out)
