"""The guard's spend caps and suspensions for the whole PBX, against a real redis-server.

Two nodes' guards, each with its own :class:`SharedSpend`: their calls' spend adds up
(each node leaving its own out, which its guard counts itself), a cap reached only by
both together refuses and cuts with the reason, a dead node's call is priced up to its
last refresh, Redis down is known at once and refuses (or judges locally), and an
emptied Redis is refilled. Suspensions: the newest change of an extension wins, a
suspension made on one node is adopted by the other (its calls cut) and a lift there
lifts it here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest

from pbxwarden.guard.engine import Guard, GuardConfig, TenantPolicy
from pbxwarden.guard.rates import RateTable
from pbxwarden.guard.shared import SPEND_UNKNOWN
from pbxwarden.pbx.numbers import classify
from pbxwarden.pbx.policy import CallAttempt
from tests.helpers import free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis
redis_asyncio = pytest.importorskip("redis.asyncio")

from pbxwarden.cluster import scripts  # noqa: E402
from pbxwarden.cluster.connection import RedisLink  # noqa: E402
from pbxwarden.cluster.spend import LAPSE, SharedSpend  # noqa: E402
from pbxwarden.cluster.suspensions import SharedSuspensions  # noqa: E402

PREFIX = "t:"
DEAR = "2025550143"  # priced 60 a minute below: one a second
RATES = RateTable({"currency": "USD", "prefixes": {"+1202555": 60.0}})


def guard(**policy: Any) -> Guard:
    config = GuardConfig(tenants={"acme": TenantPolicy(**policy)})
    return Guard(config, rates=RATES)


def attempt(at: float, dialed: str = DEAR, ext: str = "1000") -> CallAttempt:
    return CallAttempt(
        "acme", ext, ext, dialed, "external", "udp:192.0.2.1:5060", at, classify(dialed, "US")
    )


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def spend_node(
    url: str, name: str, fail_closed: bool = True
) -> AsyncIterator[tuple[SharedSpend, RedisLink]]:
    link = RedisLink(url, 0.5, name)
    spend = SharedSpend(url, 0.5, PREFIX, name, fail_closed=fail_closed)
    spend.attach(link)
    try:
        yield spend, link
    finally:
        spend.close()
        await link.close()


async def test_two_nodes_spend_adds_up_and_each_leaves_its_own_out(
    redis_server: RedisServer,
) -> None:
    async with (
        spend_node(redis_server.url, "a") as (a, link_a),
        spend_node(redis_server.url, "b") as (b, link_b),
    ):
        now = time.time()
        a.answered("acme", "1000", 1, 60.0, now - 10)  # 10.00 so far
        assert await a.round(link_a)
        hour, day, tenant_day = b.others("acme", "1000", now) or (-1, -1, -1)
        assert (hour, day, tenant_day) == pytest.approx((10.0, 10.0, 10.0), abs=0.01)
        assert b.others("acme", "1000", now + 5) == pytest.approx((15.0, 15.0, 15.0), abs=0.01)
        assert b.reads == 1  # read once, then priced from the cache as it accrues
        assert a.others("acme", "1000", now) == (0.0, 0.0, 0.0)  # its own: its guard's
        assert b.others("acme", "2000", now) == (0.0, 0.0, 10.0)  # the tenant's
        a.ended(1, now + 2, 12.0)
        assert await a.round(link_a) and await b.round(link_b)
        assert b.others("acme", "1000", now + 60) == pytest.approx((12.0, 12.0, 12.0))
        b._cache.clear()  # read again an hour later: out of the hour, still in the day
        assert b.others("acme", "1000", now + 3603) == pytest.approx((0.0, 12.0, 12.0))
        b._cache.clear()
        assert b.others("acme", "1000", now + 86403) == (0.0, 0.0, 0.0)


async def test_a_cap_reached_only_by_both_nodes_cuts_and_refuses_with_the_reason(
    redis_server: RedisServer,
) -> None:
    async with (
        spend_node(redis_server.url, "a") as (a, link_a),
        spend_node(redis_server.url, "b") as (b, link_b),
    ):
        guards = guard(spend_per_hour=10.0), guard(spend_per_hour=10.0)
        guards[0].shared_spend, guards[1].shared_spend = a, b
        alone = guard(spend_per_hour=10.0)  # what one node without the cluster would do
        now = time.time()
        for g in (*guards, alone):
            call = attempt(now - 6)
            assert g.authorize(call).allow, g.authorize(call).reasons
            g.on_call_start(call, 1)
            g.on_call_answer(1, now - 6)  # 6.00 on each node so far
        for _ in range(2):  # each pushes, then each reads the other's
            assert await a.round(link_a) and await b.round(link_b)
        assert alone.police(now) == []
        for g in guards:  # 6 here + 6 there > 10: each node cuts its own call
            [(ref, why)] = g.police(now)
            assert ref == 1 and "spend cap" in why and "on the PBX's nodes together" in why, why
            alert = g.outbox[-1]
            assert alert.rule == "spend-cap" and "nodes together" in alert.reasons[0]
        refused = guards[1].authorize(attempt(now))
        assert not refused.allow and refused.rule == "spend-cap", refused
        assert (
            "spent an estimated 12.00 USD in the last hour on the PBX's nodes together"
            in (refused.reasons[0])
        )
        for g in guards:
            g.on_call_end(1, now)
        for _ in range(2):
            assert await a.round(link_a) and await b.round(link_b)
        assert not guards[0].authorize(attempt(now + 1)).allow  # finished spend counts too
        assert guards[0].authorize(attempt(now + 1, ext="2000")).allow


async def test_a_dead_nodes_call_is_priced_up_to_its_last_refresh(
    redis_server: RedisServer,
) -> None:
    async with (
        spend_node(redis_server.url, "a") as (a, link_a),
        spend_node(redis_server.url, "b") as (b, _),
    ):
        now = time.time()
        a.answered("acme", "1000", 1, 60.0, now - 100)
        assert await a.round(link_a)  # refreshed now, then the node dies
        later = now + LAPSE + 60
        hour, day, _ = b.others("acme", "1000", later) or (0, 0, 0)
        assert hour == pytest.approx(100.0, abs=1.0) and day == pytest.approx(hour)
        c = redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            assert await c.hlen(f"{PREFIX}spend:acme/1000:live") == 0
            assert await c.zcard(f"{PREFIX}spend:acme/1000") == 1
        finally:
            await c.aclose()


async def test_redis_down_is_known_at_once_and_refuses_or_judges_locally() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with (
        spend_node(url, "a") as (closed, link),
        spend_node(url, "b", fail_closed=False) as (local, _),
    ):
        g, h = guard(), guard()
        g.shared_spend, h.shared_spend = closed, local
        started = time.monotonic()
        refused = g.authorize(attempt(time.time()))
        assert not refused.allow and refused.reasons[0] == SPEND_UNKNOWN
        assert refused.status == 503
        assert not g.authorize(attempt(time.time())).allow  # no second timeout
        assert time.monotonic() - started < 1.0
        assert h.authorize(attempt(time.time())).allow
        assert not await closed.round(link) and closed.down
        closed.looping = True  # the task says when it is back: nothing tried meanwhile
        closed._down_until = 0.0
        started = time.monotonic()
        assert closed.others("acme", "1000", time.time()) is None
        assert time.monotonic() - started < 0.05


async def test_an_emptied_redis_is_refilled_with_the_finished_calls(
    redis_server: RedisServer,
) -> None:
    async with (
        spend_node(redis_server.url, "a") as (a, link_a),
        spend_node(redis_server.url, "b") as (b, link_b),
    ):
        now = time.time()
        a.answered("acme", "1000", 1, 60.0, now - 5)
        a.ended(1, now, 5.0)
        a.answered("acme", "1000", 2, 60.0, now - 3)
        assert await a.round(link_a)
        redis_server.stop()
        assert not await a.round(link_a)
        redis_server.start()  # empty: no persistence
        deadline = time.monotonic() + 10
        while not await a.round(link_a):
            assert time.monotonic() < deadline, "redis did not come back"
            await asyncio.sleep(0.1)
        while not await b.round(link_b):
            assert time.monotonic() < deadline, "redis did not come back"
            await asyncio.sleep(0.1)
        b.down = False
        hour, _, _ = b.others("acme", "1000", now) or (0, 0, 0)
        assert hour == pytest.approx(8.0, abs=0.01)  # 5 finished + 3 in progress


# -- suspensions --------------------------------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    def suspend_extension(
        self, tenant: str, number: str, reason: str, now: float | None = None, by: str = "admin"
    ) -> bool:
        if (tenant, number) in self.rows:
            return False
        self.rows[(tenant, number)] = {"reason": reason, "at": now or time.time(), "by": by}
        return True

    def resume_extension(self, tenant: str, number: str, force: bool = False) -> bool:
        return self.rows.pop((tenant, number), None) is not None

    def suspended_extensions(self) -> list[dict[str, Any]]:
        return [{"tenant": t, "extension": n, **row} for (t, n), row in self.rows.items()]


class FakeCalls:
    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.cut: list[tuple[int, str]] = []

    def police(self, now: float) -> None:
        self.cut += self.guard.police(now)


class FakeServer:
    def __init__(self) -> None:
        self.guard = guard()
        self.store = FakeStore()
        self.calls = FakeCalls(self.guard)

    def sync(self) -> None:
        """What the server's one-second round does with its database."""
        rows = self.store.suspended_extensions()
        self.guard.sync_suspensions(
            {(r["tenant"], r["extension"]): r["reason"] for r in rows},
            time.time(),
            {(r["tenant"], r["extension"]): (r["at"], r["by"]) for r in rows},
        )


@asynccontextmanager
async def suspension_node(
    url: str, name: str
) -> AsyncIterator[tuple[FakeServer, SharedSuspensions, RedisLink]]:
    link = RedisLink(url, 0.5, name)
    server = FakeServer()
    shared = SharedSuspensions(cast(Any, server), link, f"{PREFIX}suspensions", f"{PREFIX}events")
    server.guard.shared_suspensions = shared
    task = asyncio.create_task(shared.pushing())
    try:
        yield server, shared, link
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await link.close()


async def test_set_suspension_keeps_the_newest_change_and_a_lift_wins_a_tie(
    redis_server: RedisServer,
) -> None:
    c = redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True)

    async def change(at: float, suspended: bool) -> int:
        record = json.dumps({"suspended": suspended, "at": at})
        return int(
            await c.eval(
                scripts.SET_SUSPENSION, 1, "s", "acme/1000", at, int(suspended), record, "ch", "m"
            )
        )

    try:
        assert await change(100.0, True) == 1
        assert await change(90.0, False) == 0  # older lift: the suspension stays
        assert await change(100.0, True) == 0  # the same again: nothing announced
        assert await change(100.0, False) == 1  # a lift at the same moment wins
        assert await change(100.0, True) == 0
        assert await change(200.0, True) == 1
        assert json.loads(await c.hget("s", "acme/1000"))["at"] == 200.0
        await change(300.0, False)
        kept = await c.eval(scripts.SUSPENSIONS, 1, "s", 250.0)
        assert kept == ["acme/1000", await c.hget("s", "acme/1000")]
        assert await c.eval(scripts.SUSPENSIONS, 1, "s", 400.0) == []  # old lifts forgotten
    finally:
        await c.aclose()


async def test_a_suspension_on_one_node_is_adopted_by_the_other_and_a_lift_there_lifts_it(
    redis_server: RedisServer,
) -> None:
    async with (
        suspension_node(redis_server.url, "a") as (server_a, a, _),
        suspension_node(redis_server.url, "b") as (server_b, b, link_b),
    ):
        # node B hears the announcements (the cluster node's subscriber does this)
        pubsub = link_b.pubsub()
        await pubsub.subscribe(f"{PREFIX}events")

        async def deliver(count: int) -> None:
            got = 0
            deadline = time.monotonic() + 10
            while got < count and time.monotonic() < deadline:
                message = await pubsub.get_message(timeout=0.2)
                if message is not None and message.get("type") == "message":
                    await b.on_message(json.loads(message["data"]))
                    got += 1
            assert got == count

        now = time.time()
        g_b = server_b.guard
        call = attempt(now)
        assert g_b.authorize(call).allow
        g_b.on_call_start(call, 5)
        g_b.on_call_answer(5, now)
        # node A's guard suspends (corroborated fraud there): in force on B at once
        server_a.guard.suspend("acme", "1000", "revenue-share: premium-rate diversion")
        a.changed("acme", "1000", "revenue-share: premium-rate diversion", now, "guard")
        await deliver(1)
        refused = g_b.authorize(attempt(now + 1))
        assert not refused.allow and refused.rule == "suspended"
        assert "revenue-share" in refused.reasons[0]
        assert [ref for ref, _ in server_b.calls.cut] == [5]  # B's call of it is cut
        assert server_b.store.rows[("acme", "1000")]["by"] == "guard"  # stored on B
        server_b.sync()  # B's database round: nothing told back
        assert b.shared == 0
        # an administrator lifts it on B (B's database): lifted on A
        server_b.store.resume_extension("acme", "1000", force=True)
        server_b.sync()
        await until(lambda: b.shared == 1, "the lift shared")
        await pubsub.unsubscribe()
        await pubsub.aclose()
        assert await a.reconcile()  # (A would hear it announced; the round has it too)
        assert server_a.guard.is_suspended("acme", "1000") is None
        assert server_a.guard.authorize(attempt(now + 2)).allow
        # a node that starts later catches up in its first round
        async with suspension_node(redis_server.url, "c") as (server_c, c, _):
            server_a.guard.suspend("acme", "2000", "stolen")
            a.changed("acme", "2000", "stolen", time.time(), "admin")
            await until(lambda: a.shared == 1, "the suspension shared")
            assert await c.reconcile()
            assert server_c.guard.is_suspended("acme", "2000") == "stolen"
            assert server_c.guard.is_suspended("acme", "1000") is None


class Told:
    """A stand-in for the cluster: what the guard tells it."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str | None, float, str]] = []

    def changed(self, tenant: str, extension: str, reason: str | None, at: float, by: str) -> None:
        self.changes.append((tenant, extension, reason, at, by))


def test_the_guard_tells_its_own_and_administrators_changes_but_not_adopted_ones() -> None:
    g, told = guard(), Told()
    g.shared_suspensions = told
    key = ("acme", "1000")
    g.sync_suspensions({key: "stolen"}, 100.0, {key: (90.0, "cli:alice")})  # the CLI's
    g.sync_suspensions({}, 110.0)  # lifted from the CLI
    assert told.changes == [
        ("acme", "1000", "stolen", 90.0, "cli:alice"),
        ("acme", "1000", None, 110.0, "admin"),
    ]
    assert g.adopt_suspension("acme", "2000", "on node b")  # another node's, then stored
    assert not g.adopt_suspension("acme", "2000", "on node b")
    g.sync_suspensions({("acme", "2000"): "on node b"}, 120.0)
    assert g.adopt_suspension("acme", "2000", None)  # lifted there, then here in the store
    g.sync_suspensions({}, 130.0)
    assert len(told.changes) == 2  # nothing told back
    # the guard's own suspension (corroborated fraud): told as the guard's, when it was made
    premium = "19005550123"
    when = time.time()
    g.authorize(
        CallAttempt(
            "acme",
            "1000",
            "1000",
            premium,
            "forward-change",
            "udp:x",
            when,
            classify(premium, "US"),
        )
    )
    used = g.authorize(
        CallAttempt(
            "acme",
            "1000",
            "+12025550100",
            premium,
            "forwarded",
            "udp:x",
            when + 1,
            classify(premium, "US"),
        )
    )
    assert not used.allow and g.is_suspended("acme", "1000") is not None
    tenant, number, reason, at, by = told.changes[-1]
    assert (tenant, number, at, by) == ("acme", "1000", when + 1, "guard")
    assert reason is not None and "premium-rate" in reason
