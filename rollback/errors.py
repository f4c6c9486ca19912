"""Exit codes and the exceptions that carry them to the one boundary in cli.main."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """Documented exit codes (README, --help, units/rollback@.service)."""

    OK = 0
    FAILED = 1  # an error after changes began (or an internal error); see the log
    USAGE = 2  # bad command line, config file or kernel command line; nothing touched
    REFUSED = 3  # a safety check failed, or no room for the first change; the device was left exactly as it was
    SKIPPED = 77  # asked not to run (rollback.skip, skip-next mark); nothing deleted


class RollbackError(Exception):
    """An expected failure: one-line reason, a hint, and its exit code."""

    exit_code = Exit.FAILED

    def __init__(self, reason: str, hint: str = "", *, code: str = "error") -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint
        self.code = code  # stable machine-readable key, logged as ROLLBACK_REASON


class ConfigError(RollbackError):
    exit_code = Exit.USAGE

    def __init__(self, reason: str, hint: str = "", *, code: str = "config") -> None:
        super().__init__(reason, hint, code=code)


class Refused(RollbackError):
    exit_code = Exit.REFUSED


class StepFailed(RollbackError):
    """A step raised after the plan started executing."""

    exit_code = Exit.FAILED
