"""The dialplan model's groups: what a group may be, and the order its steps ring."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from pbxwarden.pbx.dialplan import (
    Group,
    GroupError,
    TimeCondition,
    TimeConditionError,
    check,
    check_time_condition,
    format_windows,
    parse_windows,
    steps,
)


def group(strategy: str, members: tuple[str, ...] = ("1001", "1002", "1003")) -> Group:
    return Group("t", "realm", "600", "Sales", strategy, members)


def test_steps_per_strategy() -> None:
    assert steps(group("ringall")) == [["1001", "1002", "1003"]]
    assert steps(group("hunt")) == [["1001"], ["1002"], ["1003"]]
    assert steps(group("roundrobin"), 1) == [["1002"], ["1003"], ["1001"]]
    assert steps(group("roundrobin"), 4) == [["1002"], ["1003"], ["1001"]]  # wraps


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("6", "ringall", ["1001"], 20, "", None), "invalid group number"),
        (("600", "ringall", [], 20, "", None), "at least one member"),
        (("600", "ringall", ["600"], 20, "", None), "cannot ring itself"),
        (("600", "hunt", ["1001"], 2, "", None), "ring time"),
        (("600", "hunt", ["1001"], 20, 'Sa"les', None), "caller-ID prefix"),
        (("600", "hunt", ["1001"], 20, "", "sip:evil"), "neither an extension"),
        (("600", "hunt", ["1001"] * 2, 20, "", None), "listed twice"),
    ],
)
def test_a_group_that_cannot_be_stored_says_why(args: tuple[object, ...], why: str) -> None:
    with pytest.raises(GroupError, match=why):
        check(*args)  # type: ignore[arg-type]


def madrid(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Europe/Madrid")).timestamp()


def condition(
    hours: str, holidays: frozenset[str] = frozenset(), override: str | None = None
) -> TimeCondition:
    return TimeCondition(
        "t",
        "r",
        "700",
        "Office",
        "Europe/Madrid",
        parse_windows(hours),
        holidays,
        "600",
        "1000",
        override,
    )


def test_business_hours_on_a_fake_clock() -> None:
    office = condition("mon-fri 09:00-17:30; sat 10:00-13:00", frozenset({"2026-12-25"}))
    # Thursday 2026-12-03
    assert not office.is_open(madrid("2026-12-03T08:59"))
    assert office.is_open(madrid("2026-12-03T09:00"))
    assert office.is_open(madrid("2026-12-03T17:29"))
    assert not office.is_open(madrid("2026-12-03T17:30"))
    assert office.is_open(madrid("2026-12-05T12:00"))  # Saturday morning
    assert not office.is_open(madrid("2026-12-06T12:00"))  # Sunday
    assert not office.is_open(madrid("2026-12-25T11:00"))  # a Friday, but a holiday
    assert office.destination(madrid("2026-12-03T10:00")) == "600"
    assert office.destination(madrid("2026-12-03T20:00")) == "1000"
    # the tenant's clock, not the server's: 09:30 in Madrid is 08:30 UTC in winter
    assert office.is_open(dt.datetime(2026, 12, 3, 8, 30, tzinfo=dt.UTC).timestamp())
    assert office.is_open(madrid("2026-07-02T09:05"))  # summer time too


def test_a_night_shift_runs_past_midnight_and_overrides_win() -> None:
    night = condition("fri 22:00-06:00")
    assert night.is_open(madrid("2026-12-04T23:00"))  # Friday night
    assert night.is_open(madrid("2026-12-05T05:59"))  # Saturday early
    assert not night.is_open(madrid("2026-12-05T06:00"))
    assert not night.is_open(madrid("2026-12-03T23:00"))  # Thursday night
    closed = condition("mon-sun 00:00-24:00", override="closed")
    assert not closed.is_open(madrid("2026-12-03T10:00"))
    assert condition("mon 09:00-10:00", override="open").is_open(madrid("2026-12-06T03:00"))
    for hours in ("sat-mon 08:00-12:00", "mon-sun 00:00-24:00; wed 18:00-02:00"):
        assert format_windows(parse_windows(hours)) == hours  # stored, read back


@pytest.mark.parametrize(
    ("hours", "why"),
    [
        ("weekdays 9-5", "write them as"),
        ("mon 25:00-26:00", "not a time of day"),
        ("mon 09:00-09:00", "opens and closes at once"),
        ("xyz 09:00-10:00", "write them as"),
    ],
)
def test_hours_that_cannot_be_read_say_how_to_write_them(hours: str, why: str) -> None:
    with pytest.raises(TimeConditionError, match=why):
        parse_windows(hours)
    with pytest.raises(TimeConditionError, match="unknown time zone"):
        check_time_condition("700", "Mars/Olympus", [], "600", "1000")
    with pytest.raises(TimeConditionError, match="a date"):
        check_time_condition("700", "UTC", ["25/12"], "600", "1000")
