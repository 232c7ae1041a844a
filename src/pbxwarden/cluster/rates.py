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

This node's own guard still counts its attempts and applies the same limits first
(with its warnings "close to the limit"); Redis only adds what the other nodes saw.
Redis down: as the call limits (refused with the reason, or judged on this node's
counts with ``cluster.costly_when_down = "local"``; no timeout per attempt). Attempts
allowed while Redis was down are not counted there afterwards (they leave the windows
within the hour anyway).
"""

from __future__ import annotations

from pbxwarden.cluster import scripts
from pbxwarden.cluster.calls import DOWN, UNSTARTED_TTL, SharedCalls
from pbxwarden.guard.engine import Ask
from pbxwarden.guard.rules import PREFIX_WINDOW, TOGETHER

MINUTE = 60.0
HOUR = 3600.0


class SharedAttempts(SharedCalls):
    """The guard's :class:`~pbxwarden.guard.engine.SharedAttempts` for a cluster node:
    the call limits of :class:`SharedCalls` and the rate limits, in one script call."""

    def __init__(
        self, url: str, timeout: float, prefix: str, node: str, fail_closed: bool = True
    ) -> None:
        super().__init__(url, timeout, prefix, node, fail_closed)
        self._admit = self.client.register_script(scripts.RESERVE_ATTEMPT)
        self.rate_refused = 0  # refused by a rate or same-prefix limit

    def admit(self, tenant: str, extension: str, ask: Ask, now: float) -> tuple[str, int] | None:
        """None: counted, and a call slot held for the extension's next started call;
        else (why not, SIP status)."""
        if self._waiting():
            return (DOWN, 503) if self.fail_closed else None
        token = next(self._tokens)
        owner = f"{tenant}/{extension}"
        keys = [*self._keys(tenant, extension), f"{self.prefix}attempts:{owner}"]
        if ask.prefix:
            keys.append(f"{self.prefix}prefix:{owner}/{ask.prefix}")
        args = [
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
        try:
            answer = self._admit(keys=keys, args=args)
        except self._errors as exc:
            self._failed("RESERVE_ATTEMPT", exc)
            return (DOWN, 503) if self.fail_closed else None
        self._answered()
        if int(answer[0]) == 1:
            self._hold_token(tenant, extension, token)
            return None
        self.refused += 1
        what, count = str(answer[1]), int(answer[2])
        if what in ("extension", "tenant"):
            limit = ask.per_extension if what == "extension" else ask.per_tenant
            who = f"extension {extension}" if what == "extension" else f"tenant {tenant}"
            return f"{who} has {count} costly calls in progress{TOGETHER} (limit {limit})", 486
        self.rate_refused += 1
        if what in ("minute", "hour"):
            limit = ask.per_minute if what == "minute" else ask.per_hour
            text = f"made {count} costly calls in the last {what}{TOGETHER} (limit {limit})"
        else:
            text = (
                f"called the {ask.prefix} prefix {count} times in 10 minutes{TOGETHER} "
                f"(limit {ask.same_prefix})"
            )
        return f"extension {extension} {text}", 403
