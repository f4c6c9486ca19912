"""Where a hibernation image could be waiting, and how to recognise one (pure).

Mounting a filesystem that a hibernated kernel still has mounted corrupts it. The unit is ordered
after resume, but resume can be misconfigured or fail, so before any change the run looks at the
resume device itself: the kernel replaces the swap signature (SWAPSPACE2, at the end of the first
page of the swap area) with a hibernation signature while an image is waiting.
"""

from __future__ import annotations

from collections.abc import Sequence

from rollback import devspec
from rollback.cmdline import split_cmdline

# kernel/power/swap.c (HIBERNATE_SIG), older kernels, uswsusp; the normal swap signature is SWAPSPACE2
SIGNATURES = (b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001")
SIGNATURE_SIZE = 10


def device_path(spec: str) -> str:
    """resume= forms: /dev/..., UUID=, LABEL=, PARTUUID=, PARTLABEL= (the /dev/disk/by-* link as udev
    names it: a label with a space or a slash is escaped), major:minor."""
    tag, equals, value = spec.partition("=")
    if equals and tag in devspec.TAGS and value:
        return devspec.device_path(spec)
    if spec.count(":") == 1 and all(part.isdigit() for part in spec.split(":")):
        return f"/dev/block/{spec}"
    return spec


def resume_locations(cmdlines: Sequence[str], sysfs_resume: str, sysfs_offset: str) -> list[tuple[str, int]]:
    """(device, offset in pages) pairs to check: each command line's resume=/resume_offset= (the one
    settings were read from, and the kernel's own: ignoring rollback.* options must not ignore this
    check), and /sys/power/resume with /sys/power/resume_offset."""
    found: list[tuple[str, int]] = []
    for cmdline in cmdlines:
        spec, offset = "", 0
        for word in split_cmdline(cmdline):
            key, _, value = word.partition("=")
            if key == "resume" and value:
                spec = value
            elif key == "resume_offset":
                offset = _pages(value)
        if spec and (device_path(spec), offset) not in found:
            found.append((device_path(spec), offset))
    sysfs = sysfs_resume.strip()
    if sysfs and sysfs != "0:0" and (device_path(sysfs), _pages(sysfs_offset.strip())) not in found:
        found.append((device_path(sysfs), _pages(sysfs_offset.strip())))
    return found


def _pages(value: str) -> int:
    """resume_offset's value as the kernel reads it: decimal digits, else 0 (it ignores the option).
    ASCII only: str.isdigit() also accepts '²', which int() refuses."""
    return int(value) if value.isascii() and value.isdigit() else 0


def hibernation_signature(page_tail: bytes) -> str | None:
    """The signature found in the last bytes of the swap header page, if it marks an image."""
    for signature in SIGNATURES:
        if page_tail.startswith(signature):
            return signature.decode()
    return None
