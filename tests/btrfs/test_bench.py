"""A smoke run of the benchmark (small sizes) so it cannot rot; figures are printed, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.environment import unavailable

pytestmark = pytest.mark.btrfs
ROOT = Path(__file__).parents[2]


def _journal_dir() -> list[tuple[str, int]]:
    found = Path("/run/systemd/journal")
    return sorted((p.name, p.stat().st_ino) for p in found.iterdir()) if found.is_dir() else []


def test_quick_benchmark_produces_figures_and_a_chart(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("the benchmark needs root (loop devices)")
    before = _journal_dir()
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--reps", "1", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads((tmp_path / "benchmarks.json").read_text())
    assert [(r["files"], r["nested"], r["mode"], r["cache"]) for r in found["host"]] == [
        (1000, 0, "recreate", "cold"),
        (1000, 0, "recreate", "warm"),
        (1000, 0, "after-boot", "cold"),
        (1000, 10, "recreate", "cold"),
        (1000, 10, "recreate", "warm"),
        (1000, 10, "after-boot", "cold"),
    ]
    assert [r["mode"] for r in found["host"] if "floor_ms" in r] == ["after-boot"] * 2  # the floor ran, and only there
    assert _journal_dir() == before  # its stand-in journal lived in its own mount namespace only
    assert found["machine"]["project in initrd"] is True  # the project ran as at boot ...
    assert not Path("/etc/initrd-release").exists()  # ... with a mark the host never saw
    assert all(r["project_ms"] > 0 and r["baseline_ms"] > 0 and r["ratio"] > 0 for r in found["host"])
    assert all(r["floor_ms"] > 0 for r in found["host"] if r["mode"] == "after-boot")
    assert set(found["imports"]) == {"deferred", "eager"}
    assert [(r["files"], r["archived"]) for r in found["load"]] == [(1000, 5), (10_000, 5)]
    assert all(r["peak_rss_kib"] > 0 for r in found["load"])
    assert (tmp_path / "benchmark-chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ratio" in result.stdout
