"""Observe the top level with btrfsutil, and carry out plan steps. Nothing else calls btrfsutil."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import assert_never

import btrfsutil

from rollback import names
from rollback.effects import qgroups, refs
from rollback.model import (
    SKIP_MARK,
    SYSTEM,
    TOP_LEVEL_ID,
    Examined,
    Kind,
    Lineage,
    MarkFor,
    Mounts,
    Observation,
    Subvol,
    SystemSigns,
    TreeSize,
)
from rollback.plan import (
    Bounds,
    Commit,
    Create,
    Delete,
    MakeDir,
    Reclaim,
    RemoveMark,
    Rename,
    Snapshot,
    Step,
    Unlock,
    WriteMark,
)

_READ_ONLY = 1  # BTRFS_SUBVOL_RDONLY
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602  # x86_64/arm64 (long-sized argument)
_PINNING = 0x10 | 0x20  # FS_IMMUTABLE_FL | FS_APPEND_FL
_DIRS = (Kind.SUBVOLUME, Kind.DIRECTORY)
_EMPTY_SUBVOL_DIR = 2  # BTRFS_EMPTY_SUBVOL_DIR_OBJECTID: a placeholder's inode number
_SUBVOLUME_TOP = 256  # BTRFS_FIRST_FREE_OBJECTID: every subvolume's top directory
_FS_CODEC = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())  # os.fsdecode's, without its checks


def list_subvolumes(top: Path, also: Iterable[int] = ()) -> tuple[Subvol, ...]:
    """Every subvolume, by id and path (of any length): no per-subvolume record read (that is what
    examine() does)."""
    return list_bounded(top, lambda path: False, (), also)


def ids_within(top: Path, path: str) -> set[int]:
    """The ids of the subvolume at `path` and of every subvolume nested in it, now."""
    fd = os.open(top / path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        own = btrfsutil.subvolume_id(fd)
        return {own} | {ref[1] for ref in refs.below(refs.all_refs(fd), own)}
    finally:
        os.close(fd)


# btrfs_root_item: a btrfs_inode_item (160 bytes), then generation, root_dirid, bytenr, byte_limit,
# bytes_used, last_snapshot (little-endian u64s); ... ctransid at 295 (after flags, refs, drop_progress,
# drop_level, level, generation_v2 and three UUIDs)
_ROOT_ITEM_SIZES = struct.Struct("<160x32xQQ87xQ")
# ... and uuid at 247, parent_uuid at 263 (16 bytes each), otransid at 303
_ROOT_ITEM_LINEAGE = struct.Struct("<247x16s16s24xQ")
_NO_UUID = bytes(16)


def trees(top: Path) -> tuple[dict[int, TreeSize], dict[int, Lineage]]:
    """What each subvolume's tree takes and where it comes from (its ROOT_ITEM: btrfsutil gives neither
    bytes_used nor last_snapshot), for what a run that has no room asks: how much deleting the old root
    gives back, and whether a copy of it exists. One search over the root tree, and one for the
    relocation trees of a balance; an item too old to say (kernels < 3.5) is left out."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        moving = refs.relocated(fd)
        sizes: dict[int, TreeSize] = {}
        lineage: dict[int, Lineage] = {}
        for number, offset, item in refs.root_items(fd):
            if len(item) >= _ROOT_ITEM_LINEAGE.size:
                used, last, changed = _ROOT_ITEM_SIZES.unpack_from(item)
                sizes[number] = TreeSize(used, last, offset, changed, number in moving)
                own, parent, created = _ROOT_ITEM_LINEAGE.unpack_from(item)
                lineage[number] = Lineage(own.hex(), "" if parent == _NO_UUID else parent.hex(), created)
        return sizes, lineage
    finally:
        os.close(fd)


def list_bounded(
    top: Path, shallow: Callable[[str], bool], named: Collection[str], also: Iterable[int] = ()
) -> tuple[Subvol, ...]:
    """Every subvolume, except that inside a subvolume `shallow` calls (plan.only_moved) only those
    whose name is one of `named` are listed, at any depth (the protected names: the check must see
    them; nothing else in there is needed at boot), and those of `also` (mounted, the default: the checks
    must see them wherever they are). One range search for every subvolume's name and parent
    (refs.all_refs); a path is built, one inode lookup per directory, only for what is listed."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        every = refs.all_refs(fd)  # in (parent, child) order
        path_of = _Paths(fd, every)
        found: list[Subvol] = []
        pending = [TOP_LEVEL_ID]
        while pending:
            tree = pending.pop()
            if tree != TOP_LEVEL_ID and shallow(path_of(tree) or ""):
                continue
            for ref in refs.children(every, tree):
                if (path := path_of.of(ref)) is not None:  # None: gone since the search
                    found.append(Subvol(ref[1], path))
                    pending.append(ref[1])
        listed = {s.id for s in found} | {TOP_LEVEL_ID}
        wanted = {os.fsencode(name) for name in named}
        extra = [child for _parent, child, _inode, name in every if name in wanted]  # maybe inside a `shallow` one
        for child in dict.fromkeys([*extra, *also]):  # (a mounted one deleted since has no item: not listed)
            if child not in listed and (path := path_of(child)) is not None:
                found.append(Subvol(child, path))
                listed.add(child)
        return tuple(found)
    finally:
        os.close(fd)


class _Paths:
    """A subvolume's path from the top level, built from the ROOT_REF items (and cached): None if a
    directory on the way is gone (deleted since the search, by a concurrent cleanup)."""

    def __init__(self, fd: int, every: list[refs.Ref]) -> None:
        self._fd = fd
        self._up = {ref[1]: ref for ref in every}  # child -> its item
        self._paths: dict[int, str | None] = {TOP_LEVEL_ID: ""}
        self._dirs: dict[tuple[int, int], bytes | None] = {}

    def __call__(self, subvolume: int) -> str | None:
        """By id, at any depth; None also if the search's answer has no way up from it (read while
        subvolumes were renamed: the several ioctls are not one snapshot)."""
        chain: list[refs.Ref] = []  # from `subvolume` up to one whose path is known: a loop, not recursion
        at = subvolume
        while at not in self._paths:
            ref = self._up.get(at)
            if ref is None or len(chain) > len(self._up):  # missing, or a cycle
                return None
            chain.append(ref)
            at = ref[0]
        for ref in reversed(chain):
            self.of(ref)
        return self._paths[subvolume]

    def of(self, ref: refs.Ref) -> str | None:
        """By its ROOT_REF item."""
        holder, child, inode, name = ref
        parent, where = self(holder), self._directory(holder, inode)
        path = None
        if parent is not None and where is not None:
            path = f"{parent}/" * bool(parent) + (where + name).decode(*_FS_CODEC)
        self._paths[child] = path
        return path

    def _directory(self, tree: int, inode: int) -> bytes | None:
        if (tree, inode) not in self._dirs:
            try:
                self._dirs[tree, inode] = refs.directory(self._fd, tree, inode)
            except FileNotFoundError:
                self._dirs[tree, inode] = None
        return self._dirs[tree, inode]


def examine(top: Path, sub: Subvol, quotas: int | None = None) -> Examined | None:
    """The record of the subvolume listed as `sub`, by its id: by path, a name renamed meanwhile would
    give the record of whatever holds that path now. None if it was deleted since it was listed (a
    `status` while a cleanup runs): it is not there. `quotas`: an fd of the filesystem, if quotas are
    on (its qgroups are read too)."""
    try:
        info = btrfsutil.subvolume_info(str(top), sub.id)
    except btrfsutil.BtrfsUtilError as error:
        if error.errno == errno.ENOENT:
            return None
        raise
    return Examined(
        sub.id,
        sub.path,
        read_only=bool(info.flags & _READ_ONLY),
        otime=info.otime,
        otransid=info.otransid,
        changed=max(info.ctransid, info.generation) > info.otransid,
        uuid=info.uuid.hex(),
        parent_uuid=info.parent_uuid.hex(),
        quota=None if quotas is None else qgroups.of(quotas, sub.id),
    )


def _kinds(top: Path, paths: Iterable[str], subvol_paths: set[str]) -> dict[str, Kind]:
    """The kind of every path (each with its parents among `paths`), parents first. Below a parent
    that is not a directory nothing is looked up (missing): a symbolic link on the way is never
    followed (one that loops made lstat fail), and the plan refuses it where a run would use it."""
    kinds: dict[str, Kind] = {}
    wanted = dict.fromkeys(prefix for path in paths for prefix in names.prefixes(path))
    for path in sorted(wanted, key=lambda p: p.count("/")):
        parent = path.rpartition("/")[0]
        if parent and kinds[parent] not in _DIRS:
            kinds[path] = Kind.MISSING
        else:
            kinds[path] = _kind(top, path, subvol_paths)
    return kinds


def _kind(top: Path, path: str, subvol_paths: set[str]) -> Kind:
    if path in subvol_paths:
        return Kind.SUBVOLUME
    try:
        found = os.lstat(top / path)
    except (FileNotFoundError, NotADirectoryError):
        return Kind.MISSING
    if not stat.S_ISDIR(found.st_mode):
        return Kind.OTHER
    return Kind.PLACEHOLDER if found.st_ino == _EMPTY_SUBVOL_DIR else Kind.DIRECTORY


def _is_empty(directory: Path) -> bool:
    with os.scandir(directory) as found:
        return next(found, None) is None


@contextmanager
def _inode_flags(path: Path, *, kind: int = os.O_DIRECTORY) -> Iterator[tuple[int, int]]:
    """(an open fd, its inode flags) for the directory (or, kind=0, the file) at `path`, never following
    a symlink."""
    fd = os.open(path, os.O_RDONLY | kind | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        yield fd, struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8)))[0]
    finally:
        os.close(fd)


def _pinned(path: Path) -> bool:
    """chattr +i or +a on this directory: it cannot be renamed, and nothing in it unlinked."""
    try:
        with _inode_flags(path) as (_fd, flags):
            return bool(flags & _PINNING)
    except FileNotFoundError:  # deleted since it was listed (a cleanup, while `status` looks)
        return False


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _pinned_file(path: Path) -> bool:
    """chattr +i or +a on a regular file (the caller checked it is one: nothing else is opened)."""
    try:
        with _inode_flags(path, kind=0) as (_fd, flags):
            return bool(flags & _PINNING)
    except FileNotFoundError:
        return False


def _unpin(path: Path) -> None:
    with _inode_flags(path) as (fd, flags):
        if flags & _PINNING:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", flags & ~_PINNING))


def unlock(path: Path) -> None:
    """Make a subvolume deletable: clear its read-only property, then +i/+a on its top directory (in
    that order: btrfs refuses to change inode flags in a read-only subvolume, EROFS)."""
    if btrfsutil.get_subvolume_read_only(str(path)):
        btrfsutil.set_subvolume_read_only(str(path), False)
    _unpin(path)


def set_read_only(path: Path) -> bool:
    """Make the subvolume at `path` read-only again (a pruning that failed after its unlock, or in it);
    whether it was not."""
    if btrfsutil.get_subvolume_read_only(str(path)):
        return False
    btrfsutil.set_subvolume_read_only(str(path), True)
    return True


def observe(
    top: Path,
    paths: Iterable[str],
    holders: Iterable[str],
    mounted: Mounts,
    now: datetime,
    bounds: Bounds | None = None,
    systems: Iterable[str] = (),
) -> Observation:
    """What the plan needs: every subvolume listed (with `bounds`, as list_bounded() bounds it, and the
    mounted and default ones wherever they are); examined (and checked for +i/+a) only the `paths` it
    asks about and the entries directly inside `holders` (the trash, the archive). Nothing here reads a
    subvolume nested in the root (but, bounded, the directories leading to a protected name): the
    boot's cost barely grows with them."""
    default_id = btrfsutil.get_default_subvolume(str(top))
    also = [*mounted.subvolumes, *mounted.swapfiles, default_id]
    listed = list_subvolumes(top, also) if bounds is None else list_bounded(top, *bounds, also)
    subvol_paths = {s.path for s in listed}
    kinds = _kinds(top, paths, subvol_paths)
    dirs = {p for p, k in kinds.items() if k in _DIRS}
    holding = {h for h in holders if h in dirs}
    entries = {s.path for s in listed if s.path.rpartition("/")[0] in holding}  # archived roots, trash entries
    wanted = entries | {p for p, k in kinds.items() if k is Kind.SUBVOLUME}
    mark = kinds.get(SKIP_MARK, Kind.MISSING)  # the plan asks about it (paths_of_interest): lstat once
    mark_regular = mark is Kind.OTHER and _regular(top / SKIP_MARK)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        quotas = fd if qgroups.enabled(fd) else None
        subvols = tuple(found for s in listed if (found := examine(top, s, quotas) if s.path in wanted else s))
    finally:
        os.close(fd)
    return Observation(
        subvols=subvols,
        default_id=default_id,
        kinds=kinds,
        empty=frozenset(p for p in dirs if _is_empty(top / p)),
        mounted=dict(mounted.subvolumes),
        mounted_paths=dict(mounted.paths),
        swapfiles=dict(mounted.swapfiles),
        read_only_under=mounted.read_only_under,
        degraded=mounted.degraded,
        skip_mark=mark is not Kind.MISSING,
        skip_mark_regular=mark is not Kind.OTHER or mark_regular,
        skip_mark_for=_mark_for(top / SKIP_MARK) if mark_regular else None,
        pending_cleanup=tuple(btrfsutil.deleted_subvolumes(str(top))),
        immutable=frozenset(p for p in {"", *dirs, *entries} if _pinned(top / p))
        | frozenset(p for p in [SKIP_MARK] if mark_regular and _pinned_file(top / p)),
        top_read_only=btrfsutil.get_subvolume_read_only(str(top)),
        names_in={h: frozenset(os.listdir(top / h)) for h in holding},
        systems={p: system_signs(top / p) for p in systems if kinds.get(p) is Kind.SUBVOLUME},
        now=now,
    )


def system_signs(where: Path) -> SystemSigns | None:
    """What the subvolume at `where` holds of an operating system (model.SystemSigns), looked up apart
    from the observation's paths: an error here (a damaged directory in a root about to be replaced)
    is None, not judged, never a refusal of its own. A link on the way is not followed."""
    try:
        found, whole = _through_directories(where, SYSTEM)
        fstab, _ = _through_directories(where, FSTAB)
        return SystemSigns(found, whole, bool(fstab) and _mounts_usr(where / FSTAB))
    except OSError:
        return None


FSTAB = "etc/fstab"


def _through_directories(where: Path, path: str) -> tuple[bool | None, bool]:
    """Whether `path` exists in `where` (as anything), each directory on the way a real one (None: a
    link or a file on the way, cannot tell); and whether none of those is a nested subvolume's top."""
    parts, whole = path.split("/"), True
    for depth in range(1, len(parts)):
        try:
            found = os.lstat(where.joinpath(*parts[:depth]))
        except FileNotFoundError:
            return False, whole
        if not stat.S_ISDIR(found.st_mode):
            return None, whole
        whole = whole and found.st_ino != _SUBVOLUME_TOP
    return os.path.lexists(where / path), whole


def _mounts_usr(fstab: Path) -> bool:
    """The fstab (a regular file, not a link) has an entry mounting a device's filesystem on /usr (a bind
    of a path, `none` or `bind`, mounts what the root itself holds)."""
    if not stat.S_ISREG(os.lstat(fstab).st_mode):
        return False
    fd = os.open(fstab, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        text = os.read(fd, 1 << 16).decode("utf-8", "replace")
    finally:
        os.close(fd)
    entries = [line.split() for line in text.splitlines() if not line.lstrip().startswith("#")]
    return any(
        len(fields) > 3 and fields[1].rstrip("/") == "/usr" and fields[2] != "none" and "bind" not in fields[3]
        for fields in entries
    )


InUse = Callable[[], Mapping[int, str]]  # the subvolumes in use now (mounted, holding an active swap file): id -> where


def execute(step: Step, top: Path, in_use: InUse | None = None, waiting: Callable[[str], None] | None = None) -> None:
    """Carry out one step; every path in a step is relative to the top level. `in_use`: looked at during
    a delete (the cleanup's, which runs beside the live system). `waiting`: told once when a wait for
    the kernel's cleaner has gone on for long."""
    if isinstance(step, MakeDir):
        os.makedirs(top / step.path, mode=0o700, exist_ok=True)
    elif isinstance(step, Rename):
        if os.path.lexists(top / step.dest):  # rename(2) would replace an empty directory
            raise FileExistsError(f"{step.dest} exists")
        os.rename(top / step.source, top / step.dest)
    elif isinstance(step, Create):
        _create_root(top / step.path)
    elif isinstance(step, Snapshot):
        btrfsutil.create_snapshot(str(top / step.source), str(top / step.dest), read_only=False)
    elif isinstance(step, Delete):
        _delete(top / step.path, step.count, _Busy(in_use))
    elif isinstance(step, Unlock):
        unlock(top / step.path)
    elif isinstance(step, Reclaim):
        _reclaim(top, step.timeout_s, waiting)
    elif isinstance(step, Commit):
        btrfsutil.sync(str(top))
    elif isinstance(step, WriteMark):
        _write_mark(top, step.path, step.subvolume_id, step.subvolume_uuid)
    elif isinstance(step, RemoveMark):
        with _in_state_dir(top, step.path) as (where, name):
            os.unlink(name, dir_fd=where)
    else:
        assert_never(step)


def _create_root(path: Path) -> None:
    """A new empty subvolume whose top directory is a root's, 0755: the kernel applies the caller's
    umask (077 from a root shell made / 0700, and every service not running as root failed)."""
    previous = os.umask(0o022)
    try:
        btrfsutil.create_subvolume(str(path))
    finally:
        os.umask(previous)


def _write_mark(top: Path, path: str, subvolume_id: int, subvolume_uuid: str) -> None:
    """The mark, naming the subvolume it is for: written under another name, then renamed over the
    mark's, so that a failure (no room for the text) leaves the mark as it was, set or not, never an
    empty one (which counts for any root) under a message saying nothing changed."""
    with _in_state_dir(top, path) as (where, name):
        draft = f".{name}.{os.getpid()}.new"  # its own: a leftover (a crash, a directory) is in no run's way
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=where)
        try:
            try:
                os.write(fd, f"{subvolume_id} {subvolume_uuid}\n".encode())
            finally:
                os.close(fd)
            os.rename(draft, name, src_dir_fd=where, dst_dir_fd=where)
        except OSError:
            with suppress(OSError):
                os.unlink(draft, dir_fd=where)
            raise
        _forget_drafts(where, name)


def _forget_drafts(where: int, name: str) -> None:
    """The drafts a killed skip-next left beside the mark (regular files named as ours are): nothing
    else removed them, and nothing said they were there. Best effort: the mark is written."""
    try:
        entries = os.listdir(where)
    except OSError:
        return
    for entry in entries:
        if entry.startswith(f".{name}.") and entry.endswith(".new") and entry[len(name) + 2 : -4].isdigit():
            with suppress(OSError):
                if stat.S_ISREG(os.lstat(entry, dir_fd=where).st_mode):
                    os.unlink(entry, dir_fd=where)


def _mark_for(path: Path) -> MarkFor | None:
    """The subvolume a mark names, id and uuid (the caller checked it is a regular file); None: any root's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 64).strip()
    finally:
        os.close(fd)
    words = text.split()
    if not words or not words[0].isdigit():
        return None
    uuid = words[1].decode("ascii", "replace") if len(words) > 1 else ""
    return MarkFor(int(words[0]), uuid)


@contextmanager
def _in_state_dir(top: Path, path: str) -> Iterator[tuple[int, str]]:
    """(an fd of the mark's directory, the mark's name): no symbolic link followed on the way, even one
    swapped in since the plan checked (the plan refuses a link there; this holds in a race too)."""
    parent, _, name = path.rpartition("/")
    fd = os.open(top / parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd, name
    finally:
        os.close(fd)


def _delete(path: Path, count: int, busy: _Busy | None = None) -> None:
    """The subvolume at `path` and every one nested in it (`count` in all, as the checks saw them). In
    the initrd nothing else acts on the filesystem: libbtrfsutil's recursive delete (the fastest), the
    walk below where it stops. Elsewhere (the cleanup, a run by hand) the walk, never more than the
    checks saw."""
    from rollback.sources import in_initrd

    alone = in_initrd()
    if alone:
        try:
            btrfsutil.delete_subvolume(str(path), recursive=True)
            return
        except btrfsutil.BtrfsUtilError as error:
            if error.errno not in (errno.EROFS, errno.EPERM, errno.ENAMETOOLONG):
                raise
    _walk(path, None if alone else count, busy or _Busy(None))


def _walk(path: Path, count: int | None, busy: _Busy) -> None:
    """The subvolume at `path` and every one nested in it (`count` in all where known), in one walk down
    its tree of subvolumes, innermost first, one subvolume at a time: never more than the checks saw.
    A subvolume moved in after them (`mv /persist` into the trash, during a cleanup of minutes) was
    deleted with the rest by libbtrfsutil's recursive delete (found by a concurrency tester); now more
    than `count` found stops before any delete, and one moved in during the walk makes the kernel
    refuse its holder's delete (ENOTEMPTY), which stops it too. What a recursive delete stops at is
    ours (all of it is in the trash): a read-only subvolume holding others, an immutable directory
    (+i/+a) holding one, a path over 4 KiB: each made deletable on the way down, the working directory
    moved one name down or `..` up at a time, each move checked; put back after. Linear in the
    subvolumes and the directories between them (was: every one reached from the top again where paths
    were too long: a chain of 15,000, which any user can make in /tmp, kept every boot's delete from
    finishing; found by a scale tester)."""
    home = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        os.close(home)
        raise
    try:
        own = btrfsutil.subvolume_id(fd)
        nested = refs.below(refs.all_refs(fd), own)
        if count is not None and 1 + len(nested) != count:
            raise OSError(errno.ESTALE, f"{1 + len(nested)} subvolume(s) found, {count} checked: changed meanwhile")
        held = _held(fd, nested)
        unlock(path)
        os.fchdir(fd)
        _walk_and_delete(own, held, busy)
        os.fchdir(home)
        busy.check(own, set())
        _delete_checked(str(path), own)
    finally:
        os.fchdir(home)
        os.close(home)
        os.close(fd)


_Held = dict[int, list[tuple[int, list[bytes], bytes]]]  # holder -> (subvolume, directories to it, its name)


def _held(fd: int, nested: list[refs.Ref]) -> _Held:
    """What each subvolume holds directly: the directories from its top to each, and each one's name."""
    held: _Held = {}
    for holder, child, inode, name in nested:
        inside = refs.directory(fd, holder, inode).split(b"/")[:-1]
        held.setdefault(holder, []).append((child, inside, name))
    return held


class _Busy:
    """Before each delete of a walk: neither the subvolume nor any holding it is in use (`in_use`: id ->
    where; read again at most every READ_AGAIN_S). One mounted meanwhile was deleted under its mount
    (yesterday's root mounted to fetch a file while the cleanup deleted it; found by a concurrency
    tester), and the cleanup then waited up to an hour for the kernel, which cannot free it while
    mounted; a mount of one holding it shows what it holds (a reviewer)."""

    READ_AGAIN_S = 0.25

    def __init__(self, in_use: InUse | None) -> None:
        self._in_use, self._found, self._read = in_use, dict[int, str](), -self.READ_AGAIN_S

    def check(self, subvolume: int, holding: set[int]) -> None:
        """`holding`: the ids of the subvolumes the walk is inside of, down to this one's holder."""
        if self._in_use is None:
            return
        if time.monotonic() - self._read >= self.READ_AGAIN_S:
            self._found, self._read = dict(self._in_use()), time.monotonic()
        used = [i for i in self._found if i == subvolume or i in holding]
        if used:
            raise OSError(
                errno.EBUSY,
                f"subvolume {used[0]} mounted meanwhile ({self._found[used[0]]}), holding or being what was to "
                "be deleted next: stopped",
            )


def _walk_and_delete(own: int, held: _Held, busy: _Busy) -> None:
    """From the top directory of subvolume `own` (the working directory): see _walk. A subvolume
    holding none is deleted from the directory holding it (made deletable only if its delete is
    refused); one holding others is made deletable, entered, emptied, left and deleted. Every name is
    checked to be the subvolume the tree was read with before it is entered, unlocked or deleted (one
    renamed into a name the walk had read, `persist` say, was deleted in its place; a reviewer)."""
    # a frame per subvolume on the way: what it holds still to visit, its top directory, and how it was
    # reached (its name, the directory holding it, the directories between that and its holder's top)
    stack = [(own, iter(held.get(own, ())), _here(), b"", (0, 0), 0)]
    inside_of = {own}
    while stack:
        subvolume, pending, top, name, holding, between = stack[-1]
        step = next(pending, None)
        if step is not None:
            child, inside, child_name = step
            for directory in inside:
                _move(directory)
            if child not in held:
                busy.check(child, inside_of)
                _delete_leaf(child_name, child)
                _climb(len(inside), top)
                continue
            _unpin(Path("."))
            _unlock_at(child_name, child)
            holder_dir = _here()
            _move(child_name)
            if btrfsutil.subvolume_id(".") != child:
                raise OSError(errno.ESTALE, f"{os.fsdecode(child_name)} changed meanwhile: stopped")
            stack.append((child, iter(held[child]), _here(), child_name, holder_dir, len(inside)))
            inside_of.add(child)
            continue
        stack.pop()
        inside_of.discard(subvolume)
        if not stack:
            return
        _move(b"..", holding)
        busy.check(subvolume, inside_of)
        _delete_checked(name, subvolume)
        _climb(between, stack[-1][2])


def _delete_leaf(name: bytes, subvolume: int) -> None:
    """The subvolume `subvolume`, holding none, by its name in the working directory (a name: nothing
    followed on the way): made deletable (the directory holding it, then itself) only where refused."""
    try:
        _delete_checked(name, subvolume)
    except btrfsutil.BtrfsUtilError as error:
        if error.errno not in (errno.EPERM, errno.EROFS):
            raise
        _unpin(Path("."))
        _unlock_at(name, subvolume)
        _delete_checked(name, subvolume)


def _unlock_at(name: bytes, subvolume: int) -> None:
    """unlock() the subvolume `name` in the working directory, opened without following a link (swapped
    in meanwhile, a link would have had its target's flags cleared), if it is `subvolume`."""
    fd = _opened_as(name, subvolume)
    try:
        if btrfsutil.get_subvolume_read_only(fd):
            btrfsutil.set_subvolume_read_only(fd, False)
        flags = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8)))[0]
        if flags & _PINNING:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", flags & ~_PINNING))
    finally:
        os.close(fd)


def _opened_as(name: str | bytes, subvolume: int) -> int:
    """`name` opened as a directory, no link followed, if it is the top of subvolume `subvolume`."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if btrfsutil.subvolume_id(fd) == subvolume and os.fstat(fd).st_ino == _TOP_INODE:
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    raise OSError(errno.ESTALE, f"{os.fsdecode(name)} is no longer the subvolume read (id {subvolume}): stopped")


_TOP_INODE = 256  # every subvolume's top directory (BTRFS_FIRST_FREE_OBJECTID)


def _delete_checked(name: str | bytes, subvolume: int) -> None:
    """Delete the subvolume at `name` (holding none) if it is `subvolume`, checked just before."""
    os.close(_opened_as(name, subvolume))
    try:
        btrfsutil.delete_subvolume(name)
    except btrfsutil.BtrfsUtilError as error:
        if error.errno != errno.ENOTEMPTY:
            raise
        shown = os.fsdecode(name)
        raise OSError(errno.ESTALE, f"a subvolume was moved into {shown} meanwhile: not deleted") from None


def _climb(levels: int, expected: tuple[int, int]) -> None:
    """Up `levels` directories (`..`), to the directory `expected` (its device and inode)."""
    if levels:
        for _ in range(levels):
            _move(b"..")
        _expect(expected)


def _here() -> tuple[int, int]:
    found = os.stat(".")
    return found.st_dev, found.st_ino


def _move(name: bytes, expected: tuple[int, int] | None = None) -> None:
    """Make the directory `name` in the working directory the working one, no symbolic link followed;
    with `expected` (its device and inode), refuse to go on where the tree changed meanwhile."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchdir(fd)
    finally:
        os.close(fd)
    if expected is not None:
        _expect(expected)


def _expect(expected: tuple[int, int]) -> None:
    if _here() != expected:
        raise OSError(errno.ESTALE, "the tree being deleted changed meanwhile: stopped")


def whole(top: Path, step: Delete) -> bool:
    """Whether the tree a failed delete was deleting still holds every subvolume the plan counted:
    then its first deletion was refused (btrfs reserves before it alters anything) and nothing went."""
    try:
        return len(ids_within(top, step.path)) == step.count
    except (OSError, btrfsutil.BtrfsUtilError):
        return False


def cleaner_busy(top: Path) -> bool:
    """Whether deleted subvolumes still wait for the kernel's cleaner (False if that cannot be read)."""
    try:
        return bool(btrfsutil.deleted_subvolumes(str(top)))
    except btrfsutil.BtrfsUtilError:
        return False


SLOW_RECLAIM_S = 10.0  # a wait for the kernel's cleaner this long is said (once)


def _reclaim(top: Path, timeout_s: float, waiting: Callable[[str], None] | None = None) -> None:
    """A commit starts the cleaner at once (else up to 30 s); then poll until nothing is pending. On
    timeout go on: a step that still lacks space fails, and the next run starts from here again. A wait
    past SLOW_RECLAIM_S is told to `waiting`: a file held open in a deleted subvolume keeps the kernel
    from freeing it, and the cleanup waited minutes without a word (a concurrency tester)."""
    btrfsutil.sync(str(top))
    began = time.monotonic()
    while (pending := btrfsutil.deleted_subvolumes(str(top))) and time.monotonic() < began + timeout_s:
        if os.statvfs(top).f_flag & os.ST_RDONLY:  # forced so after an error (the cleaner met a bad block):
            raise OSError(errno.EROFS, "the kernel's cleaner stopped")  # no wait
        if waiting and time.monotonic() >= began + SLOW_RECLAIM_S:
            waiting(
                f"the kernel is still freeing {len(pending)} deleted subvolume(s) after {SLOW_RECLAIM_S:g} s (this "
                f"waits {timeout_s:g} s at most): a big tree on a slow disk takes minutes; if their count does not "
                "go down (rollback status: pending deletions), a file open in one, or a process's working "
                "directory there, keeps it until closed (lsof lists what is open)"
            )
            waiting = None
        time.sleep(0.01)
