"""The registry of calls in progress against a real redis-server: a node's calls are
listed by another with their node, follow their state, are ended through their owner
(who confirms), a node that does not answer gives a bounded 503, a lost node's calls
show it and vanish within its ``lost_after``, and Redis down gives the local calls with
a note, never an exception; an empty restarted Redis is filled again."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from pbxwarden.cluster.callreg import CallRegistry, EndError
from pbxwarden.cluster.connection import RedisLink
from pbxwarden.cluster.registry import NodeRegistry
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis
pytest.importorskip("redis.asyncio")

PREFIX = "test:"
INTERVAL = 0.2
LOST_AFTER = 1.0


@dataclass
class Node:
    """One node's registry of calls, its heartbeat, and the calls it "carries"."""

    name: str
    link: RedisLink
    registry: NodeRegistry
    calls: CallRegistry
    carried: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> record
    ended: list[tuple[str, str]] = field(default_factory=list)  # (call_id, by)

    def add(self, token: str, call_id: str, tenant: str = "acme", answered: bool = False) -> None:
        now = time.time()
        self.carried[token] = {
            "call_id": call_id,
            "tenant": tenant,
            "caller": "1000",
            "callee": "2000",
            "state": "answered" if answered else "ringing",
            "started": now - 5,
            "answered": now if answered else None,
        }
        self.calls.changed()

    def end(self, call_id: str, by: str) -> bool:
        tokens = [t for t, r in self.carried.items() if r["call_id"] == call_id]
        for token in tokens:
            del self.carried[token]
        self.ended.append((call_id, by))
        return bool(tokens)


@asynccontextmanager
async def node(url: str, name: str, wait: float = 2.0) -> AsyncIterator[Node]:
    link = RedisLink(url, 0.5, name)
    load: Callable[[], dict[str, Any]] = lambda: {"calls": 0}  # noqa: E731
    registry = NodeRegistry(link, PREFIX, name, load, None, INTERVAL, LOST_AFTER)
    holder: list[Node] = []
    calls = CallRegistry(
        link,
        PREFIX,
        name,
        lambda: dict(holder[0].carried),
        lambda call_id, by: holder[0].end(call_id, by),
        INTERVAL,
        LOST_AFTER,
        wait=wait,
    )
    n = Node(name, link, registry, calls)
    holder.append(n)
    registry.start()
    calls.start()
    try:
        yield n
    finally:
        if registry._task is not None:
            registry._task.cancel()
        for task in calls._tasks:
            task.cancel()
        await link.close()


async def until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


def by_id(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["call_id"]: c for c in listing["calls"]}


async def test_another_nodes_call_is_listed_with_its_node_and_ended_through_it(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server.url, "a") as a, node(redis_server.url, "b") as b:
        a.add("1", "c1@a", answered=False)
        own = [{"call_id": "c2@b", "tenant": "acme", "state": "answered", "seconds": 3}]

        async def a_listed_on_b() -> dict[str, dict[str, Any]] | None:
            rows = by_id(await b.calls.listing(own))
            return rows if "c1@a" in rows else None

        rows = await until(a_listed_on_b, "A's call listed on B")
        assert rows["c1@a"]["node"] == "a" and rows["c1@a"]["node_state"] == "up"
        assert rows["c1@a"]["state"] == "ringing" and rows["c1@a"]["seconds"] >= 4
        assert rows["c2@b"]["node"] == "b"  # B's own, from its memory
        listing = await b.calls.listing(own)
        assert (listing["scope"], listing["note"]) == ("cluster", None)

        a.add("1", "c1@a", answered=True)  # answered: the listing follows

        async def answered() -> bool:
            return by_id(await b.calls.listing([]))["c1@a"]["state"] == "answered"

        await until(answered, "the answer listed on B")

        await until(lambda: a.calls.listening, "A listening for end requests")
        started = time.monotonic()
        answer = await b.calls.end("c1@a")  # B finds the owner in the registry
        assert answer == {"ended": "c1@a", "node": "a"}
        assert time.monotonic() - started < 2.0
        assert a.ended == [("c1@a", "b")] and not a.carried
        assert a.calls.ended_for_others == 1 and b.calls.ended_elsewhere == 1

        async def gone() -> bool:
            return "c1@a" not in by_id(await b.calls.listing([]))

        await until(gone, "the ended call gone from B's listing")

        with pytest.raises(EndError) as nowhere:
            await b.calls.end("c1@a")
        assert nowhere.value.status == 404 and "on any node" in str(nowhere.value)
        with pytest.raises(EndError) as not_there:
            await b.calls.end("c1@a", "a")  # named owner, which has no such call
        assert not_there.value.status == 404 and "on node a" in str(not_there.value)


async def test_an_owner_that_does_not_answer_gives_a_bounded_503(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server.url, "b", wait=0.6) as b:
        with pytest.raises(EndError) as nobody:
            await b.calls.end("c@ghost", "ghost")  # nobody listens on its channel
        assert nobody.value.status == 503 and "node ghost does not answer" in str(nobody.value)

        import redis.asyncio as aioredis

        mute = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        pubsub = mute.pubsub()
        await pubsub.subscribe(f"{PREFIX}calls:end:mute")  # hears, never answers
        try:
            started = time.monotonic()
            with pytest.raises(EndError) as late:
                await b.calls.end("c@mute", "mute")
            elapsed = time.monotonic() - started
            assert late.value.status == 503 and "did not confirm" in str(late.value)
            assert 0.5 < elapsed < 3.0, elapsed
            message = None
            for _ in range(20):  # the subscription's confirmation comes first
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if message is not None:
                    break
            assert message is not None
            request = json.loads(message["data"])
            assert request["call_id"] == "c@mute" and request["by"] == "b"
        finally:
            await pubsub.aclose()
            await mute.aclose()


async def test_a_late_or_foreign_request_is_not_carried_out(redis_server: RedisServer) -> None:
    async with node(redis_server.url, "a") as a:
        a.add("1", "c1@a")
        late = {"call_id": "c1@a", "reply": f"{PREFIX}calls:reply:x", "deadline": time.time() - 1}
        assert not await a.calls.on_request(json.dumps(late))
        foreign = {**late, "reply": "elsewhere", "deadline": time.time() + 5}
        assert not await a.calls.on_request(json.dumps(foreign))
        assert not await a.calls.on_request("{not json")
        assert a.carried and not a.ended


async def test_a_lost_nodes_calls_show_it_and_vanish_within_lost_after(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server.url, "a") as a, node(redis_server.url, "b") as b:
        a.add("1", "c1@a")

        async def listed() -> dict[str, Any] | None:
            return by_id(await b.calls.listing([])).get("c1@a")

        await until(listed, "A's call on B")
        assert a.registry._task is not None
        a.registry._task.cancel()  # A's heartbeat stops, its calls are still published
        row = await until(
            lambda: _state(b, "c1@a", "lost"), "A's call shown with A lost", timeout=5
        )
        assert row["node"] == "a"
        for task in a.calls._tasks:  # now A dies altogether
            task.cancel()
        stopped = time.monotonic()

        async def vanished() -> bool:
            return "c1@a" not in by_id(await b.calls.listing([]))

        await until(vanished, "A's call gone", timeout=5)
        assert time.monotonic() - stopped < LOST_AFTER + 1.0


async def _state(b: Node, call_id: str, state: str) -> dict[str, Any] | None:
    row = by_id(await b.calls.listing([])).get(call_id)
    return row if row is not None and row["node_state"] == state else None


async def test_redis_down_lists_the_local_calls_and_says_so_then_refills(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server.url, "a") as a, node(redis_server.url, "b") as b:
        a.add("1", "c1@a")

        async def listed() -> bool:
            return "c1@a" in by_id(await b.calls.listing([]))

        await until(listed, "A's call on B")
        redis_server.stop()
        own = [{"call_id": "c2@b", "tenant": "acme", "state": "ringing", "seconds": 1}]
        started = time.monotonic()
        listing = await b.calls.listing(own)
        assert time.monotonic() - started < 2.0  # one timeout at most
        assert listing["scope"] == "local" and "redis unreachable" in listing["note"]
        assert [c["call_id"] for c in listing["calls"]] == ["c2@b"]
        with pytest.raises(EndError) as down:
            await b.calls.end("c1@a")
        assert down.value.status == 503 and "redis unreachable" in str(down.value)

        redis_server.start()  # empty: A's calls are written again, whole
        await until(listed, "A's call on B again", timeout=15)
        listing = await b.calls.listing([])
        assert listing["scope"] == "cluster"


async def test_a_clean_stop_takes_the_nodes_calls_out(redis_server: RedisServer) -> None:
    async with node(redis_server.url, "a") as a, node(redis_server.url, "b") as b:
        a.add("1", "c1@a")
        a.add("2", "c2@a")

        async def count() -> int:
            return sum(c["node"] == "a" for c in (await b.calls.listing([]))["calls"])

        await until(lambda: _equals(count, 2), "both calls of A on B")
        await a.calls.stop()
        assert await count() == 0


async def _equals(value: Callable[[], Any], expected: Any) -> bool:
    return bool(await value() == expected)
