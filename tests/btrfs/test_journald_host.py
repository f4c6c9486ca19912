"""The unit and btrfs tiers again, on a host that runs journald: they pass and write nothing to it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.environment import unavailable

pytestmark = pytest.mark.btrfs
ROOT = Path(__file__).parents[2]
NESTED_ENV = "ROLLBACK_TEST_JOURNALD_PASS"  # set inside the second pass: it must not start a third


def test_the_suite_on_a_journald_host_passes_and_writes_nothing_to_the_journal() -> None:
    if os.environ.get(NESTED_ENV):
        pytest.skip("this is the journald pass itself")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        unavailable("the journald pass needs root and unshare (util-linux)")
    pytest_argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not vm", "tests/unit"]
    pytest_argv += ["tests/btrfs", "--deselect", f"tests/btrfs/{Path(__file__).name}"]
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "tests.support.journald_host",
            *pytest_argv,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, NESTED_ENV: "1"},
        timeout=1800,
    )
    *output, summary_line = result.stdout.rstrip("\n").split("\n")
    summary = json.loads(summary_line)
    tail = "\n".join(output[-40:])
    assert result.returncode == 0, result.stderr
    assert summary["returncode"] == 0, tail
    assert " passed" in tail and " failed" not in tail and " skipped" not in tail, tail
    assert summary["datagrams"] == 0, summary["samples"]
