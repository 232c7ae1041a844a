"""Costly calls in progress counted across the nodes: the concurrency limits hold for
the whole PBX, not per node (an attacker spreading calls over nodes must not multiply
them, as it would with OpenSIPS ``fraud_detection`` or Kamailio ``pike``).

The guard's decision is synchronous (the SIP core is sans-I/O), and a count that is
merely close to right lets 20 simultaneous INVITEs split over nodes through, so the
reservation is one atomic script (``RESERVE_CALL``) called synchronously, on a
dedicated blocking connection with a short timeout, only for attempts the local guard
already allows and that cost money: a round trip on loopback or a LAN (about 0.1-0.3
ms) per costly attempt. docs/cluster.md weighs this against an asynchronous
reservation, the next step if that round trip ever shows in the guard's latency.

Redis down: the node does not wait a timeout per attempt (it tries again after a
second), and costly attempts are refused (``cluster.costly_when_down = "refuse"``, the
default: fail closed) or judged on this node's own counts (``"local"``). Internal and
inbound calls never ask. A reservation lapses unless held: a call that never started
after 10 s, a call whose node stopped refreshing it (killed) after 90 s.
"""

from __future__ import annotations

import itertools
import time
from collections import deque

import structlog

from pbxwarden.cluster import scripts
from pbxwarden.cluster.connection import blocking_client

log = structlog.get_logger("pbxwarden.cluster")

UNSTARTED_TTL = 10.0  # a reservation whose call never started lapses after this
HELD_TTL = 90.0  # a started call's reservation lapses unless refreshed within this
HOLD_INTERVAL = 30.0  # how often the node refreshes its calls' reservations
RETRY_AFTER_DOWN = 1.0  # seconds before Redis is tried again after a failure
DOWN = "the PBX's shared state (Redis) is unreachable: costly calls are refused until it is back"


class SharedCalls:
    """The guard's :class:`~pbxwarden.guard.shared.SharedCounts` for a cluster node."""

    def __init__(
        self, url: str, timeout: float, prefix: str, node: str, fail_closed: bool = True
    ) -> None:
        self.client, self._errors = blocking_client(url, timeout, f"pbxwarden-{node}-calls")
        self.prefix, self.node, self.fail_closed = prefix, node, fail_closed
        self._reserve = self.client.register_script(scripts.RESERVE_CALL)
        self._hold = self.client.register_script(scripts.HOLD_CALLS)
        self._release = self.client.register_script(scripts.RELEASE_CALL)
        self._tokens = (f"{node}.{time.time_ns():x}.{n}" for n in itertools.count())
        self._pending: dict[tuple[str, str], deque[str]] = {}  # reserved, call not started
        self._held: dict[int, tuple[str, str, str]] = {}  # ref -> (token, tenant, ext)
        self._down_until = 0.0
        self.down = False
        self.reserved = 0
        self.refused = 0

    def _keys(self, tenant: str, extension: str) -> list[str]:
        return [f"{self.prefix}calls:{tenant}/{extension}", f"{self.prefix}calls:{tenant}"]

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self.down:
            log.warning("redis unreachable for call limits", command=what, error=str(exc))
        self.down = True
        self._down_until = time.monotonic() + RETRY_AFTER_DOWN

    def _waiting(self) -> bool:
        """Redis failed less than ``RETRY_AFTER_DOWN`` ago: not asked (no wait)."""
        return time.monotonic() < self._down_until

    def _answered(self) -> None:
        if self.down:
            log.warning("redis reachable again for call limits")
            self.down = False

    def _hold_token(self, tenant: str, extension: str, token: str) -> None:
        """A reservation made: it belongs to the extension's next started call."""
        self._pending.setdefault((tenant, extension), deque()).append(token)
        self.reserved += 1

    def reserve(
        self, tenant: str, extension: str, per_extension: int, per_tenant: int, now: float
    ) -> str | None:
        """Hold one of the extension's and the tenant's call slots on all nodes: None
        when held (for the extension's next started call), else why it is refused."""
        if self._waiting():
            return DOWN if self.fail_closed else None
        token = next(self._tokens)
        try:
            answer = self._reserve(
                keys=self._keys(tenant, extension),
                args=[token, now, now + UNSTARTED_TTL, per_extension, per_tenant],
            )
        except self._errors as exc:
            self._failed("RESERVE_CALL", exc)
            return DOWN if self.fail_closed else None
        self._answered()
        if int(answer[0]) == 1:
            self._hold_token(tenant, extension, token)
            return None
        self.refused += 1
        if answer[1] == "tenant":
            return (
                f"tenant {tenant} has {answer[2]} costly calls in progress on the PBX's "
                "nodes together"
            )
        return (
            f"extension {extension} has {answer[2]} costly calls in progress on the PBX's "
            "nodes together"
        )

    def started(self, tenant: str, extension: str, ref: int, now: float) -> None:
        pending = self._pending.get((tenant, extension))
        if not pending:
            return  # decided while Redis was down (judged locally)
        token = pending.popleft()
        if not pending:
            del self._pending[(tenant, extension)]
        self._held[ref] = (token, tenant, extension)
        self._call_hold(self._keys(tenant, extension), now + HELD_TTL, [token])

    def ended(self, ref: int) -> None:
        held = self._held.pop(ref, None)
        if held is None or time.monotonic() < self._down_until:
            return  # lapses by itself
        token, tenant, extension = held
        try:
            self._release(keys=self._keys(tenant, extension), args=[token])
        except self._errors as exc:
            self._failed("RELEASE_CALL", exc)

    def hold_all(self, now: float) -> None:
        """Refresh this node's calls in progress (every ``HOLD_INTERVAL``)."""
        by_ext: dict[tuple[str, str], list[str]] = {}
        for token, tenant, extension in self._held.values():
            by_ext.setdefault((tenant, extension), []).append(token)
        for (tenant, extension), tokens in by_ext.items():
            if not self._call_hold(self._keys(tenant, extension), now + HELD_TTL, tokens):
                return

    def _call_hold(self, keys: list[str], until: float, tokens: list[str]) -> bool:
        if time.monotonic() < self._down_until:
            return False
        try:
            self._hold(keys=keys, args=[until, *tokens])
        except self._errors as exc:
            self._failed("HOLD_CALLS", exc)
            return False
        return True

    def close(self) -> None:
        self.client.close()
