"""Planning: the steps for each mode, their order, and every refusal (pure, no root)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from rollback.errors import Refused
from rollback.model import (
    SKIP_MARK,
    TRASH_DIR,
    Examined,
    Lineage,
    MarkFor,
    Observation,
    Quota,
    Subvol,
    SystemSigns,
    TreeSize,
)
from rollback.plan import (
    Commit,
    Create,
    Delete,
    MakeDir,
    Plan,
    Reclaim,
    RemoveMark,
    Rename,
    Snapshot,
    Step,
    Unlock,
    WriteMark,
    bounds,
    check_bootable,
    mark_applies,
    nothing_changed_before,
    only_moved,
    paths_of_interest,
    plan_cleanup,
    plan_run,
    plan_skip_next,
    prune_paths,
    put_back,
    room_from_root,
    system_paths,
    undone_by_put_back,
)
from rollback.settings import resolve
from tests.support.factory import config, observe

STAMP = "20261125T060000Z"
LAYOUT = ["root", "root/var/lib/machines", "persist", "nix", "home"]


def refusal(cfg_flags: dict[str, object], **obs_args: object) -> str:
    with pytest.raises(Refused) as caught:
        plan_run(config(**cfg_flags), observe(**obs_args))  # type: ignore[arg-type]
    return caught.value.code


def test_recreate_moves_aside_first_creates_then_deletes_last() -> None:
    plan = plan_run(config(), observe(LAYOUT, dirs=["root/var", "root/var/lib"]))
    assert plan.steps == (
        MakeDir(".rollback"),
        MakeDir(TRASH_DIR),
        Rename("root", f"{TRASH_DIR}/{STAMP}"),
        Create("root"),
        Commit(),  # the new root durable before the long part
        Delete(f"{TRASH_DIR}/{STAMP}", 2),
        Commit(),  # the deletes on the disk before the run says they were done
    )
    assert plan.deleted == 2


def test_snapshot_mode_snapshots_the_blank() -> None:
    plan = plan_run(config(mode="snapshot"), observe([*LAYOUT, ("root-blank", True)], dirs=[TRASH_DIR]))
    assert plan.steps == (
        Rename("root", f"{TRASH_DIR}/{STAMP}"),
        Snapshot("root-blank", "root"),
        Commit(),
        Delete(f"{TRASH_DIR}/{STAMP}", 2),
        Commit(),
    )


def test_first_run_without_root_only_creates() -> None:
    assert plan_run(config(), observe(["persist"])).steps == (Create("root"), Commit())


def test_first_run_creates_missing_parent_directories() -> None:
    assert plan_run(config(subvolume="@/os/root"), observe(["persist"])).steps == (
        MakeDir("@"),
        MakeDir("@/os"),
        Create("@/os/root"),
        Commit(),
    )


def test_leftovers_of_an_interrupted_run_are_finished() -> None:
    leftover = f"{TRASH_DIR}/20261124T060000Z"
    plan = plan_run(config(), observe(["persist", leftover, f"{leftover}/var"]))
    assert plan.steps == (Delete(leftover, 2), Reclaim(), Create("root"), Commit())


def test_trash_names_never_collide() -> None:
    taken = f"{TRASH_DIR}/{STAMP}"
    plan = plan_run(config(), observe(["root", taken]))
    assert Rename("root", f"{TRASH_DIR}/{STAMP}-1") in plan.steps
    assert plan.steps[:3] == (Delete(taken, 1), Commit(), Rename("root", f"{TRASH_DIR}/{STAMP}-1"))  # leftovers first
    assert plan.steps[-2:] == (Delete(f"{TRASH_DIR}/{STAMP}-1", 1), Commit())


def test_keeping_archives_and_prunes_by_count_through_the_trash() -> None:
    old = ["old/20261101T000000Z", "old/20261120T000000Z"]
    plan = plan_run(config(archive="old", keep_count=2), observe(["root", *old], dirs=[TRASH_DIR]))
    assert plan.steps == (
        Rename("root", f"old/{STAMP}"),
        Create("root"),
        Commit(),
        Rename(old[0], f"{TRASH_DIR}/{STAMP}"),
        Delete(f"{TRASH_DIR}/{STAMP}", 1),
        Commit(),
    )


@pytest.mark.parametrize("cleanup", ["boot", "after-boot"])
def test_the_steps_that_prune_are_marked_with_the_root_they_prune(cleanup: str) -> None:
    """What the executor keeps (and goes on without) when there is no room to prune: each pruned root's
    unlock, move and delete, and the first one's the directories the trash needs made (no room for them
    keeps every root: verbs._pruning_skipped); never the old root's own steps."""
    old = ["old/20261101T000000Z", "old/20261110T000000Z", "old/20261120T000000Z"]
    flags = {"archive": "old", "keep_count": 2, "cleanup": cleanup}
    plan = plan_run(config(**flags), observe(["root", (old[0], True), *old[1:]]))  # type: ignore[arg-type]
    marked = {plan.steps[n - 1]: path for n, path in plan.pruning.items()}
    trash = [f"{TRASH_DIR}/{STAMP}", f"{TRASH_DIR}/{STAMP}-1"]
    expected: dict[Step, str] = {
        MakeDir(".rollback"): old[0],
        MakeDir(TRASH_DIR): old[0],
        Unlock(old[0]): old[0],
        Rename(old[0], trash[0]): old[0],
        Rename(old[1], trash[1]): old[1],
    }
    if cleanup == "boot":
        expected |= {Delete(trash[0], 1): old[0], Delete(trash[1], 1): old[1]}
    assert marked == expected
    assert MakeDir(TRASH_DIR) in plan.steps and plan.steps[0] == Rename("root", f"old/{STAMP}")


@pytest.mark.parametrize("cleanup", ["boot", "after-boot"])
def test_making_room_deletes_the_pruned_archived_roots_first(cleanup: str) -> None:
    """No room for the first change (nothing changed): what retention prunes goes first, straight from
    the archive (read-only ones too: the delete clears what is ours; not an immutable one, pinned by
    hand: never pruned, nor counted), then the run as planned."""
    old = ["old/20261101T000000Z", "old/20261110T000000Z", "old/20261120T000000Z"]
    flags = {"archive": "old", "keep_count": 1, "cleanup": cleanup}
    obs = observe(["root", (old[0], True), *old[1:]], dirs=[TRASH_DIR])
    obs = replace(obs, immutable=frozenset({old[1]}))
    plan = plan_run(config(**flags), obs, make_room=True)  # type: ignore[arg-type]
    assert plan.steps == (
        Delete(old[0], 1),
        Reclaim(),
        Rename("root", f"old/{STAMP}"),
        Create("root"),
        Commit(),
    )
    assert prune_paths(config(**flags), obs, make_room=True) == [old[0]]  # type: ignore[arg-type]
    assert set(prune_paths(config(**flags), obs)) == {old[0], old[2]}  # type: ignore[arg-type]


@pytest.mark.parametrize("keep", [{"keep_count": 1}, {"keep_days": 0, "keep_min": 1}, {}])
def test_making_room_never_leaves_fewer_archived_roots_than_asked(keep: dict[str, int]) -> None:
    """Making room counted the root not yet archived as the newest: on a disk full of the machine's own
    data the deletes freed nothing, the archiving failed, and keep-count 1 (or keep-min) was left with an
    empty archive, exit 1, then refused at every boot (found by a full-disk tester). Only what is due
    without it goes: here nothing, so the no-space refusal stands and nothing is deleted."""
    flags = {"archive": "old", "keep_count": 0, "keep_days": 30, "keep_min": 3, **keep}
    archived = (
        ["old/20200101T000000Z"] if keep else ["old/20200101T000000Z", "old/20200102T000000Z", "old/20200103T000000Z"]
    )
    obs = observe(["root", *archived])
    assert prune_paths(config(**flags), obs, make_room=True) == []  # type: ignore[arg-type]
    assert not any(isinstance(step, Delete) for step in plan_run(config(**flags), obs, make_room=True).steps)  # type: ignore[arg-type]


_MIB = 1 << 20


def _from_blank(obs: Observation, source: str = "root-blank") -> Observation:
    """`obs` with root a snapshot of `source`."""

    def uuids(sub: Examined) -> Examined:
        made = replace(sub, uuid=f"uuid-{sub.path}")
        return replace(made, parent_uuid=f"uuid-{source}") if sub.path == "root" else made

    return replace(obs, subvols=tuple(uuids(s) for s in obs.subvols if isinstance(s, Examined)))


@pytest.mark.parametrize(
    ("flags", "root", "blank_used", "source", "freed"),
    [
        ({}, TreeSize(233 * _MIB, 0, 0), None, None, 233 * _MIB),  # made by a recreate run, never copied
        ({}, TreeSize(7 * _MIB, 0, 0), None, None, 0),  # too small to make room: the boot would have no root
        ({}, TreeSize(233 * _MIB, 40, 0), None, None, 0),  # snapshotted since: the copy holds its blocks
        ({"mode": "snapshot"}, TreeSize(233 * _MIB, 30, 30), 3 * _MIB, "root-blank", 230 * _MIB),  # the blank's share
        ({"mode": "snapshot"}, TreeSize(233 * _MIB, 30, 30), 230 * _MIB, "root-blank", 0),  # a big blank's
        ({"mode": "snapshot"}, TreeSize(233 * _MIB, 40, 30), 3 * _MIB, "root-blank", 0),  # snapshotted since
        ({"mode": "snapshot"}, TreeSize(233 * _MIB, 30, 30), 3 * _MIB, "changed blank", 0),  # its share unknown
        ({}, TreeSize(233 * _MIB, 30, 30), 3 * _MIB, "persist", 0),  # a snapshot of something else: its share unknown
        ({}, TreeSize(233 * _MIB, 30, 30), None, "root-blank", 0),  # the source's size unread
        ({"archive": "old", "keep_count": 1}, TreeSize(233 * _MIB, 0, 0), None, None, 0),  # keep: the root is kept
        ({}, TreeSize(233 * _MIB, 0, 0), None, "mark", 0),  # skip-next: the user keeps it for this boot
    ],
)
def test_the_old_root_is_deleted_in_place_to_make_room_only_where_its_own_tree_gives_it_back(
    flags: dict[str, object], root: TreeSize, blank_used: int | None, source: str | None, freed: int
) -> None:
    """The root filled the disk itself: in recreate and snapshot modes it is deleted where it is,
    first, when what its own tree gives back is known and large; never in keep mode."""
    obs = observe([*LAYOUT, ("root-blank", True)], skip_mark=source == "mark")
    obs = (
        _from_blank(obs, "root-blank" if source == "changed blank" else source) if source not in (None, "mark") else obs
    )
    ids = {s.path: s.id for s in obs.subvols}
    blank = TreeSize(blank_used or 0, 9, 0, changed_at=31 if source == "changed blank" else 9)
    sizes = {ids["root"]: root} | ({ids["root-blank"]: blank} if blank_used else {})
    got, why = room_from_root(config(**flags), obs, sizes, {})  # type: ignore[arg-type]
    assert (got, bool(why)) == (freed, not freed)  # and why not, said in the refusal


@pytest.mark.parametrize(
    ("others", "pending", "freed"),
    [
        ({}, (), 233 * _MIB),  # a balance marked it, or every copy is gone and freed
        ({"backup": Lineage("b", "r", 20)}, (), 0),  # a snapshot of it still there
        ({"backup": Lineage("b", "gone", 20)}, (), 0),  # a snapshot of a copy of it, the copy deleted
        ({"backup": Lineage("b", "gone", 5)}, (), 233 * _MIB),  # ... of something deleted before it was made
        ({"backup": Lineage("b", "p", 20)}, (), 233 * _MIB),  # a snapshot of persist
        ({"root/var/lib/machines": Lineage("b", "r", 20)}, (), 233 * _MIB),  # inside it: deleted with it
        ({"root/var/lib/machines": Lineage("s", "r", 20), "backup": Lineage("b", "s", 21)}, (), 0),  # copied out
        ({}, (300,), 0),  # a deleted copy may still hold its blocks
    ],
)
def test_a_root_snapshotted_since_it_was_made_is_deleted_in_place_only_without_a_copy_left(
    others: dict[str, Lineage], pending: tuple[int, ...], freed: int
) -> None:
    """Its ROOT_ITEM says it was snapshotted since (or a balance moved it, which says the same): the
    copies still there, or a deletion still being freed, may hold its blocks (found by a coexistence
    tester: any btrbk or snapper snapshot, deleted since, or a balance turned this off for good)."""
    obs = replace(observe([*LAYOUT, "backup"]), pending_cleanup=pending)
    ids = {s.path: s.id for s in obs.subvols}
    lineage = {ids["root"]: Lineage("r", "", 10), ids["persist"]: Lineage("p", "", 3)}
    lineage |= {ids[path]: line for path, line in others.items()}
    sizes = {ids["root"]: TreeSize(233 * _MIB, 40, 0)}
    got, why = room_from_root(config(), obs, sizes, lineage)
    assert (got, bool(why)) == (freed, not freed)


@pytest.mark.parametrize(
    ("nested", "freed"), [(TreeSize(200 * _MIB, 0, 0), 201 * _MIB), (TreeSize(200 * _MIB, 9, 9), 0)]
)
def test_what_subvolumes_nested_in_the_root_give_back_counts_unless_shared(nested: TreeSize, freed: int) -> None:
    """A root filled by a subvolume nested in it (/var/lib/docker), deleted with it: counted (was: "0 MiB",
    refused at every boot; found by a second full-disk tester); a snapshot (or one copied) not."""
    obs = observe(LAYOUT)
    ids = {s.path: s.id for s in obs.subvols}
    sizes = {ids["root"]: TreeSize(1 * _MIB, 0, 0), ids["root/var/lib/machines"]: nested}
    assert room_from_root(config(), obs, sizes, {})[0] == freed


def test_a_root_a_balance_is_relocating_is_not_deleted_in_place() -> None:
    """A balance under way or paused (resumed at the next mount) holds a relocation tree of the root,
    sharing its blocks (a reviewer)."""
    obs = observe(LAYOUT)
    root = obs.get("root")
    assert root is not None
    sizes = {root.id: TreeSize(233 * _MIB, 40, 0, relocating=True)}
    got, why = room_from_root(config(), obs, sizes, {root.id: Lineage("r", "", 10)})
    assert got == 0 and "balance" in why


@pytest.mark.parametrize("cleanup", ["boot", "after-boot"])
def test_no_root_while_the_kernel_still_frees_deleted_ones_waits_before_the_create(cleanup: str) -> None:
    """A run cut short after deleting the old root where it was (room_from_root): the next one has no
    root, and the create needs the space the kernel is still freeing, after boot too (a reviewer)."""
    obs = replace(observe(["persist", "nix", "home"], dirs=[TRASH_DIR]), pending_cleanup=(300,))
    plan = plan_run(config(cleanup=cleanup), obs)
    assert plan.steps == (Reclaim(timeout_s=300.0), Create("root"), Commit())


@pytest.mark.parametrize("mode", ["recreate", "snapshot"])
def test_deleting_the_old_root_first_waits_for_its_space_then_makes_the_new_one(mode: str) -> None:
    obs = observe([*LAYOUT, ("root-blank", True)], dirs=[TRASH_DIR])
    plan = plan_run(config(mode=mode, cleanup="after-boot"), obs, make_room=True, root_first=True)
    made: Step = Snapshot("root-blank", "root") if mode == "snapshot" else Create("root")
    assert plan.steps == (Delete("root", 2), Reclaim(timeout_s=300.0), made, Commit())


@pytest.mark.parametrize(
    ("before", "refusal"),
    [
        ((), True),  # the very first step
        ((Reclaim(),), True),  # after waiting for the kernel's cleaner: still nothing of the run's changed
        ((Delete(f"{TRASH_DIR}/x", 1), Reclaim()), False),  # leftovers were deleted first: midway
    ],
)
@pytest.mark.parametrize(("code", "refused"), [(28, "no-space"), (122, "over-quota")])  # ENOSPC, EDQUOT
def test_no_space_is_a_refusal_only_while_nothing_of_the_runs_changed(
    before: tuple[Step, ...], refusal: bool, code: int, refused: str
) -> None:
    from rollback.verbs import _failure

    plan = Plan((*before, Rename("root", f"{TRASH_DIR}/{STAMP}"), Create("root"), Commit()))
    failure = _failure(len(before) + 1, plan, OSError(code, os.strerror(code)), "")
    assert nothing_changed_before(plan.steps, len(before) + 1) is refusal
    assert failure.code == (refused if refusal else "no-space-midway")
    assert ("quota" in failure.reason) is (code == 122)


@pytest.mark.parametrize("still_freeing", [False, True])
@pytest.mark.parametrize(
    "before", [(Reclaim(),), (Delete(f"{TRASH_DIR}/x", 1), Reclaim()), (Delete(f"{TRASH_DIR}/x", 1), Commit()), ()]
)
def test_no_space_says_whether_the_kernel_was_still_freeing_and_what_was_deleted(
    before: tuple[Step, ...], still_freeing: bool
) -> None:
    """After a wait for the kernel's cleaner that timed out, "nothing of rollback's to free" was false (its
    deletions were still being freed); a failure midway said rollback's leftovers were deleted first
    when the plan deleted none."""
    from rollback.verbs import _failure

    plan = Plan((*before, Rename("root", f"{TRASH_DIR}/{STAMP}"), Create("root"), Commit()))
    for failed in (len(before) + 1, len(before) + 2):  # the rename (nothing changed yet), then the create
        failure = _failure(failed, plan, OSError(28, "No space left on device"), "", still_freeing=still_freeing)
        text = f"{failure.reason} / {failure.hint}"
        assert ("still freeing deleted subvolumes' space" in failure.reason) is still_freeing, text
        waited = still_freeing and Reclaim() in before
        assert ("when the wait for it ended" in failure.reason) is waited, text
        assert ("the next boot may find the room" in failure.hint) is still_freeing, text
        assert ("nothing of rollback's can be deleted first" in text) is (
            failure.code == "no-space" and not still_freeing
        )
        assert ("rollback itself left was deleted first" in text) is any(isinstance(s, Delete) for s in before)


def test_still_freeing_asks_the_device_only_after_a_wait_or_a_runs_deletes(monkeypatch: pytest.MonkeyPatch) -> None:
    from rollback import verbs
    from rollback.effects import btrfs

    asked: list[Path] = []

    def busy(top: Path) -> bool:
        asked.append(top)
        return True

    monkeypatch.setattr(btrfs, "cleaner_busy", busy)
    plan = Plan((Reclaim(), Rename("root", f"{TRASH_DIR}/{STAMP}"), Create("root")))
    full, other = OSError(28, "No space left on device"), OSError(5, "Input/output error")
    assert verbs._still_freeing(plan, 2, full, Path("/t")) and asked == [Path("/t")]
    assert not verbs._still_freeing(plan, 2, other, Path("/t"))  # not a matter of room
    assert not verbs._still_freeing(Plan(plan.steps[1:]), 1, full, Path("/t"))  # no wait before it
    assert asked == [Path("/t")]
    deleted = Plan((Delete(f"{TRASH_DIR}/x", 1), Commit(), *plan.steps[1:]))  # what earlier runs left, not waited for
    assert verbs._still_freeing(deleted, 3, full, Path("/t")) and asked == [Path("/t")] * 2
    made_dirs = Plan((MakeDir(".rollback"), MakeDir(TRASH_DIR), *plan.steps[1:]))  # nothing deleted, nothing waited
    assert not verbs._still_freeing(made_dirs, 3, full, Path("/t"))
    cleanup = Plan((Delete(f"{TRASH_DIR}/x", 1), Delete(f"{TRASH_DIR}/y", 1), Reclaim(timeout_s=3600.0)))
    assert not verbs._still_freeing(cleanup, 2, full, Path("/t"))  # the cleanup's own deletes: its job
    assert asked == [Path("/t")] * 2


def test_a_cleanup_with_no_room_says_nothing_of_a_root_to_boot() -> None:
    """The cleanup's plan makes no root: no room for one of its deletes said "there is no root to boot
    until then" (a reviewer), which is false on the running system, and that the next boot may find
    the room."""
    from rollback.verbs import _failure

    cleanup = Plan((Delete(f"{TRASH_DIR}/x", 1), Delete(f"{TRASH_DIR}/y", 1), Reclaim(timeout_s=3600.0)))
    failure = _failure(2, cleanup, OSError(28, "No space left on device"), "", still_freeing=False)
    text = f"{failure.reason} / {failure.hint}"
    assert failure.code == "no-space-midway" and "no root" not in text and "next boot" not in text, text


MOVED = Rename("root", f"{TRASH_DIR}/{STAMP}")


@pytest.mark.parametrize(
    ("before", "refusal"),
    [
        ((MOVED,), True),
        ((Reclaim(), MakeDir(".rollback"), MakeDir(TRASH_DIR), MOVED), True),  # empty directories left
        ((Delete(f"{TRASH_DIR}/x", 1), Reclaim(), MOVED), False),  # a leftover deleted: changed
        ((MOVED, MakeDir("var")), True),
    ],
)
@pytest.mark.parametrize("restored", [True, False])
def test_no_room_for_the_new_root_with_the_old_one_back_is_a_refusal(
    before: tuple[Step, ...], refusal: bool, restored: bool
) -> None:
    """The move fitted, the create did not; the old root was moved back: the next run meets the same,
    so it is no failure for a next run to finish (it was no-space-midway, exit 1 at every boot, and
    keep mode never tried deleting its due archived roots first)."""
    from rollback.verbs import _failure

    plan = Plan((*before, Create("root"), Commit()))
    failed = len(before) + 1
    assert undone_by_put_back(plan.steps, failed) is refusal
    failure = _failure(
        failed, plan, OSError(28, "No space left on device"), "; the old root was moved back", restored=restored
    )
    assert failure.code == ("no-space" if refusal and restored else "no-space-midway")
    assert undone_by_put_back(plan.steps, failed - 1) is False  # a failing move has nothing to put back


def test_keeping_prunes_by_age() -> None:
    old = ["old/20261001T000000Z", "old/20261120T000000Z"]
    plan = plan_run(config(archive="old", keep_days=30, keep_min=1), observe([*old, "root"], dirs=[TRASH_DIR]))
    assert Rename(old[0], f"{TRASH_DIR}/{STAMP}") in plan.steps
    assert not any(isinstance(s, Rename) and s.source == old[1] for s in plan.steps)


T = "old/20261125T05"  # now (the factory's) is 2026-11-25 06:00:00


@pytest.mark.parametrize(
    ("archived", "flags", "said"),
    [
        # the newest (by creation) named after now: a clock set back; age prunes nothing until it passes
        (["old/20200101T000000Z", "old/20270101T000000Z"], {}, "is behind the newest archived root's name"),
        # a clock restarting at each boot (no battery-backed clock): names go back again and again
        ([f"{T}5950Z", f"{T}5940Z", f"{T}5945Z", f"{T}5930Z"], {}, "the clock went back between boots 3 times"),
        ([f"{T}5950Z", f"{T}5950Z-1", f"{T}5950Z-2"], {}, "the clock went back between boots 2 times"),
        ([f"{T}5950Z", f"{T}5940Z"], {}, ""),  # back once: an RTC wrong once, set right since
        # a dual boot with Windows (hardware clock in local time, UTC-5): each boot after Windows 5 h behind
        (["old/20261120T060000Z", "old/20261120T010100Z", "old/20261122T060000Z", "old/20261122T010100Z"], {}, ""),
        # a clock far back (a reset to a build time) at two boots among them is still said
        (
            ["old/20261120T060000Z", "old/20261120T010100Z", "old/20250101T000000Z", "old/20250101T000010Z"],
            {},
            "the clock went back between boots 2 times",
        ),
        # one archived under a clock ahead then, the clock right now: kept until 2099, the rest pruned
        (["old/20261001T000000Z", "old/20990101T000000Z", "old/20261124T000000Z"], {}, "1 archived root(s) are named"),
        # the same, two boots since: it is still the clock that was ahead once, not one going back
        ([f"{T}0000Z", "old/20270102T050000Z", f"{T}1000Z", f"{T}2000Z"], {}, "1 archived root(s) are named"),
        (["old/20200101T000000Z", "old/20261125T060000Z"], {}, ""),  # advancing, none after now
        (["old/20200101T000000Z", "old/20270101T000000Z"], {"keep_count": 5}, ""),  # bounded anyway
        (["old/20200101T000000Z", "old/20270101T000000Z"], {"keep_days": 0, "keep_count": 5}, ""),  # no age
    ],
)
def test_a_clock_that_keeps_keep_days_from_working_is_said(
    archived: list[str], flags: dict[str, int], said: str
) -> None:
    chosen: dict[str, str | int] = {"archive": "old", "keep_days": 30, "keep_min": 0, **flags}
    plan = plan_run(config(**chosen), observe([*archived, "root"], dirs=[TRASH_DIR]))
    if not said:
        assert plan.warnings == ()
        return
    (warning,) = plan.warnings
    assert said in warning
    assert ("grows until the disk is full: set keep-count" in warning) == ("went back" in said)


@pytest.mark.parametrize("holder", [TRASH_DIR, "old"])
def test_a_name_the_run_would_pick_is_skipped_when_a_file_or_directory_has_it(holder: str) -> None:
    """Not only entries: a file or directory someone left in the trash or the archive with the name
    this run's clock gives (at every boot, on a board with no battery-backed clock) failed the move."""
    obs = replace(observe(["root"], dirs=[TRASH_DIR, "old"]), names_in={holder: frozenset({STAMP, "notes"})})
    plan = plan_run(config(archive="old") if holder == "old" else config(), obs)
    moved = next(s for s in plan.steps if isinstance(s, Rename) and s.source == "root")
    assert moved.dest == f"{holder}/{STAMP}-1"


@pytest.mark.parametrize("mode", ["recreate", "snapshot"])
@pytest.mark.parametrize(
    ("groups", "own_limit", "said"),
    [
        ((2 << 48 | 7, 1 << 48 | 100), False, "was in qgroup(s) 1/100, 2/7:"),
        ((), True, "had a limit:"),
        ((1 << 48 | 100,), True, "was in qgroup(s) 1/100 and had a limit:"),
        ((), False, ""),
    ],
)
def test_what_the_old_roots_qgroup_had_is_said_to_be_left_behind(
    mode: str, groups: tuple[int, ...], own_limit: bool, said: str
) -> None:
    """A new subvolume has a new qgroup, in no group and without a limit: a limit bounding the root was
    silently gone at the first boot. (Made in the same groups, the new root would share their limits
    with the old one, archived or waiting for the kernel's cleaner.)"""
    obs = observe(["root", ("root-blank", True)], dirs=[TRASH_DIR])
    old = obs.get("root")
    assert old is not None
    root = replace(old, quota=Quota(groups=groups, own_limit=own_limit))
    obs = replace(obs, subvols=tuple(root if s.path == "root" else s for s in obs.subvols))
    plan = plan_run(config(mode=mode), obs)
    assert Create("root") in plan.steps or Snapshot("root-blank", "root") in plan.steps
    if not said:
        assert plan.warnings == ()
        return
    (warning,) = plan.warnings
    assert warning.startswith(
        f"the qgroup of the old 'root' {said} the new one is in no higher-level qgroup and has no limit"
    )


def test_quotas_off_or_no_root_make_a_plain_root() -> None:
    assert Create("root") in plan_run(config(), observe(["root"], dirs=[TRASH_DIR])).steps
    assert Create("root") in plan_run(config(), observe([], dirs=[TRASH_DIR])).steps


def test_an_empty_root_is_not_archived_and_does_not_count() -> None:
    old = ["old/20261120T000000Z"]
    plan = plan_run(config(archive="old", keep_count=1), observe(["root", *old], empty=["root"], dirs=[TRASH_DIR]))
    assert plan.steps == (
        Rename("root", f"{TRASH_DIR}/{STAMP}"),
        Create("root"),
        Commit(),
        Delete(f"{TRASH_DIR}/{STAMP}", 1),
        Commit(),
    )


def test_an_unused_snapshot_of_the_blank_is_not_archived() -> None:
    obs = observe(["root", ("root-blank", True)], dirs=[TRASH_DIR])
    root, blank = obs.get("root"), obs.get("root-blank")
    assert root and blank
    blank = replace(blank, uuid="b1")
    fresh = replace(root, parent_uuid="b1", changed=False)
    plan = plan_run(config(archive="old", mode="snapshot"), replace(obs, subvols=(fresh, blank)))
    assert Rename("root", f"{TRASH_DIR}/{STAMP}") in plan.steps
    used = replace(fresh, changed=True)
    plan = plan_run(config(archive="old", mode="snapshot"), replace(obs, subvols=(used, blank)))
    assert Rename("root", f"old/{STAMP}") in plan.steps


def test_archive_name_collision_gets_a_serial() -> None:
    plan = plan_run(config(archive="old"), observe(["root", f"old/{STAMP}"]))
    assert Rename("root", f"old/{STAMP}-1") in plan.steps


def test_skip_mark_is_consumed_and_nothing_else_happens() -> None:
    plan = plan_run(config(), observe(LAYOUT, skip_mark=True, dirs=[".rollback"]))
    assert plan.steps == (RemoveMark(SKIP_MARK), Commit())
    assert plan.skipped


@pytest.mark.parametrize(
    ("found", "code"),
    [
        (observe(LAYOUT, skip_mark=True, dirs=[SKIP_MARK]), "state-dir"),  # removing it fails at every boot
        (observe([*LAYOUT, SKIP_MARK], skip_mark=True), "state-dir"),
        (observe(LAYOUT, skip_mark=True, files=[".rollback"]), "state-dir"),  # a symlink: unlink reaches through
        (replace(observe(LAYOUT, skip_mark=True), immutable=frozenset({".rollback"})), "immutable"),  # EPERM
        (replace(observe(LAYOUT, skip_mark=True, files=[SKIP_MARK]), immutable=frozenset({SKIP_MARK})), "immutable"),
        (replace(observe(LAYOUT, skip_mark=True, files=[SKIP_MARK]), skip_mark_regular=False), "state-dir"),  # link
    ],
    ids=[
        "mark-directory",
        "mark-subvolume",
        "state-dir-symlink",
        "state-dir-immutable",
        "mark-immutable",
        "mark-symlink",
    ],
)
def test_a_skip_mark_the_run_could_not_remove_safely_is_refused(found: Observation, code: str) -> None:
    """And `rollback skip-next` refuses to write a mark there: the next run would refuse it."""
    with pytest.raises(Refused) as refused:
        plan_run(config(), found)
    assert refused.value.code == code
    with pytest.raises(Refused) as refused:
        plan_skip_next(config(), found)
    assert refused.value.code == code


def test_a_mark_in_rollbacks_own_directory_is_removed_whatever_the_top_levels_flags() -> None:
    """Unlinking the mark changes only .rollback: an immutable top level is no reason to refuse it."""
    obs = replace(observe(LAYOUT, skip_mark=True, files=[SKIP_MARK]), immutable=frozenset({""}))
    assert plan_run(config(), obs).steps == (RemoveMark(SKIP_MARK), Commit())


@pytest.mark.parametrize(
    ("obs", "code"),
    [({"subvols": ["persist"]}, "nothing-to-keep"), ({"subvols": ["persist"], "dirs": ["root"]}, "not-subvolume")],
)
def test_skip_next_refuses_without_a_root_to_keep(obs: dict[str, list[str]], code: str) -> None:
    with pytest.raises(Refused) as refused:
        plan_skip_next(config(), observe(**obs))  # type: ignore[arg-type]
    assert refused.value.code == code


def test_skip_next_commits_its_mark() -> None:
    obs = observe(LAYOUT)
    root = obs.get("root")
    assert root is not None
    assert plan_skip_next(config(), obs).steps[-2:] == (WriteMark(SKIP_MARK, root.id), Commit())


@pytest.mark.parametrize(
    ("mounted", "flags", "refused"),
    [
        ("root", {}, True),
        ("root/tmp", {}, True),
        ("root/tmp", {"cleanup": "after-boot"}, True),
        ("rootfs/tmp", {}, False),  # a name that begins like the root's is not inside it
        ("persist/x", {}, False),
        ("", {}, False),  # on the top level's own directory (another top-level mount stacked)
        ("old/20260101T000000Z/var", {"archive": "old", "keep_count": 1}, True),
        ("old/20260101T000000Z/var", {"archive": "old", "keep_count": 5}, False),  # not pruned: not moved
        (f"{TRASH_DIR}/20260101T000000Z", {}, True),
    ],
)
def test_a_mount_on_a_path_the_run_moves_or_deletes_is_refused(
    mounted: str, flags: dict[str, object], refused: bool
) -> None:
    layout = [*LAYOUT, "old/20260101T000000Z", f"{TRASH_DIR}/20260101T000000Z"]
    obs = observe(layout, mounted_paths={mounted: "/elsewhere"})
    if not refused:
        plan_run(config(**flags), obs)  # type: ignore[arg-type]
        return
    with pytest.raises(Refused) as caught:
        plan_run(config(**flags), obs)  # type: ignore[arg-type]
    assert caught.value.code == "mounted" and "/elsewhere" in caught.value.hint


def test_skip_next_refuses_to_make_its_directory_in_an_immutable_top_level() -> None:
    with pytest.raises(Refused) as refused:
        plan_skip_next(config(), replace(observe(LAYOUT), immutable=frozenset({""})))
    assert refused.value.code == "immutable"


@pytest.mark.parametrize(
    ("flags", "obs", "code"),
    [
        ({}, {"subvols": ["persist"], "dirs": ["root"]}, "not-subvolume"),
        ({}, {"subvols": ["persist"], "files": ["root"]}, "not-subvolume"),
        ({}, {"subvols": ["root", "persist"], "default": "root"}, "default-subvolume"),
        ({}, {"subvols": ["root", "root/a"], "default": "root/a"}, "default-subvolume"),
        ({}, {"subvols": ["root", "root/persist"]}, "protected-inside"),
        ({}, {"subvols": ["root", "root/a/b/nix"]}, "protected-inside"),
        ({"protect": ["data"]}, {"subvols": ["root", "root/srv/data"]}, "protected-inside"),
        ({}, {"subvols": ["root"], "mounted": {"root": "/"}}, "mounted"),
        ({}, {"subvols": ["root", "root/var/x"], "mounted": {"root/var/x": "/var/x"}}, "mounted"),
        (
            {},
            {
                "subvols": ["root", f"{TRASH_DIR}/20260101T000000Z"],
                "mounted": {f"{TRASH_DIR}/20260101T000000Z": "/mnt"},
            },
            "mounted",
        ),
        ({"archive": "old"}, {"subvols": ["root", "old/snapshot-of-home"]}, "foreign-subvolume"),
        ({"archive": "old"}, {"subvols": ["root", "old/20241301T000000Z"]}, "foreign-subvolume"),  # month 13
        ({"cleanup": "after-boot"}, {"subvols": ["root", f"{TRASH_DIR}/20260230T000000Z"]}, "foreign-subvolume"),
        ({"archive": "old"}, {"subvols": ["root", "old/x/20260101T000000Z"]}, "foreign-subvolume"),
        ({"archive": "old"}, {"subvols": ["root"], "files": ["old"]}, "bad-holder"),
        ({}, {"subvols": ["root", f"{TRASH_DIR}/not-ours"]}, "foreign-subvolume"),
        ({}, {"subvols": ["root"], "files": [".rollback"]}, "state-dir"),
        ({"mode": "snapshot"}, {"subvols": ["root"]}, "no-blank"),
        ({"mode": "snapshot"}, {"subvols": ["root", ("root-blank", False)]}, "blank-writable"),
        (
            {"archive": "old", "keep_count": 1},
            {"subvols": ["root", "old/20260101T000000Z", "old/20260101T000000Z/persist"]},
            "protected-inside",
        ),
        ({"subvolume": "sys/root"}, {"subvols": ["persist"], "files": ["sys"]}, "not-directory"),
        ({"subvolume": "a/b/root"}, {"subvols": ["persist"], "files": ["a/b"]}, "not-directory"),
        ({"archive": "a/old"}, {"subvols": ["root"], "files": ["a"]}, "not-directory"),
        ({"mode": "snapshot", "blank": "b/blank"}, {"subvols": ["root"], "files": ["b"]}, "not-directory"),
        ({}, {"subvols": ["root"], "files": [TRASH_DIR]}, "bad-holder"),
    ],
)
def test_refusals(flags: dict[str, object], obs: dict[str, object], code: str) -> None:
    assert refusal(flags, **obs) == code


ODD = "\udcff"  # os.fsdecode(b"\xff"): a name on the device that is not UTF-8


@pytest.mark.parametrize(
    ("flags", "obs", "code"),
    [
        ({}, {"subvols": ["root", f"root/a{ODD}"], "default": f"root/a{ODD}"}, "default-subvolume"),
        ({}, {"subvols": ["root", f"root/x{ODD}/nix"]}, "protected-inside"),
        ({}, {"subvols": ["root", f"root/v{ODD}"], "mounted": {f"root/v{ODD}": "/v"}}, "mounted"),
        ({"archive": "old"}, {"subvols": ["root", f"old/snap{ODD}"]}, "foreign-subvolume"),
        ({}, {"subvols": ["root", f"{TRASH_DIR}/n{ODD}ot", "persist"]}, "foreign-subvolume"),
    ],
)
def test_a_name_that_is_not_utf8_reads_as_the_events_spell_it(
    flags: dict[str, object], obs: dict[str, object], code: str
) -> None:
    """A refusal naming it said \\udcff (repr of what os.fsdecode made), every event \\xff."""
    with pytest.raises(Refused) as caught:
        plan_run(config(**flags), observe(**obs))  # type: ignore[arg-type]
    text = f"{caught.value.reason} {caught.value.hint}"
    assert caught.value.code == code and "\\xff" in text and "\\udc" not in text, text


ENTRY = f"{TRASH_DIR}/20260101T000000Z"
PLANNERS: dict[str, Callable[[Observation, dict[str, object]], Plan]] = {
    "run": lambda obs, flags: plan_run(config(**flags), obs),  # type: ignore[arg-type]
    "cleanup": lambda obs, flags: plan_cleanup(config(**flags), obs),  # type: ignore[arg-type]
    "skip-next": lambda obs, flags: plan_skip_next(config(**flags), obs),  # type: ignore[arg-type]
}


@pytest.mark.parametrize(
    ("planner", "flags", "subvols", "top_read_only", "immutable", "code"),
    [
        ("run", {}, [*LAYOUT], True, "", "read-only-subvolume"),  # the root renamed out of the top level
        ("run", {}, [*LAYOUT, (TRASH_DIR, True)], False, "", "read-only-subvolume"),  # ... into a read-only trash
        ("run", {"subvolume": "sys/root"}, [("sys", True), "sys/root", "persist"], False, "", "read-only-subvolume"),
        ("run", {"archive": "old"}, [*LAYOUT, ("old", True)], False, "", "read-only-subvolume"),
        ("run", {"archive": "a/old"}, [*LAYOUT, ("a", True)], False, "", "read-only-subvolume"),  # a/old made in a
        ("run", {"mode": "snapshot"}, [*LAYOUT, ("root-blank", True)], True, "", "read-only-subvolume"),
        ("skip-next", {}, [*LAYOUT], True, "", "read-only-subvolume"),  # .rollback made in the top level
        ("cleanup", {}, [*LAYOUT, (TRASH_DIR, True), ENTRY], False, "", "read-only-subvolume"),
        ("cleanup", {}, [*LAYOUT, ENTRY], False, TRASH_DIR, "immutable"),  # deleted the nested ones, then EPERM
    ],
)
def test_a_place_a_plan_changes_in_a_read_only_subvolume_or_pinned_is_refused(
    planner: str,
    flags: dict[str, object],
    subvols: list[str | tuple[str, bool]],
    top_read_only: bool,
    immutable: str,
    code: str,
) -> None:
    """btrfs answers EROFS (EPERM for +i) at the step: exit 1 at every boot (every cleanup, after its
    first deletes). Now refused before the first change."""
    obs = replace(
        observe(subvols, dirs=[TRASH_DIR] if (TRASH_DIR, True) not in subvols else []),
        top_read_only=top_read_only,
        immutable=frozenset({immutable} if immutable else ()),
    )
    with pytest.raises(Refused) as refused:
        PLANNERS[planner](obs, flags)
    assert refused.value.code == code, refused.value.reason


@pytest.mark.parametrize(
    ("planner", "subvols"),
    [
        ("run", [*LAYOUT, (f"{ENTRY}", True)]),  # a read-only leftover in the trash: unlocked, deleted
        ("cleanup", [*LAYOUT, (f"{ENTRY}", True), f"{ENTRY}/var"]),
        ("run", [*LAYOUT, ("persist/ro", True)]),  # elsewhere: none of the run's business
        ("skip-next", [*LAYOUT, ("persist", True)]),
    ],
)
def test_read_only_subvolumes_a_plan_does_not_change_in_are_fine(
    planner: str, subvols: list[str | tuple[str, bool]]
) -> None:
    assert PLANNERS[planner](observe(subvols, dirs=[TRASH_DIR]), {}).steps


def test_the_trash_is_not_a_directory_one_can_choose() -> None:
    """Its bad-holder hint said "or choose another trash directory": no setting chooses it."""
    with pytest.raises(Refused) as refused:
        plan_run(config(), observe(["root"], files=[TRASH_DIR]))
    assert refused.value.code == "bad-holder" and "choose" not in refused.value.hint


def test_archived_roots_may_hold_nested_subvolumes() -> None:
    plan = plan_run(config(archive="old"), observe(["root", "old/20261101T000000Z", "old/20261101T000000Z/var"]))
    assert Rename("root", f"old/{STAMP}") in plan.steps


def test_protected_subvolumes_beside_the_root_are_fine() -> None:
    assert Create("root") in plan_run(config(), observe(LAYOUT)).steps


def test_paths_of_interest_include_parents() -> None:
    paths = paths_of_interest(config(subvolume="@/root", archive="a/b"))
    assert {"@", "@/root", "a", "a/b", ".rollback", TRASH_DIR, "root-blank", SKIP_MARK} <= set(paths)


def test_pending_cleanup_is_waited_for_before_anything_needs_space() -> None:
    obs = replace(observe(["root"], dirs=[TRASH_DIR]), pending_cleanup=(300,))
    assert plan_run(config(), obs).steps[:2] == (Reclaim(), Rename("root", f"{TRASH_DIR}/{STAMP}"))


def test_a_normal_run_does_not_wait_for_the_cleaner() -> None:
    assert Reclaim() not in plan_run(config(), observe(["root"], dirs=[TRASH_DIR])).steps


@pytest.mark.parametrize(("read_only", "pinned"), [(True, False), (False, True), (True, True)])
def test_pruned_archived_roots_are_unlocked_before_they_move(read_only: bool, pinned: bool) -> None:
    """Read-only (btrfs send needs it so): unlocked and pruned. Immutable (chattr +i/+a), which only a
    person sets: kept, never pruned (it was unlocked and deleted; found by a settings tester)."""
    old = "old/20200101T000000Z"
    obs = observe([(old, read_only), "root"], dirs=[TRASH_DIR])
    obs = replace(obs, immutable=frozenset({old} if pinned else ()))
    steps = plan_run(config(archive="old", keep_count=1), obs).steps
    if pinned:
        assert not any(old in (getattr(step, "path", ""), getattr(step, "source", "")) for step in steps), steps
        return
    unlock = steps.index(Unlock(old))
    assert steps[unlock + 1] == Rename(old, f"{TRASH_DIR}/{STAMP}")


@pytest.mark.parametrize(
    ("flags", "pinned", "code"),
    [
        ({}, "root", "immutable"),
        ({}, "", "immutable"),
        ({}, TRASH_DIR, "immutable"),
        ({}, ".rollback", "immutable"),
        ({"subvolume": "a/root"}, "a", "immutable"),
        ({"archive": "old"}, "old", "immutable"),
        ({"archive": "x/old"}, "x", "immutable"),
    ],
)
def test_immutable_places_on_the_way_are_refused(flags: dict[str, str], pinned: str, code: str) -> None:
    target = flags.get("subvolume", "root")
    archive = flags.get("archive")
    obs = observe([target], dirs=[TRASH_DIR, *([archive] if archive else [])])
    with pytest.raises(Refused) as caught:
        plan_run(config(**flags), replace(obs, immutable=frozenset({pinned})))
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("flags", "subvols", "dirs", "pinned"),
    [
        ({"archive": "x/y/old"}, ["root"], ["x", TRASH_DIR], "x"),  # MakeDir x/y would fail: EPERM
        ({"subvolume": "a/b/root"}, [], ["a", TRASH_DIR], "a"),  # a first run: a/b made in a
        ({"subvolume": "sys/root"}, ["sys/root"], [], ""),  # no .rollback yet: made in the top level
    ],
)
def test_an_immutable_directory_something_would_be_made_in_is_refused(
    flags: dict[str, str], subvols: list[str], dirs: list[str], pinned: str
) -> None:
    """Not only the parents: the nearest existing directory of a missing one (was: step-failed at every boot)."""
    obs = replace(observe(subvols, dirs=dirs), immutable=frozenset({pinned}))
    with pytest.raises(Refused) as caught:
        plan_run(config(**flags), obs)
    assert caught.value.code == "immutable"


def test_a_read_only_root_is_refused() -> None:
    assert refusal({}, subvols=[("root", True)]) == "read-only-target"


# --- cleanup after boot --------------------------------------------------------------------


@pytest.mark.parametrize("cleanup", ["boot", "after-boot"])
@pytest.mark.parametrize("mode", ["recreate", "snapshot"])
@pytest.mark.parametrize("archive", [{}, {"archive": "old", "keep_count": 1}, {"archive": "old", "keep_count": 3}])
@pytest.mark.parametrize("leftover", [False, True])
def test_every_run_ends_with_what_it_changed_committed(
    cleanup: str, mode: str, archive: dict[str, str | int], leftover: bool
) -> None:
    """The run says what it did only once it is on the disk: after its last change comes a commit (the
    unmount's own commit says nothing when it fails: a dying disk, exit 0 and "N deleted" while no
    delete reached it). One commit: none where nothing changed since the last."""
    layout: list[str | tuple[str, bool]] = [*LAYOUT, ("root-blank", True), "old/20261101T000000Z"]
    layout += [f"{TRASH_DIR}/20261124T060000Z"] if leftover else []
    plan = plan_run(config(cleanup=cleanup, mode=mode, **archive), observe(layout, dirs=[TRASH_DIR]))
    assert plan.steps[-1] == Commit()
    assert plan.steps[-2] != Commit()


@pytest.mark.parametrize("mode", ["recreate", "snapshot"])
def test_after_boot_cleanup_leaves_the_old_root_in_the_trash(mode: str) -> None:
    """The boot does only constant-time steps: the deletes are the cleanup's."""
    layout: list[str | tuple[str, bool]] = [*LAYOUT, ("root-blank", True)]
    plan = plan_run(config(cleanup="after-boot", mode=mode), observe(layout, dirs=[TRASH_DIR]))
    assert Rename("root", f"{TRASH_DIR}/{STAMP}") in plan.steps
    assert [s for s in plan.steps if isinstance(s, Delete | Reclaim)] == []


def test_after_boot_cleanup_still_deletes_what_earlier_boots_left_first() -> None:
    """The cleanup never ran: the boot deletes what earlier boots left (bounded), then moves today's."""
    leftover = f"{TRASH_DIR}/20261124T060000Z"
    plan = plan_run(config(cleanup="after-boot"), observe([*LAYOUT, leftover, f"{leftover}/var"]))
    assert plan.steps[:2] == (Delete(leftover, 2), Commit())
    assert plan.steps[2:] == (Rename("root", f"{TRASH_DIR}/{STAMP}"), Create("root"), Commit())


@pytest.mark.parametrize("cleanup", ["boot", "after-boot"])
@pytest.mark.parametrize("root", [True, False])
@pytest.mark.parametrize("pending", [(), (300,)])
def test_the_kernels_cleaner_is_waited_for_only_where_room_is_needed(
    cleanup: str, root: bool, pending: tuple[int, ...]
) -> None:
    """What earlier runs left is deleted first without waiting for the kernel to free it (a boot with
    room waited 1.5-2.2 s for a leftover of 1M empty files); the wait stays where room is known to be short (a step
    found none: verbs._after_leftovers), where the create alone stands between the boot and no root,
    and, deleting at boot, for what earlier runs deleted."""
    leftover = f"{TRASH_DIR}/20261124T060000Z"
    layout = LAYOUT if root else [p for p in LAYOUT if p.partition("/")[0] != "root"]
    obs = replace(observe([*layout, leftover, f"{leftover}/var"]), pending_cleanup=pending)
    plan = plan_run(config(cleanup=cleanup), obs)
    waits = [s for s in plan.steps if isinstance(s, Reclaim)]
    assert plan.steps[0] == Delete(leftover, 2), plan.describe()
    assert waits == ([] if root and not (pending and cleanup == "boot") else [Reclaim()]), plan.describe()
    assert plan.steps[1] == (waits[0] if waits else Commit())  # on disk before the first move either way
    # the leftover deleted, and still being freed: going on after a step found no room waits first
    after = replace(observe(layout, dirs=[TRASH_DIR]), pending_cleanup=(300,))
    assert [s for s in plan_run(config(cleanup=cleanup), after).steps if isinstance(s, Reclaim)] == (
        [] if root and cleanup == "after-boot" else [Reclaim() if root else Reclaim(timeout_s=300.0)]
    )
    short = plan_run(config(cleanup=cleanup), after, short_of_room=True)
    assert short.steps[0] == (Reclaim() if root else Reclaim(timeout_s=300.0)), short.describe()


def test_after_boot_pruned_archives_wait_in_the_trash_too() -> None:
    old = "old/20260101T000000Z"
    flags = {"cleanup": "after-boot", "archive": "old", "keep_count": 1, "keep_min": 0}
    plan = plan_run(config(**flags), observe([*LAYOUT, old], dirs=[TRASH_DIR]))  # type: ignore[arg-type]
    assert Rename(old, f"{TRASH_DIR}/{STAMP}") in plan.steps
    assert [s for s in plan.steps if isinstance(s, Delete)] == []


def test_cleanup_deletes_every_trash_entry_oldest_first() -> None:
    first, second = f"{TRASH_DIR}/20261123T060000Z", f"{TRASH_DIR}/20261124T060000Z"
    plan = plan_cleanup(config(), observe([*LAYOUT, first, f"{first}/var", second]))
    assert plan.steps == (Delete(first, 2), Delete(second, 1), Reclaim(timeout_s=3600.0))
    assert plan_cleanup(config(), observe(LAYOUT, dirs=[TRASH_DIR])).steps == ()


@pytest.mark.parametrize(
    ("extra", "obs_args", "code"),
    [
        (
            [f"{TRASH_DIR}/{STAMP}", f"{TRASH_DIR}/{STAMP}/srv"],
            {"mounted": {f"{TRASH_DIR}/{STAMP}/srv": "/srv"}},
            "mounted",
        ),
        ([f"{TRASH_DIR}/{STAMP}"], {"default": f"{TRASH_DIR}/{STAMP}"}, "default-subvolume"),
        ([f"{TRASH_DIR}/{STAMP}", f"{TRASH_DIR}/{STAMP}/persist"], {}, "protected-inside"),
        ([f"{TRASH_DIR}/not-ours"], {}, "foreign-subvolume"),
    ],
)
def test_cleanup_refuses_what_a_run_refuses(extra: list[str], obs_args: dict[str, object], code: str) -> None:
    with pytest.raises(Refused) as caught:
        plan_cleanup(config(), observe([*LAYOUT, *extra], **obs_args))  # type: ignore[arg-type]
    assert caught.value.code == code


def test_after_boot_a_boot_does_not_wait_for_the_cleaners_work_on_the_cleanups_deletes() -> None:
    """Deleted subvolumes the kernel has not cleaned yet (the cleanup ran late): a boot with cleanup after
    boot does not wait for them (its Reclaim could take a minute); deletion at boot still does."""
    obs = replace(observe(LAYOUT, dirs=[TRASH_DIR]), pending_cleanup=(300, 301))
    assert Reclaim() not in plan_run(config(cleanup="after-boot"), obs).steps
    assert Reclaim() in plan_run(config(), obs).steps


@pytest.mark.parametrize(
    "flags", [{}, {"archive": "old"}, {"mode": "snapshot"}, {"cleanup": "after-boot"}, {"subvolume": "@/root"}]
)
def test_only_a_failed_making_of_the_new_root_puts_the_old_one_back(flags: dict[str, str]) -> None:
    target = flags.get("subvolume", "root")
    obs = observe([target, ("root-blank", True), "persist", f"old/{STAMP}-0"], dirs=[TRASH_DIR])
    steps = plan_run(config(**flags), obs).steps
    making = next(
        n
        for n, s in enumerate(steps, 1)
        if isinstance(s, Create | Snapshot) and target in (getattr(s, "path", None), getattr(s, "dest", None))
    )
    moved = next(s for s in steps if isinstance(s, Rename) and s.source == target)
    assert put_back(steps, making) == Rename(moved.dest, target)
    assert [n for n in range(1, len(steps) + 1) if put_back(steps, n)] == [making]


def test_nothing_is_put_back_when_there_was_no_old_root() -> None:
    steps = plan_run(config(), observe(["persist"], dirs=[TRASH_DIR])).steps
    assert steps == (Create("root"), Commit()) and put_back(steps, 1) is None


@pytest.mark.parametrize(
    ("flags", "moved_only"),
    [
        ({"cleanup": "after-boot"}, {"root"}),
        ({"cleanup": "after-boot", "archive": "old"}, {"root", f"old/{STAMP}"}),
        ({"cleanup": "after-boot", "archive": "old", "subvolume": "sys/root"}, {"sys/root", f"old/{STAMP}"}),
        ({"cleanup": "boot"}, set()),
        ({"cleanup": "boot", "archive": "old"}, set()),
    ],
)
def test_what_a_run_moves_without_deleting_is_listed_by_protected_names(
    flags: dict[str, str], moved_only: set[str]
) -> None:
    """A run deleting at boot lists every tree it deletes whole; after boot, the root and the archived
    roots are only moved (inside them a run lists protected names; the cleanup lists them whole), the
    trash's leftovers are deleted: whole."""
    asked = [
        "root", "sys/root", "root/var/lib/machines", f"old/{STAMP}", "old/my-backup", f"old/{STAMP}/nested",
        f"{TRASH_DIR}/{STAMP}", "persist", "nix", f"archive/{STAMP}", "",
    ]  # fmt: skip
    assert {path for path in asked if only_moved(config(**flags), path)} == moved_only


def test_a_run_leaving_the_delete_to_the_cleanup_still_looks_for_protected_names_at_any_depth() -> None:
    assert bounds(config()) is None and bounds(config(archive="old")) is None  # deleting at boot: everything
    found = bounds(config(cleanup="after-boot", protect=["persist", "data/nix", "home"]))
    assert found is not None and found.named == {"persist", "nix", "home"}
    assert found.shallow("root") and not found.shallow("persist")


def test_a_mark_for_a_reused_subvolume_id_is_not_this_roots() -> None:
    """btrfs gives a deleted subvolume's id to the next one after a remount: a mark for the old root must
    not keep the new root that has its id (found by a reviewer); the uuid tells them apart."""
    obs = observe(LAYOUT, skip_mark=True)
    found = obs.get("root")
    assert found is not None
    root = replace(found, uuid="a1")
    obs = replace(obs, subvols=tuple(root if s.path == "root" else s for s in obs.subvols))
    for uuid, applies in (("", True), ("a1", True), ("0" * 32, False)):
        marked = replace(obs, skip_mark_for=MarkFor(root.id, uuid))
        assert mark_applies(config(), marked) is applies
        assert bool(plan_run(config(), marked).skipped) is applies


def test_a_mark_left_for_another_root_says_how_to_remove_it() -> None:
    """The subvolume setting changed after skip-next: the mark for the old name is left, warned of at
    every boot, and skip-next for the new root refused `mark-taken`; the warning gave no way out (a
    tester of settings changed between boots)."""
    obs = observe([*LAYOUT, "@root"], skip_mark=True)
    found = obs.get("root")
    assert found is not None
    marked = replace(obs, skip_mark_for=MarkFor(found.id, ""))
    plan = plan_run(config(subvolume="@root"), marked)
    assert not plan.skipped
    (said,) = [w for w in plan.warnings if "skip-next mark" in w]
    assert "it is left" in said and "rm <top>/.rollback/skip-next" in said, said


def test_a_cleanup_entry_that_cannot_be_checked_again_is_a_failure_not_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exit 3 says the device was left as it was; the re-check before the second entry met a refusal
    (the device link removed meanwhile) after the first was deleted: it said exit 3 (an auditing helper)."""
    from rollback.effects import btrfs, device
    from rollback.errors import Refused, StepFailed
    from rollback.verbs import _as_checked

    def gone(_device: str) -> str:
        raise Refused("device /dev/test does not exist", "check --device", code="no-device")

    obs = observe(["root", f"{TRASH_DIR}/{STAMP}"])
    monkeypatch.setattr(btrfs, "ids_within", lambda top, path: {257})
    monkeypatch.setattr(device, "probe", gone)
    with pytest.raises(StepFailed) as failed:
        doomed = Delete(f"{TRASH_DIR}/{STAMP}", 1)
        _as_checked(config(), obs, Path("/nonexistent"), Plan((doomed,)), doomed)
    assert failed.value.code == "step-failed" and "could not be checked again" in failed.value.reason
    assert "does not exist" in failed.value.reason and "check --device" in failed.value.hint


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        (("subvol=root",), ""),
        (("subvol=/root", "rw"), ""),
        (("compress=zstd:3", "subvol=root/", "noatime"), ""),
        (("subvol=other", "subvol=root"), ""),  # the last one counts, as the kernel reads them
        ((), ""),  # the default subvolume: nothing named here to compare
        (("subvolid=256",), "by subvolume id (subvolid=256"),
        (("subvol=root", "subvolid=256"), "by subvolume id"),
        (("subvol=@",), "from subvol=@ (sysroot.mount's options), not from 'root'"),
        (("subvol=root", "subvol=/@/root"), "from subvol=/@/root"),
        (("subvol=ro ot",), "from subvol=ro ot"),
    ],
)
def test_the_initrds_root_mount_must_name_the_subvolume_replaced(options: tuple[str, ...], refused: str) -> None:
    """By id, the boot mounted the old root from the trash (and the next boot, having deleted it, had
    none); from another subvolume, every boot replaced one nothing used (a unit reviewer's finding)."""
    from rollback.errors import Refused
    from rollback.plan import check_root_options

    if not refused:
        check_root_options(config(), options)
        return
    with pytest.raises(Refused) as said:
        check_root_options(config(), options)
    assert refused in said.value.reason and said.value.code == "root-options"
    assert "rootflags=" in said.value.hint


@pytest.mark.parametrize(
    ("options", "default", "refused"),
    [
        (("subvol=root",), None, ""),  # named: the default does not matter
        (("subvol=root",), "root", ""),  # (that refusal is default-subvolume's, with the root's tree)
        (("subvolid=256",), None, ""),  # by id: refused before mounting (above)
        ((), None, "that is the top level, not 'root': every boot would replace one nothing uses"),
        (("rw", "compress=zstd"), "persist", "that is 'persist' (id 256), not 'root'"),
        (("ro",), "root", "the old root keeps its id when it is moved away, so the boot would mount it"),
    ],
)
def test_an_initrd_mounting_the_default_subvolume_mounts_the_root_replaced(
    options: tuple[str, ...], default: str | None, refused: str
) -> None:
    """No subvol=: the kernel mounts the default subvolume, the top level unless set: every boot replaced
    `root` beside the root actually booted (`/root`, root's home, wiped), and said it was done."""
    from rollback.plan import check_root_default

    obs = observe(["persist", "root"], default=default)
    if not refused:
        check_root_default(config(), options, obs)
        return
    with pytest.raises(Refused) as said:
        check_root_default(config(), options, obs)
    assert refused in said.value.reason and said.value.code == "root-options", said.value.reason
    assert "neither subvol= nor subvolid=" in said.value.reason and "rootflags=subvol=root" in said.value.hint


@pytest.mark.parametrize(
    ("unit", "mount"),
    [
        (
            "[Mount]\nWhat=/dev/vda\nWhere=/sysroot\nType=btrfs\nOptions=subvol=root,rw\n",
            ("/dev/vda", ("subvol=root", "rw")),
        ),
        ("[Mount]\nOptions=subvol=a\nOptions= subvol=100%%,ro \nWhat=/dev/x%%y\n", ("/dev/x%y", ("subvol=100%", "ro"))),
        ("[Mount]\nWhat=/dev/vda\n", ("/dev/vda", ())),
    ],
)
def test_the_root_mount_is_read_from_the_generated_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unit: str, mount: tuple[str, tuple[str, ...]]
) -> None:
    from rollback.effects import sysroot

    (tmp_path / "sysroot.mount").write_text(unit)
    monkeypatch.setenv(sysroot.SYSROOT_UNIT_ENV, str(tmp_path / "sysroot.mount"))
    assert sysroot.root_mount() == mount
    monkeypatch.setenv(sysroot.SYSROOT_UNIT_ENV, str(tmp_path / "none"))
    assert sysroot.root_mount() is None  # outside an initrd


def test_the_root_mount_is_the_unit_systemd_would_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """root=gpt-auto: gpt-auto's generator writes sysroot.mount to the late directory, which the check
    did not read (one place only); a unit anywhere before it in systemd's search path wins over it."""
    from rollback.effects import sysroot

    assert sysroot.UNIT_DIRS[-1] == "/run/systemd/generator.late"  # systemd's order: the late one last
    assert sysroot.UNIT_DIRS.index("/etc/systemd/system") < sysroot.UNIT_DIRS.index("/run/systemd/generator")
    dirs = [tmp_path / Path(d).name for d in ("generator", "late")]
    monkeypatch.setattr(sysroot, "UNIT_DIRS", tuple(str(d) for d in dirs))
    assert sysroot.root_mount() is None
    dirs[1].mkdir()
    (dirs[1] / "sysroot.mount").write_text("[Mount]\nWhat=/dev/gpt-auto-root\nOptions=subvol=@\n")
    assert sysroot.root_mount() == ("/dev/gpt-auto-root", ("subvol=@",))
    dirs[0].mkdir()
    (dirs[0] / "sysroot.mount").write_text("[Mount]\nWhat=/dev/vda\nOptions=subvol=root\n")
    assert sysroot.root_mount() == ("/dev/vda", ("subvol=root",))


@pytest.mark.parametrize(
    ("subvols", "taken"),
    [(["root", "root/srv/home"], False), (["home", "root", "root/srv/home"], True)],
    ids=["free", "taken"],
)
def test_the_hint_for_a_protected_subvolume_in_the_root_moves_it_to_a_free_name(
    subvols: list[str], taken: bool
) -> None:
    """ "move it to the top level (e.g. 'home')" with home there: mv put it inside home, and the run then
    passed with the data nested in the wrong place (a docs auditor)."""
    with pytest.raises(Refused) as said:
        plan_run(config(), observe(subvols))
    assert said.value.code == "protected-inside"
    assert "mv <top>/root/srv/home <top>/NAME" in said.value.hint and "e.g." not in said.value.hint
    assert ("'home' is taken" in said.value.hint) == taken


def test_hints_do_not_name_what_gets_a_subvolume_deleted_or_blame_a_crash_for_a_typo() -> None:
    """The foreign-subvolume hint taught the naming rule (renamed so, a user's subvolume is deleted);
    nothing-to-keep for a misspelt name said a run was cut short, and `rollback run` (a docs auditor)."""
    with pytest.raises(Refused) as foreign:
        plan_run(config(archive="old"), observe(["root", "old/snapshot-of-home"]))
    assert "20260101T000000Z" not in foreign.value.hint and "rollback's to delete" in foreign.value.hint
    with pytest.raises(Refused) as missing:
        plan_skip_next(config(subvolume="nothere"), observe(["persist"]))
    assert "or that is not the root's name" in missing.value.reason and "check --subvolume" in missing.value.hint


def test_options_set_in_a_drop_in_count_as_systemd_applies_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Options= in sysroot.mount.d/*.conf were not read: with none in the unit, the default-subvolume
    check refused a root the drop-in mounted by name (a reviewer). By file name; an earlier directory's
    file hides the same name in a later one."""
    from rollback.effects import sysroot

    early, late = tmp_path / "early", tmp_path / "late"
    monkeypatch.setattr(sysroot, "UNIT_DIRS", (str(early), str(late)))
    (late / "sysroot.mount.d").mkdir(parents=True)
    (late / "sysroot.mount").write_text("[Mount]\nWhat=/dev/vda\nOptions=rw\n")
    (late / "sysroot.mount.d" / "50-root.conf").write_text("[Mount]\nOptions=subvol=@\n")
    (late / "sysroot.mount.d" / "10-first.conf").write_text("[Mount]\nOptions=subvol=other\n")
    (late / "sysroot.mount.d" / "rollback.conf").write_text("[Unit]\nRequires=rollback@x.service\n")
    assert sysroot.root_mount() == ("/dev/vda", ("subvol=@",))
    (early / "sysroot.mount.d").mkdir(parents=True)
    (early / "sysroot.mount.d" / "50-root.conf").write_text("[Mount]\nOptions=subvol=root,compress=zstd\n")
    assert sysroot.root_mount() == ("/dev/vda", ("subvol=root", "compress=zstd"))


@pytest.mark.parametrize(
    ("layers", "named"),
    [
        (({}, {}, {"subvolume": "plain"}), "check --subvolume"),
        (({}, {"subvolume": "plain"}, {}), "check rollback.subvolume= on the kernel command line"),
        (({"subvolume": "plain"}, {}, {}), "check subvolume in /etc/rollback.toml"),
        (({}, {}, {}), "check the subvolume setting (its default now)"),
    ],
    ids=["flag", "kernel command line", "config file", "default"],
)
def test_a_hint_names_the_setting_as_it_was_given(layers: tuple[dict[str, str], ...], named: str) -> None:
    """At boot the value comes from the config file or the command line: "check --subvolume" sent the
    user looking for a flag nobody gave."""
    file, cmdline, flags = layers
    target = {**file, **cmdline, **flags}.get("subvolume", "root")
    cfg = resolve(file, cmdline, {"device": "/dev/test", **flags}, "/etc/rollback.toml")
    with pytest.raises(Refused) as caught:
        plan_run(cfg, observe(["persist"], dirs=[target]))
    assert caught.value.code == "not-subvolume" and named in caught.value.hint, caught.value.hint


def test_the_mounted_and_foreign_subvolume_hints_fit_where_they_are_met() -> None:
    """A trash entry mounted (the cleanup on the running system): the hint said "run from the initrd or a
    rescue system", where unmounting it is the fix; a foreign subvolume in the archive (snapper's in
    `@snapshots`): only "move them out", which breaks its owner, not "choose another archive" (found by
    a layouts tester)."""
    entry = f"{TRASH_DIR}/20260101T000000Z"
    with pytest.raises(Refused) as caught:
        plan_cleanup(config(), observe(["root", entry], mounted={entry: "/mnt/x"}))
    assert caught.value.hint == "unmount /mnt/x", caught.value.hint
    with pytest.raises(Refused) as caught:
        plan_run(config(), observe(["root"], mounted={"root": "/"}))
    assert caught.value.hint == "run from the initrd or a rescue system, not on the running root"
    with pytest.raises(Refused) as caught:
        plan_run(config(), observe(["root", "root/srv"], mounted={"root/srv": "/srv"}))
    assert caught.value.hint == "unmount /srv; or run from the initrd or a rescue system, not on the running root"
    with pytest.raises(Refused) as caught:
        plan_run(config(archive="old"), observe(["root", "old/1/snapshot"]))
    assert caught.value.code == "foreign-subvolume" and "or choose another archive directory (--archive)" in (
        caught.value.hint
    ), caught.value.hint


@pytest.mark.parametrize(
    ("flags", "layout", "warned"),
    [
        ({}, {"subvols": ["root", "persist"], "dirs": ["root/persist", "root/persist/etc"]}, True),
        ({}, {"subvols": ["root", "persist"], "dirs": ["root/persist"], "empty": ["root/persist"]}, False),
        ({}, {"subvols": ["root"], "dirs": ["root/home", "root/home/alice"]}, False),  # no `home` to mount there
        ({"archive": "old"}, {"subvols": ["root", "persist"], "dirs": ["root/persist", "root/persist/x"]}, False),
        (
            {"mode": "snapshot"},
            {"subvols": [("root-blank", True), "root", "persist"], "dirs": ["root/persist/x", "root-blank/persist/x"]},
            False,
        ),
        (
            {"mode": "snapshot"},
            {"subvols": [("root-blank", True), "root", "persist"], "dirs": ["root/persist/x", "root-blank/persist"]}
            | {"empty": ["root-blank/persist"]},
            True,
        ),
        (
            {"mode": "snapshot"},
            {"subvols": [("root-blank", True), "root", "persist"], "dirs": ["root/persist/x"]},
            True,
        ),
    ],
    ids=[
        "written",
        "empty mount point",
        "no such subvolume",
        "archived, not erased",
        "held by the blank: every root has it",
        "empty in the blank",
        "not in the blank",
    ],
)
def test_a_protected_subvolumes_mount_point_with_something_in_it_is_warned_of(
    flags: dict[str, str], layout: dict[str, list[str]], warned: bool
) -> None:
    """/persist failed to mount and something wrote there: the root's directory held it, and the run
    erased it without a word (found by a layouts tester). Said; the run goes on as asked."""
    plan = plan_run(config(**flags), observe(**layout))  # type: ignore[arg-type]
    said = [w for w in plan.warnings if "is a directory with something in it, not an empty mount point" in w]
    assert bool(said) == warned, plan.warnings


def test_only_a_run_without_the_machines_settings_is_refused_for_an_archive_it_was_not_given() -> None:
    """The initrd's settings are the machine's, and so is a config file: a boot (or a run by hand with the
    file) whose archive was turned off goes on (refusing would stop every boot); with none of them (a
    rescue shell), refused (archive-unset), unless no root would be deleted (found by a reviewer)."""
    obs = observe([*LAYOUT, "old_roots/20261120T060000Z"])
    assert plan_run(config(), obs).steps
    with pytest.raises(Refused) as refused:
        plan_run(config(), obs, bare=True)
    assert refused.value.code == "archive-unset" and "--archive 'old_roots' --keep-days 0" in refused.value.hint
    assert plan_run(config(archive=""), obs, bare=True).steps  # as asked
    assert plan_run(config(), observe([*LAYOUT, "20261120T060000Z"]), bare=True).steps  # not an archive's
    assert plan_run(config(), observe(["old_roots/20261120T060000Z"]), bare=True).steps  # no root: a run cut short
    untouched_root = replace(obs, empty=frozenset({"root"}))
    assert plan_run(config(), untouched_root, bare=True).steps  # nothing used it: nothing lost


_DEEP = "/".join(f"{level:03d}" + "d" * 197 for level in range(22)) + "/deep"  # 4.4 KB below what holds it
_ENTRY = f"{TRASH_DIR}/20261120T060000Z"


@pytest.mark.parametrize("cleanup", ["boot", "after-boot"])
def test_a_tree_deeper_than_a_path_reaches_is_deleted_like_any_other(cleanup: str) -> None:
    """Such a trash entry was refused at every boot, then left in the trash for good, with a warning at
    every run (the delete went by paths from the deleted subvolume); the delete now reaches each nested
    subvolume from its parent directory, so the plan has nothing to leave or say."""
    obs = observe([*LAYOUT, _ENTRY, f"{_ENTRY}/{_DEEP}", f"root/{_DEEP}"])
    plan = plan_run(config(cleanup=cleanup), obs)
    assert plan.steps[0] == Delete(_ENTRY, 2) and Create("root") in plan.steps, plan.describe()
    moved = Delete(f"{TRASH_DIR}/20261125T060000Z", len(obs.tree("root")))
    assert (moved in plan.steps) is (cleanup == "boot") and plan.warnings == (), plan.describe()
    assert plan_cleanup(config(cleanup=cleanup), obs).steps == (Delete(_ENTRY, 2), Reclaim(timeout_s=3600.0))


@pytest.mark.parametrize(("target", "warned"), [("Root", True), ("ROOT", True), ("root2", False), ("sys/root", False)])
def test_a_target_misspelt_but_for_case_is_warned_of(target: str, warned: bool) -> None:
    """`--subvolume Root` made a new root beside `root`, exit 0, "created" only (a recovery tester)."""
    plan = plan_run(config(subvolume=target), observe(LAYOUT))
    said = [w for w in plan.warnings if "a misspelt name" in w]
    assert bool(said) == warned, plan.warnings
    assert not said or said[0].startswith(f"there is no '{target}', and there is 'root'"), said


def test_hints_that_would_harm_if_followed_say_when_they_apply() -> None:
    """`blank = "home"`: "btrfs property set ... home ro true" would make home read-only; a protected
    subvolume in a trash entry: mv without the run lock races the cleanup (found by a settings tester)."""
    with pytest.raises(Refused) as writable:
        plan_run(config(mode="snapshot", blank="home"), observe(LAYOUT))
    assert writable.value.hint.startswith("if it is the blank, empty as a new root should be: ") and (
        "else check --blank" in writable.value.hint
    ), writable.value.hint
    with pytest.raises(Refused) as inside:
        plan_cleanup(config(), observe([*LAYOUT, _ENTRY, f"{_ENTRY}/persist"]))
    assert f"flock /run/rollback-locks/<fsid> mv <top>/{_ENTRY}/persist <top>/NAME" in inside.value.hint


def test_a_pinned_archived_root_still_vouches_for_the_roots_archived_after_it() -> None:
    """Pinned (chattr +i) and left out of the list, its stamp no longer kept the roots named after it
    under a reset clock from being aged out: pinning one root deleted three newer ones (found by a
    reviewer). Pinned: never pruned nor counted; its stamp counts for the rest as before."""
    good = "old/20261120T060000Z"
    reset = [f"old/20200101T00000{n}Z" for n in range(1, 6)]
    flags: dict[str, str | int] = {"archive": "old", "keep_days": 30}
    obs = observe([good, *reset, "root"], dirs=[TRASH_DIR])
    assert prune_paths(config(**flags), obs) == []
    pinned_obs = replace(obs, immutable=frozenset({good}))
    assert prune_paths(config(**flags), pinned_obs) == []
    assert prune_paths(config(**flags, keep_count=2), pinned_obs) == reset[:4]  # the pinned one not counted


OS_ROOT: list[str | tuple[str, bool]] = [*LAYOUT, ("root-blank", True)]
HOLDS, WITHOUT = SystemSigns(found=True, whole=True, usr_in_fstab=False), SystemSigns(False, True, False)


@pytest.mark.parametrize(
    ("flags", "root", "blank", "blank_made_root", "elsewhere", "refused"),
    [
        ({}, HOLDS, None, False, None, True),  # recreate: an empty root where the system was
        ({"archive": "old"}, HOLDS, None, False, None, True),  # kept, but the new root is empty
        ({"cleanup": "after-boot"}, HOLDS, None, False, None, True),
        ({}, HOLDS._replace(whole=False), None, False, None, True),  # its usr a nested subvolume: goes with it
        ({}, HOLDS, None, False, "mount.usr=/dev/vda3 on the kernel command line", False),  # started from elsewhere
        ({}, WITHOUT, None, False, None, False),  # no system in the root: an impermanence root (NixOS's)
        ({}, HOLDS._replace(usr_in_fstab=True), None, False, None, True),  # the empty root has no fstab to mount it
        ({}, WITHOUT._replace(usr_in_fstab=True), None, False, None, True),  # /usr elsewhere, found by its fstab
        ({}, HOLDS._replace(usr_in_fstab=True, whole=False), None, False, None, True),  # mounts its own nested usr
        ({}, HOLDS._replace(found=None), None, False, None, False),  # a link on the way: cannot tell
        ({}, None, None, False, None, False),  # not readable: not judged (a damaged root is replaced as ever)
        ({"mode": "snapshot"}, HOLDS, HOLDS, False, None, False),  # the blank has it
        ({"mode": "snapshot"}, HOLDS, WITHOUT, False, None, True),  # another blank, without the system
        ({"mode": "snapshot"}, HOLDS, HOLDS._replace(whole=False), False, None, True),  # a snapshot leaves it out
        ({"mode": "snapshot"}, HOLDS, WITHOUT._replace(usr_in_fstab=True), False, None, False),  # mounts it
        ({"mode": "snapshot"}, HOLDS, WITHOUT._replace(found=None), False, None, False),  # usr a link: cannot tell
        ({"mode": "snapshot"}, HOLDS, WITHOUT, True, None, True),  # installed into a root made from an empty blank
    ],
)
def test_a_new_root_without_the_system_the_old_one_holds_is_refused(
    flags: dict[str, str],
    root: SystemSigns | None,
    blank: SystemSigns | None,
    blank_made_root: bool,
    elsewhere: str | None,
    refused: bool,
) -> None:
    """A config edited after the install (`mode` dropped: recreate; another blank) made the boot replace
    a root holding the operating system with an empty one: the machine did not come up, and deleting at
    boot the system was gone (a tester of settings changed between boots)."""
    obs = replace(observe(OS_ROOT), systems={"root": root, "root-blank": blank})
    if blank_made_root:
        obs = replace(obs, subvols=tuple(_with_uuids(s) for s in obs.subvols))
    settings = config(**flags)
    assert system_paths(settings) == ["root", *(["root-blank"] if settings.from_blank else [])]
    if not refused:
        check_bootable(settings, obs, elsewhere)
        return
    with pytest.raises(Refused) as raised:
        check_bootable(settings, obs, elsewhere)
    assert raised.value.code == "holds-system" and "would not come up" in raised.value.reason
    deleted = ", and the old root, the system, would be deleted"
    assert (deleted in raised.value.reason) is (not settings.keeping)  # after boot: by the cleanup, or the next boot
    hint = raised.value.hint
    assert hint is not None and "snapshot -r <top>/root <top>/root-blank" in hint and "rollback.skip" in hint
    assert ("set the mode setting (its default now) to snapshot" in hint) is (not settings.from_blank), hint


def _with_uuids(found: Subvol) -> Subvol:
    """The blank (uuid b1) and the root made from it."""
    if isinstance(found, Examined) and found.path in ("root", "root-blank"):
        return replace(found, uuid="b1") if found.path == "root-blank" else replace(found, parent_uuid="b1")
    return found


@pytest.mark.parametrize(("root", "said"), [(WITHOUT, "<empty root>"), (HOLDS, "holding the operating system")])
def test_the_hint_for_a_missing_blank_says_what_the_blank_needs(root: SystemSigns, said: str) -> None:
    """The hint said to snapshot an empty root, which holds-system then refused for a root holding the
    system (a tester of session 22)."""
    obs = replace(observe([item for item in OS_ROOT if item != ("root-blank", True)]), systems={"root": root})
    with pytest.raises(Refused) as raised:
        plan_run(config(mode="snapshot"), obs)
    assert raised.value.code == "no-blank" and said in (raised.value.hint or ""), raised.value.hint


def test_no_room_to_remove_the_skip_next_mark_is_a_refusal() -> None:
    """An unlink reserves its room before it changes anything: the kept boot's removal of the mark failing
    for room changed nothing (was: no-space-midway, "the next run finishes the job", at every boot: a
    reviewer)."""
    from rollback.verbs import _failure

    plan = Plan((RemoveMark(SKIP_MARK), Commit()), skipped="the skip-next mark was set")
    failure = _failure(1, plan, OSError(28, os.strerror(28)), "")
    assert failure.code == "no-space" and "before any change" in failure.reason, failure.reason
