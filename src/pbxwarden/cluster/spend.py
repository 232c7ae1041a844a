"""Spend counted across the nodes: an extension's and a tenant's spend caps hold for the
whole PBX, not per node (calls spread over nodes must not multiply the caps).

Each node's guard keeps pricing its own calls exactly (``guard.state.Spend``); this
module adds what the *other* nodes' calls cost. Every node writes its answered calls in
progress (rate and answer time, refreshed every ``HOLD_INTERVAL``) and its finished
calls' cost (scored by their end) to two keys per extension and per tenant, with one
atomic script per batch (``SPEND_PUSH``); ``SPEND_READ`` answers, for a list of
extensions and tenants, the other nodes' spend in the guard's windows (last hour, last
24 hours) and their calls in progress as a sum of rates, which the reader prices at any
later moment. A live entry its node stopped refreshing (the node died) becomes a
finished call, priced up to its last refresh.

Why a cached total refreshed twice a second, not a script per decision (as the call
limits do, :mod:`pbxwarden.cluster.calls`): a concurrency limit is raced by
simultaneous INVITEs, so its count must be exact at the moment of the decision; a spend
cap is crossed by money accruing over minutes, and simultaneous attempts add nothing to
it until they are answered (their number is what the shared concurrency limit bounds).
Half a second of the other nodes' accrual is cents; so the decision path reads a local
cache (no round trip: the decision stays as fast as on one node) and a task pushes this
node's changes and refreshes the cache of the extensions and tenants this node judged
in the last ``INTEREST`` seconds or has calls of, every ``REFRESH_INTERVAL``. The one
exception is an extension or tenant the cache does not know (its first costly attempt
on this node, or a cache older than ``STALE``): it is read synchronously once, on a
blocking connection with the ``cluster.timeout``, as the call limits are, so that a
first attempt on a fresh node is judged on the cluster's spend too.

Redis down (a push or a read failed): no synchronous read is tried while the task says
it is down (no wait per attempt; without the task, tried again after a second), the
other nodes' spend is unknown, and costly attempts are refused with the reason
(``cluster.costly_when_down = "refuse"``) or judged on this node's own spend
(``"local"``); calls in progress are not cut for it. When Redis answers again, this
node pushes its finished calls of the last 24 hours and its calls in progress again
(idempotent members), so an empty, restarted Redis is refilled.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden.cluster import scripts
from pbxwarden.cluster.connection import blocking_client

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from pbxwarden.cluster.connection import RedisLink

log = structlog.get_logger("pbxwarden.cluster")

HOUR = 3600.0
DAY = 86400.0
REFRESH_INTERVAL = 0.5  # seconds between push-and-refresh rounds
HOLD_INTERVAL = 5.0  # how often this node refreshes its live entries
LAPSE = 30.0  # a live entry not refreshed for this long is a dead node's call
STALE = 2.0  # a cached total older than this is read again before it is used
INTEREST = 120.0  # extensions and tenants judged here are followed this long after
MAX_INTEREST = 50_000  # followed at most (the oldest asked are dropped first)
BATCH = 200  # changes per SPEND_PUSH, owners per SPEND_READ
PENDING_LIMIT = 100_000  # changes waiting; past it the replay after an outage has them
RETRY_AFTER_DOWN = 1.0
DOWN = (
    "the PBX's shared state (Redis) is unreachable: the other nodes' spend is unknown, "
    "costly calls are refused until it is back"
)

# (kind, extension owner, tenant owner, field, payload, score)
Change = tuple[str, str, str, str, str, float]


def _running(entry: list[float], now: float) -> float:
    """What the other nodes' calls in progress cost so far (rate terms per minute)."""
    return max(0.0, (now * entry[2] - entry[3]) / 60.0) if entry[2] else 0.0


class SharedSpend:
    """The guard's :class:`~pbxwarden.guard.shared.SharedSpend` for a cluster node."""

    def __init__(
        self, url: str, timeout: float, prefix: str, node: str, fail_closed: bool = True
    ) -> None:
        self.client, self._errors = blocking_client(url, timeout, f"pbxwarden-{node}-spend")
        self._read_now = self.client.register_script(scripts.SPEND_READ)
        self.prefix, self.fail_closed = prefix, fail_closed
        # this process's entries (another process of the same name, or this node before
        # a restart, is "another node": its spend is no longer in this guard's memory)
        self.uid = f"{node}.{secrets.token_hex(4)}".replace("|", "_")
        self._seq = itertools.count()
        self._cache: dict[str, list[float]] = {}  # owner -> [hour, day, rate, rate_at, mono]
        self._interest: dict[str, float] = {}  # owner -> last asked (monotonic)
        self._live: dict[int, tuple[str, str, str, str]] = {}  # ref -> (ext, tenant, field, "r a")
        self._finished: deque[tuple[float, str, str, str, str]] = deque()  # the last day's
        self._pending: deque[Change] = deque(maxlen=PENDING_LIMIT)
        self._push_script: AsyncScript | None = None
        self._read_script: AsyncScript | None = None
        self._next_hold = 0.0
        self._replay = False
        self._down_until = 0.0
        self.looping = False  # the task runs (it, not a retry timer, says when Redis is back)
        self.down = False
        self.reads = 0  # synchronous reads (cache misses)
        self.rounds = 0  # push-and-refresh rounds that succeeded

    def _keys(self, owners: list[str]) -> list[str]:
        out: list[str] = []
        for owner in owners:
            out += [f"{self.prefix}spend:{owner}", f"{self.prefix}spend:{owner}:live"]
        return out

    # -- the guard's side (synchronous, never waits while Redis is known to be down) ----

    def others(
        self, tenant: str, extension: str, now: float, read: bool = True
    ) -> tuple[float, float, float] | None:
        """The other nodes' spend: the extension's in the last hour and 24 hours, the
        tenant's in 24 hours; None while it cannot be known (Redis down, or not cached
        and not to be ``read`` now: the next round reads it)."""
        ext_owner = f"{tenant}/{extension}"
        mono = time.monotonic()
        self._interest[ext_owner] = self._interest[tenant] = mono
        e, t = self._cache.get(ext_owner), self._cache.get(tenant)
        if e is None or t is None or mono - min(e[4], t[4]) > STALE:
            if not read or (self.down and (self.looping or mono < self._down_until)):
                return None
            if not self._read_sync([ext_owner, tenant], now, mono):
                return None
            e, t = self._cache[ext_owner], self._cache[tenant]
        running = _running(e, now)
        return e[0] + running, e[1] + running, t[1] + _running(t, now)

    def _read_sync(self, owners: list[str], now: float, mono: float) -> bool:
        try:
            answer = self._read_now(keys=self._keys(owners), args=[now, self.uid, LAPSE, HOUR, DAY])
        except self._errors as exc:
            if not self.down:
                log.warning("redis unreachable for spend caps", error=str(exc))
            self.down = True
            self._down_until = mono + RETRY_AFTER_DOWN
            return False
        self.reads += 1
        self._store(owners, answer, mono)
        if self.down and not self.looping:
            self.down = False
            self._replay = True
        return True

    def _store(self, owners: list[str], answer: Any, mono: float) -> None:
        values = [float(v) for v in answer]
        for i, owner in enumerate(owners):
            self._cache[owner] = [*values[4 * i : 4 * i + 4], mono]

    def answered(self, tenant: str, extension: str, ref: int, rate: float, at: float) -> None:
        """One of this node's costly calls was answered: it costs from now on."""
        ext_owner = f"{tenant}/{extension}"
        live = (ext_owner, tenant, f"{self.uid}|{ref}", f"{rate!r} {at!r}")
        self._live[ref] = live
        self._interest[ext_owner] = self._interest[tenant] = time.monotonic()
        self._pending.append(("live", ext_owner, tenant, live[2], live[3], 0.0))

    def ended(self, ref: int, at: float, cost: float) -> None:
        """An answered call ended having cost ``cost`` (0: it is only forgotten)."""
        live = self._live.pop(ref, None)
        if live is None:
            return
        ext_owner, tenant, field, _ = live
        member = f"{self.uid}|{ref}.{next(self._seq)}|{cost:.6f}" if cost > 0 else ""
        if member:
            self._finished.append((at, ext_owner, tenant, field, member))
        self._pending.append(("end", ext_owner, tenant, field, member, at))

    # -- the task's side ----------------------------------------------------------------

    def attach(self, link: RedisLink) -> None:
        """Use ``link`` (the node's asynchronous connection) for :meth:`round`."""
        self._push_script = link.client.register_script(scripts.SPEND_PUSH)
        self._read_script = link.client.register_script(scripts.SPEND_READ)

    async def run(self, link: RedisLink) -> None:
        """Push this node's changes and refresh the cached totals, for ever."""
        self.attach(link)
        self.looping = True
        try:
            while True:
                began = time.monotonic()
                try:
                    await self.round(link)
                except Exception:
                    log.exception("sharing spend failed")
                await asyncio.sleep(max(0.05, REFRESH_INTERVAL - (time.monotonic() - began)))
        finally:
            self.looping = False

    async def round(self, link: RedisLink) -> bool:
        """One push-and-refresh round; False if Redis did not answer."""
        assert self._push_script is not None and self._read_script is not None
        now, mono = time.time(), time.monotonic()
        if self._replay:  # Redis was down (or restarted empty): push everything again
            self._replay = False
            while self._finished and self._finished[0][0] <= now - DAY:
                self._finished.popleft()
            for at, ext_owner, tenant, field, member in self._finished:
                self._pending.append(("end", ext_owner, tenant, field, member, at))
            self._next_hold = 0.0
        if mono >= self._next_hold:
            self._next_hold = mono + HOLD_INTERVAL
            for ext_owner, tenant, field, value in self._live.values():
                self._pending.append(("live", ext_owner, tenant, field, value, 0.0))
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            keys: list[str] = []
            args: list[str | float] = [now, DAY]
            for kind, ext_owner, tenant, field, payload, score in batch:
                keys += self._keys([ext_owner, tenant])
                value = f"{payload} {now!r}" if kind == "live" else payload
                args += [kind, field, value, score]
            if await link.run("spend push", _call(self._push_script, keys, args)) is None:
                return self._went_down()
        while self._finished and self._finished[0][0] <= now - DAY:
            self._finished.popleft()
        owners = self._followed(mono)
        for i in range(0, len(owners), BATCH):
            chunk = owners[i : i + BATCH]
            args = [now, self.uid, LAPSE, HOUR, DAY]
            answer = await link.run("spend read", _call(self._read_script, self._keys(chunk), args))
            if answer is None:
                return self._went_down()
            self._store(chunk, answer, time.monotonic())
        if self.down:
            log.warning("redis reachable again for spend caps")
            self.down = False
        self.rounds += 1
        return True

    def _went_down(self) -> bool:
        if not self.down:
            log.warning("redis unreachable for spend caps: other nodes' spend unknown")
        self.down = True
        self._replay = True  # what was not pushed is pushed again from the records
        self._pending.clear()
        return False

    def _followed(self, mono: float) -> list[str]:
        """Owners judged here lately or with calls here; the others are forgotten."""
        live = {o for e, t, _, _ in self._live.values() for o in (e, t)}
        horizon = mono - INTEREST
        if len(self._interest) > MAX_INTEREST:
            newest = sorted(self._interest.items(), key=lambda kv: kv[1])[-MAX_INTEREST:]
            self._interest = dict(newest)
        for owner in [o for o, at in self._interest.items() if at < horizon and o not in live]:
            del self._interest[owner]
            self._cache.pop(owner, None)
        return list(self._interest.keys() | live)

    def describe(self) -> dict[str, Any]:
        return {
            "cluster_spend_redis": "down" if self.down else "up",
            "cluster_spend_followed": len(self._interest),
            "cluster_spend_live": len(self._live),
            "cluster_spend_reads": self.reads,
        }

    def close(self) -> None:
        self.client.close()


def _call(
    script: AsyncScript, keys: list[str], args: list[str | float]
) -> Callable[[Redis], Awaitable[Any]]:
    return lambda client: script(keys=keys, args=args, client=client)
