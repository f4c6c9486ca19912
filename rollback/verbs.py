"""The verbs: each resolves what it needs, asks the pure core, and has the effects layer act."""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from itertools import takewhile
from pathlib import Path
from typing import Any, NoReturn, TypedDict

from rollback import devspec, names, report
from rollback.errors import Exit, OutputFailed, Refused, StepFailed
from rollback.log import emit
from rollback.model import TRASH_DIR, Kind, Mounts, Observation
from rollback.plan import (
    Bounds,
    Commit,
    Create,
    Delete,
    MakeDir,
    Plan,
    Reclaim,
    Rename,
    Snapshot,
    Step,
    Unlock,
    bounds,
    check_blank,
    check_bootable,
    check_root_default,
    check_target,
    holders,
    mark_applies,
    paths_of_interest,
    plan_cleanup,
    plan_run,
    plan_skip_next,
    prune_paths,
    system_paths,
)
from rollback.settings import Config, as_dict, describe

FAIL_AT_ENV = "ROLLBACK_TEST_FAIL_AT"  # test hook: step N fails with EIO, as a dying disk would ...
FAIL_ERRNO_ENV = "ROLLBACK_TEST_FAIL_ERRNO"  # ... or with this errno (e.g. 28, ENOSPC)
# test hook: the kernel's own command line for the hibernation check (the tests' /dev/null: a
# developer's host resume= must not reach their runs, as --kernel-cmdline /dev/null keeps rollback.*)
PROC_CMDLINE_ENV = "ROLLBACK_TEST_PROC_CMDLINE"
CRASH_AFTER_ENV = "ROLLBACK_TEST_CRASH_AFTER"  # test hook: kill ourselves after step N ...
CRASH_SIGNAL_ENV = "ROLLBACK_TEST_CRASH_SIGNAL"  # ... with this signal (default KILL; TERM as systemd stops)


@contextmanager
def _observed(
    config: Config,
    *,
    lock: bool,
    lock_node: bool = True,
    bounded: bool = False,
    wait: bool = False,
    cmdline: str | None = None,
) -> Iterator[tuple[Path, Observation, Callable[[], None]]]:
    """Probe, lock the filesystem (when about to write; `wait`: for as long as another holds it, else
    refused), mount its top level privately, read-only and without atime updates (a run that refuses
    must not have written anything), and observe it; `bounded`: what a run only moves is listed as
    plan.bounds() says. Also yields what releases the lock early. With `cmdline` (the settings' kernel
    command line), a filesystem mounted nowhere yet is not mounted while a hibernation image waits:
    even a read-only mount replays its log (a run checks it first, wherever the filesystem is)."""
    from rollback.effects import device, mount

    dev = config.require_device()
    fsid = device.probe(dev)
    limits = bounds(config) if bounded else None
    waiting = partial(emit, "warning", device=config.device) if wait else None
    locking: AbstractContextManager[Callable[[], None]] = (
        device.locked(dev, fsid, node=lock_node, waiting=waiting) if lock else nullcontext(lambda: None)
    )
    with locking as unlock:
        members = device.refuse_copies(dev, fsid)  # (after a wait for the lock: what is true now)
        device.refuse_unseen(dev, fsid, writing=lock)
        if not device.mounted_anywhere(fsid):
            if cmdline is not None:
                _check_hibernation(config, (cmdline, _kernels_cmdline()))
            for stale in device.behind(members):
                emit("warning", stale, hint=_SCRUB, device=config.device)
        with mount.top_level(dev) as top:
            mounted = device.mounts(str(top), fsid)
            mount.settle(top)
            found = _observe(config, top, mounted, datetime.now(UTC), limits)
            yield top, found, unlock


_SCRUB = (
    "once mounted: btrfs scrub start (it rewrites the stale copies); until then, losing another member loses what "
    "it missed"
)


def _observe(config: Config, top: Path, mounted: Mounts, now: datetime, limits: Bounds | None = None) -> Observation:
    """Observe the mounted top level; what reading it answers that would repeat at every boot (a damaged
    tree) is a refusal. Every observation goes through here (a run that had to make room observes again,
    unbounded)."""
    from rollback.effects import btrfs, mount

    for attempt in range(1, _READS + 1):
        try:
            return btrfs.observe(
                top, paths_of_interest(config), holders(config), mounted, now, limits, system_paths(config)
            )
        except OSError as error:
            # something gone while it was read (the trash rmdir'd, quotas disabled by hand): read again,
            # not exit 1 "internal error" (found by a concurrency tester)
            if error.errno == errno.ENOENT and attempt < _READS:
                continue
            if error.errno not in _DAMAGED:
                raise
            if mounted.read_only_under:  # the tree as an aborted transaction left it in memory
                raise Refused(
                    f"cannot read the filesystem on {config.device}: {error.strerror}; mounted at "
                    f"{mounted.read_only_under}, it is read-write over a read-only superblock: the kernel "
                    "forced it so after an error",
                    _UNMOUNT_IT + "; nothing was changed",
                    code="read-only",
                ) from None
            elsewhere = next(iter(mounted.subvolumes.values()), None)
            if elsewhere and mount.superblock_read_only(top):  # (every mount of it read-only now)
                raise Refused(
                    f"cannot read the filesystem on {config.device}: {error.strerror}; it is mounted at "
                    f"{elsewhere}: if the kernel forced it read-only after an error there (dmesg), reads fail "
                    "until it is unmounted everywhere",
                    f"unmount it everywhere and run again; if it still cannot be read: {_WHICH_ERROR}, "
                    "btrfs check --readonly on the device; nothing was changed",
                    code="unreadable",
                ) from None
            raise Refused(
                f"cannot read the filesystem on {config.device}: {error.strerror}"
                + (f" (at {os.fsdecode(error.filename)!r})" if error.filename else ""),
                "the disk or the filesystem is damaged (nothing was changed): dmesg; btrfs check --readonly",
                code="unreadable",
            ) from None
    raise AssertionError("unreachable: the last read returns or raises")


# the way out of a filesystem forced read-only after an error (a failing disk, a damaged tree)
_WHICH_ERROR = "dmesg says which error"
_UNMOUNT_IT = (
    f"{_WHICH_ERROR}; it stays so until unmounted everywhere (the running system's root: reboot), then btrfs "
    "check --readonly on the device"
)
# what reading a damaged disk or tree answers: the same at every boot, so a refusal (nothing changed)
_DAMAGED = {errno.EIO, errno.EUCLEAN}
_READS = 3  # an observation read again at most this often where something vanished while it was read


def _execute(
    plan: Plan,
    top: Path,
    fields: dict[str, Any],
    unlock: Callable[[], None] | None = None,
    recheck: Callable[[Step], None] | None = None,
    in_use: Callable[[], Mapping[int, str]] | None = None,
) -> Plan:
    """Carry out the plan's steps in order: the first write to the device happens here. With `unlock`,
    the lock is released once only waits for the kernel's cleaner are left (they change nothing: the
    cleanup's wait of up to an hour would refuse skip-next and a manual run as `locked` meanwhile).
    `recheck` is called before each step, and may stop the run (StepFailed). The plan that ran: its
    steps carried out, and the archived roots its pruning kept (_pruning_skipped)."""
    from rollback.effects import btrfs, mount

    _before_writing(top)
    mount.make_writable(top)
    crash_after = int(os.environ.get(CRASH_AFTER_ENV, "0") or 0)
    fail_at, _, later = os.environ.get(FAIL_AT_ENV, "").partition(",")  # "N,M": step N, then M of the next plan
    ran: list[Step] = []
    kept: list[str] = []
    left = 0  # trash entries left where they are (_left_in_trash)
    for number, step in enumerate(plan.steps, 1):
        if plan.pruning.get(number) in kept:
            continue
        began = time.monotonic()
        try:
            if str(number) == fail_at:
                _inject_failure(later)
            if recheck and _changed_since(plan, number, recheck, fields):
                kept.append(plan.pruning[number])
                continue
            btrfs.execute(step, top, in_use, partial(_waiting, f"step {number}/{len(plan.steps)}", fields))
        except OSError as error:
            if mount.read_only_under(top):  # nothing more can be written, nor put back
                raise _aborted(number, plan, error) from error
            if _left_in_trash(plan, number, error, ran, fields):
                _unlock_for_waits(plan, number, unlock)  # (as after a step done)
                left += 1
                continue
            if skipped := _pruning_skipped(plan, number, error, ran, top, fields):
                kept += skipped
                continue
            undone, restored = _put_back(plan, number, top, fields)
            freeing = _still_freeing(plan, number, error, top)
            whole = isinstance(step, Delete) and error.errno in _NO_ROOM and btrfs.whole(top, step)
            raise _failure(
                number, plan, error, undone, restored=restored, still_freeing=freeing, whole=whole, left=left
            ) from error
        emit(
            "step",
            step.describe(),
            step=number,
            steps=len(plan.steps),
            duration_ms=round((time.monotonic() - began) * 1000, 1),
            **fields,
        )
        _unlock_for_waits(plan, number, unlock)
        if number == crash_after:
            _crash()
        ran.append(step)
    unpruned = tuple(p for p in kept if not any(isinstance(s, Rename) and s.source == p for s in ran))
    return replace(plan, steps=tuple(ran), unpruned=unpruned)


def _changed_since(plan: Plan, number: int, recheck: Callable[[Step], None], fields: dict[str, Any]) -> bool:
    """Check step `number` again (_as_checked): changed since the checks stops the run, but where it
    deletes a pruned root, that root is left in the trash with a warning, the run going on as for any
    failure pruning one (a reviewer). True: left so."""
    try:
        recheck(plan.steps[number - 1])
    except StepFailed as changed:
        if number not in plan.pruning:
            raise
        emit(
            "warning",
            f"step {number}/{len(plan.steps)}: {changed.reason}; the run goes on",
            hint=changed.hint,
            **fields,
        )
        return True
    return False


def _waiting(which: str, fields: dict[str, Any], text: str) -> None:
    """A wait of a step that has gone on for long (btrfs.execute's `waiting`), said as a warning."""
    emit("warning", f"{which}: {text}", **fields)


def _unlock_for_waits(plan: Plan, number: int, unlock: Callable[[], None] | None) -> None:
    """After step `number`, release the lock when only waits for the kernel's cleaner are left."""
    if unlock and all(isinstance(rest, Reclaim) for rest in plan.steps[number:]):
        unlock()


def _inject_failure(later: str) -> NoReturn:
    """The fault tests' hook ($ROLLBACK_TEST_FAIL_AT): this step fails with $ROLLBACK_TEST_FAIL_ERRNO
    (EIO); `later`, the step of the next plan to fail, if any."""
    os.environ[FAIL_AT_ENV] = later  # once: a plan made after this failure runs on
    code = int(os.environ.get(FAIL_ERRNO_ENV, "0") or 0) or errno.EIO
    raise OSError(code, f"{os.strerror(code)} (injected by {FAIL_AT_ENV})")


def _crash() -> None:
    """The crash tests' hook ($ROLLBACK_TEST_CRASH_AFTER): the signal $ROLLBACK_TEST_CRASH_SIGNAL
    (KILL) to this process, after the step."""
    import signal

    sent = signal.Signals["SIG" + os.environ.get(CRASH_SIGNAL_ENV, "KILL")]
    if sent is signal.SIGINT:  # a Ctrl-C at a terminal, also where a shell started the tests with
        signal.signal(sent, signal.default_int_handler)  # SIGINT ignored (a background job: CI)
    os.kill(os.getpid(), sent)


def _left_in_trash(plan: Plan, number: int, error: OSError, ran: list[Step], fields: dict[str, Any]) -> bool:
    """A delete of what the trash holds that cannot read part of it (a damaged block in a nested
    subvolume, which no observation reads before the delete does), or, once the new root is made, finds
    no room to delete this run's old root: left there, said in a warning, and the run goes on. Failing
    there, every boot failed at that step and no root was replaced again; or a boot whose new root was
    made failed, and stopped under stop-boot (a reviewer). What is left is the trash's, which the next
    run or rollback cleanup tries first again. (A pruned root's: _pruning_skipped.) False: no such step."""
    step = plan.steps[number - 1]
    if not (isinstance(step, Delete) and step.path.startswith(TRASH_DIR + "/")):
        return False
    made = any(isinstance(s, Create | Snapshot) for s in ran)
    if error.errno in _DAMAGED:
        why = f"part of it cannot be read ({error.strerror}: the disk or the filesystem is damaged)"
        hint = "dmesg; btrfs check --readonly on the device; the next run and rollback cleanup try it again"
    elif (lack := _NO_ROOM.get(error.errno or 0)) and made and number not in plan.pruning:
        why = f"no room to delete it ({lack}; the new root is made)"
        free = _QUOTA_FIX if error.errno == errno.EDQUOT else "free space (btrfs filesystem usage)"
        hint = f"{free}; the next run or rollback cleanup deletes it first"
    else:
        return False
    goes = "the cleanup" if fields.get("mode") == "cleanup" else "the run"
    emit(
        "warning",
        f"step {number}/{len(plan.steps)}: {step.describe()}: {why}: left in the trash; {goes} goes on",
        hint=hint,
        **fields,
    )
    return True


def _pruning_skipped(
    plan: Plan, number: int, error: OSError, ran: list[Step], top: Path, fields: dict[str, Any]
) -> list[str]:
    """No room to prune an archived root, once the new root is made: the subvolume holding the archive
    at its qgroup limit refuses every rename and delete in it (btrfs charges them to it), at every boot.
    Failing the run there made each boot exit 1 after making its root, the archive one root longer each
    time. The root is kept (more kept than asked, never less), its read-only property put back if this
    run cleared it; or, moved to the trash already, left there for the next run. Said in a warning.
    No room for the trash's directory keeps every root still to prune (each move needs it; it was a
    failure midway, exit 1, found by a full-disk tester). So for any other error of a step pruning a
    root: a btrfs send of a read-only one (btrbk's) makes the kernel refuse its unlock, one deleted, made
    read-only or its archive renamed by hand meanwhile fails its move; each was exit 1 after the new
    root was made, the rest of the pruning not done (a concurrency tester). The roots kept; [] when it
    is no such step."""
    from rollback.effects import btrfs

    pruned = plan.pruning.get(number)
    if pruned is None:
        return []
    step = plan.steps[number - 1]
    lack, hint = _why_not_pruned(step, error)
    if isinstance(step, MakeDir):
        left = list(dict.fromkeys(p for n, p in plan.pruning.items() if n >= number))
        emit(
            "warning",
            f"step {number}/{len(plan.steps)}: {step.describe()}: {lack}: the archived roots retention prunes are "
            f"kept, not pruned (the new root is made): {', '.join(map(names.shown, left))}; the next run prunes "
            "them",
            hint=hint,
            **fields,
        )
        return left
    moved = next((s for s in ran if isinstance(s, Rename) and s.source == pruned), None)
    if moved is not None and error.errno in (errno.ESTALE, errno.EBUSY):  # (the walk: changed under it)
        outcome = f"it is left in the trash ({names.shown(moved.dest)}): {_MOVE_OUT}"
    elif moved is not None:  # its delete: in the trash, which the next run (or rollback cleanup) empties first
        outcome = f"it is left in the trash ({names.shown(moved.dest)}): the next run or rollback cleanup deletes it"
    elif not os.path.lexists(top / pruned):  # (deleted or moved by hand meanwhile: nothing kept; a reviewer)
        outcome = f"the archived root {names.shown(pruned)} is gone from there: not pruned by this run"
    else:
        outcome = f"the archived root {names.shown(pruned)} is kept, not pruned (the new root is made)"
        # this run's unlock done, or failing halfway (the flag cleared, the immutable one not)
        if isinstance(step, Unlock) or any(isinstance(s, Unlock) and s.path == pruned for s in ran):
            try:
                outcome += ", read-only again" if btrfs.set_read_only(top / pruned) else ""
            except OSError as again:
                outcome += f"; its read-only property could not be put back ({again.strerror})"
        outcome += "; the next run prunes it"
    emit(
        "warning",
        f"step {number}/{len(plan.steps)}: {step.describe()}: {lack}: {outcome}",
        hint=hint,
        **fields,
    )
    return [pruned]


_MOVE_OUT = (
    "the next run deletes all it holds, at boot without checking it again: unmount what is mounted from it, "
    "and move what belongs elsewhere out of it (a read-only subvolume: btrfs property set -ts PATH ro false first) "
    "before then (rollback status shows what is mounted)"
)


def _why_not_pruned(step: Step, error: OSError) -> tuple[str, str]:
    """What a warning says of a step pruning an archived root that failed with `error`, and its hint."""
    if lack := _NO_ROOM.get(error.errno or 0):
        return lack, _QUOTA_FIX if error.errno == errno.EDQUOT else "free space (btrfs filesystem usage)"
    if error.errno == errno.EPERM and isinstance(step, Unlock):
        why = "the kernel refuses to make it writable: a btrfs send of it is under way (btrbk, snapper's backups)"
        return f"{error.strerror} ({why})", "nothing to do: the next run prunes it, once the send is done"
    if error.errno == errno.ENOENT:
        return f"{error.strerror} (moved or deleted meanwhile)", "rollback status shows the archive as it is now"
    return str(error), "rollback status shows the archive as it is now; dmesg if it fails again"


def _put_back(plan: Plan, failed: int, top: Path, fields: dict[str, Any]) -> tuple[str, bool]:
    """Move the old root back if making the new one failed (plan.put_back): what happened, for the
    message, and whether the old root is back."""
    from rollback.effects import btrfs
    from rollback.plan import put_back

    undo = put_back(plan.steps, failed)
    if undo is None:
        return "", False
    try:
        btrfs.execute(undo, top)
        btrfs.execute(Commit(), top)  # on disk before the boot goes on
    except OSError as error:
        return f"; moving the old root back failed too ({error}): it is at {undo.source}", False
    emit("step", f"put back: {undo.describe()}", step=failed, steps=len(plan.steps), **fields)
    return f"; the old root was moved back ({undo.describe()})", True


def _still_freeing(plan: Plan, number: int, error: OSError, top: Path) -> bool:
    """No room while deleted subvolumes are still pending: after a wait for the kernel's cleaner that
    ended short, or after deletes that did not wait for it (what earlier runs left)."""
    from rollback.effects import btrfs

    ran = _ran_before(plan, number)
    # (a run's: it makes a root, which the space freed is for; the cleanup's own deletes are its job)
    deleted = Delete in ran and _makes_a_root(plan)
    return error.errno in _NO_ROOM and (Reclaim in ran or deleted) and btrfs.cleaner_busy(top)


def _ran_before(plan: Plan, number: int) -> set[type]:
    """The kinds of step the plan ran before step `number` (1-based)."""
    return {type(step) for step in plan.steps[: number - 1]}


def _makes_a_root(plan: Plan) -> bool:
    return any(isinstance(step, Create | Snapshot) for step in plan.steps)


# (the old root is deleted only once the new one exists, but where its own files filled the disk and
# nothing may share them (_root_first): deleted first, it left a boot with no root where it freed too little)
_NOTHING_OURS = "; nothing of rollback's can be deleted first (the old root goes once the new one is made)"
_OLD_ROOT_IN_USE = "; the old root stays in use until then (if it filled the disk, clean it up there)"


def _holds_an_old_root(plan: Plan) -> bool:
    """Whether the run's plan has an old root to move away or delete (not a first run, nor one after a
    run that deleted it where it was and was cut short)."""
    made = {s.path if isinstance(s, Create) else s.dest for s in plan.steps if isinstance(s, Create | Snapshot)}
    return any(
        (isinstance(s, Rename) and s.source in made) or (isinstance(s, Delete) and s.path in made) for s in plan.steps
    )


# the top level's own qgroup over its limit refuses a change of that limit (EDQUOT) too
_QUOTA_FIX = "raise or remove the limit (btrfs qgroup show -re <top>; if the top level's own is over it, "
_QUOTA_FIX += "even that is refused: btrfs quota disable <top>)"
_NO_ROOM = {  # a step's errno that means no room for it, and how the message says so
    errno.ENOSPC: "no space left on the filesystem",
    errno.EDQUOT: "a quota group's limit is reached (disk quota exceeded)",
}


def _failure(
    number: int,
    plan: Plan,
    error: OSError,
    undone: str,
    *,
    restored: bool = False,
    still_freeing: bool = False,
    whole: bool = False,
    left: int = 0,
) -> Refused | StepFailed:
    """What a failing step means. No room for the very first change (no space, or a qgroup limit), when
    that change is one system call (btrfs reserves its space before it alters anything), leaves the
    device exactly as it was: a refusal, which says so, rather than a failure after changes began. So
    does no room to make the new root once the old one is back (`restored`) and nothing else changed:
    the next run would meet the same, so there is no job for it to finish.
    `still_freeing`: the wait for the kernel's cleaner before this step ended with deleted
    subvolumes' space not yet free. `whole`: a failed delete deleted none of its tree. `left`: trash
    entries left where they were before it (_left_in_trash), whose space is not freed."""
    from rollback.plan import changes_nothing_on_enospc, nothing_changed_before, undone_by_put_back

    step = plan.steps[number - 1]
    what = f"step {number}/{len(plan.steps)} failed: {step.describe()}: "
    lack = _NO_ROOM.get(error.errno or 0)
    if lack is None:
        return StepFailed(
            what + str(error) + undone,
            "the device is consistent; the next run finishes the job (see rollback status)",
            code="step-failed",
        )
    quota = error.errno == errno.EDQUOT
    free = _QUOTA_FIX if quota else "free space (btrfs filesystem usage)"
    ran = _ran_before(plan, number)
    made = Create in ran or Snapshot in ran
    old_root = _holds_an_old_root(plan)
    # else the new root is made: in use. The old one may be what filled the disk (a runaway log): it is
    # the booted system's, free to clean up
    if not made and _makes_a_root(plan):  # (not the cleanup's: no root is at stake there)
        free += _OLD_ROOT_IN_USE if old_root else "; there is no root to boot until then"
    freeing = ", and the kernel was still freeing deleted subvolumes' space"
    freeing += " when the wait for it ended" if Reclaim in ran else ""
    if still_freeing:
        free = "the next boot may find the room (rollback status: pending deletions); else " + free
    unchanged = nothing_changed_before(plan.steps, number) and (changes_nothing_on_enospc(step) or whole)
    if unchanged or (restored and undone_by_put_back(plan.steps, number)):
        dirs = " (but empty directories made for it)" if MakeDir in ran else ""
        when = f", before any change{dirs}" if unchanged else undone
        if quota:
            return Refused(what + lack + when + (freeing if still_freeing else ""), free, code="over-quota")
        nothing = _NOTHING_OURS if old_root else _NOTHING_OURS.partition(" (")[0]
        ours = freeing if still_freeing else nothing if not isinstance(step, Delete) else ""
        return Refused(what + lack + when + ours, free, code="no-space")
    return StepFailed(
        what + lack + (freeing if still_freeing else "") + undone,
        _what_was_deleted(plan, number, left) + free + ", and the next run finishes the job",
        code="no-space-midway",
    )


def _what_was_deleted(plan: Plan, failed: int, left: int) -> str:
    """What of rollback's own was deleted before step `failed` had no room, for its hint: `left` of its
    deletes were left in the trash (a damaged entry: it frees nothing; the hint said it was deleted,
    found by an exit-1 hunter)."""
    deleted = sum(isinstance(step, Delete) for step in plan.steps[: failed - 1]) - left
    said = f"{left} trash entr{'y' if left == 1 else 'ies'} could not be deleted (the warning above); " if left else ""
    said += ("the rest of " if left else "") + "what rollback itself left was deleted first; " if deleted > 0 else ""
    return said + "the rest is the machine's data: " if said else ""


def _aborted(number: int, plan: Plan, error: OSError) -> StepFailed:
    """A step failed and the superblock went read-only under our read-write mount: the kernel aborted a
    transaction after an error (a failing disk, a damaged tree, the kernel's cleaner meeting one in a
    subvolume deleted earlier; no room for its metadata), or someone remounted it read-only meanwhile.
    What this run did since its last commit is not on the disk, and what a message would say of a move
    back is unknown (a tester with failing disks: "it is at .rollback/trash/...", while the disk had it
    in place)."""
    from rollback.plan import nothing_changed_before

    step = plan.steps[number - 1]
    full = error.errno in _NO_ROOM
    cause = (
        "for want of room (the kernel aborted the transaction)" if full else "(forced so after an error, or remounted)"
    )
    held = (
        "this run changed nothing before it"
        if nothing_changed_before(plan.steps, number)
        else "the disk holds what the last commit wrote"
    )
    return StepFailed(
        f"step {number}/{len(plan.steps)} failed: {step.describe()}: {error}; the filesystem went read-only "
        f"{cause}: {held}",
        ("free space (btrfs filesystem usage) once it is unmounted everywhere; " if full else "")
        + "dmesg says which error (the kernel's cleaner meeting a damaged subvolume deleted earlier fails so at "
        "every mount); rollback status (once mounted again) shows where the root is. The next run (or cleanup) "
        "finishes the job once the disk works; if every run ends so, the disk or the filesystem is damaged: "
        "btrfs check --readonly on the device, unmounted",
        code="forced-read-only",
    )


def _check_bootable(
    config: Config,
    obs: Observation,
    plan: Plan,
    root_options: tuple[str, ...] | None,
    cmdlines: tuple[str, str],
    *,
    given: bool,
) -> None:
    """plan.check_bootable where the machine boots this subvolume: in the initrd, where its sysroot.mount
    names it (`root_options`); by hand, where nothing tells, always (a rescue shell's run replaced a root
    holding the system with an empty one: exit 0 and the system deleted, while the boot refused it: a
    tester). By hand, what starts the system from elsewhere is read only from a kernel command line
    `given` (--kernel-cmdline FILE, a copy of this kernel's too): the running kernel's own, and its
    /usr, are the rescue system's (a NixOS installer's init= let the run delete a Debian root's system:
    a reviewer)."""
    from rollback.effects import sysroot

    if plan.skipped:
        return
    if sysroot.in_the_initrd():
        if root_options is not None:
            check_bootable(config, obs, sysroot.system_elsewhere(cmdlines))
        return
    elsewhere = sysroot.system_elsewhere((cmdlines[0] if given else "", ""), usr_mount=False)
    check_bootable(config, obs, elsewhere, by_hand=True)


def _check_root_options(config: Config) -> tuple[str, ...] | None:
    """In an initrd, the root mount's options name the subvolume this run replaces (plan.check_root_options),
    when the root is this filesystem: rollback may be set up for another btrfs than the root's (or an
    initramfs shared by boot entries with other roots), whose options are none of its business. Returns
    them then, for what only the observation answers (plan.check_root_default); else None."""
    from rollback.effects import device, sysroot
    from rollback.plan import check_root_options

    found = sysroot.root_mount()
    if found is None:
        return None
    what, options = found
    try:
        theirs = device.probe(what) if what else None
        same = theirs == device.probe(config.require_device())
    except Refused:  # not there (yet), or not btrfs: not known to be this filesystem
        theirs, same = None, False
    if not same:
        if theirs:
            _refuse_a_label_for_two(config, what, theirs)
        return None
    check_root_options(config, options)
    return options


def _refuse_a_label_for_two(config: Config, what: str, theirs: str) -> None:
    """The root is another btrfs filesystem carrying this one's label, and one of them is named by it: a
    copy given a new UUID (as the `mounted` hint for copies says) or a second disk set up alike. A LABEL=
    (ours or the root's) names whichever udev saw last: the run replaced the other disk's root, and the
    root booted stayed dirty (found by a multi-device tester). Both named otherwise (UUID=, as the hint
    says): none of its business (a reviewer: it refused at every boot after the hint was followed)."""
    from rollback.effects import device

    ours = config.require_device()
    # a dd copy given a new UUID keeps its label and its partition's PARTUUID and PARTLABEL
    ambiguous = [f"/{devspec.TAGS[tag]}/" for tag in ("LABEL", "PARTLABEL", "PARTUUID")]
    if not any(link in path for link in ambiguous for path in (ours, what)):  # by UUID= or a node: not ambiguous
        return
    shared = device.label(ours)
    if shared and device.label(what) == shared:
        shown = shared.decode("utf-8", "backslashreplace")
        raise Refused(
            f"the initrd mounts the root from {what} (filesystem UUID={device.uuid(theirs)}), another filesystem "
            f"than {ours}'s, and both carry the label {shown!r}: a LABEL= names either (as udev saw them last), "
            "so this run would replace the other filesystem's root and leave the booted one as it was",
            "name both by UUID= (rollback.device=UUID=..., root=UUID=...), or relabel one (btrfs filesystem label); "
            "nothing was changed",
            code="same-label",
        )


def _kernels_cmdline() -> str:
    """The kernel's own command line (systemd's words, read whatever --kernel-cmdline names)."""
    from rollback.effects import device

    return device.read_kernel(os.environ.get(PROC_CMDLINE_ENV, "/proc/cmdline"))


def _check_hibernation(config: Config, cmdlines: tuple[str, str]) -> None:
    """Refuse while a hibernation image waits: mounting that filesystem now would corrupt it. `cmdlines`:
    the settings' kernel command line and the kernel's own."""
    from rollback import hibernation
    from rollback.effects import device

    if config.ignore_hibernation:
        return
    sysfs = device.read_kernel("/sys/power/resume"), device.read_kernel("/sys/power/resume_offset")
    for where, offset in hibernation.resume_locations(cmdlines, *sysfs):
        hint = (
            "boot the machine to resume it (if it did not resume: fix resume= or the initrd's resume support), or "
            "pass --ignore-hibernation, which loses the hibernated session (a mount replays the filesystem's log)"
        )
        try:
            signature = hibernation.hibernation_signature(device.swap_header_tail(where, offset))
        except OSError as error:
            raise Refused(
                f"cannot check the resume device {where} for a hibernation image: {error.strerror}",
                hint,
                code="resume-unreadable",
            ) from None
        if signature:
            raise Refused(f"a hibernation image ({signature}) is waiting on {where}", hint, code="hibernated")


def _execute_run(plan: Plan, config: Config, obs: Observation, top: Path, fields: dict[str, Any]) -> Plan:
    """Execute a run's plan. No room for its first change (nothing changed) while retention prunes
    archived roots: those are deleted first, then the run goes on (else that refusal would repeat at
    every boot, with rollback's own archive filling the disk); with none, the old root, where it filled
    the disk itself (_root_first). The plan that ran."""
    try:
        return _execute(plan, top, fields, **_checked_again(config, obs, plan, top))
    except StepFailed as failed:
        if failed.code != "no-space-midway" or not isinstance(plan.steps[0], Delete):
            raise
        return _after_leftovers(plan, config, obs, top, fields, failed)
    except Refused as refused:
        if plan.skipped and refused.code == "no-space":  # (no root is made: nothing to make room for)
            raise Refused(
                "no room to remove the skip-next mark (no space left on the filesystem; nothing changed): the root "
                "is kept and the mark stays, so every boot keeps it until there is room",
                "free space on the running system (btrfs filesystem usage; rollback cleanup deletes what the trash "
                "holds); under stop-boot, boot with rollback.skip meanwhile",
                code="no-space",
            ) from None
        pruned = prune_paths(config, obs, make_room=True)
        # a leftover's delete that had no room comes first in the next plan too: nothing to gain
        if refused.code != "no-space" or isinstance(plan.steps[0], Delete):
            raise
        no_room = refused

    # listed whole now (a run leaving deletes to the cleanup listed archived roots bounded): these are
    # deleted by this run, with a deleting run's checks and counts
    mounted = _mounts_seen(obs)
    obs = _observe(config, top, mounted, obs.now)
    if not pruned:
        return _root_first(config, obs, top, fields, no_room)
    plan = plan_run(config, obs, make_room=True)
    deleting = sum(isinstance(step, Delete) and step.path in pruned for step in plan.steps)
    emit("step", f"no space for the first change, nothing changed: first deleting {deleting} pruned root(s)", **fields)
    try:
        return _execute(plan, top, fields, **_checked_again(config, obs, plan, top))
    except Refused as refused:  # the first of them could not go either, and nothing did: say that
        if refused.code != "no-space":  # (a Delete first: the reason does not say "nothing is due")
            raise
        raise Refused(
            f"no room for the first change, nor to delete the archived roots retention prunes: {refused.reason}",
            "free space (btrfs filesystem usage); the old root stays in use until then",
            code="no-space",
        ) from None
    except StepFailed as failed:  # its hint would say what rollback left was deleted: say what happened
        if failed.code != "no-space-midway":
            raise
        raise StepFailed(
            f"{failed.reason} (the run had no room, and was making it by deleting the archived roots retention prunes)",
            failed.hint,  # _failure's: whether the old root stays in use depends on the step
            code="no-space-midway",
        ) from None


def _mounts_seen(obs: Observation) -> Mounts:
    """What `obs` found mounted and in use (an observation made again keeps it: not read twice)."""
    return Mounts(dict(obs.mounted), dict(obs.mounted_paths), dict(obs.swapfiles), obs.read_only_under, obs.degraded)


def _after_leftovers(
    first: Plan, config: Config, obs: Observation, top: Path, fields: dict[str, Any], failed: StepFailed
) -> Plan:
    """What earlier boots left in the trash was deleted first, then a later step had no room (exit 1,
    and the next boot, with no leftovers, would make room: a boot lost, under stop-boot in emergency
    mode; found by a full-disk tester). Where the run is then where the next boot would start, that
    run goes on now, once, after waiting for the kernel's cleaner to free what they held (the leftovers'
    deletes do not wait: a disk with room does not need it); a refusal of it (no room still) is this
    run's failure, with its reason. The plan that ran: the leftovers' deletes, then that run's."""
    mounted = _mounts_seen(obs)
    now = _observe(config, top, mounted, obs.now, bounds(config))
    plan = plan_run(config, now, short_of_room=True)  # (the leftovers' deletes did not wait for the cleaner)
    old, still = obs.get(config.subvolume), now.get(config.subvolume)
    # the old root not moved yet (else the failure came later: the next run's job); no leftovers again
    if old is None or still is None or still.id != old.id or not plan.steps or isinstance(plan.steps[0], Delete):
        raise failed
    emit("step", "no room after deleting what earlier runs left: going on as the next run would", **fields)
    try:
        ran = _execute_run(plan, config, now, top, fields)
    except Refused as refused:  # what earlier runs left is gone: the next boot meets this refusal
        raise StepFailed(
            f"{failed.reason}; what earlier runs left was deleted, and going on as the next run would: "
            + refused.reason,
            refused.hint or failed.hint,
            code="no-space-midway",
        ) from None
    # the leftovers' deletes, which all ran (else the plan above starts with one): not the first plan's
    # delete of today's trash entry, which did not (counted twice; a reviewer)
    leading = takewhile(lambda step: isinstance(step, Delete | Commit | Reclaim), first.steps)
    done = tuple(step for step in leading if isinstance(step, Delete))
    return replace(ran, steps=(*done, *ran.steps), pruning={n + len(done): p for n, p in ran.pruning.items()})


def _root_first(config: Config, obs: Observation, top: Path, fields: dict[str, Any], no_room: Refused) -> Plan:
    """No room for the first change, nothing of rollback's to delete, and the old root itself is what
    filled the disk (plan.room_from_root: recreate and snapshot modes, which delete it anyway): it is
    deleted where it is, its space waited for, then the new root made. Else the refusal stands, saying
    why the root was not deleted so, and would at every boot (found by a full-disk tester)."""
    from rollback.effects import btrfs
    from rollback.plan import room_from_root

    freed, why = room_from_root(config, obs, *btrfs.trees(top))
    if not freed:
        raise Refused(
            f"{no_room.reason}; the old root is not deleted where it is: {why}", no_room.hint, code="no-space"
        )
    plan = plan_run(config, obs, make_room=True, root_first=True)
    emit(
        "step",
        f"no space for the first change, nothing changed: the old root's own files take {freed >> 20} MiB of "
        "metadata; deleting it where it is (not kept for a cleanup after boot), then making the new one",
        **fields,
    )
    try:
        return _execute(plan, top, fields, **_checked_again(config, obs, plan, top))
    except StepFailed as failed:
        if failed.code != "no-space-midway":
            raise
        gone = not os.path.lexists(top / config.subvolume)
        raise StepFailed(
            failed.reason
            + (
                " (the old root was deleted where it was, to make room: there is no root until the new one is made)"
                if gone
                else " (the run was deleting the old root where it was, to make room: part of it may be gone)"
            ),
            "the next run waits for the kernel to free the old root's space, then makes the new root (rollback "
            "status: pending deletions); if it still has no room: free space (btrfs filesystem usage)",
            code="no-space-midway",
        ) from None


def run(config: Config, *, dry_run: bool, cmdline: str, bare: bool = False, given: bool = True) -> Exit:
    """The boot job. `bare`: run with none of the machine's settings (no config file, outside the
    initrd: a rescue shell), where plan_run refuses to delete a root the machine's boots may archive.
    `given`: `cmdline` was read from a --kernel-cmdline FILE given (the machine's, for _check_bootable)."""
    fields: dict[str, Any] = {
        "device": config.require_device(),
        "subvolume": config.subvolume,
        "mode": config.mode + ("+archive" if config.keeping else ""),
    }
    if config.skip:
        source = config.sources.get("skip", "")
        hint = _AS_ASKED if source in ("kernel command line", "flag") else _AS_CONFIGURED.format(source)
        emit("skipped", "rollback.skip is set: the root is kept", reason="rollback.skip", hint=hint, **fields)
        return Exit.SKIPPED
    began = time.monotonic()
    emit("started", f"replacing {config.subvolume} on {fields['device']}" + (" (dry run)" if dry_run else ""), **fields)
    cmdlines = cmdline, _kernels_cmdline()  # read once: the hibernation and the bootable checks' systemd words
    _check_hibernation(config, cmdlines)
    root_options = _check_root_options(config)
    with _observed(config, lock=not dry_run, bounded=True) as (top, obs, _unlock):
        if root_options is not None:
            check_root_default(config, root_options, obs)
        plan = plan_run(config, obs, bare=bare)
        _check_bootable(config, obs, plan, root_options, cmdlines, given=given)
        for warning in plan.warnings:
            emit("warning", warning, **fields)
        if dry_run:
            _as_the_remount_would(top, plan)
            _print("\n".join(plan.describe()) or "nothing to do")
            if not plan.skipped:
                return Exit.OK
        else:
            plan = _execute_run(plan, config, obs, top, fields)
    if plan.skipped:  # a dry run says so too, and exits as the run would (it printed exit 0 and a plan)
        kept = "would be kept" if dry_run else "is kept"
        emit("skipped", f"{plan.skipped}: the root {kept} this once", reason="skip-next", hint=_AS_ASKED, **fields)
        return Exit.SKIPPED
    emit(
        "finished",
        _what_the_run_did(config, plan),
        deleted=plan.deleted,
        duration_ms=round((time.monotonic() - began) * 1000, 1),
        **fields,
    )
    return Exit.OK


def _what_the_run_did(config: Config, plan: Plan) -> str:
    """The finished line: a first run, a run cut short, or a misspelt name says so (a misspelt one is no
    rollback)."""
    moved = any(isinstance(s, Rename) and s.source == config.subvolume for s in plan.steps)
    in_place = any(isinstance(s, Delete) and s.path == config.subvolume for s in plan.steps)  # (_root_first)
    done = (
        "replaced"
        if moved
        else "replaced (the old one deleted where it was)"
        if in_place
        else "created (none was there)"
    )
    unpruned = f", {len(plan.unpruned)} archived root(s) not pruned (see the warnings)" if plan.unpruned else ""
    return f"{config.subvolume} {done}, {plan.deleted} subvolume(s) deleted{unpruned}"


def cleanup(config: Config, *, dry_run: bool, cmdline: str = "") -> Exit:
    """Delete what boots left in the trash (cleanup = after-boot), on the running system, at idle
    priority: the same checks as a run (nothing mounted anywhere, the lock, a private mount)."""
    from rollback.effects import priority

    fields: dict[str, Any] = {"device": config.require_device(), "subvolume": config.subvolume, "mode": "cleanup"}
    if not dry_run:
        priority.idle()
    began = time.monotonic()
    with _observed(config, lock=not dry_run, lock_node=False, wait=True, cmdline=cmdline) as (top, obs, unlock):
        plan = plan_cleanup(config, obs)
        for warning in plan.warnings if plan.steps else ():
            emit("warning", warning, **fields)
        if dry_run:
            _as_the_remount_would(top, plan)
            _print("\n".join(plan.describe()) or "nothing to do")
            return Exit.OK
        roots = sum(isinstance(step, Delete) for step in plan.steps)  # not the wait for the cleaner
        work = bool(plan.steps)
        if work:
            emit("started", f"deleting {roots} old root(s) from the trash on {fields['device']}", **fields)
            plan = _execute(plan, top, fields, unlock, **_checked_again(config, obs, plan, top))
    left = roots - sum(isinstance(step, Delete) for step in plan.steps)  # (_left_in_trash)
    emptied = (
        "the trash is empty: nothing to do"
        if not work
        else f"{plan.deleted} subvolume(s) deleted, {left} old root(s) left in the trash (see the warnings)"
        if left
        else f"trash emptied, {plan.deleted} subvolume(s) deleted"
    )
    emit(
        "finished",
        emptied,
        deleted=plan.deleted,
        duration_ms=round((time.monotonic() - began) * 1000, 1),
        **fields,
    )
    return Exit.OK


def _as_the_remount_would(top: Path, plan: Plan) -> None:
    """A dry run refuses as the run does before its remount read-write (a run with steps writes)."""
    if plan.steps:
        _before_writing(top, dry_run=True)


def _before_writing(top: Path, *, dry_run: bool = False) -> None:
    """Before the first write (and a dry run, which does not remount, as the run would): no member
    device read-only. All of them make the kernel refuse the remount; some of them let it succeed, and
    the writes reach only the others (a stale mirror). Not mounted elsewhere with rescue options, nor
    degraded and read-only: our remount made it read-write degraded, where a user had chosen not to
    write (new block groups there have a single copy; found by a multi-device tester)."""
    from rollback.effects import device, mount

    would = " (the run would be refused)" if dry_run else ""
    fsid = device.fsid_at(str(top))
    missing = device.missing_members(fsid) if fsid and mount.superblock_read_only(top) else []
    if missing:
        # (a read-write mount over it: another remounted read-only (/ on a degraded system, its /nix still
        # read-write), or an error forced it so, which no remount gets past: both said; a reviewer)
        forced = " (if an error forced it so, dmesg: no remount gets past that until it is unmounted everywhere)"
        raise Refused(
            f"cannot write to the filesystem: it is mounted degraded (device id(s) {', '.join(map(str, missing))} "
            f"missing) and read-only{would}: writing makes it read-write degraded, where new block groups have a "
            "single copy",
            "attach the missing member and mount it again with every member, or btrfs replace it; to write to it "
            "degraded all the same, remount it read-write yourself first"
            + (forced if mount.read_only_under(top) else "")
            + "; nothing was changed",
            code="read-only",
        )
    mount.refuse_rescue_mounts(top, dry_run=dry_run)
    if found := device.read_only_members(str(top)):
        shown = ", ".join(found)
        raise Refused(
            f"cannot write to the filesystem: {shown} is read-only"
            + (" (the run would be refused)" if dry_run else "")
            + ": nothing is written while a member device is (over several devices, writes would reach only the "
            "others and leave its copy stale)",
            f"blockdev --setrw {found[0]} (a loop device: attached without -r); nothing was changed",
            code="read-only",
        )


def _in_use(config: Config, top: Path) -> dict[int, str]:
    """The subvolumes mounted anywhere or holding an active swap file, now, and where (read during the
    cleanup's deletes: the walk deletes none of them, nor what holds one). The device gone or a twin
    attached meanwhile stops the delete as a failure (exit 1: some of it may be deleted), not as a
    refusal (exit 3 says nothing was changed; a reviewer)."""
    from rollback.effects import device

    try:
        found = device.mounts(str(top), device.probe(config.require_device()))
    except Refused as refused:
        raise OSError(errno.ESTALE, f"what is mounted could not be read again: {refused.reason}") from None
    return {**{i: f"swap file {p}" for i, p in found.swapfiles.items()}, **found.subvolumes}


class _Guards(TypedDict, total=False):
    recheck: Callable[[Step], None]
    in_use: Callable[[], Mapping[int, str]]


def _checked_again(config: Config, obs: Observation, plan: Plan, top: Path) -> _Guards:
    """Outside the initrd (the cleanup, a run by hand: other processes act on the filesystem), what a
    delete takes is checked again before it (_as_checked) and during its walk (_in_use). A run by hand
    did neither: a subvolume of its old root mounted while it ran was deleted under its mount, one
    moved into the trash entry stopped it as "changed meanwhile" and the next run took it without a
    word (a concurrency tester). In the initrd nothing else acts on it: not read (the boot's path)."""
    from rollback.sources import in_initrd

    if in_initrd():
        return {}
    return {"recheck": partial(_as_checked, config, obs, top, plan), "in_use": partial(_in_use, config, top)}


def _as_checked(config: Config, obs: Observation, top: Path, plan: Plan, step: Step) -> None:
    """Before a delete outside the initrd: what it deletes holds exactly the subvolumes the checks saw
    (where the plan moved it from: a run's old root, a pruned root), none of them mounted. The cleanup
    runs on the live system, at idle priority, with a wait of up to an hour: meanwhile a subvolume can be
    moved into an entry (mv /persist there) or one of its subvolumes mounted (yesterday's root, to fetch
    a file), and the recursive delete takes what is there."""
    from rollback.effects import btrfs, device

    if not isinstance(step, Delete):
        return
    before = reversed(plan.steps[: plan.steps.index(step)])  # (where the plan moved it from, if it did)
    source = next((s.source for s in before if isinstance(s, Rename) and s.dest == step.path), step.path)
    planned = {s.id for s in obs.tree(source)}
    by_cleanup = not _makes_a_root(plan)
    now = btrfs.ids_within(top, step.path)
    try:
        mounted = device.mounts(str(top), device.probe(config.require_device()))
    except Refused as refused:  # the device gone, a twin appeared: an earlier entry may be deleted already
        raise StepFailed(
            f"{step.describe()}: {names.shown(step.path)} could not be checked again ({refused.reason}): not deleted",
            ("rollback cleanup checks it again; " if by_cleanup else "") + refused.hint,
            code="step-failed",
        ) from None
    held = sorted(now & mounted.subvolumes.keys())
    busy = [f"subvolume {i} at {mounted.subvolumes[i]}" for i in held]  # (was its id alone)
    busy += [p for p in mounted.paths if names.is_within(p, step.path)]
    swap = [mounted.swapfiles[i] for i in sorted(now & mounted.swapfiles.keys())]  # (the kernel: EPERM)
    if now != planned or busy or swap:
        gone, moved_in = sorted(planned - now), sorted(now - planned)
        what = (
            f"subvolume(s) {moved_in} moved in"
            if moved_in
            else f"mounted: {busy[0]}"
            if busy
            else f"an active swap file: {swap[0]}"
            if swap
            else f"subvolume(s) {gone} gone"
        )
        raise StepFailed(
            f"{step.describe()}: {names.shown(step.path)} changed since the checks ({what}): not deleted",
            "rollback cleanup checks it again (rollback status shows what is mounted); move what belongs elsewhere "
            "back (a read-only one: btrfs property set -ts PATH ro false first)"
            if by_cleanup
            else _MOVE_OUT,
            code="step-failed",
        )


def status(config: Config, *, as_json: bool, cmdline: str = "") -> Exit:
    from rollback.effects import device, sysroot

    with _observed(config, lock=False, cmdline=cmdline) as (top, obs, _unlock):
        fsid = device.probe(config.require_device())
        elsewhere = sysroot.system_elsewhere((cmdline, _kernels_cmdline()))
        read_only = device.read_only_members(str(top))
        # (a run under way: a root missing is its move, not one cut short; a concurrency tester)
        running = device.lock_holder(fsid)
        found = report.status(config, obs, read_only, device.uuid(fsid), elsewhere, running)
    _print(_json(found) if as_json else "\n".join(report.status_lines(found)))
    return Exit.OK


def diff(config: Config, *, as_json: bool, cmdline: str = "") -> Exit:
    from rollback.effects.walk import walk

    with _observed(config, lock=False, cmdline=cmdline) as (top, obs, _unlock):
        check_target(config, obs)  # a directory there: no run erases it, it refuses (nothing listed said otherwise)
        if config.from_blank:  # no blank (or a writable one): the run refuses; the whole root listed said otherwise
            check_blank(config, obs)
        paths = report.diff(partial(walk, top), config, obs)
        if obs.kind(config.subvolume) is Kind.MISSING:  # a run cut short, or a misspelt name: said
            trash = (
                ", and first deletes what the trash holds (rollback status names it)" if obs.entries(TRASH_DIR) else ""
            )
            emit(
                "warning",
                f"there is no {config.subvolume}: the next run creates it{trash}",
                device=config.device,
                subvolume=config.subvolume,
            )
        if mark_applies(config, obs):  # nothing listed: said why, or it reads as nothing to lose
            emit(
                "warning",
                "the skip-next mark is set: the next run keeps the root and erases nothing; the boot after it "
                "erases what the root holds then",
                device=config.device,
                subvolume=config.subvolume,
            )
    if as_json:
        escaped = [report.escape(p) for p in paths]
        _print(
            _json(
                {"subvolume": config.subvolume, "mode": config.mode, "count": len(paths), "paths": escaped},
                indent=None,
            )
        )
    elif paths:
        _print("\n".join(report.escape(path, ascii_only=_ascii_only()) for path in paths))
    return Exit.OK


_AS_ASKED = "nothing: as asked (the next boot rolls back again)"
_AS_CONFIGURED = "nothing: as configured (every run skips while skip is set in {})"


def skip_next(config: Config, *, cmdline: str = "") -> Exit:
    with _observed(config, lock=True, cmdline=cmdline) as (top, obs, _unlock):
        plan = plan_skip_next(config, obs)
        try:
            _execute(plan, top, {"device": config.device, "subvolume": config.subvolume})
        except Refused as error:  # no room for the mark: the next boot rolls back, in place if the root filled it
            if error.code != "no-space":
                raise
            raise Refused(
                f"no room to set the mark ({error.reason}): the next boot replaces {config.subvolume} as every boot "
                "does (in recreate and snapshot modes, if the root itself filled the disk, deleting it where it is "
                "to make room)",
                "to keep the root at the next boot: rollback.skip on that boot's kernel command line; or free space "
                "and run skip-next again",
                code=error.code,
            ) from None
        except StepFailed as error:  # no job for a next run to finish: whether the mark is set is the question
            if error.code == "forced-read-only":  # its transaction never reached the disk: the mark as it was
                was = "set (as it was)" if mark_applies(config, obs) else "not set"
                raise StepFailed(
                    f"{error.reason}: the mark is {was}",
                    "dmesg says which error; once it is unmounted everywhere and the disk works, run skip-next again "
                    "(rollback status shows whether the mark is set)",
                    code=error.code,
                ) from None
            raise StepFailed(
                f"{error.reason}: the mark may be set or not (not committed: a power cut may lose it)",
                "rollback status shows whether the next boot keeps the root; run skip-next again to be sure",
                code=error.code,  # the same reason, with what it means here
            ) from None
    said = f"the next boot keeps {config.subvolume} on {config.device} once"
    _print(said, done=f"the mark is set ({said})")
    return Exit.OK


def show_config(config: Config, *, as_json: bool) -> Exit:
    """The settings and where each came from."""
    if as_json:
        sources = {key: source for key, _, source in describe(config)}  # keyed as the settings are (keep-days)
        _print(_json({"settings": as_dict(config), "sources": sources}))
    else:
        rows = describe(config)
        width = max(len(key) for key, _, _ in rows)  # the longest key (ignore-hibernation) sets the column
        _print("\n".join(f"{key:<{width}} {value!s:<28} ({source})" for key, value, source in rows))
    return Exit.OK


def _ascii_only() -> bool:
    """Whether stdout cannot carry every character (any encoding but UTF-8's)."""
    encoding = (sys.stdout.encoding if sys.stdout is not None else None) or ""
    return encoding.lower().replace("-", "").replace("_", "") != "utf8"


def _print(text: str, *, done: str = "") -> None:
    """`text` and a newline on stdout, flushed now. A line the stream's encoding cannot carry (a device
    path not UTF-8, or not ASCII under PYTHONIOENCODING=ascii) is escaped as diff escapes paths
    (report.escape), not a crash; a write that fails (a full disk behind a redirect, EIO) is reason
    output-failed, whose message begins with `done`: what the verb did all the same (skip-next's mark).
    A reader gone early (BrokenPipeError) is the exit boundary's (cli._with_settings): not an error."""
    stream = sys.stdout
    if stream is None:  # closed (`>&-`): the output goes nowhere, as print()'s would
        return
    encoding, errors = stream.encoding or "utf-8", stream.errors or "strict"
    lines = text.split("\n")
    for number, line in enumerate(lines):
        try:
            line.encode(encoding, errors)
        except UnicodeEncodeError:
            lines[number] = report.escape(line, ascii_only=_ascii_only())
    try:
        stream.write("\n".join(lines) + "\n")
        stream.flush()
    except BrokenPipeError:
        raise
    except OSError as error:
        raise OutputFailed(
            (f"{done}, but " if done else "") + f"stdout could not be written: {error.strerror or error}",
            f"{'nothing to do about the mark; ' if done else ''}write the output elsewhere",
            code="output-failed",
        ) from None


def _json(value: object, indent: int | None = 2) -> str:
    import json  # only the reporting verbs print JSON; the boot run does not import it

    return json.dumps(value, indent=indent)
