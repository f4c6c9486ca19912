"""Where a hibernation image could wait, and recognising it (pure)."""

from __future__ import annotations

import pytest

from rollback.hibernation import device_path, hibernation_signature, resume_locations


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ("/dev/vdb2", "/dev/vdb2"),
        ("UUID=1234-abcd", "/dev/disk/by-uuid/1234-abcd"),
        ("LABEL=swap", "/dev/disk/by-label/swap"),
        ("PARTUUID=0a-01", "/dev/disk/by-partuuid/0a-01"),
        ("PARTLABEL=swap", "/dev/disk/by-partlabel/swap"),
        ("254:2", "/dev/block/254:2"),
        ("LABEL=my swap", "/dev/disk/by-label/my\\x20swap"),  # as udev names the link
        ("PARTLABEL=a/b", "/dev/disk/by-partlabel/a\\x2fb"),
        ('UUID="1234-abcd"', "/dev/disk/by-uuid/1234-abcd"),
        ("UUID=''", "UUID=''"),  # quotes around nothing: no device (resume-unreadable), not a ValueError
        ('LABEL=""', 'LABEL=""'),
    ],
)
def test_resume_device_forms(spec: str, path: str) -> None:
    assert device_path(spec) == path


def test_cmdline_and_sysfs_locations() -> None:
    cmdline = "root=/dev/vda2 resume=UUID=ab resume_offset=34816 quiet"
    assert resume_locations([cmdline], "254:2\n", "34816\n") == [
        ("/dev/disk/by-uuid/ab", 34816),
        ("/dev/block/254:2", 34816),
    ]


def test_the_sysfs_device_is_read_at_the_sysfs_offset() -> None:
    """/sys/power/resume_offset belongs to /sys/power/resume, not to a command line's resume=."""
    assert resume_locations(["resume=/dev/vdb resume_offset=7"], "254:2\n", "0\n") == [
        ("/dev/vdb", 7),
        ("/dev/block/254:2", 0),
    ]


def test_the_kernels_own_command_line_counts_when_the_settings_ignore_it() -> None:
    """--kernel-cmdline /dev/null (NixOS kernelCommandLine = false) drops rollback.* options, not the
    check: the kernel's /proc/cmdline is always the second command line."""
    assert resume_locations(["", "quiet resume=LABEL=swap"], "", "") == [("/dev/disk/by-label/swap", 0)]
    twice = "resume=/dev/vdb resume_offset=3"
    assert resume_locations([twice, twice], "", "") == [("/dev/vdb", 3)]


@pytest.mark.parametrize(
    ("value", "offsets"),
    [
        ("\u00b2", [0]),  # isdigit() but not int(): was an internal error at every boot
        ("12a", [12, 0]),  # the kernel reads 12 (sscanf %llu), systemd's generator nothing: both
        ("0x10", [0]),
        ("-1", [0]),
        ("", [0]),
        ("007", [7]),
    ],
)
def test_an_offset_is_read_as_the_kernel_and_systemd_read_it(value: str, offsets: list[int]) -> None:
    assert resume_locations([f"resume=/dev/vdb resume_offset={value}"], "", "") == [("/dev/vdb", o) for o in offsets]
    assert resume_locations([], "254:2", value) == [("/dev/block/254:2", o) for o in offsets]


def test_a_quoted_label_with_a_space_is_found_where_udev_links_it() -> None:
    assert resume_locations(['root=/dev/vda2 "resume=LABEL=my swap"'], "", "") == [
        ("/dev/disk/by-label/my\\x20swap", 0)
    ]


def test_no_resume_configured() -> None:
    assert resume_locations(["root=/dev/vda2 quiet"], "0:0\n", "0\n") == []
    assert resume_locations(["", ""], "", "") == []


@pytest.mark.parametrize("tail", [b"S1SUSPEND\0", b"S2SUSPEND\0", b"ULSUSPEND\0", b"LINHIB0001"])
def test_hibernation_signatures(tail: bytes) -> None:
    assert hibernation_signature(tail) == tail.rstrip(b"\0").decode()


@pytest.mark.parametrize("tail", [b"SWAPSPACE2", b"\0" * 10, b"SWAP-SPACE"])
def test_plain_swap_or_nothing_is_not_an_image(tail: bytes) -> None:
    assert hibernation_signature(tail) is None


@pytest.mark.parametrize("where", [0, 1])
def test_noresume_on_either_command_line_checks_nothing(where: int) -> None:
    lines = ["root=/dev/vda2 resume=/dev/vdb", "resume=/dev/vdc"]
    lines[where] += " noresume"
    assert resume_locations(lines, "254:2\n", "0\n") == []
    assert resume_locations(["resume=/dev/vdb noresume=0x"], "", "") == [("/dev/vdb", 0)]  # not the word
