"""Attempt rates counted across the nodes: an extension's costly calls per minute and per
hour and its calls to one prefix in 10 minutes hold for the whole PBX, not per node (an
attacker spreading attempts over the nodes must not multiply each limit).

Raced like concurrency, not accrued like spend: a burst of attempts through every node
at once is exactly what a rate limit is for, so the count must be exact at the moment
of the decision. The check and the count are folded into the call limits' reservation
(:class:`~pbxwarden.cluster.calls.SharedCalls`): one atomic script
(``RESERVE_ATTEMPT``) per costly attempt that every local rule allowed, so a decision
costs one round trip, as before. It checks the extension's and tenant's calls in
progress, then the extension's attempts in the last minute and hour, then its attempts
to the destination's prefix (the first 6 characters of the E.164 number, for costly
destinations) in the last 10 minutes; all before adding anything, so a refused attempt
counts nowhere, as on one node (where only allowed attempts are recorded).

Dear ranges (the test-call-then-pump, burst and spread patterns of
:func:`pbxwarden.guard.rules.dear_range`) in the same call: an attempt into a followed
range is added to the tenant's range set (one entry per extension and number, scored
by the latest), and the answer carries the newest entries and the range's test call,
which the guard judges the patterns again with; a match refuses and
:meth:`SharedAttempts.withdraw` takes the admission back (a second round trip, only
then). A test call or a block found here is written to the range's
marks (:meth:`SharedAttempts.range_marked`); a block refuses every node's next attempt.

This node's own guard still counts its attempts and applies the same limits first
(with its warnings "close to the limit"); Redis only adds what the other nodes saw.
Redis down: as the call limits (refused with the reason, or judged on this node's
counts with ``cluster.costly_when_down = "local"``; no timeout per attempt). Attempts
allowed while Redis was down are not counted there afterwards (they leave the windows
within the hour anyway).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from pbxwarden.cluster import scripts
from pbxwarden.cluster.calls import DOWN, UNSTARTED_TTL, SharedCalls
from pbxwarden.guard.rules import PREFIX_WINDOW, PUMP_WINDOW, SPREAD_WINDOW, TOGETHER
from pbxwarden.guard.shared import Admission, Ask

MINUTE = 60.0
HOUR = 3600.0
RANGE_KEPT = 200  # attempts kept per range (as a node's own RangeState.calls)
RANGE_TOLD = 50  # range entries answered (distinct extension and number), newest first


class SharedAttempts(SharedCalls):
    """The guard's :class:`~pbxwarden.guard.shared.SharedAttempts` for a cluster node:
    the call limits of :class:`SharedCalls`, the rate limits and the dear ranges, in one
    script call."""

    def __init__(
        self, url: str, timeout: float, prefix: str, node: str, fail_closed: bool = True
    ) -> None:
        super().__init__(url, timeout, prefix, node, fail_closed)
        # this process's tokens, told apart from the other nodes' (and from this node's
        # before a restart, whose attempts its guard no longer remembers)
        self.uid = f"{node}.{time.time_ns():x}."
        self._tokens = (f"{self.uid}{n}" for n in itertools.count())
        self._admit = self.client.register_script(scripts.RESERVE_ATTEMPT)
        self._withdraw = self.client.register_script(scripts.WITHDRAW_ATTEMPT)
        self._mark = self.client.register_script(scripts.MARK_RANGE)
        self._last: tuple[str, str, str, list[str], str] | None = None  # the last admitted
        self.rate_refused = 0  # refused by a rate, same-prefix or range rule

    def _range_key(self, tenant: str, prefix: str) -> str:
        return f"{self.prefix}range:{tenant}/{prefix}"

    def admit(self, tenant: str, extension: str, ask: Ask, now: float) -> Admission | None:
        """None (or an Admission not ``refused``, with the other nodes' attempts into the
        attempt's range): counted, and a call slot held for the extension's next started
        call."""
        if self._waiting():
            return Admission(DOWN, 503) if self.fail_closed else None
        token = next(self._tokens)
        owner = f"{tenant}/{extension}"
        keys = [*self._keys(tenant, extension), f"{self.prefix}attempts:{owner}"]
        if ask.prefix:
            keys.append(f"{self.prefix}prefix:{owner}/{ask.prefix}")
        args: list[Any] = [
            token,
            repr(now),
            repr(now + UNSTARTED_TTL),
            ask.per_extension,
            ask.per_tenant,
            ask.per_minute,
            ask.per_hour,
            ask.same_prefix,
            repr(now - MINUTE),
            repr(now - HOUR),
            repr(now - PREFIX_WINDOW),
        ]
        member = ""
        if ask.range and ask.prefix:
            member = f"{extension}|{ask.e164}|{int(ask.odd)}"
            range_key = self._range_key(tenant, ask.range)
            keys += [range_key, f"{range_key}:marks"]
            args += [member, repr(now - SPREAD_WINDOW), RANGE_KEPT, RANGE_TOLD]
        try:
            answer = self._admit(keys=keys, args=args)
        except self._errors as exc:
            self._failed("RESERVE_ATTEMPT", exc)
            return Admission(DOWN, 503) if self.fail_closed else None
        self._answered()
        if int(answer[0]) == 1:
            self._hold_token(tenant, extension, token)
            if not member:
                self._last = (tenant, extension, token, keys, "")
                return None
            # a pair already there (an earlier attempt) stays if this one is withdrawn
            new = int(answer[6]) == 1
            self._last = (tenant, extension, token, keys, member if new else "")
            return _seen(answer)
        self.refused += 1
        return self._refusal(tenant, extension, ask, answer)

    def _refusal(self, tenant: str, extension: str, ask: Ask, answer: list[Any]) -> Admission:
        what = str(answer[1])
        if what == "blocked":
            self.rate_refused += 1
            until, why = float(answer[2]), str(answer[3])
            return Admission(
                f"the range {ask.range} was found pumped ({why}){TOGETHER}; its calls are "
                "refused for 24 hours",
                403,
                "range",
                range_blocked=(until, why),
            )
        count = int(answer[2])
        if what in ("extension", "tenant"):
            limit = ask.per_extension if what == "extension" else ask.per_tenant
            who = f"extension {extension}" if what == "extension" else f"tenant {tenant}"
            return Admission(
                f"{who} has {count} costly calls in progress{TOGETHER} (limit {limit})", 486
            )
        self.rate_refused += 1
        if what in ("minute", "hour"):
            limit = ask.per_minute if what == "minute" else ask.per_hour
            text = f"made {count} costly calls in the last {what}{TOGETHER} (limit {limit})"
        else:
            text = (
                f"called the {ask.prefix} prefix {count} times in 10 minutes{TOGETHER} "
                f"(limit {ask.same_prefix})"
            )
        return Admission(f"extension {extension} {text}", 403)

    def withdraw(self) -> None:
        """Undo the last admission (refused after all by a range pattern)."""
        last, self._last = self._last, None
        if last is None:
            return
        tenant, extension, token, keys, member = last
        pending = self._pending.get((tenant, extension))
        if pending and token in pending:
            pending.remove(token)
            if not pending:
                del self._pending[(tenant, extension)]
            self.reserved -= 1
        if self._waiting():
            return  # lapses by itself (the reservation) or leaves the window (the rest)
        try:
            self._withdraw(keys=keys, args=[token, member])
        except self._errors as exc:
            self._failed("WITHDRAW_ATTEMPT", exc)

    def range_marked(
        self,
        tenant: str,
        prefix: str,
        test: tuple[float, str, str] | None,
        blocked: float,
        why: str,
    ) -> None:
        """A test call into the range seen here, or the range found pumped here: the
        other nodes learn it at their next attempt into it."""
        if self._waiting():
            return
        value = f"{test[0]!r} {test[1]} {test[2]}" if test is not None else ""
        keys = [f"{self._range_key(tenant, prefix)}:marks"]
        try:
            self._mark(keys=keys, args=[value, repr(blocked), why, int(PUMP_WINDOW) + 60])
        except self._errors as exc:
            self._failed("MARK_RANGE", exc)


def _seen(answer: list[Any]) -> Admission:
    """The range's attempts (this node's among them: the patterns count distinct
    extensions and numbers, so they count once) and its test call, from the answer."""
    calls: list[tuple[float, str, str]] = []
    odd: list[tuple[str, float]] = []
    for i in range(7, len(answer) - 1, 2):
        parts = str(answer[i]).split("|")
        at = _number(answer[i + 1])
        if len(parts) != 3 or at is None:
            continue  # not written by this version: ignored, not a crash
        calls.append((at, parts[0], parts[1]))
        if parts[2] == "1":
            odd.append((parts[0], at))
    test = None
    found = str(answer[5]).split(" ")
    at = _number(found[0])
    if len(found) == 3 and at is not None:
        test = (at, found[1], found[2])
    return Admission(range_calls=tuple(calls), range_odd=tuple(odd), range_test=test)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
