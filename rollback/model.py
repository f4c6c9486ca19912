"""What was observed on the device: plain data, filled by the effects layer."""

from __future__ import annotations

import enum
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import NamedTuple

from rollback.names import basename, parse_entry

TOP_LEVEL_ID = 5
STATE_DIR = ".rollback"
TRASH_DIR = ".rollback/trash"
SKIP_MARK = ".rollback/skip-next"


class Kind(enum.Enum):
    MISSING = "missing"
    SUBVOLUME = "subvolume"
    DIRECTORY = "directory"
    # the empty directory (inode 2) btrfs shows where a snapshot's source held a subvolume: nothing can
    # be created in it, nor its flags read (ENOTTY); restoring a subvolume from a snapshot leaves these
    PLACEHOLDER = "placeholder"
    OTHER = "other"


@dataclass(frozen=True)
class Subvol:
    """One subvolume as observed on the device: every subvolume is listed, with its id and path."""

    id: int
    path: str  # relative to the top level


@dataclass(frozen=True)
class TreeSize:
    """A subvolume's own tree, from its ROOT_ITEM: the bytes of metadata its tree blocks take (a
    snapshot's counts those it shares with its source), and the transactions of its last snapshot
    (0: never the source of one), of its creation as a snapshot (its key's offset; 0: not one) and of
    the last change to its files (ctransid; a snapshot taken of it changes none)."""

    bytes_used: int
    last_snapshot: int
    snapshot_of: int
    changed_at: int = 0
    relocating: bool = False  # a balance under way or paused holds a relocation tree of it (its blocks too)


class Lineage(NamedTuple):
    """Where a subvolume comes from, from its ROOT_ITEM: its UUID, its source's ("" if not a
    snapshot) and the transaction that created it."""

    uuid: str
    parent_uuid: str
    created: int


@dataclass(frozen=True)
class Quota:
    """A subvolume's own qgroup (0/<id>), where quotas are on: the higher-level qgroups it is in
    (qgroup ids, level << 48 | id), and whether it has a limit of its own."""

    groups: tuple[int, ...] = ()
    own_limit: bool = False
    referenced_over: bool = False  # its referenced bytes at or over its own referenced limit


@dataclass(frozen=True)
class Examined(Subvol):
    """A subvolume whose record was read as well: only those a plan or a report looks at (the root, the
    blank, archived roots, trash entries). Reading it for every nested subvolume would put one search
    per subvolume on the boot path."""

    read_only: bool = False
    otime: float = 0.0
    otransid: int = 0  # the transaction that created it: the filesystem's own order, unlike any clock
    changed: bool = True  # written to since it was created: ctransid or, after log replay alone, generation > otransid
    uuid: str = ""
    parent_uuid: str = ""  # the source, for a snapshot
    quota: Quota | None = None  # None: quotas are off


class Mounts(NamedTuple):
    """What is mounted of the filesystem, in any mount namespace, and on paths inside it."""

    subvolumes: dict[int, str]  # subvolume id -> a mount point
    paths: dict[str, str]  # a path inside the filesystem (from its top level) -> what is mounted on it
    swapfiles: Mapping[int, str] = {}  # subvolume id -> an active swap file in it (as /proc/swaps names it)
    read_only_under: str = ""  # a read-write mount over the read-only superblock (mountinfo.read_only_under)
    degraded: tuple[int, ...] = ()  # the member device ids the kernel has it mounted without (mounted degraded)


SYSTEM = "usr/lib/systemd/systemd"  # what the initrd starts in the new root (switch-root with no init=)


class SystemSigns(NamedTuple):
    """What a subvolume holds of an operating system (plan.check_bootable): SYSTEM, found through real
    directories (None: cannot tell, a link or a file on the way); whether none of them is a subvolume
    of its own (a snapshot would leave it out); and whether its etc/fstab mounts /usr from a device
    (not a bind of a path), so its own usr/ is not what boots."""

    found: bool | None
    whole: bool
    usr_in_fstab: bool


class MarkFor(NamedTuple):
    """The subvolume a skip-next mark keeps: its id and (marks written since ids were joined by it) uuid."""

    id: int
    uuid: str = ""


@dataclass(frozen=True)
class Observation:
    """What the planner needs to know about the device, read before anything changes."""

    subvols: tuple[Subvol, ...]
    default_id: int
    kinds: Mapping[str, Kind]  # for every path the plan asks about
    mounted: Mapping[int, str] = field(default_factory=dict)  # subvolume id -> a mount point
    mounted_paths: Mapping[str, str] = field(default_factory=dict)  # path -> a mount on it (any filesystem)
    swapfiles: Mapping[int, str] = field(default_factory=dict)  # subvolume id -> an active swap file in it
    read_only_under: str = ""  # a read-write mount over the read-only superblock: forced so after an error?
    degraded: tuple[int, ...] = ()  # the member device ids it is mounted without (mounted degraded elsewhere)
    skip_mark: bool = False  # .rollback/skip-next exists (as anything, a dangling symlink too)
    skip_mark_regular: bool = True  # ... and is a regular file (lstat: a symlink is not)
    skip_mark_for: MarkFor | None = None  # the subvolume skip-next wrote in it (None: any, an empty or older mark)
    empty: frozenset[str] = frozenset()  # paths of interest that are empty directories
    pending_cleanup: tuple[int, ...] = ()  # deleted, not yet cleaned by the kernel
    immutable: frozenset[str] = frozenset()  # chattr +i or +a on its top directory ("" is the top level)
    top_read_only: bool = False  # the top level (subvolume 5) has the read-only property
    # every name directly inside each holder (the trash, the archive) that is a directory: files and
    # directories too, which a name the run picks there must not meet either
    names_in: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # the root's and (snapshot mode) the blank's signs of an operating system; None: not readable
    systems: Mapping[str, SystemSigns | None] = field(default_factory=dict)
    now: datetime = datetime.min

    @cached_property
    def _by_path(self) -> dict[str, Subvol]:
        return {s.path: s for s in self.subvols}

    def kind(self, path: str) -> Kind:
        return self.kinds.get(path, Kind.MISSING)

    def get(self, path: str) -> Examined | None:
        """The subvolume at `path`, which must be one the observation examined."""
        found = self._by_path.get(path)
        if found is None or isinstance(found, Examined):
            return found
        raise LookupError(f"{path!r} was listed, not examined: the observer reads every path a plan asks about")

    @cached_property
    def _by_directory(self) -> dict[str, list[Subvol]]:
        """Subvolumes by the directory holding them ("" for the top level's own)."""
        held: dict[str, list[Subvol]] = {}
        for s in self.subvols:
            held.setdefault(s.path.rpartition("/")[0], []).append(s)
        return held

    @cached_property
    def _sorted(self) -> tuple[list[str], list[int]]:
        """Every listed path in sorted order, and each one's place in `subvols`."""
        order = sorted(range(len(self.subvols)), key=lambda i: self.subvols[i].path)
        return [self.subvols[i].path for i in order], order

    def below(self, path: str) -> Iterator[Subvol]:
        """Subvolumes strictly inside `path`, at any depth, in listing order. A range of the sorted paths
        (those starting "path/" sort from it to "path0", "0" following "/"): a scan of every subvolume per
        entry made plans, status and cleanups of 1000 archived roots take 10-40 s (a scale tester)."""
        return (self.subvols[i] for i in sorted(self._inside(path)))

    def entries(self, directory: str) -> list[Examined]:
        """Archived roots (or trash entries) directly inside `directory`, oldest first.

        Oldest by creation transid, the filesystem's own counter: names carry the clock's time at the
        run that made them, and clocks in an initrd can be anything.
        """
        named = (s.path for s in self._by_directory.get(directory, ()) if parse_entry(basename(s.path)))
        ours = [s for s in map(self.get, named) if s]
        return sorted(ours, key=lambda s: (s.otransid, s.path))

    def tree(self, path: str) -> list[Subvol]:
        """The subvolume at `path` (if any) and everything nested in it, in listing order."""
        paths, order = self._sorted
        places = self._inside(path)
        at = bisect_left(paths, path)
        if at < len(paths) and paths[at] == path:
            places = [order[at], *places]
        return [self.subvols[i] for i in sorted(places)]

    def _inside(self, path: str) -> list[int]:
        """The places in `subvols` of the paths strictly inside `path` (see below)."""
        paths, order = self._sorted
        return order[bisect_left(paths, path + "/") : bisect_left(paths, path + "0")]
