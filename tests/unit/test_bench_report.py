"""The benchmark's report logic (bench/run.py): which target each measured row meets. Synthetic
figures only: the benchmark's own numbers are printed, never asserted."""

from __future__ import annotations

from typing import Any

from bench.run import markdown, targets


def _host(files: int, nested: int, project: float, baseline: float) -> dict[str, object]:
    return {
        "files": files,
        "nested": nested,
        "mode": "recreate",
        "cache": "cold",
        "project_ms": project,
        "project_range": [project, project],
        "baseline_ms": baseline,
        "baseline_range": [baseline, baseline],
        "ratio": round(project / baseline, 2),
    }


def _results() -> dict[str, Any]:
    return {
        "machine": {"kernel": "k", "python": "3.11", "cpus": 2, "btrfs-progs": "v6.2"},
        "reps": 3,
        "imports": {"deferred": {"total_ms": 1.0, "top": {}}},
        "host": [
            _host(100_000, 100, 90, 100),
            _host(1000, 1000, 190, 200),
            _host(1000, 0, 50, 25),
            _host(1_000_000, 0, 65, 26),
            {**_host(100_000, 0, 70, 28), "mode": "after-boot", "floor_ms": 25.0, "floor_range": [24.0, 26.0]},
            {**_host(100_000, 1000, 84, 255), "mode": "after-boot", "floor_ms": 37.5, "floor_range": [36.0, 40.0]},
        ],
        "load": [],
        "vm": {
            "ratio": 1.5,
            "floor_ratio": 1.1,
            "added_bytes": {"project": 4_100_000, "baseline": 150_000},
            **{w: {"median_s": 1.0, "range_s": [1.0, 1.0], "boots": 1} for w in ("project", "baseline", "floor")},
        },
    }


def test_each_target_is_judged_from_the_matching_row() -> None:
    judged = {name: (value, met) for name, value, met in targets(_results())}
    assert judged["host, 100k files / 100 nested: <= 1.0x"] == ("0.9x", True)
    assert judged["host, 1,000 files / 1000 nested: <= 0.8x"] == ("0.95x", False)
    assert judged["flat in file count, 0 nested: 1k vs 1M within 20%"] == ("+30%", False)
    assert judged["VM: rollback unit <= 1.0x the baseline's"] == ("1.5x", False)
    assert judged["initramfs growth over the baseline's <= 3 MB zstd"] == ("3.95 MB", False)
    assert judged["host after-boot, 100k files / 1000 nested: <= 0.4x"] == ("0.33x", True)
    assert judged["host after-boot, 100k files: 1000 nested within 15% of 0"] == (
        "1.20x (+14.0 ms); floor 1.50x (+12.5 ms)",
        False,
    )


def test_the_report_marks_unmet_targets() -> None:
    text = markdown(_results())
    assert "| VM: rollback unit <= 1.0x the baseline's | 1.5x | **no** |" in text
    assert "| host, 100k files / 100 nested: <= 1.0x | 0.9x | yes |" in text
    assert "Ratio floor/baseline: 1.1." in text
    assert "| 100,000 | 1000 | 84 (84-84) | 37.5 (36.0-40.0) | 46.5 |" in text  # the after-boot floor's table
