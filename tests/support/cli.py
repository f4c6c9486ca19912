"""The one way the tests and the benchmark build a command line for a CLI run."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def rollback_argv(
    *args: str,
    device: str | None = None,
    config: str | None = None,
    cmdline: str | None = "/dev/null",
    launcher: Sequence[str] = (),
) -> list[str]:
    """`python -m rollback ARGS`, with this interpreter (or `launcher`, e.g. the bench's, which starts
    it as the initramfs does); a device if given; the kernel command line read from `cmdline`
    (default: none, so the host's own never leaks in; None: the real one) and a config file if given."""
    argv = [*(launcher or (sys.executable, "-m", "rollback")), *args]
    if device is not None:
        argv += ["--device", device]
    if config is not None:
        argv += ["--config", config]
    if cmdline is not None:
        argv += ["--kernel-cmdline", cmdline]
    return argv
