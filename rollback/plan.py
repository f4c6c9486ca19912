"""Config + observation -> a plan: the ordered steps of one run, or a refusal.

Order is chosen for crash consistency: the old root is moved aside first
(O(1) rename), the new root is created, and deletions come last.  Whatever
an interrupted run leaves (no root, or entries in the trash) is exactly what
the next run plans to finish, first: on a full filesystem, deleting is what
still works and frees the space the rename and the create need.  Every check
happens here, before step one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import NamedTuple, assert_never

from rollback import names
from rollback.errors import Refused
from rollback.model import (
    SKIP_MARK,
    STATE_DIR,
    SYSTEM,
    TRASH_DIR,
    Examined,
    Kind,
    Lineage,
    Observation,
    Quota,
    Subvol,
    TreeSize,
)
from rollback.settings import Config


@dataclass(frozen=True)
class MakeDir:
    """Create a plain directory (no-op if it exists)."""

    path: str

    def describe(self) -> str:
        return f"make directory {self.path}"


@dataclass(frozen=True)
class Rename:
    """Move a subvolume within the filesystem: O(1), and how a root is set aside."""

    source: str
    dest: str

    def describe(self) -> str:
        return f"move {self.source} -> {self.dest}"


@dataclass(frozen=True)
class Create:
    """Create an empty subvolume."""

    path: str

    def describe(self) -> str:
        return f"create empty subvolume {self.path}"


@dataclass(frozen=True)
class Snapshot:
    """Create a writable snapshot of a (read-only) subvolume."""

    source: str
    dest: str

    def describe(self) -> str:
        return f"snapshot {self.source} -> {self.dest} (writable)"


@dataclass(frozen=True)
class Commit:
    """Commit the transaction after the new root is made: from here a power cut boots a clean root
    (without it, the renames may not reach the disk before the root is mounted and used), and the
    creation is alone in its transaction: any later write raises the new root's ctransid (or only
    its generation, for writes a log replay brought back), which is how the next run tells a used
    root from an untouched one."""

    def describe(self) -> str:
        return "commit the transaction"


@dataclass(frozen=True)
class Reclaim:
    """Commit, and wait (bounded) for the kernel's cleaner to free what deleted subvolumes held: on a
    full filesystem the renames and the create need that space, and it returns only then."""

    timeout_s: float = 60.0

    def describe(self) -> str:
        return f"wait for the kernel to free deleted subvolumes' space (at most {self.timeout_s:g} s)"


@dataclass(frozen=True)
class Delete:
    """Delete a subvolume and every subvolume nested in it."""

    path: str
    count: int  # subvolumes removed, nested ones included

    def describe(self) -> str:
        return f"delete {self.path} recursively ({self.count} subvolume{'s' if self.count != 1 else ''})"


@dataclass(frozen=True)
class Unlock:
    """Clear the read-only property (and +i/+a) of a read-only archived root retention removes: it is
    ours (an immutable one is pinned, never pruned). Put back if no room is left to prune it after all.
    Needed: btrfs refuses to move a read-only subvolume to another directory (EROFS; tried without it)."""

    path: str

    def describe(self) -> str:
        return f"clear read-only and immutable flags of {self.path}"


@dataclass(frozen=True)
class WriteMark:
    """Create the skip-next mark file, naming the subvolume (by id) whose next boot keeps it."""

    path: str
    subvolume_id: int
    subvolume_uuid: str = ""  # ids are reused once a subvolume is gone: the uuid tells them apart

    def describe(self) -> str:
        return f"write mark {self.path} (for subvolume id {self.subvolume_id})"


@dataclass(frozen=True)
class RemoveMark:
    """Remove the skip-next mark file."""

    path: str

    def describe(self) -> str:
        return f"remove mark {self.path}"


Step = MakeDir | Rename | Create | Snapshot | Commit | Reclaim | Delete | Unlock | WriteMark | RemoveMark


def nothing_changed_before(steps: tuple[Step, ...], failed: int) -> bool:
    """Only waits for the kernel's cleaner, and directories made (left, empty, for the next run: as
    undone_by_put_back counts them), ran before step `failed` (1-based): nothing of the run's. With room
    for two directories but not for the rename after them, a run said "the next run finishes the job",
    exit 1, and every later run was refused (found by a full-disk tester)."""
    return all(isinstance(step, Reclaim | MakeDir) for step in steps[: failed - 1])


def changes_nothing_on_enospc(step: Step) -> bool:
    """One system call for which btrfs reserves its space before it alters anything: failing with ENOSPC
    as a run's first step, it left the device exactly as it was (a refusal, not a failure midway)."""
    match step:  # (an unlink too: the skip-next mark's removal failed no-space-midway at every boot, a reviewer)
        case MakeDir() | Rename() | Create() | Snapshot() | WriteMark() | RemoveMark():
            return True
        case Commit() | Reclaim() | Delete() | Unlock():
            return False
        case _:
            assert_never(step)


def put_back(steps: tuple[Step, ...], failed: int) -> Rename | None:
    """When making the new root fails (step `failed`, e.g. no space), the move that set the old root
    aside in this run, reversed: the boot goes on with yesterday's root rather than with none (a root
    archived, then no room to create its successor, would otherwise leave every later boot rootless)."""
    match steps[failed - 1]:
        case Create(path=target) | Snapshot(dest=target):
            moved = [s for s in steps[: failed - 1] if isinstance(s, Rename) and s.source == target]
            return Rename(moved[-1].dest, target) if moved else None
        case _:
            return None


def undone_by_put_back(steps: tuple[Step, ...], failed: int) -> bool:
    """Moving the old root back (put_back) undoes everything the steps before `failed` changed: they
    only waited for the kernel's cleaner, made directories (left, empty) and moved the old root."""
    undo = put_back(steps, failed)
    if undo is None:
        return False
    moved = Rename(undo.dest, undo.source)
    return all(isinstance(step, (Reclaim, MakeDir)) or step == moved for step in steps[: failed - 1])


@dataclass(frozen=True)
class Plan:
    """The steps of one run, in order; `skipped` says why a run keeps the root."""

    steps: tuple[Step, ...]
    skipped: str = ""  # why the run keeps the root, when it does
    warnings: tuple[str, ...] = ()  # what the run does as asked but the operator should know
    # step number -> the archived root whose pruning it carries out, after the new root is made: no room
    # for it (a qgroup limit on the subvolume holding the archive) keeps that root, and the run goes on
    pruning: Mapping[int, str] = field(default_factory=dict)
    unpruned: tuple[str, ...] = ()  # set on the plan that ran: the archived roots kept that way

    @property
    def deleted(self) -> int:
        return sum(s.count for s in self.steps if isinstance(s, Delete))

    def describe(self) -> list[str]:
        return [f"{n}. {step.describe()}" for n, step in enumerate(self.steps, 1)]


def plan_run(
    config: Config,
    obs: Observation,
    *,
    make_room: bool = False,
    root_first: bool = False,
    bare: bool = False,
    short_of_room: bool = False,
) -> Plan:
    """The run's steps. `make_room` (after the first change found no space, and nothing changed): the
    archived roots retention prunes this run are deleted first, straight from the archive, like the
    trash's leftovers; they went anyway, and without them nothing of rollback's would free space.
    `short_of_room` (a later step found none once what earlier runs left was deleted): the kernel's
    cleaner is waited for first.
    `root_first` (room_from_root said so): the old root is deleted where it is, and its space waited
    for, before the new one is made. `bare`: run with none of the machine's settings (no config file,
    outside the initrd: a rescue shell), where those given need not be the machine's."""
    if bare:
        _check_archive_unset(config, obs)
    if mark_applies(config, obs):
        check_mark(obs)
        _check_mark_is_for_a_boot(config, obs)
        # committed: a power cut right after would otherwise bring the mark back, and skip a second boot
        return _checked(Plan((RemoveMark(SKIP_MARK), Commit()), skipped="the skip-next mark was set"), obs)
    check(config, obs)
    leftovers = [s.path for s in obs.entries(TRASH_DIR)]
    taken = {names.basename(p) for p in leftovers} | obs.names_in.get(TRASH_DIR, frozenset())
    build = _Steps(obs, taken)
    pruned = prune_paths(config, obs, make_room=make_room)
    # What an earlier run left in the trash goes first: on a full filesystem it is the space the
    # renames and the create need (a delete still works there; a rename may not).
    due = [*leftovers, *(pruned if make_room else ())]
    build.steps += _leftovers_first(config, obs, due, make_room=make_room, short_of_room=short_of_room)
    _replace_root(build, config, root_first=root_first)
    pruning = _prune(build, () if make_room else pruned)
    if config.deletes_at_boot:
        # (after boot, what this run moves to the trash waits for `rollback cleanup`; the next boot
        # deletes it first if the cleanup never ran: the trash holds at most one boot's worth)
        _delete_the_trashed(build, pruning)
    if not isinstance(build.steps[-1], Commit):
        # what ran after the new root's commit (prunes, deletes) on the disk before the run says it was
        # done: the unmount commits it too, but says nothing when that fails (a dying disk: exit 0 and
        # "N deleted" while no delete reached it; a failing-hardware tester). Costs the boot nothing the
        # unmount would not
        build.steps.append(Commit())
    return _checked(Plan(tuple(build.steps), warnings=_run_warnings(config, obs), pruning=pruning), obs)


@dataclass
class _Steps:
    """A run's steps as plan_run adds them: the trash's names taken, and what each move to it deletes."""

    obs: Observation
    taken: set[str]
    steps: list[Step] = field(default_factory=list)
    deletes: list[tuple[Delete, str]] = field(default_factory=list)  # and the path each one's subvolume had
    serial: int = 0  # the next serial to try: every name this run gives has the same stamp

    def move(self, source: str, dest: str) -> None:
        _ensure_parents(self.steps, self.obs, dest)
        self.steps.append(Rename(source, dest))

    def move_to_trash(self, source: str) -> None:
        entry = names.fresh_entry(self.obs.now, self.taken, self.serial)
        self.serial, name = entry.serial + 1, str(entry)
        self.taken.add(name)
        self.move(source, f"{TRASH_DIR}/{name}")
        self.deletes.append((Delete(f"{TRASH_DIR}/{name}", len(self.obs.tree(source))), source))


def _leftovers_first(
    config: Config, obs: Observation, due: list[str], *, make_room: bool, short_of_room: bool
) -> list[Step]:
    """The deletes of what is `due` before the root is touched, and the wait for the kernel's cleaner
    or a commit after them.

    The wait is for room: the moves and the create need a few tree blocks, which a full disk has only
    once the cleaner freed what was deleted. Waited for where room is known to be short (make_room,
    short_of_room), where without the create there is no root to boot, and at boot when deleting
    there, for earlier runs' deletes. What earlier runs left is deleted without it (a boot with room
    waited 1.5-2.2 s for a leftover of 1M empty files): no room for the next step then is
    verbs._after_leftovers', which waits and goes on. After boot, the cleanup waits for the cleaner
    itself. No root while deleted subvolumes are still freed: a run cut short after deleting the old
    root where it was (root_first) needs that space for the create, either setting."""
    steps: list[Step] = [Delete(p, len(obs.tree(p))) for p in due]
    missing = obs.kind(config.subvolume) is Kind.MISSING
    waits = config.deletes_at_boot or missing or short_of_room
    if (due and (make_room or missing)) or (obs.pending_cleanup and waits):
        steps.append(Reclaim(timeout_s=ROOT_RECLAIM_S) if missing and not due else Reclaim())
    elif due:  # their deletes on disk before the first move, as the wait's commit made them: a power cut
        steps.append(Commit())  # later does not bring back what they freed (nor its delete at the next boot)
    return steps


def _replace_root(build: _Steps, config: Config, *, root_first: bool) -> None:
    """The old root out of the way (deleted where it is, archived, or to the trash), the new one made,
    an orphaned mark removed, committed."""
    target, obs = config.subvolume, build.obs
    if root_first:  # (room_from_root said so: not in keep mode)
        assert not config.keeping and obs.kind(target) is Kind.SUBVOLUME, "root_first without a root to delete"
        build.steps += [Delete(target, len(obs.tree(target))), Reclaim(timeout_s=ROOT_RECLAIM_S)]
    elif archives_root(config, obs):
        build.move(target, f"{config.archive}/{_archive_name(config, obs)}")
    elif obs.kind(target) is Kind.SUBVOLUME:
        build.move_to_trash(target)
    _ensure_parents(build.steps, obs, target)
    build.steps.append(Snapshot(config.blank, target) if config.from_blank else Create(target))
    if orphaned_mark(obs):
        build.steps.append(RemoveMark(SKIP_MARK))
    build.steps.append(Commit())


def _prune(build: _Steps, pruned: Iterable[str]) -> dict[int, str]:
    """The archived roots `pruned` moved to the trash (a read-only one unlocked first); each step's
    number (1-based) mapped to the root it prunes."""
    pruning: dict[int, str] = {}
    for path in pruned:
        began = len(build.steps)
        archived = build.obs.get(path)
        if archived and archived.read_only:  # (an immutable one is pinned: never pruned)
            # the trash's directories first: no room for them leaves it read-only, as it was
            _ensure_parents(build.steps, build.obs, f"{TRASH_DIR}/-")
            build.steps.append(Unlock(path))
        build.move_to_trash(path)
        # a directory the trash needs made is this root's too: no room for it keeps every root (the next
        # one's move needs it as well: verbs._pruning_skipped)
        pruning.update(dict.fromkeys(range(began + 1, len(build.steps) + 1), path))
    return pruning


def _delete_the_trashed(build: _Steps, pruning: dict[int, str]) -> None:
    """The deletes of what this run moved to the trash, last; one of a pruned root numbered in
    `pruning` with the steps _prune gave it (no room for it keeps that root's rest: _pruning_skipped)."""
    for delete, source in build.deletes:
        build.steps.append(delete)
        if source in pruning.values():
            pruning[len(build.steps)] = source


def _run_warnings(config: Config, obs: Observation) -> tuple[str, ...]:
    """What the run does as asked but the operator should know."""
    target = config.subvolume
    old = obs.get(target)
    quota = old.quota if old and old.quota else Quota()
    warnings = (*_other_roots_mark(config, obs), *_clock_behind(config, obs))
    warnings += _quota_left(quota, target, _blank_quota(config, obs)) + _misspelt(config, obs)
    warnings += () if archives_root(config, obs) else _written_under_mount_points(config, obs)
    return warnings + _read_only_under(obs) + _degraded(obs)


def _read_only_under(obs: Observation) -> tuple[str, ...]:
    """A read-write mount over the read-only superblock: a remount makes it writable, unless the kernel
    forced it so after an error, which the run meets only at its remount (a dry run does not remount)."""
    if not obs.read_only_under:
        return ()
    return (
        f"the filesystem is read-write at {obs.read_only_under} over a read-only superblock: another mount of it "
        "was remounted read-only (this verb's remount makes it writable again), or the kernel forced it so after "
        "an error (dmesg), and then every writing verb is refused (read-only) until it is unmounted everywhere",
    )


def _degraded(obs: Observation) -> tuple[str, ...]:
    """Mounted degraded elsewhere (a member missing): what is written may go to block groups of one copy
    (a multi-device tester; a read-only one is refused: verbs._before_writing)."""
    if not obs.degraded:
        return ()
    return (
        f"the filesystem is mounted degraded (device id(s) {', '.join(map(str, obs.degraded))} missing): what this "
        "verb writes may go to block groups with a single copy; once the member is back or replaced: btrfs scrub "
        "start, and btrfs balance start -dconvert=PROFILE,soft -mconvert=PROFILE,soft to the profiles it had",
    )


# Deleting the old root where it is, to make room, only where its own tree gives back this much
# metadata: a create needs a few tree blocks (btrfs reserves ~2 MiB for one); a root smaller than
# this on a disk full of other data would leave the boot with no root at all once deleted
ROOM_FROM_ROOT = 8 << 20
ROOT_RECLAIM_S = 300.0  # the kernel frees ~10 MiB of a deleted tree per second (a disk's worth of logs)


def room_from_root(
    config: Config, obs: Observation, sizes: Mapping[int, TreeSize], lineage: Mapping[int, Lineage]
) -> tuple[int, str]:
    """The bytes of metadata the old root's tree, and the plain subvolumes nested in it (neither
    snapshots nor copied), would give back if deleted where it is, when a run found no room for its
    first change (a root that filled the disk itself: a runaway log, a build's temporary files;
    nothing else of rollback's to delete); or 0 and why it is not deleted so:
    keep mode (the old root is kept), a skip-next mark for it (the user keeps it for this boot), under
    ROOM_FROM_ROOT, or shared: a copy of it still there (_copied_since), or a snapshot of anything but
    the blank, or of a blank changed since (its share unknown: a copy of the blank may hold what the
    root shared). `sizes`, `lineage`: every subvolume's (effects.btrfs.trees)."""
    root, blank = obs.get(config.subvolume), obs.get(config.blank)
    own = sizes.get(root.id) if root else None
    if config.keeping:
        return 0, "keep mode archives it"
    if root is None or own is None:
        return 0, "its size could not be read"
    if mark_applies(config, obs):
        return 0, "a skip-next mark keeps it for this boot"
    if own.relocating:
        return 0, "a balance under way or paused holds its blocks too (btrfs balance status)"
    if own.last_snapshot > own.snapshot_of and (copy := _copied_since(root, obs, lineage)):
        return 0, copy
    shared = 0
    if own.snapshot_of:  # a snapshot: the blocks of its source it was not written over are shared
        source = sizes.get(blank.id) if blank and root.parent_uuid == blank.uuid else None
        if source is None or source.changed_at > own.snapshot_of:
            return 0, "it is a snapshot of something other than the blank as it is: what it shares is unknown"
        shared = source.bytes_used
    # and what subvolumes nested in it give back, deleted with it: those neither snapshots nor copied
    # (a root filled by /var/lib/docker's; found by a second full-disk tester)
    nested = [sizes.get(s.id) for s in obs.tree(root.path) if s.id != root.id]
    freed = (
        own.bytes_used - shared + sum(n.bytes_used for n in nested if n and not n.last_snapshot and not n.relocating)
    )
    if freed < ROOM_FROM_ROOT:
        return 0, (
            f"its files and its nested subvolumes' take {freed >> 20} MiB of metadata, under {ROOM_FROM_ROOT >> 20}: "
            "too little to count on (file data is not counted: on a disk of mixed block groups it may be what "
            "filled it)"
        )
    return freed, ""


def _copied_since(root: Subvol, obs: Observation, lineage: Mapping[int, Lineage]) -> str:
    """Why a root snapshotted since it was made (its ROOT_ITEM says so; a balance marks it so too) may
    share its blocks still, or "" where it cannot: no copy of it outside it, nor a copy of a copy (one
    nested in it, copied out, included: a reviewer), nor a snapshot made since of a source no longer
    there, and no deleted subvolume still being freed."""
    own = lineage.get(root.id)
    if own is None:
        return "it was snapshotted since it was made, and what it comes from could not be read"
    inside = {s.id for s in obs.tree(root.path)}  # (deleted with it)
    known = {line.uuid for line in lineage.values()}
    copies = {own.uuid}  # of it, of a copy of it, ...
    while grown := {c.uuid for c in lineage.values() if c.parent_uuid in copies and c.uuid not in copies}:
        copies |= grown
    paths = {s.id: s.path for s in obs.subvols}
    for number, line in sorted(lineage.items()):
        if number in inside or not line.parent_uuid:
            continue
        shown = names.shown(paths.get(number, f"id {number}"))
        if line.uuid in copies:
            return f"a copy of it may hold its blocks ({shown})"
        if line.parent_uuid not in known and line.created >= own.created:
            return f"{shown} was made since from a subvolume no longer there: perhaps a copy of it"
    if obs.pending_cleanup:
        return "it was snapshotted since it was made, and the kernel is still freeing deleted subvolumes"
    return ""


def archives_elsewhere(config: Config, obs: Observation) -> dict[str, int]:
    """Directories other than the archive (and the trash) holding subvolumes named as rollback names
    archived roots, and how many: an archive set before, or on another machine's settings."""
    found: dict[str, int] = {}
    for sub in obs.subvols:
        parent = sub.path.rpartition("/")[0]
        if parent in ("", TRASH_DIR, config.archive) or names.is_within(sub.path, config.subvolume):
            continue
        if names.parse_entry(names.basename(sub.path)) is not None:
            found[parent] = found.get(parent, 0) + 1
    return found


def _check_archive_unset(config: Config, obs: Observation) -> None:
    """A run with none of the machine's settings (a rescue shell has no /etc/rollback.toml) deletes the
    root its boots would archive (found by a recovery tester). Where a directory holds subvolumes named
    as rollback names archived roots, `archive` was given nowhere and a written root would go, refused:
    the settings, or `--archive ''` to delete it all the same."""
    if config.keeping or config.sources.get("archive", "default") != "default" or mark_applies(config, obs):
        return
    root = obs.get(config.subvolume)
    if root is None or untouched(root, config, obs):  # no root this run would delete (a run cut short)
        return
    held = sorted(archives_elsewhere(config, obs))
    if held:
        raise Refused(
            f"{names.shown(held[0])} holds subvolumes named as rollback names archived roots, no config file was "
            f"read and no archive given: if this machine's boots keep old roots there, this run would delete "
            f"{names.shown(config.subvolume)} instead",
            f"give the machine's settings (--config FILE: its /etc/rollback.toml, on the root or /persist); to "
            f"keep the root there and prune nothing: --archive {names.shown(held[0])} --keep-days 0; to delete "
            "it all the same: --archive ''",
            code="archive-unset",
        )


def _misspelt(config: Config, obs: Observation) -> tuple[str, ...]:
    """No target, and beside where it would be a subvolume named as it but for case (`Root` for `root`):
    a misspelt setting creates a new root and leaves the real one as it is, every boot (found by a
    recovery tester: exit 0 and "created" only)."""
    parent, _, name = config.subvolume.rpartition("/")
    if obs.kind(config.subvolume) is not Kind.MISSING:
        return ()
    like = [s.path for s in obs.subvols if names.basename(s.path).casefold() == name.casefold()]
    like = [path for path in like if path.rpartition("/")[0] == parent]
    if not like:
        return ()
    return (
        f"there is no {names.shown(config.subvolume)}, and there is {names.shown(like[0])}: a misspelt name "
        f"({config.spelt('subvolume')})? This run makes {names.shown(config.subvolume)} and leaves "
        f"{names.shown(like[0])} as it is",
    )


def _blank_quota(config: Config, obs: Observation) -> Quota | None:
    """The blank's qgroup, in snapshot mode where quotas are on: btrfs copies its limit to each snapshot's."""
    found = obs.get(config.blank) if config.from_blank and obs.kind(config.blank) is Kind.SUBVOLUME else None
    return found.quota if found else None


def _quota_left(quota: Quota, target: str, blank: Quota | None = None) -> tuple[str, ...]:
    """The new root is a new subvolume, with a new qgroup in no higher-level qgroup and without a limit
    (made from the blank: the blank's limit, which btrfs copies): what the old root's qgroup had does not
    follow. Making it in the same higher-level qgroups would not do either: the old root stays in them,
    archived or in the trash (until the kernel's cleaner has freed it), and would use up their limits.
    Said by the run that leaves them (in snapshot mode it said "no limit" of every root, each with the
    blank's: found by a full-disk tester)."""
    inherited = bool(blank and blank.own_limit)
    if not (quota.groups or (quota.own_limit and not inherited)):
        return ()
    groups = ", ".join(f"{group >> 48}/{group & (2**48 - 1)}" for group in sorted(quota.groups))
    own = quota.own_limit and not inherited
    parts = (f"was in qgroup(s) {groups}" if groups else "", "had a limit" if own else "")
    had = " and ".join(part for part in parts if part)
    limit = "the blank's limit" if inherited else "no limit"
    return (
        f"the qgroup of the old {names.shown(target)} {had}: the new one is in no higher-level qgroup and has {limit} "
        "(rollback does not carry qgroups over: an archived or deleted root keeps its own, and would use up "
        "a shared limit); assign and limit the new root after boot if you rely on them",
    )


def _clock_behind(config: Config, obs: Observation) -> tuple[str, ...]:
    """keep-days reads the initrd's clock, and with keep-count unset nothing else bounds the archive.
    Said at each run where that clock keeps it from working (names.to_prune): going back between
    boots again and again (a clock that restarts at each boot: no battery-backed clock), no root ever
    gets old; behind the newest archived root's name, age prunes nothing until it passes it; ahead
    when some were archived, those stay until the clock passes their names."""
    if not (config.keeping and config.keep_days) or config.keep_count:
        return ()
    archived = obs.entries(config.archive)  # by creation, oldest first
    stamps = [_entry_stamp(s) for s in archived]
    # those named no later than an earlier one, among those named before now (one named after it is a clock
    # that was ahead once: every root after it would count as "back"; found by a settings tester)
    past = [stamp for stamp in stamps if stamp <= obs.now]
    latest = list(itertools.accumulate(past, max))  # the latest name up to each (one pass: the boot path)
    back = sum(_went_back(before - stamp) for stamp, before in zip(past[1:], latest, strict=False))
    now = f"{obs.now:%Y-%m-%d %H:%M:%S} UTC"
    if back >= 2:  # a pattern, not one wrong clock once
        return (
            f"the clock went back between boots {back} times (archived roots named no later than earlier "
            "ones): if it restarts at each boot (no battery-backed clock), keep-days never ages a root out, "
            "and with keep-count unset the archive grows until the disk is full: set keep-count",
        )
    if stamps and stamps[-1] > obs.now:
        return (
            f"the clock ({now}) is behind the newest archived root's name ({names.shown(archived[-1].path)}): "
            "keep-days prunes nothing until it passes it; keep-count would bound the archive meanwhile",
        )
    ahead = [s for s, stamp in zip(archived, stamps, strict=True) if stamp > obs.now]
    if ahead:
        return (
            f"{len(ahead)} archived root(s) are named after the clock's now ({now}; newest "
            f"{names.shown(ahead[-1].path)}: archived under a clock that was ahead): keep-days keeps them until "
            "the clock passes their names; keep-count would bound them",
        )
    return ()


def _went_back(by: timedelta) -> bool:
    """A root named no later than one before it, as a clock restarting at each boot names them: at the
    same time again (within minutes: how long the boot took), or far back (a build time, a firmware
    reset). Not by a time zone's offset (30 min to 14 h): a dual boot with Windows keeps the hardware
    clock in local time, and each boot after Windows reads it so; keep-days still works there (found
    by a reviewer: the warning at every boot, "set keep-count")."""
    return by >= timedelta(0) and not timedelta(minutes=30) <= by <= timedelta(hours=14)


def plan_cleanup(config: Config, obs: Observation) -> Plan:
    """Delete what the trash holds (on the running system, after boot), with the run's checks on it."""
    _check_state_dir(obs)  # (.rollback is in the top level, which no snapshot gives placeholders)
    _check_holder(TRASH_DIR, obs, "trash directory")
    entries = obs.entries(TRASH_DIR)
    _check_doomed(config, obs, [s for e in entries for s in obs.tree(e.path)])
    deletes = tuple(Delete(e.path, len(obs.tree(e.path))) for e in entries)
    # and the space back before it ends, so that the next boot has nothing to wait for (a boot that
    # finds deleted subvolumes not yet cleaned would wait for them, on the critical path)
    steps: tuple[Step, ...] = (*deletes, Reclaim(timeout_s=3600.0)) if deletes else ()
    return _checked(Plan(steps, warnings=_read_only_under(obs) + _degraded(obs)), obs)


def _ensure_parents(steps: list[Step], obs: Observation, path: str) -> None:
    """Append MakeDir steps for the missing parents of `path`, outermost first, once each."""
    for parent in names.prefixes(path)[:-1]:
        if obs.kind(parent) is Kind.MISSING and MakeDir(parent) not in steps:
            steps.append(MakeDir(parent))


def plan_skip_next(config: Config, obs: Observation) -> Plan:
    """The mark, where the next run removes it: the same checks as that run's (check_mark), so that
    writing it cannot fail halfway, nor leave a mark the next run refuses; then a commit, so that the
    mark outlives a power cut right after the verb said the root is kept (else that boot replaces it).
    Only a root there can be kept: without one (a run cut short after moving it away), a skipped boot
    would have none to mount."""
    _check_placeholders([config.subvolume, SKIP_MARK], obs)
    if obs.kind(config.subvolume) is Kind.MISSING:
        raise Refused(
            f"there is no {names.shown(config.subvolume)} to keep: a run was cut short after moving it away, or "
            "that is not the root's name",
            "rollback status names the old roots in the trash and the archive: to keep one, move it back first "
            f"(one in the trash holding the run lock, as the README shows: flock /run/rollback-locks/<UUID without "
            f"dashes> mv <top>/.rollback/trash/NAME <top>/{config.subvolume}), then skip-next; rollback run "
            f"finishes a run cut short; else check {config.spelt('subvolume')}",
            code="nothing-to-keep",
        )
    check_target(config, obs)
    # a boot keeping it would run read-only, and every run after it refuses it (a snapshot -r restored)
    _check_read_only_target(config, obs, "a root kept read-only boots read-only, and every run after refuses it")
    check_mark(obs)
    steps: list[Step] = [] if obs.kind(STATE_DIR) is Kind.DIRECTORY else [MakeDir(STATE_DIR)]
    root = obs.get(config.subvolume)
    assert root is not None  # a subvolume there: _check_target
    if obs.skip_mark and not mark_applies(config, obs) and _marked_subvolume(obs) is not None:
        raise Refused(  # (a mark for a subvolume no longer there is no boot's: replaced)
            f"a skip-next mark is already set for another root ({_marked(obs)}): one mark at a time",
            "let that root's next boot use it; if no boot replaces it (a root moved aside), remove the mark: "
            "rm <top>/.rollback/skip-next, and run skip-next again",
            code="mark-taken",
        )
    return _checked(Plan((*steps, WriteMark(SKIP_MARK, root.id, root.uuid), Commit())), obs)


def _marked(obs: Observation) -> str:
    """Whom the mark is for, in every message that names it: its id, and its path where it was seen."""
    mark = obs.skip_mark_for
    if not mark:
        return "any root"
    found = _marked_subvolume(obs)
    return f"subvolume id {mark.id}" + (f", {names.shown(found.path)} now" if found else "")


def _marked_subvolume(obs: Observation) -> Subvol | None:
    """The subvolume the mark names, if listed, by id alone (a listed subvolume carries no uuid: an id
    reused after the marked one was deleted would be taken for it, and the mark kept)."""
    mark = obs.skip_mark_for
    if mark is None:
        return None
    return next((s for s in obs.subvols if s.id == mark.id), None)


def mark_applies(config: Config, obs: Observation) -> bool:
    """Whether the skip-next mark is for this run's root: the subvolume skip-next was run for, by id. A
    run for another (the subvolume setting changed since: an edited config, an initramfs not rebuilt, a
    second root on the filesystem) leaves it, else it used up the mark and the next boot replaced the
    root the user meant to keep. A mark without an id (written by hand, or before marks had one) is any
    root's."""
    if not obs.skip_mark:
        return False
    root = obs.get(config.subvolume)
    if root is None:  # nothing to keep: a boot that "kept" it would have no root to mount
        return False
    mark = obs.skip_mark_for
    return mark is None or (root.id == mark.id and mark.uuid in ("", root.uuid))


def orphaned_mark(obs: Observation) -> bool:
    """A mark for a subvolume id no longer listed (the marked root deleted since skip-next): no boot can
    keep it, and left it would be warned of at every boot. The run removes it, if it can safely. (A run
    leaving the delete to the cleanup lists what is inside the root bounded: a marked root moved into
    the root is not seen, and its mark goes; the boot replaces the root it lies in anyway.)"""
    if not (obs.skip_mark and obs.skip_mark_for) or _marked_subvolume(obs) is not None:
        return False
    try:
        check_mark(obs)
    except Refused:  # a mark the run cannot remove safely is left, and said
        return False
    return True


def _other_roots_mark(config: Config, obs: Observation) -> tuple[str, ...]:
    if not obs.skip_mark or mark_applies(config, obs):
        return ()
    if orphaned_mark(obs):
        return (f"the skip-next mark is for {_marked(obs)}, which no longer exists (deleted since skip-next): removed",)
    return (
        f"the skip-next mark is for {_marked(obs)}, not {names.shown(config.subvolume)} as it is now "
        f"({'missing' if obs.get(config.subvolume) is None else 'another subvolume'}): it is left, and "
        "this run goes on as usual; if no boot keeps that root any more (the subvolume setting changed), remove "
        "the mark (rm <top>/.rollback/skip-next) or it is said at every boot, and skip-next is refused meanwhile",
    )


def paths_of_interest(config: Config) -> list[str]:
    """Every path whose kind the plan looks at: the configured ones and their parents."""
    wanted = [config.subvolume, config.blank, SKIP_MARK, *holders(config), *_mount_points(config)]
    return list(dict.fromkeys(prefix for path in wanted for prefix in names.prefixes(path)))


def _mount_points(config: Config, where: str = "") -> list[str]:
    """Where the protected subvolumes are mounted in the root (`/persist`: root/persist), by name; in
    snapshot mode, the blank's as well (what a root holds there from the start)."""
    tops = [where] if where else [config.subvolume, *([config.blank] if config.from_blank else [])]
    return [f"{top}/{name}" for top in tops for name in dict.fromkeys(names.basename(p) for p in config.protect)]


def _written_under_mount_points(config: Config, obs: Observation) -> tuple[str, ...]:
    """A protected subvolume's mount point in the root holding something: written while the subvolume
    was not mounted there (a failed mount, impermanence writing before it): erased with the root, as
    asked, but the operator should know (found by a layouts tester)."""
    # only where a subvolume of that name exists outside the root: the mount point of a name that is not
    # mounted (a `home` kept by impermanence's bind mounts, /home/alice made in the root) is the root's
    outside = {names.basename(s.path) for s in obs.subvols if not names.is_within(s.path, config.subvolume)}
    written = [
        p
        for p in _mount_points(config, config.subvolume)
        if names.basename(p) in outside and obs.kind(p) is Kind.DIRECTORY and p not in obs.empty
    ]
    if config.from_blank:  # what the blank holds there, every root snapshotted from it holds: said at every boot
        held = [p for p in _mount_points(config, config.blank) if obs.kind(p) is Kind.DIRECTORY and p not in obs.empty]
        written = [p for p in written if names.basename(p) not in {names.basename(h) for h in held}]
    return tuple(
        f"{names.shown(path)} is a directory with something in it, not an empty mount point: written while "
        f"{names.shown(names.basename(path))} was not mounted there? It is erased with the root"
        for path in written
    )


class Bounds(NamedTuple):
    """How far a run that leaves the delete to the cleanup lists what it only moves (only_moved)."""

    shallow: Callable[[str], bool]  # inside this subvolume, only subvolumes ...
    named: frozenset[str]  # ... with these names (the protected ones) are listed


def bounds(config: Config) -> Bounds | None:
    """None when the run deletes at boot: then it lists everything it deletes, whole."""
    return None if config.deletes_at_boot else Bounds(partial(only_moved, config), protected_names(config))


def protected_names(config: Config) -> frozenset[str]:
    """A subvolume with one of these names inside what is deleted or moved into the trash is refused."""
    return frozenset(names.basename(p) for p in config.protect)


def only_moved(config: Config, path: str) -> bool:
    """A subvolume a run moves aside (the root into the trash or the archive, an archived root into the
    trash) and leaves the delete of to `rollback cleanup`: inside it, the run lists only what its checks
    refuse there, at any depth: subvolumes with a protected name, mounted ones and the default one (by
    id). So the boot's work barely grows with nested subvolumes and it refuses what a deleting run
    refuses; the run that deletes the tree (the cleanup, or a boot) lists all of it."""
    if config.deletes_at_boot:
        return False
    if path == config.subvolume:
        return True
    archived = path.rpartition("/")[0] == config.archive and names.parse_entry(names.basename(path)) is not None
    return config.keeping and archived


def holders(config: Config) -> list[str]:
    """The directories whose entries (trash entries, archived roots) the plan examines one by one."""
    return [TRASH_DIR] + ([config.archive] if config.keeping else [])


def archives_root(config: Config, obs: Observation) -> bool:
    """Keep the old root, unless it is exactly what a run creates and nothing used it (a re-run,
    or a run interrupted after creating it): archiving that would push real old roots out."""
    root = obs.get(config.subvolume)
    return config.keeping and root is not None and not untouched(root, config, obs)


def untouched(root: Examined, config: Config, obs: Observation) -> bool:
    """Empty, or a snapshot of the blank not written to since the committed snapshot."""
    blank = obs.get(config.blank)
    return root.path in obs.empty or (blank is not None and made_from(root, blank) and not root.changed)


def _archive_name(config: Config, obs: Observation) -> names.EntryName:
    """The name this run gives the old root in the archive (planned and pruned alike): one that no
    entry, nor a file or directory someone left there, has (the same clock at every boot would meet
    it again: an RTC-less board)."""
    taken = {names.basename(s.path) for s in obs.entries(config.archive)}
    return names.fresh_entry(obs.now, taken | obs.names_in.get(config.archive, frozenset()))


def prune_paths(config: Config, obs: Observation, *, make_room: bool = False) -> list[str]:
    """Archived roots retention removes this run (the root archived now counts as the newest, once it is:
    `make_room` prunes before it, and the archiving may then still fail for want of room: counted, it
    emptied an archive of keep-count 1 and left the root unarchived (found by a full-disk tester))."""
    if not config.keeping:
        return []
    existing = obs.entries(config.archive)
    stamps = [_entry_stamp(s) for s in existing]
    if archives_root(config, obs) and not make_room:
        stamps.append(obs.now)
    doomed = names.to_prune(
        stamps,
        obs.now,
        keep_days=config.keep_days,
        keep_count=config.keep_count,
        keep_min=config.keep_min,
        pinned=[pinned(s.path, obs) for s in existing],  # (its stamp still vouches for the roots after it)
    )
    return [existing[i].path for i in doomed if i < len(existing)]


def pinned(path: str, obs: Observation) -> bool:
    """An archived root made immutable (chattr +i, or +a) by hand, or that is (or holds) the default
    subvolume (`btrfs subvolume set-default`: the btrfs way to choose what boots): someone's decision
    to keep it. Never pruned, nor counted by keep-count (a read-only one is pruned: btrfs send needs it
    read-only). Pruning the default one was refused at every boot (found by a coexistence tester)."""
    return path in obs.immutable or holds_default(path, obs)


def holds_default(path: str, obs: Observation) -> bool:
    """Whether the subvolume at `path`, or one nested in it, is the default subvolume."""
    return any(s.id == obs.default_id for s in obs.tree(path))


def _entry_stamp(sub: Examined) -> datetime:
    entry = names.parse_entry(names.basename(sub.path))
    assert entry is not None  # Observation.entries lists only parsed names
    return entry.stamp


# --- the checks -------------------------------------------------------------------------


def check_root_options(config: Config, options: tuple[str, ...]) -> None:
    """The initrd mounts the root (sysroot.mount) from the subvolume this run replaces, by name. By id
    (subvolid=), the renamed old root keeps that id: the boot mounts it from the trash or the archive
    (then, deleted by the next boot, no root at all); from another subvolume, every boot replaces one
    nothing uses and says it is done. NixOS's module asserts this; dracut's path had nothing."""
    by_id = [o for o in options if o.startswith("subvolid=")]
    if by_id:
        raise Refused(
            f"the root is mounted by subvolume id ({by_id[-1]}, in sysroot.mount's options): the old root keeps "
            f"its id when it is moved away, so the boot would mount it, not the new {names.shown(config.subvolume)}",
            f"mount the root by name: rootflags=subvol={config.subvolume} on the kernel command line (or the "
            "initrd's fstab), without subvolid=",
            code="root-options",
        )
    named = [o.partition("=")[2] for o in options if o.startswith("subvol=")]
    if named and _canonical_or_none(named[-1].lstrip("/")) != config.subvolume:
        raise Refused(
            f"the root is mounted from subvol={named[-1]} (sysroot.mount's options), not from "
            f"{names.shown(config.subvolume)}, the subvolume rollback replaces: every boot would replace one "
            "nothing uses",
            "set subvolume in rollback.toml (or rollback.subvolume=) to the root's subvolume, or fix rootflags=",
            code="root-options",
        )


def system_paths(config: Config) -> list[str]:
    """The subvolumes whose signs of an operating system check_bootable compares: the root, and the
    blank its successor is made from."""
    return [config.subvolume, *([config.blank] if config.from_blank else [])]


def check_bootable(config: Config, obs: Observation, elsewhere: str | None, *, by_hand: bool = False) -> None:
    """The root the run makes must boot if the old one does: the old root holds the operating system
    (SYSTEM) or mounts it (its etc/fstab mounting /usr, which the initrd reads from the new root), and an
    empty root (recreate), or a snapshot of a blank with neither, does not come up; deleting the old
    one (the system, or the fstab that finds it) leaves no copy. The installer refuses that setup; a
    config edited since (`mode` dropped, so recreate; another blank) reached the boot unchecked (a
    tester of settings changed between boots). Called where the subvolume may be the root the machine
    boots (in the initrd, where its sysroot.mount says so; `by_hand`, outside it, always); `elsewhere`:
    what starts the system from outside it (sysroot.system_elsewhere), which it does not judge; nor what
    it could not read or tell (a link on the way)."""
    signs = obs.systems.get(config.subvolume)  # (none without a root there)
    if elsewhere is not None or signs is None or not (signs.found or signs.usr_in_fstab):
        return
    if config.from_blank:
        theirs = obs.systems.get(config.blank)
        if theirs is None or theirs.found is None or (theirs.found and theirs.whole) or theirs.usr_in_fstab:
            return
        nested = " (only in a subvolume nested in it, which a snapshot leaves out)" if theirs.found else ""
        made = f"a snapshot of {names.shown(config.blank)}, which does not hold it{nested}"
        fix = (
            f"make {names.shown(config.blank)} hold the system (from this root: btrfs subvolume snapshot -r "
            f"<top>/{config.subvolume} <top>/{config.blank}, the old one renamed or deleted first), or set "
            f"{config.spelt('blank')} to one that does"
        )
    else:
        made = "an empty subvolume (mode recreate)"
        fix = (
            f"set {config.spelt('mode')} to snapshot, with a blank that holds the system (from this root: btrfs "
            f"subvolume snapshot -r <top>/{config.subvolume} <top>/{config.blank})"
        )
    held = (
        f"holds the operating system (/{SYSTEM})" if signs.found else "mounts the operating system's /usr (etc/fstab)"
    )
    raise Refused(
        f"{names.shown(config.subvolume)} {held}, which the initrd finds in the new root after the switch to it, "
        f"and the new root would be {made}: the machine would not come up"
        + ("" if config.keeping else ", and the old root, the system, would be deleted"),
        f"{fix}; or have the initrd mount /usr (mount.usr= on the kernel command line, or the initrd's own "
        "fstab). " + (_BY_HAND if by_hand else _AT_BOOT) + "; nothing was changed",
        code="holds-system",
    )


_AT_BOOT = (
    "The initrd holds a copy of /etc/rollback.toml: dracut --force after editing it. Meanwhile rollback.skip "
    "on the kernel command line boots this root as it is"
)
# (a rescue system's own command line and /usr say nothing of how the machine boots: sysroot.system_elsewhere)
_BY_HAND = (
    "A run by hand: give it the machine's settings (--config <the root>/etc/rollback.toml) and, where the machine "
    "boots with mount.usr= or another /usr, its kernel command line (--kernel-cmdline FILE)"
)


def made_from(root: Examined, blank: Examined) -> bool:
    """`root` is a snapshot of `blank` (its parent uuid is the blank's)."""
    return bool(root.parent_uuid) and root.parent_uuid == blank.uuid


def check_root_default(config: Config, options: tuple[str, ...], obs: Observation) -> None:
    """With neither subvol= nor subvolid=, the kernel mounts the root from the default subvolume: unless
    that is the subvolume this run replaces, every boot replaces one nothing uses (with the top level as
    the default, the root's own directory /root is then the subvolume replaced); and when it is, the old
    root keeps the default's id when it is moved away, and the boot mounts it (a stale generation)."""
    if any(o.startswith(("subvol=", "subvolid=")) for o in options):
        return
    target = obs.get(config.subvolume)
    if target is not None and target.id == obs.default_id:
        what = "the old root keeps its id when it is moved away, so the boot would mount it"
        fix = f"btrfs subvolume set-default 5 <top>, and rootflags=subvol={config.subvolume}"
    else:
        default = next((s for s in obs.subvols if s.id == obs.default_id), None)
        shown = "the top level" if default is None else f"{names.shown(default.path)} (id {obs.default_id})"
        what = f"that is {shown}, not {names.shown(config.subvolume)}: every boot would replace one nothing uses"
        fix = f"rootflags=subvol={config.subvolume}"
    raise Refused(
        "the root is mounted with neither subvol= nor subvolid= (sysroot.mount's options), so from the "
        f"filesystem's default subvolume: {what}",
        f"mount the root by name: {fix} on the kernel command line (or the initrd's fstab)",
        code="root-options",
    )


def _canonical_or_none(value: str) -> str | None:
    try:
        return names.canonical(value)
    except ValueError:
        return None


def check(config: Config, obs: Observation) -> None:
    """Raise Refused unless every safety check passes; never returns a partial answer."""
    target = config.subvolume
    _check_placeholders([*_used_paths(config), SKIP_MARK], obs)
    _check_state_dir(obs)
    _check_ways(config, obs)
    check_target(config, obs)
    _check_pinned(config, obs)
    if config.from_blank:
        check_blank(config, obs)
    _check_holder(TRASH_DIR, obs, "trash directory")
    if config.keeping:
        _check_holder(config.archive, obs, "archive directory", config.spelt("archive"))
    doomed = obs.tree(target) + [s for p in prune_paths(config, obs) for s in obs.tree(p)]
    doomed += [s for e in obs.entries(TRASH_DIR) for s in obs.tree(e.path)]
    _check_doomed(config, obs, doomed)


def _used_paths(config: Config) -> list[str]:
    """The paths a run renames, creates or snapshots from: the target, the trash, and the blank and the
    archive when this configuration uses them."""
    return [
        config.subvolume,
        TRASH_DIR,
        *([config.blank] if config.from_blank else []),
        *([config.archive] if config.keeping else []),
    ]


def _check_placeholders(paths: list[str], obs: Observation) -> None:
    """A path the verb uses, or a directory on its way, that is a placeholder (a subvolume's stand-in
    in a snapshot: `persist` restored from one that held `persist/old_roots`): nothing can be made in
    it, its flags cannot be read. Every verb met it as an internal error, at every boot."""
    for path in paths:
        for prefix in names.prefixes(path):
            if obs.kind(prefix) is Kind.PLACEHOLDER:
                raise Refused(
                    f"{names.shown(prefix)} is the empty stand-in btrfs shows for a subvolume a snapshot did "
                    f"not include (a subvolume restored from a snapshot?), not a directory"
                    + ("" if prefix == path else f", on the way to {names.shown(path)}"),
                    f"rmdir <top>/{prefix} (it holds nothing; mkdir there if a directory is meant), or put the "
                    "subvolume back there",
                    code="placeholder",
                )


def _check_ways(config: Config, obs: Observation) -> None:
    """Every directory on the way to a path the run uses is a real one: a symlink there would send a
    rename or a mkdir somewhere else (and a file there makes every boot fail)."""
    for path in _used_paths(config):
        for parent in names.prefixes(path)[:-1]:
            if obs.kind(parent) is Kind.OTHER:
                raise Refused(
                    f"{names.shown(parent)} on the way to {names.shown(path)} is not a directory"
                    " (a symbolic link or a file)",
                    f"make {names.shown(parent)} a plain directory or a subvolume, or choose another name",
                    code="not-directory",
                )


def check_target(config: Config, obs: Observation) -> None:
    target = config.subvolume
    kind = obs.kind(target)
    if kind is Kind.DIRECTORY:
        raise Refused(
            f"{names.shown(target)} is a plain directory, not a subvolume",
            f"rollback only replaces subvolumes; check {config.spelt('subvolume')}",
            code="not-subvolume",
        )
    if kind is Kind.OTHER:
        raise Refused(
            f"{names.shown(target)} is neither a subvolume nor a directory",
            f"check {config.spelt('subvolume')}",
            code="not-subvolume",
        )


def _check_read_only_target(config: Config, obs: Observation, why: str) -> None:
    root = obs.get(config.subvolume)
    if root and root.read_only:
        raise Refused(
            f"the subvolume {names.shown(config.subvolume)} is read-only",
            f"{why}: btrfs property set -ts <top>/{config.subvolume} ro false (a received one: -f)",
            code="read-only-target",
        )


def _check_pinned(config: Config, obs: Observation) -> None:
    """What the run renames, or renames or creates in, must be movable: a read-only or immutable root
    is someone's decision to keep it, and a step failing on it would fail at every boot."""
    _check_read_only_target(config, obs, "if it is meant to be replaced")
    made = [config.subvolume, TRASH_DIR, *([config.archive] if config.keeping else [])]
    used = [*made, STATE_DIR, *(_made_in(path, obs) for path in made)]
    for path in dict.fromkeys(used):
        _check_changeable(path, obs)


def _made_in(path: str, obs: Observation) -> str:
    """The existing directory the run renames or creates `path` in (with its missing parents, if any)."""
    parent = _parent(path)
    while parent and obs.kind(parent) is Kind.MISSING:
        parent = _parent(parent)
    return parent


def _check_changeable(path: str, obs: Observation) -> None:
    if path in obs.immutable:
        raise Refused(
            f"{names.shown(path) if path else 'the top level'} is immutable or append-only (chattr +i/+a): "
            "the run could not change it",
            f"if that is not meant: chattr -i -a <top>/{path}",
            code="immutable",
        )


def changed_dirs(step: Step) -> tuple[str, ...]:
    """The directories whose entries `step` adds or removes ("" is the top level's)."""
    match step:
        case MakeDir(path=path) | Create(path=path) | Snapshot(dest=path) | Delete(path=path):
            return (_parent(path),)
        case WriteMark(path=path) | RemoveMark(path=path):
            return (_parent(path),)
        case Rename(source=source, dest=dest):
            return (_parent(source), _parent(dest))
        case Commit() | Reclaim() | Unlock():  # Unlock clears the subvolume's own flags, as it may
            return ()
        case _:
            assert_never(step)


def moved_trees(step: Step) -> tuple[str, ...]:
    """The paths whose whole tree `step` moves away or deletes."""
    match step:
        case Rename(source=path) | Delete(path=path):
            return (path,)
        case MakeDir() | Create() | Snapshot() | WriteMark() | RemoveMark() | Commit() | Reclaim() | Unlock():
            return ()
        case _:
            assert_never(step)


def _checked(plan: Plan, obs: Observation) -> Plan:
    """`plan`, once every step of it can be carried out (_writable) and nothing is mounted on a path
    it moves away or deletes: renaming a mount point fails (EBUSY, at every run), deleting the
    subvolume below a mount detaches it from whoever uses it."""
    for tree in dict.fromkeys(t for step in plan.steps for t in moved_trees(step)):
        for path, where in obs.mounted_paths.items():
            if names.is_within(path, tree):
                raise Refused(
                    f"{names.shown(path)} has a filesystem mounted on it ({where}), and the run "
                    f"{'deletes' if tree.startswith(TRASH_DIR + '/') else 'moves away'} {names.shown(tree)}",
                    f"unmount {where} first",
                    code="mounted",
                )
    return _writable(plan, obs)


def _writable(plan: Plan, obs: Observation) -> Plan:
    """`plan`, once every directory it changes can be changed: not +i/+a, and not in a read-only
    subvolume (btrfs answers EROFS: a step failing there would fail at every boot, or every cleanup
    after its first deletes)."""
    for directory in dict.fromkeys(d for step in plan.steps for d in changed_dirs(step)):
        _check_changeable(directory, obs)
        holder = _holding_subvolume(directory, obs)
        found = obs.get(holder) if holder else None
        if found.read_only if found else obs.top_read_only:
            where = f"the read-only subvolume {names.shown(holder)}" if holder else "the read-only top level"
            raise Refused(
                f"{names.shown(directory) if directory else 'the top level'} lies in {where}: "
                "the run could not change it",
                f"if that is not meant: btrfs property set -ts <top>/{holder} ro false",
                code="read-only-subvolume",
            )
    return plan


def _holding_subvolume(directory: str, obs: Observation) -> str:
    """The subvolume `directory` (or, missing, the nearest existing directory above it) belongs to: its
    nearest enclosing subvolume, itself included; "" for the top level."""
    for path in reversed(names.prefixes(directory) if directory else []):
        if obs.kind(path) is Kind.SUBVOLUME:
            return path
    return ""


def check_mark(obs: Observation) -> None:
    """A run that finds the skip-next mark only removes it: that must not fail at every boot (the mark
    a directory, it or `.rollback` immutable), nor reach through a `.rollback` that is a symlink."""
    _check_state_dir(obs)
    _check_changeable(STATE_DIR, obs)
    _check_changeable(SKIP_MARK, obs)
    if obs.kind(SKIP_MARK) in (Kind.DIRECTORY, Kind.SUBVOLUME) or not obs.skip_mark_regular:
        what = "a directory" if obs.skip_mark_regular else "not a regular file (a symbolic link?)"
        raise Refused(
            f"the skip-next mark {SKIP_MARK} is {what}, not the file rollback skip-next writes",
            "move it away (the mark is a file: rollback skip-next writes it, the next run removes it)",
            code="state-dir",
        )


def _check_mark_is_for_a_boot(config: Config, obs: Observation) -> None:
    """A run with the root (or a subvolume in it) mounted is not the boot the mark keeps the root for
    (a run by hand on the running system, refused as `mounted` without the mark): the mark stays, else
    that run would use it up and the next boot replace the root the user meant to keep."""
    for sub in obs.tree(config.subvolume):
        _refuse_mounted(sub, obs, ": this is not the boot the skip-next mark keeps it for, and the mark stays set")


def _refuse_mounted(sub: Subvol, obs: Observation, why: str = "") -> None:
    if sub.id in obs.mounted:
        where = obs.mounted[sub.id]
        running = "run from the initrd or a rescue system, not on the running root"
        raise Refused(
            f"{names.shown(sub.path)} is mounted at {where}{why}",
            running
            if where == "/"
            else f"unmount {where}" + ("" if sub.path.startswith(TRASH_DIR + "/") else f"; or {running}"),
            code="mounted",
        )


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _check_state_dir(obs: Observation) -> None:
    if obs.kind(STATE_DIR) not in (Kind.MISSING, Kind.DIRECTORY):
        raise Refused(
            f"{STATE_DIR} exists but is not a plain directory",
            f"move it out of the way; rollback keeps its trash and marks in {STATE_DIR}/",
            code="state-dir",
        )


def _making_the_blank(config: Config, obs: Observation) -> str:
    """The no-blank hint's way to make one: from an empty root, or where the root holds the operating
    system, from a root holding it, as every new root must (an empty blank is refused holds-system next
    where the initrd boots it: a tester)."""
    signs = obs.systems.get(config.subvolume)
    if signs is not None and (signs.found or signs.usr_in_fstab):
        return (
            f"create it once, holding the operating system as {names.shown(config.subvolume)} does (a new root "
            f"is a copy of it): btrfs subvolume snapshot -r <top>/<a root as new ones should be> <top>/{config.blank}"
        )
    return f"create it once: btrfs subvolume snapshot -r <top>/<empty root> <top>/{config.blank}"


def check_blank(config: Config, obs: Observation) -> None:
    blank = config.blank
    kind = obs.kind(blank)
    if kind is not Kind.SUBVOLUME:  # a link to a snapshot is not followed: a run never follows one
        what = {Kind.MISSING: "does not exist", Kind.DIRECTORY: "is a plain directory, not a snapshot"}
        other = "is not a subvolume (a symbolic link or a file)"
        raise Refused(
            f"the blank snapshot {names.shown(blank)} {what.get(kind, other)}",
            (
                ""
                if kind is Kind.MISSING
                else f"move {names.shown(blank)} away, or name the snapshot itself ({config.spelt('blank')}); "
            )
            + _making_the_blank(config, obs),
            code="no-blank",
        )
    found = obs.get(blank)
    assert found is not None  # a subvolume the plan looks at is examined
    if not found.read_only:
        # (a writable subvolume may be no blank at all, `home` named by mistake: made read-only, it would be
        # the user's home; found by a settings tester)
        raise Refused(
            f"the blank snapshot {names.shown(blank)} is not read-only",
            f"if it is the blank, empty as a new root should be: btrfs property set -ts <top>/{blank} ro true; "
            f"else check {config.spelt('blank')}",
            code="blank-writable",
        )
    if blank in obs.immutable:  # a snapshot copies its top directory's flags: every root would have them
        raise Refused(
            f"the blank snapshot {names.shown(blank)} is immutable or append-only (chattr +i/+a): so would be "
            "the top directory of every root made from it (nothing created in /, and that root refused "
            "as immutable at the next boot)",
            f"btrfs property set -ts <top>/{blank} ro false; chattr -i -a <top>/{blank}; "
            f"btrfs property set -ts <top>/{blank} ro true",
            code="blank-immutable",
        )
    if found.quota and found.quota.referenced_over:  # btrfs copies the blank's limit to each snapshot's qgroup
        raise Refused(
            f"the blank snapshot {names.shown(blank)} references as much as its qgroup's limit allows, or more: "
            "btrfs gives every snapshot of it the same limit, so every root made from it would start full, "
            "nothing writable in it (a limit set on the root and copied with the blank, say)",
            f"btrfs qgroup limit none 0/{found.id} <top> (or raise it); nothing was changed",
            code="blank-over-quota",
        )


def _check_holder(directory: str, obs: Observation, what: str, setting: str = "") -> None:
    """A trash/archive directory may hold only entries named by rollback (and what they contain)."""
    kind = obs.kind(directory)
    if kind is Kind.OTHER:
        raise Refused(
            f"the {what} {names.shown(directory)} is not a directory",
            f"move it away or choose another {what} ({setting})"
            if directory != TRASH_DIR
            else "move it away: rollback keeps its trash there",
            code="bad-holder",
        )
    ours = {s.path for s in obs.entries(directory)}
    start = len(directory) + 1  # each one's entry: the directory and the first name below it
    foreign = [s.path for s in obs.below(directory) if f"{directory}/{s.path[start:].partition('/')[0]}" not in ours]
    if foreign:
        raise Refused(
            f"the {what} {names.shown(directory)} holds subvolumes rollback did not put there: "
            f"{', '.join(names.shown(f) for f in foreign[:3])}{' ...' if len(foreign) > 3 else ''}",
            f"move them out of {names.shown(directory)} (what lies there is rollback's to delete)"
            + (f", or choose another {what} ({setting})" if directory != TRASH_DIR else ""),
            code="foreign-subvolume",
        )


def _move_out_hint(path: str, obs: Observation) -> str:
    """Where to move a protected subvolume out to: a name not taken at the top level (mv onto a directory
    that is there, its own name's subvolume say, puts it inside that, and the run passes with it nested)."""
    name = names.basename(path)
    taken = f" ({names.shown(name)} is taken)" if any(s.path == name for s in obs.subvols) else ""
    # in the trash: moved holding the run lock, or a cleanup deleting that entry goes on inside it (README)
    lock = "flock /run/rollback-locks/<fsid> " if path.startswith(TRASH_DIR + "/") else ""
    return (
        f"move it out to a name not taken at the top level{taken}: {lock}mv <top>/{path} <top>/NAME; "
        "mv onto a directory that is there puts it inside it"
    )


def _check_doomed(config: Config, obs: Observation, doomed: list[Subvol]) -> None:
    protected = protected_names(config)
    for sub in doomed:
        if names.basename(sub.path) in protected:  # the target itself cannot be protected (settings)
            raise Refused(
                f"protected subvolume {names.shown(sub.path)} lies inside what would be deleted",
                _move_out_hint(sub.path, obs),
                code="protected-inside",
            )
        if sub.id == obs.default_id:
            raise Refused(
                f"{names.shown(sub.path)} is the default subvolume (id {sub.id})",
                "btrfs subvolume set-default 5 <top>, and boot with rootflags=subvol=...",
                code="default-subvolume",
            )
        _refuse_mounted(sub, obs)
        if sub.id in obs.swapfiles:  # (the kernel refuses its delete, EPERM: after the root was replaced)
            raise Refused(
                f"{names.shown(sub.path)} holds an active swap file ({obs.swapfiles[sub.id]})",
                f"swapoff {obs.swapfiles[sub.id]}; keep swap in a subvolume of its own, outside what rollback replaces",
                code="swap-active",
            )
