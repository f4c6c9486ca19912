"""Paths built from the ROOT_REF items (rollback/effects/btrfs.py: _Paths), with no filesystem: every
subvolume here sits in its parent's top directory, so no inode lookup is made."""

from __future__ import annotations

from rollback.effects.btrfs import _Paths

TOP = 5
FIRST_DIRECTORY = 256  # a subvolume's top directory: no lookup


def test_a_path_is_built_up_a_chain_of_any_depth() -> None:
    """A protected name 3000 subvolumes down: a loop, not a recursion (which stopped at ~480 levels)."""
    every = [(TOP, 300, FIRST_DIRECTORY, b"root")]
    every += [(300 + i, 301 + i, FIRST_DIRECTORY, b"n") for i in range(3000)]
    paths = _Paths(-1, every)
    assert paths(3300) == "root" + "/n" * 3000
    assert paths(301) == "root/n"


def test_no_way_up_is_no_path() -> None:
    """The search is several ioctls, not one snapshot: a rename meanwhile can leave a subvolume whose
    parent is missing, or two that hold each other. No path (the run plans without them), no crash."""
    every = [
        (TOP, 300, FIRST_DIRECTORY, b"root"),
        (400, 401, FIRST_DIRECTORY, b"orphan"),
        (402, 403, FIRST_DIRECTORY, b"a"),
        (403, 402, FIRST_DIRECTORY, b"b"),
    ]
    paths = _Paths(-1, every)
    assert paths(401) is None and paths(402) is None and paths(403) is None
    assert paths(300) == "root" and paths(TOP) == ""


def test_names_decode_as_the_filesystem_encoding_does() -> None:
    every = [(TOP, 300, FIRST_DIRECTORY, b"r\xffoot"), (300, 301, FIRST_DIRECTORY, "é".encode())]
    assert _Paths(-1, every)(301) == "r\udcffoot/é"
