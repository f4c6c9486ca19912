"""The tiers' policy: in CI (CI=true) a tier that cannot run fails instead of skipping."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: a skip there would hide a missing install step."""
    if IN_CI:
        pytest.fail(f"required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root(*tools: str) -> None:
    """Skip locally, fail in CI, unless we are root and every tool is installed."""
    if os.geteuid() != 0:
        unavailable("real-btrfs tests need root (loop devices, mount)")
    for tool in tools:
        if not shutil.which(tool):
            unavailable(f"{tool} is not installed")
