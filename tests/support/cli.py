"""The one way the tests and the benchmark build a command line for a CLI run."""

from __future__ import annotations

import sys


def rollback_argv(
    *args: str, device: str | None = None, config: str | None = None, cmdline: str | None = "/dev/null"
) -> list[str]:
    """`python -m rollback ARGS`, with this interpreter; a device if given; the kernel command line
    read from `cmdline` (default: none, so the host's own never leaks in; None: the real one) and a
    config file if given."""
    argv = [sys.executable, "-m", "rollback", *args]
    if device is not None:
        argv += ["--device", device]
    if config is not None:
        argv += ["--config", config]
    if cmdline is not None:
        argv += ["--kernel-cmdline", cmdline]
    return argv
