"""The shared event stream against a real redis-server: what one node publishes reaches
the other's subscribers, marked with its node; nothing comes back twice; Redis down
costs the publisher nothing, and the reader resumes when it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from pbxwarden.cluster.connection import RedisLink
from pbxwarden.cluster.events import SharedEvents
from pbxwarden.events import EventBus, Subscription
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis
pytest.importorskip("redis.asyncio")

KEY = "test:events:stream"


@asynccontextmanager
async def node(url: str, name: str) -> AsyncIterator[tuple[EventBus, SharedEvents]]:
    link = RedisLink(url, 0.5, name)
    bus = EventBus()
    shared = SharedEvents(link, KEY, name, bus)
    shared.start()
    try:
        yield bus, shared
    finally:
        await shared.stop()
        await link.close()


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


def drain(sub: Subscription) -> list[dict[str, object]]:
    events = []
    while not sub.queue.empty():
        events.append(sub.queue.get_nowait())
    return events


async def test_an_event_of_one_node_reaches_the_others_subscribers(
    redis_server: RedisServer,
) -> None:
    async with (
        node(redis_server.url, "a") as (bus_a, a),
        node(redis_server.url, "b") as (
            bus_b,
            b,
        ),
    ):
        await until(lambda: a._last_id is not None and b._last_id is not None, "readers ready")
        with bus_a.subscribe() as sub_a, bus_b.subscribe() as sub_b:
            started = time.monotonic()
            bus_a.publish("alert", {"extension": "1000", "summary": "premium"})
            await until(lambda: not sub_b.queue.empty(), "B hears A's event")
            took = time.monotonic() - started
            [seen] = drain(sub_b)
            assert seen["type"] == "alert" and seen["node"] == "a", seen
            assert seen["summary"] == "premium"
            await until(lambda: a.written == 1, "A wrote its event")
            await asyncio.sleep(0.3)  # A's reader passes its own entry by
            assert [e["node"] for e in drain(sub_a)] == ["a"], "A's own event came back"
            assert took < 1.0, took
            for i in range(300):  # a burst is written in batches, read in order
                bus_b.publish("call.start", {"call_id": str(i)})
            await until(lambda: sub_a.queue.qsize() >= 300, "A hears B's burst")
            assert [e["call_id"] for e in drain(sub_a)] == [str(i) for i in range(300)]


async def test_publishing_while_redis_is_down_costs_nothing_and_reading_resumes(
    redis_server: RedisServer,
) -> None:
    async with (
        node(redis_server.url, "a") as (bus_a, a),
        node(redis_server.url, "b") as (
            bus_b,
            b,
        ),
    ):
        await until(lambda: a._last_id is not None and b._last_id is not None, "readers ready")
        redis_server.stop()
        with bus_b.subscribe() as sub_b:
            started = time.monotonic()
            for i in range(100):
                bus_a.publish("call.start", {"call_id": str(i)})
            assert time.monotonic() - started < 0.05  # queued, never awaited
            await until(lambda: a.dropped > 0, "the stale news is dropped")
            redis_server.start()
            await until(lambda: a.link.healthy or b.link.healthy, "Redis is back", 15)
            bus_a.publish("alert", {"summary": "after"})
            await until(
                lambda: any(e.get("summary") == "after" for e in list(sub_b.queue._queue)),  # type: ignore[attr-defined]
                "B hears A again",
                15,
            )
