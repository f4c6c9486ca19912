"""Name rules, entry naming and retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rollback.names import canonical, fresh_entry, parse_entry, shown, to_prune

NOW = datetime(2026, 11, 25, 6, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("good", ["root", "@", "@root", "subvols/root", "root-blank", "a.b_c+d", "..a", "a.."])
def test_canonical_names_stay_as_they_are(good: str) -> None:
    assert canonical(good) == good


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("persist/", "persist"),
        ("persist//", "persist"),
        ("./persist", "persist"),
        ("a//b", "a/b"),
        ("a/./b/", "a/b"),
        ("./a/.//b/.", "a/b"),
        ("old/", "old"),
    ],
)
def test_every_spelling_of_a_name_has_one_canonical_form(spelling: str, name: str) -> None:
    assert canonical(spelling) == name


BAD_NAMES = ["", ".", "./", "//", "/", "/root", "..", "../root", "a/../b", "a/..", "my root", "root\n", "r\x00t"]
BAD_NAMES += ["rööt", "a\tb", "x" * 256, "/".join(["abcdefgh"] * 120)]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_have_a_reason(bad: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        canonical(bad)


def test_entry_names_sort_by_time_then_serial() -> None:
    names = ["20261125T060000Z-1", "20261125T060000Z", "20261124T230000Z", "20261125T060000Z-10"]
    parsed = sorted(e for e in map(parse_entry, names) if e)
    assert [str(e) for e in parsed] == [
        "20261124T230000Z",
        "20261125T060000Z",
        "20261125T060000Z-1",
        "20261125T060000Z-10",
    ]


@pytest.mark.parametrize(
    "foreign",
    ["root", "2026-11-25", "20261125T060000", "20261125T060000Z-", "x20261125T060000Z", "20241301T000000Z",
     "20260230T000000Z", "20261125T250000Z-1", "20260101T000000Z-\u0663", "\u0662\u0660\u0662\u0666" + "1125T060000Z",
     "20261125T060000Z-1_0", "20261125T060000Z-+1"],
)  # fmt: skip
def test_foreign_names_are_not_entries(foreign: str) -> None:
    assert parse_entry(foreign) is None


def test_fresh_entry_avoids_every_taken_name() -> None:
    assert str(fresh_entry(NOW, set())) == "20261125T060000Z"
    assert str(fresh_entry(NOW, {"20261125T060000Z", "20261125T060000Z-1"})) == "20261125T060000Z-2"


def test_fresh_entry_is_utc() -> None:
    local = NOW.astimezone(__import__("datetime").timezone(timedelta(hours=5)))
    assert str(fresh_entry(local, set())) == "20261125T060000Z"


def stamps(*days: float) -> list[datetime]:
    """Clock times of archived roots, listed in the order the filesystem created them."""
    return [NOW - timedelta(days=d) for d in days]


def prune(
    days: list[datetime], now: datetime = NOW, *, keep_days: int = 0, keep_count: int = 0, keep_min: int = 0
) -> list[int]:
    return to_prune(days, now, keep_days=keep_days, keep_count=keep_count, keep_min=keep_min)


def test_retention_by_count_keeps_the_newest() -> None:
    assert prune(stamps(3, 2, 1, 0), keep_count=2) == [0, 1]


def test_retention_by_age() -> None:
    assert prune(stamps(90, 31, 29, 0), keep_days=30) == [0, 1]


def test_retention_combines_both_limits() -> None:
    assert prune(stamps(40, 2, 1, 0), keep_days=30, keep_count=2) == [0, 1]


def test_no_limits_keep_everything() -> None:
    assert prune(stamps(400, 0)) == []


def test_count_follows_creation_order_not_the_clock() -> None:
    """The newest root was archived while the clock said 2019: it is still the newest."""
    created = [*stamps(3, 2, 1), datetime(2019, 1, 1, tzinfo=UTC)]
    assert prune(created, keep_count=2) == [0, 1]


@pytest.mark.parametrize("keep_min", [0, 1, 3, 5])
def test_a_clock_set_back_never_makes_the_newest_look_old(keep_min: int) -> None:
    created = [*stamps(3, 2, 1), datetime(2019, 1, 1, tzinfo=UTC)]
    assert 3 not in prune(created, keep_days=30, keep_min=keep_min)


@pytest.mark.parametrize("years", [1, 5, 30])
@pytest.mark.parametrize("keep_min", [0, 1, 3, 10])
def test_a_clock_years_ahead_prunes_down_to_the_floor_only(years: int, keep_min: int) -> None:
    created = stamps(6, 5, 4, 3, 2, 1, 0)
    ahead = NOW + timedelta(days=365 * years)
    kept = set(range(7)) - set(prune(created, ahead, keep_days=30, keep_min=keep_min))
    assert kept == set(range(7)[7 - min(keep_min, 7) :])


@pytest.mark.parametrize("years", [1, 5, 30])
@pytest.mark.parametrize("keep_min", [0, 1, 3])
def test_one_boot_with_a_clock_ahead_does_not_stop_pruning_afterwards(years: int, keep_min: int) -> None:
    """A root archived once under a clock `years` ahead, then 60 daily boots with the right clock: the
    roots after it age out as usual (before, they inherited its future stamp and none ever did: the
    archive grew for years). That one root stays until its own time comes, as a root that looks new."""
    ahead = NOW - timedelta(days=70) + timedelta(days=365 * years)
    created = [*stamps(80, 75), ahead, *(NOW - timedelta(days=d) for d in range(69, -1, -1))]
    pruned = set(prune(created, keep_days=30, keep_min=keep_min))
    assert 2 not in pruned  # the future-stamped one
    aged = {i for i, stamp in enumerate(created) if i != 2 and stamp < NOW - timedelta(days=30)}
    assert pruned == aged - set(range(len(created))[len(created) - keep_min :])


@pytest.mark.parametrize("keep_min", [0, 1])
@pytest.mark.parametrize("archived_now", [False, True])
def test_a_clock_behind_now_ages_nothing_out(keep_min: int, archived_now: bool) -> None:
    """The newest entry is stamped after `now`: this boot's clock is behind (reset, dead battery), so the
    ages it would compute mean nothing. The entry stamped 2023 sits between two from 2026: it was archived
    two weeks ago under a clock that was behind then too, and must not be pruned as 'old'."""
    now = datetime(2024, 1, 1, tzinfo=UTC)
    created = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2023, 6, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)]
    assert prune([*created, *([now] if archived_now else [])], now, keep_days=30, keep_min=keep_min) == []


def test_the_floor_never_keeps_more_than_keep_count() -> None:
    created = stamps(60, 50, 40, 30, 20)
    assert prune(created, keep_days=1, keep_count=2, keep_min=3) == [0, 1, 2]


@pytest.mark.parametrize("shift_hours", [-14, -1, 0, 1, 14])
def test_time_zones_do_not_change_what_is_pruned(shift_hours: int) -> None:
    """A local-time RTC read as UTC shifts every clock by hours: ages compare like with like."""
    shift = timedelta(hours=shift_hours)
    created = [t + shift for t in stamps(45, 31, 29, 0)]
    assert prune(created, NOW + shift, keep_days=30) == [0, 1]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("root", "'root'"),  # as repr() when every byte is UTF-8
        ("it's", '"it\'s"'),
        ("caf\udce9", r"'caf\xe9'"),
        ("it's\udcff", r"'it\'s\xff'"),
        ("a\\udc80\udcff", r"'a\\udc80\xff'"),  # a backslash in the name stays one, escaped
        ('é\n"\udcfe', r"""'é\n"\xfe'"""),
    ],
)
def test_shown_spells_bytes_that_are_not_utf8_as_the_events_do(name: str, expected: str) -> None:
    assert shown(name) == expected


def test_without_a_battery_backed_clock_only_keep_count_bounds_the_archive() -> None:
    """Each boot's initrd starts at the same build-time clock: 200 archived roots stamped within the
    same seconds, `now` among them. Age prunes nothing (README says so); a count does."""
    epoch = datetime(2026, 5, 1, tzinfo=UTC)
    stamps = [epoch + timedelta(seconds=5 + n % 3) for n in range(200)]
    now = epoch + timedelta(seconds=6)
    assert to_prune(stamps, now, keep_days=30, keep_count=0, keep_min=3) == []
    assert to_prune(stamps, now, keep_days=30, keep_count=20, keep_min=3) == list(range(180))
