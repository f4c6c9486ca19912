"""The observation's lookups by path: the same answers as a scan of every subvolume, in listing order."""

from __future__ import annotations

import random

import pytest

from tests.support.factory import observe

# names that sort right beside "root" and "root/" (every character below "0", and "0" itself), a
# trailing-space name, a non-UTF-8 byte kept as a surrogate escape, the archive and the trash
NEIGHBOURS = ["root", "root-blank", "root.x", "root 1", "root!", "root/", "root0", "roots", "\udcff", "old", "old-x"]


def naive_tree(paths: list[str], path: str) -> list[str]:
    return [p for p in paths if p == path or p.startswith(path + "/")]


@pytest.mark.parametrize("seed", range(20))
def test_tree_and_below_answer_as_a_scan_would(seed: int) -> None:
    """Observation.tree/below look up a range of the sorted paths (a scan per entry made plans over 1000
    archived roots take 10-40 s: a scale tester); the range must hold exactly what a scan finds."""
    rng = random.Random(seed)
    paths: list[str] = []
    for _ in range(200):
        parent = rng.choice(["", *paths]) if paths else ""
        name = rng.choice([*NEIGHBOURS, f"n{rng.randrange(50)}", ".rollback", "trash"])
        path = f"{parent}/{name}".lstrip("/") if parent else name
        if path not in paths and "//" not in path and not path.endswith("/"):
            paths.append(path)
    obs = observe(paths)
    for path in [*paths, *NEIGHBOURS, "", "nowhere", "root/x"]:
        assert [s.path for s in obs.tree(path)] == naive_tree(paths, path), path
        assert [s.path for s in obs.below(path)] == [p for p in naive_tree(paths, path) if p != path], path
