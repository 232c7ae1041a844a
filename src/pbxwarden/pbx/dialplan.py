"""The dialplan's model: the numbers of a tenant and what each leads to, as stored and
checked wherever one is written (CLI, API), shared by the parts that ring them.

A number of a tenant's dialplan is an extension (:mod:`pbxwarden.store.db`), a ring
group (below; rung by :mod:`pbxwarden.pbx.groups`) or a time condition (business
hours: below, one destination when open and another when closed); one number is never
two of these. DIDs,
forwarding, group members and fallbacks, and transfers point at such a number, or at an
external number (judged by the guard). Plain frozen records, so that several nodes can
share them.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

STRATEGIES = ("ringall", "hunt", "roundrobin")
MAX_MEMBERS = 32
MIN_RING_TIME, MAX_RING_TIME = 5, 300
DEFAULT_RING_TIME = 20
GROUP_NUMBER = re.compile(r"[0-9]{2,15}")  # as an extension's number
_NUMBER = re.compile(r"\+?[0-9]{2,20}")
_PREFIX = re.compile(r"[^\x00-\x1f\"\\<>]{0,24}")


class GroupError(ValueError):
    """A group that cannot be stored as given (the message says what to change)."""


@dataclass(frozen=True, slots=True)
class Group:
    tenant: str
    realm: str
    number: str
    name: str
    strategy: str
    members: tuple[str, ...]
    ring_time: float = DEFAULT_RING_TIME
    fallback: str | None = None
    cid_prefix: str = ""


def check(
    number: str,
    strategy: str,
    members: list[str],
    ring_time: float,
    cid_prefix: str,
    fallback: str | None,
) -> None:
    """What a group must be, checked wherever one is written (CLI, API, import)."""
    if not GROUP_NUMBER.fullmatch(number):
        raise GroupError(f"invalid group number {number!r}: 2 to 15 digits, like an extension")
    if strategy not in STRATEGIES:
        raise GroupError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if not members:
        raise GroupError("a group needs at least one member")
    if len(members) > MAX_MEMBERS:
        raise GroupError(f"at most {MAX_MEMBERS} members")
    if len(set(members)) != len(members):
        raise GroupError("a member is listed twice")
    for member in [*members, *([fallback] if fallback else [])]:
        if not _NUMBER.fullmatch(member):
            raise GroupError(f"{member!r} is neither an extension nor a telephone number")
    if number in members or fallback == number:
        raise GroupError("a group cannot ring itself")
    if not MIN_RING_TIME <= ring_time <= MAX_RING_TIME:
        raise GroupError(f"ring time {ring_time:g} s: between {MIN_RING_TIME} and {MAX_RING_TIME}")
    if not _PREFIX.fullmatch(cid_prefix):
        raise GroupError("caller-ID prefix: at most 24 printable characters, no quotes or <>")


def steps(group: Group, start: int = 0) -> list[list[str]]:
    """The members each step rings, in order (``start``: round robin's first member)."""
    if group.strategy == "ringall":
        return [list(group.members)]
    members = list(group.members)
    if group.strategy == "roundrobin" and members:
        start %= len(members)
        members = members[start:] + members[:start]
    return [[m] for m in members]


# -- time conditions: business hours ------------------------------------------------------

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
OVERRIDES = ("open", "closed")
_WINDOW = re.compile(r"([a-z]{3})(?:-([a-z]{3}))?\s+(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")


class TimeConditionError(ValueError):
    """A time condition that cannot be stored as given (the message says what to change)."""


@dataclass(frozen=True, slots=True)
class Window:
    """Open on ``days`` (0 Monday) from ``start`` to ``end`` minutes after midnight; an
    ``end`` before ``start`` runs past midnight into the next day (a night shift)."""

    days: frozenset[int]
    start: int
    end: int

    def covers(self, weekday: int, minute: int) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        return (weekday in self.days and minute >= self.start) or (
            (weekday - 1) % 7 in self.days and minute < self.end
        )


def parse_windows(text: str) -> tuple[Window, ...]:
    """``"mon-fri 09:00-17:30; sat 10:00-13:00"``: the weekly opening hours."""
    windows = []
    for part in filter(None, (p.strip().lower() for p in re.split(r"[;,]", text))):
        m = _WINDOW.fullmatch(part)
        if m is None or m.group(1) not in DAYS or (m.group(2) and m.group(2) not in DAYS):
            raise TimeConditionError(
                f"opening hours {part!r}: write them as 'mon-fri 09:00-17:00; sat 10:00-13:00'"
            )
        first = DAYS.index(m.group(1))
        last = DAYS.index(m.group(2)) if m.group(2) else first
        days = frozenset((first + i) % 7 for i in range((last - first) % 7 + 1))
        h1, m1, h2, m2 = (int(m.group(i)) for i in range(3, 7))
        if (
            h1 > 24
            or h2 > 24
            or m1 > 59
            or m2 > 59
            or (h1 * 60 + m1) > 1440
            or (h2 * 60 + m2) > 1440
        ):
            raise TimeConditionError(f"opening hours {part!r}: not a time of day")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            raise TimeConditionError(f"opening hours {part!r}: opens and closes at once")
        windows.append(Window(days, start, end))
    return tuple(windows)


def format_windows(windows: tuple[Window, ...]) -> str:
    """The hours as :func:`parse_windows` reads them back (how they are stored)."""
    parts = []
    for w in windows:
        if len(w.days) == 7:
            first, last = 0, 6
        else:  # one run of days, maybe across Sunday (sat-mon)
            first = next(d for d in w.days if (d - 1) % 7 not in w.days)
            last = next(d for d in w.days if (d + 1) % 7 not in w.days)
        span = DAYS[first] if first == last else f"{DAYS[first]}-{DAYS[last]}"
        start = f"{w.start // 60:02d}:{w.start % 60:02d}"
        parts.append(f"{span} {start}-{w.end // 60:02d}:{w.end % 60:02d}")
    return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class TimeCondition:
    """A number of the dialplan that leads to ``open_to`` in opening hours (in the
    tenant's ``timezone``) and to ``closed_to`` outside them and on ``holidays``; an
    admin's ``override`` ("open", "closed") wins until it is cleared."""

    tenant: str
    realm: str
    number: str
    name: str
    timezone: str
    windows: tuple[Window, ...]
    holidays: frozenset[str]  # ISO dates, in the tenant's time zone
    open_to: str
    closed_to: str
    override: str | None = None

    def is_open(self, now: float) -> bool:
        if self.override is not None:
            return self.override == "open"
        local = dt.datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        if local.date().isoformat() in self.holidays:
            return False
        minute = local.hour * 60 + local.minute
        return any(w.covers(local.weekday(), minute) for w in self.windows)

    def destination(self, now: float) -> str:
        return self.open_to if self.is_open(now) else self.closed_to


def check_time_condition(
    number: str, timezone: str, holidays: list[str], open_to: str, closed_to: str
) -> None:
    if not GROUP_NUMBER.fullmatch(number):
        raise TimeConditionError(f"invalid number {number!r}: 2 to 15 digits, like an extension")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeConditionError(f"unknown time zone {timezone!r} (e.g. Europe/Madrid)") from None
    for day in holidays:
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            raise TimeConditionError(f"holiday {day!r}: a date as 2026-12-25") from None
    for target in (open_to, closed_to):
        if not _NUMBER.fullmatch(target):
            raise TimeConditionError(f"{target!r} is neither an extension nor a telephone number")
        if target == number:
            raise TimeConditionError("a time condition cannot lead to itself")
