"""Build observations by hand for the pure tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from rollback.model import STATE_DIR, TRASH_DIR, Examined, Kind, Observation
from rollback.settings import Config, Value, resolve

NOW = datetime(2026, 11, 25, 6, 0, 0, tzinfo=UTC)


def config(**flags: Value | list[str]) -> Config:
    """A resolved Config, as if these were given as flags."""
    layer: dict[str, Value] = {k: tuple(v) if isinstance(v, list) else v for k, v in flags.items()}
    return resolve({}, {}, {"device": "/dev/test", **layer})


def observe(
    subvols: Iterable[str | tuple[str, bool]],
    *,
    dirs: Iterable[str] = (),
    files: Iterable[str] = (),
    default: str | None = None,
    mounted: dict[str, str] | None = None,
    mounted_paths: dict[str, str] | None = None,
    skip_mark: bool = False,
    empty: Iterable[str] = (),
    now: datetime = NOW,
) -> Observation:
    """Subvolumes by path, created in the order given (ids from 256, transids from 7).

    (path, read_only) for snapshots."""
    built: list[Examined] = []
    for number, item in enumerate(subvols):
        path, read_only = (item, False) if isinstance(item, str) else item
        built.append(Examined(256 + number, path, read_only, now.timestamp() - 3600, otransid=number + 7))
    kinds: dict[str, Kind] = {s.path: Kind.SUBVOLUME for s in built}
    for d in dirs:
        kinds[d] = Kind.DIRECTORY
    for f in files:
        kinds[f] = Kind.OTHER
    for path in list(kinds):  # every parent of something that exists is a directory (unless a subvolume)
        parts = path.split("/")
        for i in range(1, len(parts)):
            kinds.setdefault("/".join(parts[:i]), Kind.DIRECTORY)
    by_path = {s.path: s.id for s in built}
    return Observation(
        subvols=tuple(built),
        default_id=by_path[default] if default else 5,
        kinds=kinds,
        mounted={by_path[p]: where for p, where in (mounted or {}).items()},
        mounted_paths=mounted_paths or {},
        skip_mark=skip_mark,
        empty=frozenset(empty),
        now=now,
    )


def subvol_id(obs: Observation, path: str) -> int:
    found = obs.get(path)
    assert found is not None
    return found.id


__all__ = ["NOW", "STATE_DIR", "TRASH_DIR", "config", "observe", "subvol_id"]
