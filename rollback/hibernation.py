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
        try:
            return devspec.device_path(spec)
        except ValueError:  # UUID='' (quotes around nothing): no such device, resume-unreadable
            return spec
    if spec.count(":") == 1 and all(part.isdigit() for part in spec.split(":")):
        return f"/dev/block/{spec}"
    return spec


def resume_locations(cmdlines: Sequence[str], sysfs_resume: str, sysfs_offset: str) -> list[tuple[str, int]]:
    """(device, offset in pages) pairs to check: each command line's resume=/resume_offset= (the one
    settings were read from, and the kernel's own: ignoring rollback.* options must not ignore this
    check), and /sys/power/resume with /sys/power/resume_offset. None with `noresume` on either: the
    user discards the image (the kernel and systemd's resume do not resume it, and this boot mounts
    the root read-write anyway); a refusal would stop every such boot."""
    found: list[tuple[str, int]] = []
    if any("noresume" in split_cmdline(cmdline) for cmdline in cmdlines):
        return found

    def add(spec: str, offsets: Sequence[int]) -> None:
        found.extend(p for p in ((device_path(spec), o) for o in offsets) if p not in found)

    for cmdline in cmdlines:
        spec, offsets = "", [0]
        for word in split_cmdline(cmdline):
            key, _, value = word.partition("=")
            if key == "resume" and value:
                spec = value
            elif key == "resume_offset":
                offsets = offsets_read(value)
        if spec:
            add(spec, offsets)
    sysfs = sysfs_resume.strip()
    if sysfs and sysfs != "0:0":
        add(sysfs, offsets_read(sysfs_offset.strip()))
    return found


def offsets_read(value: str) -> list[int]:
    """The page offsets a resume_offset= value may mean. The kernel reads its leading decimal digits
    (sscanf %llu), systemd's resume generator the whole value or nothing (then 0): where they differ
    ("12a"), both. ASCII digits only: str.isdigit() also accepts '²', which int() refuses."""
    digits = value[: len(value) - len(value.lstrip("0123456789"))]
    kernel = int(digits) if digits else 0
    whole = kernel if digits == value else 0
    return list(dict.fromkeys([kernel, whole]))


def hibernation_signature(page_tail: bytes) -> str | None:
    """The signature found in the last bytes of the swap header page, if it marks an image."""
    for signature in SIGNATURES:
        if page_tail.startswith(signature):
            return signature.decode()
    return None
