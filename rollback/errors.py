"""Exit codes and the exceptions that carry them to the one boundary in cli.main. Each error has a
reason code from rollback/reasons.py, whose table gives the code's exit status (test-checked)."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """Documented exit codes: MEANING below is what --help and the README say (test-checked)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    REFUSED = 3
    SKIPPED = 77


MEANING: dict[Exit, str] = {
    Exit.OK: "success",
    Exit.FAILED: "failed after changes began (the device is consistent; the next run finishes the job), "
    "`diff` could not read a file of the root (`tree-unreadable`), stdout could not be written "
    "(`output-failed`), interrupted, or an internal error; a device that cannot be read at all is refused (3)",
    Exit.USAGE: "usage or configuration error (flags, config file, kernel command line); nothing touched",
    Exit.REFUSED: "refused: a safety check failed, or no room for the first change (or for the new root, the "
    "old one moved back); the device was left as it was, the old root in use",
    Exit.SKIPPED: "skipped: rollback.skip or the skip-next mark; the root was kept",
}
KIND = {Exit.USAGE: "invalid", Exit.REFUSED: "refused", Exit.FAILED: "failed"}  # the event each error logs


class RollbackError(Exception):
    """An expected failure: one-line reason, a hint, and its exit code."""

    exit_code = Exit.FAILED

    def __init__(self, reason: str, hint: str = "", *, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint
        self.code = code  # stable machine-readable key, logged as ROLLBACK_REASON


class ConfigError(RollbackError):
    exit_code = Exit.USAGE


class Refused(RollbackError):
    exit_code = Exit.REFUSED


class StepFailed(RollbackError):
    """A step raised after the plan started executing."""

    exit_code = Exit.FAILED


class ReadFailed(RollbackError):
    """A reporting verb could not read what it reports on (nothing was changed)."""

    exit_code = Exit.FAILED


class OutputFailed(RollbackError):
    """A verb's output could not be written to stdout (a full disk behind a redirect, EIO)."""

    exit_code = Exit.FAILED
