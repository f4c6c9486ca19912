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
    ],
)
def test_resume_device_forms(spec: str, path: str) -> None:
    assert device_path(spec) == path


def test_cmdline_and_sysfs_locations() -> None:
    cmdline = "root=/dev/vda2 resume=UUID=ab resume_offset=34816 quiet"
    assert resume_locations(cmdline, "254:2\n") == [("/dev/disk/by-uuid/ab", 34816), ("/dev/block/254:2", 34816)]


def test_a_quoted_label_with_a_space_is_found_where_udev_links_it() -> None:
    assert resume_locations('root=/dev/vda2 "resume=LABEL=my swap"', "") == [("/dev/disk/by-label/my\\x20swap", 0)]


def test_no_resume_configured() -> None:
    assert resume_locations("root=/dev/vda2 quiet", "0:0\n") == []
    assert resume_locations("", "") == []


@pytest.mark.parametrize("tail", [b"S1SUSPEND\0", b"S2SUSPEND\0", b"ULSUSPEND\0", b"LINHIB0001"])
def test_hibernation_signatures(tail: bytes) -> None:
    assert hibernation_signature(tail) == tail.rstrip(b"\0").decode()


@pytest.mark.parametrize("tail", [b"SWAPSPACE2", b"\0" * 10, b"SWAP-SPACE"])
def test_plain_swap_or_nothing_is_not_an_image(tail: bytes) -> None:
    assert hibernation_signature(tail) is None
