"""diff's walk on a tree that changes under it (diff is for live systems), and on one it cannot read.

The walk needs no btrfs: it is given a directory. What vanishes meanwhile (a file before its lstat, a
directory before the walk enters it, a directory replaced by a file) is not listed and is no error;
any other error ends the walk with reason tree-unreadable (exit 1), never a silently shorter list.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from rollback.effects.walk import walk
from rollback.errors import Exit, ReadFailed


def tree(top: Path) -> None:
    for directory in ("root/a", "root/b", "root/c"):
        (top / directory).mkdir(parents=True)
    for name in ("root/a/1", "root/a/2", "root/b/3", "root/c/4", "root/top"):
        (top / name).write_text(name)


def test_a_still_tree_is_listed_whole(tmp_path: Path) -> None:
    tree(tmp_path)
    assert sorted(p for p, _ in walk(tmp_path, "root")) == ["a/", "a/1", "a/2", "b/", "b/3", "c/", "c/4", "top"]


def test_what_vanishes_or_changes_kind_while_walking_is_left_out(tmp_path: Path) -> None:
    tree(tmp_path)
    files = {f"f{n}" for n in range(10)}
    for name in files:
        (tmp_path / "root" / name).write_text(name)
    listed: list[str] = []
    for path, _ in walk(tmp_path, "root"):
        listed.append(path)
        if len(listed) == 1:  # the top directory was read, one entry examined; now the tree changes
            for name in files - set(listed):
                os.unlink(tmp_path / "root" / name)  # listed by the directory, not yet examined
            shutil.rmtree(tmp_path / "root/b")  # not yet entered
            shutil.rmtree(tmp_path / "root/c")
            (tmp_path / "root/c").write_text("a file now")  # a directory that became a file
    assert files & set(listed) == files & set(listed[:1])
    assert not [p for p in listed if p.startswith(("b/", "c/")) and p not in listed[:1]]
    assert {"a/", "a/1", "a/2"} <= set(listed)


@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES, errno.EUCLEAN])
def test_an_unreadable_file_ends_the_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    tree(tmp_path)
    real = os.lstat

    def failing(name: str, *, dir_fd: int | None = None) -> os.stat_result:
        if name == "3":
            raise OSError(code, os.strerror(code))
        return real(name, dir_fd=dir_fd)

    monkeypatch.setattr(os, "lstat", failing)
    with pytest.raises(ReadFailed, match=rf"cannot read .*/b/3: {os.strerror(code)}") as raised:
        list(walk(tmp_path, "root"))
    assert (raised.value.code, raised.value.exit_code) == ("tree-unreadable", Exit.FAILED)


def test_an_unreadable_directory_ends_the_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree(tmp_path)
    real = os.scandir

    def failing(path: int) -> object:
        if os.readlink(f"/proc/self/fd/{path}").endswith("/root/b"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(path)

    monkeypatch.setattr(os, "scandir", failing)
    with pytest.raises(ReadFailed, match=r"cannot read .*/root/b: Input/output error"):
        list(walk(tmp_path, "root"))
