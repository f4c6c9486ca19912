"""Name rules, entry naming and retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rollback.names import EntryName, check_path, fresh_entry, parse_entry, to_prune

NOW = datetime(2026, 11, 25, 6, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("good", ["root", "@", "@root", "subvols/root", "root-blank", "a.b_c+d", "root/"])
def test_good_paths(good: str) -> None:
    assert check_path(good) is None


@pytest.mark.parametrize(
    "bad",
    ["", ".", "/", "/root", "..", "../root", "a/../b", "a//b", "./root", "my root", "root\n", "r\x00t", "rööt", "a\tb"],
)
def test_bad_paths_have_a_reason(bad: str) -> None:
    assert check_path(bad)


def test_entry_names_sort_by_time_then_serial() -> None:
    names = ["20261125T060000Z-1", "20261125T060000Z", "20261124T230000Z", "20261125T060000Z-10"]
    parsed = sorted(e for e in map(parse_entry, names) if e)
    assert [str(e) for e in parsed] == [
        "20261124T230000Z",
        "20261125T060000Z",
        "20261125T060000Z-1",
        "20261125T060000Z-10",
    ]


@pytest.mark.parametrize("foreign", ["root", "2026-11-25", "20261125T060000", "20261125T060000Z-", "x20261125T060000Z"])
def test_foreign_names_are_not_entries(foreign: str) -> None:
    assert parse_entry(foreign) is None


def test_fresh_entry_avoids_every_taken_name() -> None:
    assert str(fresh_entry(NOW, [])) == "20261125T060000Z"
    assert str(fresh_entry(NOW, ["20261125T060000Z", "20261125T060000Z-1"])) == "20261125T060000Z-2"


def test_fresh_entry_is_utc() -> None:
    local = NOW.astimezone(__import__("datetime").timezone(timedelta(hours=5)))
    assert str(fresh_entry(local, [])) == "20261125T060000Z"


def ages(*days: int) -> list[EntryName]:
    return [EntryName(NOW - timedelta(days=d)) for d in days]


def test_retention_by_count_keeps_the_newest() -> None:
    entries = ages(0, 1, 2, 3)
    assert to_prune(entries, NOW, keep_days=0, keep_count=2) == sorted(entries[2:])


def test_retention_by_age() -> None:
    entries = ages(0, 29, 31, 90)
    assert to_prune(entries, NOW, keep_days=30, keep_count=0) == sorted(entries[2:])


def test_retention_combines_both_limits() -> None:
    entries = ages(0, 1, 2, 40)
    assert to_prune(entries, NOW, keep_days=30, keep_count=2) == sorted(entries[2:])


def test_no_limits_keep_everything() -> None:
    assert to_prune(ages(0, 400), NOW, keep_days=0, keep_count=0) == []
