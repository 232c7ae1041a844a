"""The dialplan's model: the numbers of a tenant and what each leads to, as stored and
checked wherever one is written (CLI, API), shared by the parts that ring them.

A number of a tenant's dialplan is an extension (:mod:`pbxwarden.store.db`) or a ring
group (below; rung by :mod:`pbxwarden.pbx.groups`); one number is never both. DIDs,
forwarding, group members and fallbacks, and transfers point at such a number, or at an
external number (judged by the guard). Plain frozen records, so that several nodes can
share them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
