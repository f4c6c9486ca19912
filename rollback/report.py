"""What `status` and `diff` show: pure functions of the config and the observation."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import NotRequired, TypedDict

from rollback import names
from rollback.model import TOP_LEVEL_ID, TRASH_DIR, Examined, Kind, Observation
from rollback.plan import archives_elsewhere, holds_default, mark_applies, orphaned_mark, pinned, prune_paths
from rollback.settings import Config


class When(TypedDict):
    created: str  # ISO 8601, UTC
    age_seconds: int


class RootReport(TypedDict):
    path: str
    kind: str  # model.Kind's value
    id: NotRequired[int]  # these four when it is a subvolume
    nested: NotRequired[int]
    created: NotRequired[str]
    age_seconds: NotRequired[int]


class BlankReport(TypedDict):
    path: str
    exists: bool
    read_only: bool


class ArchivedRoot(TypedDict):
    path: str
    nested: int
    created: str
    age_seconds: int
    pinned: bool  # chattr +i/+a, or the default subvolume: never pruned, not counted
    default: bool  # the default subvolume, or holding it


class ArchiveReport(TypedDict):
    path: str
    roots: list[ArchivedRoot]
    due: list[str]  # what retention prunes at the next boot with room to (kept so far: no room, say)


class ProtectedReport(TypedDict):
    path: str
    id: int
    inside_root: bool


class PendingReport(TypedDict):
    trash: list[str]
    kernel_cleaner: list[int]


class BootedFrom(TypedDict):
    path: str  # escaped; "" for the top level
    id: int


class Status(TypedDict):
    """What `status` shows; `status --json` prints it as is."""

    device: str | None
    fsid: str  # the filesystem's, as blkid shows it (UUID=)
    default_subvolume_id: int
    root: RootReport
    blank: BlankReport
    archive: ArchiveReport | None  # when old roots are kept
    protected: list[ProtectedReport]
    pending: PendingReport
    skip_next: bool  # the mark is set for this root: the next boot keeps it
    skip_next_present: bool  # a mark is there, for this root or not
    skip_next_for: int | None  # the subvolume id a mark names (None: none set, or one for any root)
    skip_next_orphaned: bool  # that subvolume no longer exists: the next run removes the mark
    skip_next_refused: str | None  # why the next run would refuse the mark (plan.check_mark)
    next_boot_refused: str | None  # why the next boot's run would refuse (its plan's checks), the mark's included
    next_boot_warnings: list[str]  # what the next boot's run would warn of (its plan's warnings), when not refused
    next_boot_skipped: str | None  # why a boot with these settings keeps the root (skip set), or None
    archives_elsewhere: dict[str, int]  # other directories holding archived roots (never pruned): how many
    mounted: dict[str, str]  # subvolume id -> where
    missing_devices: list[int]  # member device ids the kernel mounted it without (degraded)
    read_only_devices: list[str]  # member devices read-only: every writing verb refuses (read-only)
    read_only_under: str | None  # a read-write mount over the read-only superblock: forced so after an error?
    booted_from: BootedFrom | None  # the subvolume at / when of this filesystem and not the target
    locked_by: str | None  # another rollback holding the filesystem's lock ("pid N: command"): a run under way


def _when(sub: Examined, now: datetime) -> When:
    created = datetime.fromtimestamp(sub.otime, UTC)
    return {"created": created.isoformat(timespec="seconds"), "age_seconds": int((now - created).total_seconds())}


def _root(config: Config, obs: Observation) -> RootReport:
    found: RootReport = {"path": config.subvolume, "kind": obs.kind(config.subvolume).value}
    root = obs.get(config.subvolume)
    if root:
        when = _when(root, obs.now)
        found["id"], found["nested"] = root.id, len(obs.tree(root.path)) - 1
        found["created"], found["age_seconds"] = when["created"], when["age_seconds"]
    return found


def _archived(sub: Examined, obs: Observation) -> ArchivedRoot:
    when = _when(sub, obs.now)
    return {
        "pinned": pinned(sub.path, obs),
        "default": holds_default(sub.path, obs),
        "path": escape(sub.path),
        "nested": len(obs.tree(sub.path)) - 1,
        "created": when["created"],
        "age_seconds": when["age_seconds"],
    }


def status(
    config: Config,
    obs: Observation,
    read_only: Sequence[str] = (),
    fsid: str = "",
    elsewhere: str | None = None,
    locked_by: str | None = None,
) -> Status:
    """What `status` shows; `read_only`: the member devices (nodes) every writing verb refuses for; `fsid`: which
    filesystem the device named (a LABEL= can name either of two); `elsewhere`: what starts the running
    system from outside its root (plan.check_bootable); `locked_by`: another rollback holding the
    filesystem's lock (a run under way). The members it is mounted without: obs.degraded. Names
    from the device are escaped as `diff` escapes them: a newline in one split a line of the text and
    could fake one; a byte that is not UTF-8 reached the JSON as a lone surrogate."""
    blank = obs.get(config.blank)
    protected = {names.basename(p) for p in config.protect}
    target = obs.get(config.subvolume)
    booted = target is not None and _booted(obs) == target.id  # then the boot checks the next root boots too
    refused, warnings = _next_boot(config, obs, booted=booted, elsewhere=elsewhere)
    kept = mark_applies(config, obs)  # the next boot keeps the root: it prunes nothing either
    return {
        "device": config.device,  # a setting, udev's own escapes (\x20) in it: as given
        "fsid": fsid,
        "default_subvolume_id": obs.default_id,
        "root": _root(config, obs),
        "blank": {"path": config.blank, "exists": blank is not None, "read_only": bool(blank and blank.read_only)},
        "archive": {
            "path": config.archive,
            "roots": [_archived(s, obs) for s in obs.entries(config.archive)],
            "due": [] if kept else [escape(p) for p in prune_paths(config, obs)],
        }
        if config.keeping
        else None,
        "protected": [
            {"path": escape(s.path), "id": s.id, "inside_root": names.is_within(s.path, config.subvolume)}
            for s in obs.subvols
            if names.basename(s.path) in protected
        ],
        "pending": {
            "trash": [escape(s.path) for s in obs.entries(TRASH_DIR)],
            "kernel_cleaner": list(obs.pending_cleanup),
        },
        "skip_next": kept,
        "skip_next_present": obs.skip_mark,
        "skip_next_for": obs.skip_mark_for.id if obs.skip_mark and obs.skip_mark_for else None,
        "skip_next_orphaned": orphaned_mark(obs),
        "skip_next_refused": refused if kept else None,
        "next_boot_refused": refused,
        "next_boot_warnings": list(warnings),
        "next_boot_skipped": _skipped(config),
        "archives_elsewhere": {escape(path): count for path, count in archives_elsewhere(config, obs).items()},
        "mounted": {str(k): v for k, v in sorted(obs.mounted.items())},
        "missing_devices": list(obs.degraded),
        "read_only_devices": list(read_only),
        "read_only_under": obs.read_only_under or None,
        "booted_from": _booted_from(config, obs),
        "locked_by": locked_by,
    }


def _skipped(config: Config) -> str | None:
    """skip set: every run keeps the root (exit 77), the boot's included where it is set for it; status
    said nothing of it (found by a settings tester)."""
    if not config.skip:
        return None
    source = config.sources.get("skip", "default").rpartition(" + ")[2]
    if source == "kernel command line":
        return "rollback.skip is on the kernel command line: a boot with it keeps the root"
    where = "as a flag" if source == "flag" else f"in {source}"
    return f"skip is set {where}: every run keeps the root while it is"


def _booted(obs: Observation) -> int | None:
    """The id of the subvolume of this filesystem mounted at / (the running system's root), if one is."""
    return next((subvol_id for subvol_id, where in obs.mounted.items() if where == "/"), None)


def _booted_from(config: Config, obs: Observation) -> BootedFrom | None:
    """The subvolume mounted at / when that is of this filesystem and not the target: this boot's initrd
    mounted another (rootflags= forgotten, or naming another), and a boot that mounts it so again
    refuses (root-options). None otherwise, and in the initrd (/ is not btrfs there)."""
    booted = _booted(obs)
    target = obs.get(config.subvolume)
    if booted is None or (target is not None and target.id == booted):
        return None
    found = next((s for s in obs.subvols if s.id == booted), None)
    return {"path": escape(found.path) if found else "", "id": booted}


def _next_boot(
    config: Config, obs: Observation, *, booted: bool = False, elsewhere: str | None = None
) -> tuple[str | None, tuple[str, ...]]:
    """Why the next boot's run would refuse, as that run decides it (its plan: with the mark set, only
    removing it, after its checks), or None, and else what it would warn of. That run is the boot's:
    what is mounted now (the running root, what is mounted inside it) is not mounted then. Where the
    root is the booted system's, the boot checks it stays bootable (plan.check_bootable, `elsewhere`)."""
    from dataclasses import replace

    from rollback.errors import Refused
    from rollback.plan import check_bootable, plan_run

    try:
        at_boot = replace(obs, mounted={}, mounted_paths={}, read_only_under="")
        plan = plan_run(config, at_boot)
        if booted and not plan.skipped:
            check_bootable(config, at_boot, elsewhere)
    except Refused as refused:
        return f"{refused.reason} (reason {refused.code})", ()
    return None, plan.warnings


def _age(seconds: int) -> str:
    if seconds < 0:  # made under a clock ahead of this one: one of the two is wrong
        return f"{_span(-seconds)} after this clock's now: a clock is wrong"
    return f"{_span(seconds)} ago"


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def status_lines(report: Status) -> list[str]:
    """`status`'s text: one section per part of the report, in this order."""
    return [
        *_device_lines(report),
        *_subvolume_lines(report),
        *_archive_lines(report),
        *_pending_lines(report),
        *_next_boot_lines(report),
        *_booted_lines(report),
    ]


def _device_lines(report: Status) -> list[str]:
    """The device, and its members missing or read-only."""
    lines = [
        f"device:     {report['device']} (filesystem UUID={report['fsid']}, "
        f"default subvolume id {report['default_subvolume_id']})"
    ]
    if report["locked_by"]:
        lines.append(
            f"RUNNING:    another rollback holds the filesystem's lock ({report['locked_by']}): what follows may be "
            "its work half done (a root missing, an entry in the trash); look again once it has ended"
        )
    if report["missing_devices"]:
        lines.append(
            f"DEGRADED:   device id(s) {', '.join(map(str, report['missing_devices']))} missing (mounted degraded): "
            "rollback's own mount at boot fails without them (mount-failed); replace or remove the "
            "missing device (btrfs replace / btrfs device remove missing)"
        )
    if report["read_only_under"]:
        lines.append(
            f"READ-ONLY:  the superblock, under the read-write mount at {report['read_only_under']}: remounted "
            "read-only (a run makes it writable again), or forced so by the kernel after an error (dmesg: then "
            "every run, cleanup and skip-next is refused, read-only, until it is unmounted everywhere)"
        )
    if report["read_only_devices"]:
        lines.append(
            f"READ-ONLY:  {', '.join(report['read_only_devices'])}: every run, cleanup and skip-next is refused "
            "(read-only) until it is writable (blockdev --setrw)"
        )
    return lines


def _subvolume_lines(report: Status) -> list[str]:
    """The root and the blank."""
    root, blank = report["root"], report["blank"]
    if "id" in root:
        line = (
            f"root:       {root['path']} id {root['id']}, created {root['created']} "
            f"({_age(root['age_seconds'])}), {root['nested']} nested"
        )
    elif root["kind"] == Kind.MISSING.value and not report["next_boot_refused"]:  # (a misspelt name: a new one)
        line = (
            f"root:       {root['path']} missing: the next run creates it (a first run, a run cut short "
            "after moving the old root away or deleting it where it was to make room, or a misspelt name: check "
            "the subvolume setting)"
        )
    else:
        line = f"root:       {root['path']} {root['kind']}"
    ro = ", read-only" if blank["read_only"] else (", WRITABLE" if blank["exists"] else "")
    return [line, f"blank:      {blank['path']} {'present' if blank['exists'] else 'missing'}{ro}"]


def _archive_lines(report: Status) -> list[str]:
    """This configuration's archive, root by root, and archives elsewhere."""
    lines = []
    if (archive := report["archive"]) is not None:
        due = f", {len(archive['due'])} due for pruning" if archive["due"] else ""
        lines.append(f"archive:    {archive['path']}: {len(archive['roots'])} old root(s){due}")
        lines += [
            f"            {r['path']} (created {_age(r['age_seconds'])}, {r['nested']} nested)"
            + ("  <- due for pruning" if r["path"] in archive["due"] else "")
            + (
                "  <- the default subvolume (btrfs subvolume set-default): never pruned"
                if r["default"]
                else "  <- pinned (chattr +i): never pruned"
                if r["pinned"]
                else ""
            )
            for r in archive["roots"]
        ]
    lines.extend(
        f"elsewhere:  {path}: {count} archived root(s), not this configuration's archive (if no other "
        "configuration prunes it, it is never pruned)"
        for path, count in report["archives_elsewhere"].items()
    )
    return lines


def _pending_lines(report: Status) -> list[str]:
    """Protected subvolumes, the trash and the kernel cleaner's work."""
    lines = []
    for sub in report["protected"]:
        warning = "  <- INSIDE ROOT: a run would refuse" if sub["inside_root"] else ""
        lines.append(f"protected:  {sub['path']} id {sub['id']}{warning}")
    pending = report["pending"]
    lines.append(
        f"pending:    {len(pending['trash'])} in trash, {len(pending['kernel_cleaner'])} "
        "deleted subvolume(s) awaiting the kernel cleaner"
    )
    # by name: an old root to take back is moved out of the trash before a run or the cleanup deletes it
    lines.extend(f"trash:      {path}" for path in pending["trash"])
    return lines


def _next_boot_lines(report: Status) -> list[str]:
    """The skip-next mark and what the next boot does about it and the rest."""
    mark = "set (the next boot keeps the root once)" if report["skip_next"] else "not set"
    if report["skip_next_present"] and not report["skip_next"]:
        whose = f"subvolume id {report['skip_next_for']}" if report["skip_next_for"] is not None else "any root"
        mark = f"set for {whose}, not this root as it is now: left, and the next boot replaces or makes it"
        if report["skip_next_orphaned"]:
            mark = f"set for {whose}, which no longer exists: the next run removes it"
    if report["skip_next_refused"]:
        mark = f"set, but the next run refuses: {report['skip_next_refused']}"
    lines = [f"skip-next:  {mark}"]
    if report["next_boot_refused"] and not report["skip_next_refused"]:
        lines.append(f"next boot:  REFUSED: {report['next_boot_refused']}")
    lines.extend(f"next boot:  warns: {warning}" for warning in report["next_boot_warnings"])
    if report["next_boot_skipped"]:
        lines.append(f"next boot:  SKIPPED: {report['next_boot_skipped']}")
    return lines


def _booted_lines(report: Status) -> list[str]:
    """Where the running system booted from, when not the root, and what else is mounted."""
    lines = []
    if booted := report["booted_from"]:
        where = f"'{booted['path']}' (id {booted['id']})" if booted["path"] else "the top level"
        if not booted["path"] and booted["id"] != TOP_LEVEL_ID:  # deleted since it was mounted
            where = f"subvolume id {booted['id']}, no longer listed (deleted while mounted)"
        lines.append(
            f"booted:     from {where}, not {report['root']['path']}: a boot that mounts the root so "
            "again is refused (root-options); boot with rootflags=subvol=" + report["root"]["path"]
        )
    lines.extend(f"mounted:    subvolume id {subvol_id} at {where}" for subvol_id, where in report["mounted"].items())
    return lines


def escape(path: str, *, ascii_only: bool = False) -> str:
    r"""One line per path, unambiguously: `\\` for a backslash, `\n` `\t` `\r`, `\xNN` for another
    control character (NN < 80) or a byte that is not UTF-8 (NN >= 80), `\uXXXX`/`\UXXXXXXXX` for
    a character that is not printable (or any non-ASCII one, where the output cannot carry it)."""
    out = []
    for char in path:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif char in _NAMED:
            out.append(_NAMED[char])
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape: one undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x80 and not char.isprintable():
            out.append(f"\\x{code:02x}")
        elif code >= 0x80 and (ascii_only or not char.isprintable()):
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


Signature = tuple[int, int, int, int, int, int]  # effects/walk.py: mode, uid, gid, size, mtime, ctime (ns)
Walk = Callable[[str], Iterator[tuple[str, Signature]]]


def diff(walk: Walk, config: Config, obs: Observation) -> list[str]:
    """Paths in the current root that the next run would erase ('/' marks directories).

    Walked through our private top-level mount, so mounts on the live system
    (persisted bind mounts) are not in the way; nested subvolumes are included.
    In snapshot mode, what the blank snapshot holds unchanged is not counted.
    """
    if obs.kind(config.subvolume) is not Kind.SUBVOLUME or mark_applies(config, obs):
        return []
    kept: dict[str, Signature] = {}
    if config.from_blank and obs.kind(config.blank) is Kind.SUBVOLUME:
        kept = dict(walk(config.blank))
    return sorted(path for path, signature in walk(config.subvolume) if kept.get(path) != signature)
