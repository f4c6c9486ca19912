"""`diff` on what live systems hold: odd bytes in names, deep trees, a reader that stops early."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from rollback.errors import Exit
from tests.support.disks import Disk
from tests.support.layout import populate

pytestmark = pytest.mark.btrfs

ODD = [b"two\nlines", b"caf\xe9", "café".encode(), b"back\\slash", b"tab\there"]


def _odd_names(disk: Disk) -> None:
    with disk.top() as top:
        populate(top, nested=[])
        for name in ODD:
            with open(os.path.join(os.fsencode(top / "root" / "tmp"), name), "wb") as handle:
                handle.write(b"x")


@pytest.mark.parametrize("encoding", ["", "utf-8", "ascii", "latin-1"])
def test_odd_names_print_one_line_each_in_any_locale(disk: Disk, encoding: str) -> None:
    _odd_names(disk)
    env = {"PYTHONIOENCODING": encoding} if encoding else {}
    result = disk.rollback("diff", env=env)
    assert result.returncode == Exit.OK, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 + len(ODD)  # persist/, tmp/, tmp/cruft, and one line per odd name
    assert "tmp/two\\nlines" in lines and "tmp/caf\\xe9" in lines and "tmp/back\\\\slash" in lines
    utf8 = encoding == "utf-8" or (not encoding and "tmp/café" in lines)  # "": the test host's locale
    assert ("tmp/café" if utf8 else "tmp/caf\\u00e9") in lines


def test_json_paths_are_valid_unicode(disk: Disk) -> None:
    _odd_names(disk)
    result = disk.rollback("diff", "--json")
    assert result.returncode == Exit.OK, result.stderr
    found = json.loads(result.stdout)
    assert "tmp/caf\\xe9" in found["paths"] and "tmp/two\\nlines" in found["paths"]
    json.dumps(found, ensure_ascii=False).encode("utf-8")  # no lone surrogates


def test_a_reader_that_stops_early_is_not_an_error(disk: Disk) -> None:
    with disk.top() as top:
        populate(top, nested=[])
        for number in range(20000):
            (top / "root" / "tmp" / f"file-{number:05d}").touch()
    command = " ".join(disk.rollback_argv("diff"))
    result = subprocess.run(["bash", "-o", "pipefail", "-c", f"{command} | head -1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stderr == ""


def test_a_tree_deeper_than_path_max(disk: Disk) -> None:
    with disk.top() as top:
        populate(top, nested=[])
        fd = os.open(top / "root", os.O_RDONLY)
        for _ in range(30):  # 30 x 200 characters: 6000 > PATH_MAX (4096)
            os.mkdir("d" * 200, dir_fd=fd)
            deeper = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
        os.close(fd)
    result = disk.rollback("diff")
    assert result.returncode == Exit.OK, result.stderr
    assert any(line.endswith("/leaf") and len(line) > 6000 for line in result.stdout.splitlines())
    run = disk.rollback("run")  # and the run deletes it like anything else
    assert run.returncode == Exit.OK, run.stderr
