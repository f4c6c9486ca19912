"""How `diff` prints a path: one line each, never ambiguous, whatever bytes the name holds."""

from __future__ import annotations

import os

import pytest

from rollback.report import escape

CASES = [
    ("plain/file", "plain/file", "plain/file"),
    ("two\nlines", "two\\nlines", "two\\nlines"),
    ("back\\slash", "back\\\\slash", "back\\\\slash"),
    ("tab\tcr\r", "tab\\tcr\\r", "tab\\tcr\\r"),
    ("bell\x07del\x7f", "bell\\x07del\\x7f", "bell\\x07del\\x7f"),
    (os.fsdecode(b"caf\xe9"), "caf\\xe9", "caf\\xe9"),  # not UTF-8: the byte
    ("café", "café", "caf\\u00e9"),  # UTF-8: the character, escaped only where the output is ASCII
    ("c1\x85", "c1\\u0085", "c1\\u0085"),  # a C1 control is a character, not a byte
    ("\U0001f600", "\U0001f600", "\\U0001f600"),
    ("literal\\x41", "literal\\\\x41", "literal\\\\x41"),  # a name that looks like an escape
]


@pytest.mark.parametrize(("name", "utf8", "ascii"), CASES)
def test_escaping(name: str, utf8: str, ascii: str) -> None:
    assert escape(name) == utf8
    assert escape(name, ascii_only=True) == ascii
    assert "\n" not in escape(name) and escape(name, ascii_only=True).isascii()


def test_distinct_names_never_print_alike() -> None:
    names = [n for n, _, _ in CASES] + [os.fsdecode(bytes([b])) for b in range(1, 256) if b != ord("/")]
    for ascii_only in (False, True):
        printed = [escape(n, ascii_only=ascii_only) for n in names]
        assert len(set(printed)) == len(set(names))
