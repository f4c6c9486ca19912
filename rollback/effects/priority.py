"""Idle CPU and I/O priority for work nobody waits for (the cleanup after boot)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "armv7l": 314, "ppc64le": 273, "riscv64": 30, "s390x": 282}
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3


def idle() -> None:
    """SCHED_IDLE for the CPU and the idle I/O class, for this process; best effort (a kernel or a
    container may refuse: the work is the same, only less polite)."""
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    number = _IOPRIO_SET.get(platform.machine())
    if number is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(number, _IOPRIO_WHO_PROCESS, 0, _IOPRIO_CLASS_IDLE << 13)
