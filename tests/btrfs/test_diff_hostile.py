"""`diff` on what live systems hold: odd bytes in names, deep trees, a reader that stops early."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

import btrfsutil
import pytest

from rollback.errors import Exit
from tests.support.disks import Disk, parse_json
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


def _same_size_and_mtime(path: str) -> None:  # touch -r: the content rewritten, size and mtime put back
    st = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(b"Z")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replaced_keeping_stat(path: str) -> None:  # cp -p / rsync -t: a new file renamed over, its stat copied
    st = os.stat(path)
    with open(path + ".tmp", "wb") as handle:
        handle.write(b"Z" * st.st_size)
    os.chmod(path + ".tmp", st.st_mode)
    os.utime(path + ".tmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(path + ".tmp", path)


def _relinked(path: str) -> None:  # a symlink to another target of the same length, its mtime put back
    st = os.lstat(path)
    os.unlink(path)
    os.symlink("X" * st.st_size, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


CHANGES: dict[
    str, Callable[[str], None]
] = {  # each leaves the mode, size and mtime as they were: only the owner, group or ctime tells
    "content": _same_size_and_mtime,
    "replaced": _replaced_keeping_stat,
    "owner": lambda path: os.lchown(path, 1000, -1),
    "group": lambda path: os.lchown(path, -1, 1000),
    "xattr": lambda path: os.setxattr(path, "user.note", b"x"),
    "link": _relinked,
    "hard-link": lambda path: os.link(path, path + ".2"),  # the new name, and the old one's link count
}
DIR_CHANGES: dict[str, Callable[[str], None]] = {
    "dir-owner": lambda path: os.chown(path, 1000, -1),
    "dir-group": lambda path: os.chown(path, -1, 1000),
}


def test_snapshot_mode_diff_lists_every_change_the_next_run_discards(disk: Disk) -> None:
    """A root made from a read-only blank by a run: untouched, diff lists nothing (the snapshot
    shares the blank's inodes, ctime included), read or not; then each change that keeps a file's
    mode, size and mtime, and a directory's owner, is listed, and nothing else is."""
    with disk.top() as top:
        populate(top, nested=[])
        blank = top / "root-blank"
        btrfsutil.create_subvolume(str(blank))
        for name in CHANGES:
            (blank / "etc" / name).mkdir(parents=True)
            if name == "link":
                os.symlink("target", blank / "etc" / name / "file")
            else:
                (blank / "etc" / name / "file").write_text("same size\n")
        for name in DIR_CHANGES:
            (blank / "srv" / name).mkdir(parents=True)
        btrfsutil.set_subvolume_read_only(str(blank))
    run = disk.rollback("run", "--mode", "snapshot")
    assert run.returncode == Exit.OK, run.stderr
    with disk.top() as top:  # read everything, as a booted system does (atime only)
        for dirpath, _, filenames in os.walk(top / "root"):
            for name in filenames:
                if not os.path.islink(os.path.join(dirpath, name)):
                    with open(os.path.join(dirpath, name), "rb") as handle:
                        handle.read()
    untouched = parse_json(disk.rollback("diff", "--json", "--mode", "snapshot"))
    assert untouched["paths"] == []
    with disk.top() as top:
        for name, change in CHANGES.items():
            change(str(top / "root" / "etc" / name / "file"))
        for name, change in DIR_CHANGES.items():
            change(str(top / "root" / "srv" / name))
    paths = parse_json(disk.rollback("diff", "--json", "--mode", "snapshot"))["paths"]
    expected = {f"etc/{name}/file" for name in CHANGES} | {"etc/hard-link/file.2"}
    assert set(paths) == expected | {f"srv/{name}/" for name in DIR_CHANGES}
