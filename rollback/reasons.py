"""Why a run did not succeed: one table of reasons (ROLLBACK_REASON in the journal, `reason=` on the
console), each with its exit code and what to do. The errors are built from it, the README's table is
checked against it, and a test checks that every reason raised in the code is here and vice versa."""

from __future__ import annotations

from dataclasses import dataclass

from rollback.errors import Exit


@dataclass(frozen=True)
class Reason:
    exit: Exit
    when: str  # what happened, for the reference table
    action: str  # what the operator does about it


def _usage(when: str, action: str) -> Reason:
    return Reason(Exit.USAGE, when, action)


def _refused(when: str, action: str) -> Reason:
    return Reason(Exit.REFUSED, when, action)


REASONS: dict[str, Reason] = {
    # exit 2: the command line, the config file or the kernel command line; nothing was touched
    "usage": _usage("the command line does not parse: an unknown verb or flag, a value missing or malformed", "--help"),
    "device-unset": _usage("no device given anywhere", "set --device, `device =` or rollback.device="),
    "bad-name": _usage(
        "a subvolume name is malformed, or inside `.rollback/`; a device path holds a control character",
        "fix the name the message quotes",
    ),
    "bad-value": _usage("a setting has the wrong type (a word for a number, a string for a list)", "fix it"),
    "bad-number": _usage("a number is out of its range", "use a value in the range the hint gives"),
    "bad-choice": _usage("`mode` or `cleanup` is not one of its choices", "use one the message lists"),
    "conflict": _usage("two settings contradict each other", "change one of the two the message names"),
    "unknown-key": _usage(
        "an unknown key in the config file or rollback.* option, or a kernel command line word spelt like one "
        "(Rollback.skip, rollback_skip, an invisible character in it)",
        "fix the spelling",
    ),
    "bad-encoding": _usage(
        "a rollback.* word of the kernel command line is not UTF-8 (or the file given holds a NUL byte)",
        "fix the boot entry",
    ),
    "bad-toml": _usage("the config file is not valid TOML", "fix the file at the line the message gives"),
    "config-unreadable": _usage("the config file cannot be read", "check its path and permissions"),
    "cmdline-unreadable": _usage("the kernel command line file cannot be read", "--kernel-cmdline /dev/null"),
    "bad-log-target": _usage("$ROLLBACK_LOG_TARGET is not auto, console or journal", "unset or fix it"),
    # exit 3: refused before the first change; the device is exactly as it was
    "no-device": _refused("the device does not exist (or cannot be examined)", "check the device setting"),
    "not-block-device": _refused("the device is not a block device", "pass the device node"),
    "unreadable": _refused(
        "the device cannot be read", "see dmesg; mounted elsewhere (read-only since an error): unmount it everywhere"
    ),
    "copy-attached": _refused(
        "a member of a multi-device filesystem is on two devices (a copy of its disks attached, a stale member)",
        "detach the copy, or renew its UUID and label",
    ),
    "blank-over-quota": _refused(
        "the blank's qgroup is at its limit: every snapshot of it gets that limit, and would start full",
        "remove or raise the blank's qgroup limit",
    ),
    "same-label": _refused(
        "in the initrd, the root is mounted from another btrfs filesystem carrying this one's label",
        "name both by UUID=, or relabel one",
    ),
    "not-btrfs": _refused("the device holds no btrfs filesystem", "check the device setting"),
    "not-root": _refused(
        "not root: no private mount namespace, the device or the lock directory not accessible", "run as root"
    ),
    "run-dir": _refused("/run/rollback or /run/rollback-locks is not a directory", "remove it"),
    "seed-device": _refused(
        "the device is a btrfs seed (read-only); its sprout is the filesystem in use", "name the sprout"
    ),
    "chroot": _refused(
        "a plain chroot: / is not a mount point, or /proc or /sys is not mounted",
        "mount --bind DIR DIR; mount /proc and /sys",
    ),
    "mount-failed": _refused(
        "the top level cannot be mounted (a member device missing, or attached but not registered)",
        "btrfs device scan; btrfs check --readonly; dmesg",
    ),
    "locked": _refused(
        "another run holds the filesystem's lock, or a disk tool the device node's for over 10 s", "wait for it"
    ),
    "hibernated": _refused("a hibernation image waits on the resume device", "resume it, or --ignore-hibernation"),
    "resume-unreadable": _refused("the resume device cannot be read", "fix resume= or --ignore-hibernation"),
    "holds-system": _refused(
        "the root holds the operating system (/usr/lib/systemd/systemd) or mounts its /usr (fstab), and the new root "
        "would not: empty (recreate), or a snapshot of a blank without it",
        'mode = "snapshot" with a blank holding the system, or /usr mounted by the initrd (mount.usr=); dracut '
        "--force; meanwhile rollback.skip; by hand: the machine's --config and --kernel-cmdline FILE",
    ),
    "root-options": _refused(
        "the initrd mounts the root by subvolume id, as the default subvolume, or from another subvolume than the "
        "one replaced",
        "rootflags=subvol=<subvolume>",
    ),
    "mounted": _refused(
        "something to delete or move is mounted (any namespace, any member or alias of the device), or the device is "
        "a member the filesystem is mounted degraded without",
        "run from the initrd or a rescue system; unmount it",
    ),
    "swap-active": _refused(
        "something to delete holds an active swap file (the kernel refuses to delete it)",
        "swapoff it; keep swap in a subvolume of its own",
    ),
    "default-subvolume": _refused("something to delete is the default subvolume", "btrfs subvolume set-default 5"),
    "protected-inside": _refused("a protected subvolume lies inside what would be deleted", "move it out"),
    "foreign-subvolume": _refused("the archive or trash holds subvolumes rollback did not put there", "move them"),
    "bad-holder": _refused("the archive or trash is not a directory", "move it away"),
    "mark-taken": _refused("skip-next, and a mark is already set for another root", "let that root's boot use it"),
    "state-dir": _refused("`.rollback` is not a plain directory, or its skip-next mark not a file", "move it away"),
    "not-subvolume": _refused("the target is a plain directory or not a directory", "check the subvolume setting"),
    "placeholder": _refused(
        "a name the run uses is a snapshot's empty stand-in for a subvolume it did not include", "rmdir it"
    ),
    "not-directory": _refused("a symbolic link or a file on the way to a name", "make it a plain directory"),
    "read-only-target": _refused("the target subvolume is read-only", "btrfs property set ... ro false"),
    "immutable": _refused("a place the run changes is chattr +i/+a", "chattr -i -a, if that is not meant"),
    "read-only-subvolume": _refused(
        "a place the run changes lies in a read-only subvolume (the top level's included)",
        "btrfs property set ... ro false, if that is not meant",
    ),
    "archive-unset": _refused(
        "a run with no config file (a rescue shell) nor archive, a directory holding archived roots",
        "--config FILE; --archive '' deletes all the same",
    ),
    "nothing-to-keep": _refused(
        "skip-next, and the root does not exist (a run was cut short after moving it)", "rollback run; rollback status"
    ),
    "no-blank": _refused(
        "snapshot mode, and the blank snapshot does not exist (or is not a subvolume)", "create it (README)"
    ),
    "blank-writable": _refused("the blank snapshot is writable", "btrfs property set ... ro true"),
    "blank-immutable": _refused(
        "the blank snapshot's top directory is chattr +i/+a", "ro false; chattr -i -a it; ro true (the hint's commands)"
    ),
    "read-only": _refused(
        "the filesystem cannot be written: a member device is read-only; it is mounted elsewhere with rescue "
        "options, or degraded and read-only; or the kernel forced it read-only after an error while mounted "
        "elsewhere (any verb, where reading it then fails)",
        "blockdev --getro; dmesg; rescue or forced: unmount it everywhere (the running root: reboot)",
    ),
    "no-space": _refused(
        "no room for the first change: the filesystem is full of the machine's own data",
        "free space (btrfs filesystem usage); the old root stays in use until then",
    ),
    "over-quota": _refused(
        "no room for the first change: a quota group's limit is reached (btrfs qgroups)",
        "raise or remove the limit (btrfs qgroup show -re; or btrfs quota disable); the old root stays in use",
    ),
    # exit 1: after changes began; the device is consistent and the next run finishes the job
    "step-failed": Reason(Exit.FAILED, "a step failed (I/O error...)", "see the message; rollback status"),
    "forced-read-only": Reason(
        Exit.FAILED,
        "the filesystem went read-only under a run, cleanup or skip-next: the kernel forced it after an error (a "
        "failing disk, a damaged tree, no room for its metadata), or another mount was remounted read-only",
        "dmesg; the disk holds the last commit: the next run finishes once the disk works; else btrfs check --readonly",
    ),
    "no-space-midway": Reason(
        Exit.FAILED,
        "space (or a qgroup limit) ran out after changes began",
        "free space or raise the limit; the next run finishes",
    ),
    "tree-unreadable": Reason(
        Exit.FAILED, "`diff` could not read a directory or file of the root (I/O error)", "see dmesg; btrfs scrub"
    ),
    "output-failed": Reason(
        Exit.FAILED,
        "stdout could not be written (a full disk behind a redirect, an I/O error); what the verb did is done",
        "write it elsewhere",
    ),
    "interrupted": Reason(
        Exit.FAILED,
        "stopped by SIGINT (Ctrl-C) before it ended; SIGTERM (systemd stopping it) and SIGHUP are said so too, "
        "then the process dies of them (143, 129)",
        "rollback status; run it again to finish the job",
    ),
    "internal": Reason(Exit.FAILED, "an unexpected error (a bug): the traceback is logged", "report it"),
    # exit 77: asked not to run; the root was kept
    "rollback.skip": Reason(Exit.SKIPPED, "`rollback.skip` on the kernel command line", "nothing: as asked"),
    "skip-next": Reason(Exit.SKIPPED, "the mark `rollback skip-next` set, consumed now", "nothing: as asked"),
}


def exit_of(code: str) -> Exit:
    return REASONS[code].exit


def table() -> str:
    """The README's reference table."""
    rows = [f"| `{code}` | {int(r.exit)} | {r.when} | {r.action} |" for code, r in REASONS.items()]
    return "\n".join(["| reason | exit | when | what to do |", "|---|---|---|---|", *rows])
