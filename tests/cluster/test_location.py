"""Location shared through a real redis-server: two nodes' LocationServices, each with
its SharedLocation (the scripts, the announcements, the replica, the reconcile)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pbxwarden.cluster.connection import RedisLink
from pbxwarden.cluster.location import SharedLocation, field_of, record_of
from pbxwarden.pbx.location import LocationService
from pbxwarden.store.db import BindingRow
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis
pytest.importorskip("redis.asyncio")

AOR = "pbx.local/1000"
FRONTED = "udp:127.0.51.1:5062 via udp:127.0.50.1:5060"


def binding(contact: str, source: str = FRONTED, expires_in: float = 300.0) -> BindingRow:
    now = time.time()
    return BindingRow(7, contact, now + expires_in, None, "cid", 1, source, "phone/1", now)


@dataclass
class Node:
    location: LocationService
    shared: SharedLocation
    link: RedisLink


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    made: list[Node] = []
    for name in ("a", "b"):
        location = LocationService()
        link = RedisLink(redis_server.url, 0.5, name)
        shared = SharedLocation(link, location, "t:", name, 0.5)
        made.append(Node(location, shared, link))
    watchers = [asyncio.create_task(n.link.watch(0.2)) for n in made]
    for n in made:
        n.link.on_recovered = n.shared.recovered
        n.shared.start()
    try:
        yield made[0], made[1]
    finally:
        for w in watchers:
            w.cancel()
        for n in made:
            await n.shared.stop()
            await n.link.close()


async def test_a_binding_made_on_a_is_reached_on_b_and_its_removal_too(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    now = time.time
    await until(lambda: a.shared.synced_at is not None and b.shared.synced_at is not None)
    began = time.monotonic()
    a.location.put(AOR, binding("sip:1000@127.0.51.1:5062"))
    await until(lambda: len(b.shared.replica) == 1)
    put = time.monotonic() - began
    a.location.put(AOR, binding("sip:1000@127.0.51.2:5062", source="udp:127.0.51.2:5062"))
    await until(lambda: len(b.shared.replica) == 2)
    reached = b.location.reach(AOR, now())
    # only the binding made through a front is callable from b (the direct one is a's)
    assert [r.contact for r in reached] == ["sip:1000@127.0.51.1:5062"]
    assert reached[0].source == FRONTED
    assert b.location.lookup(AOR, now()) == []  # the registrar's own view stays b's own
    assert a.shared.replica.lookup(AOR, now()) == []  # a's own are not in a's replica
    began = time.monotonic()
    a.location.remove(AOR, "sip:1000@127.0.51.1:5062")
    await until(lambda: b.location.reach(AOR, now()) == [])
    removed = time.monotonic() - began
    assert put < 1.0 and removed < 1.0, (put, removed)
    print(
        f"a's binding in b's replica after {put * 1000:.1f} ms, its removal {removed * 1000:.1f} ms"
    )


async def test_expired_bindings_vanish_from_the_replica_and_from_redis(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    a.location.put(AOR, binding("sip:1000@127.0.51.1:5062", expires_in=0.6))
    await until(lambda: len(b.shared.replica) == 1)
    assert b.location.reach(AOR, time.time())
    await until(lambda: not b.location.reach(AOR, time.time()), timeout=3)
    await until(lambda: len(b.shared.replica) == 0, timeout=5)  # purged by the check
    # Redis forgets it on the next script run past its expiry
    a.location.put("pbx.local/1001", binding("sip:1001@127.0.51.3:5062"))
    await until(lambda: len(b.shared.replica) == 1)
    fields = await a.link.client.hkeys("t:loc:a")
    assert fields == ["pbx.local/1001\tsip:1001@127.0.51.3:5062"]


async def test_a_node_started_later_reads_what_the_others_have(
    redis_server: RedisServer,
) -> None:
    location_a = LocationService()
    location_a.load([(AOR, binding("sip:1000@127.0.51.1:5062"))])  # from its database
    link_a = RedisLink(redis_server.url, 0.5, "a")
    a = SharedLocation(link_a, location_a, "t:", "a", 0.5)
    a.start()
    await until(lambda: a.published == 1)
    location_b = LocationService()
    link_b = RedisLink(redis_server.url, 0.5, "b")
    b = SharedLocation(link_b, location_b, "t:", "b", 0.5)
    b.start()
    try:
        await until(lambda: len(location_b.reach(AOR, time.time())) == 1)
    finally:
        for shared, link in ((a, link_a), (b, link_b)):
            await shared.stop()
            await link.close()


async def test_redis_restarted_empty_keeps_the_replica_and_is_written_again(
    nodes: tuple[Node, Node], redis_server: RedisServer
) -> None:
    a, b = nodes
    a.location.put(AOR, binding("sip:1000@127.0.51.1:5062"))
    await until(lambda: len(b.shared.replica) == 1)
    redis_server.stop()
    await until(lambda: not a.link.healthy and not b.link.healthy)
    a.location.put("pbx.local/1001", binding("sip:1001@127.0.51.3:5062"))  # while down
    assert b.location.reach(AOR, time.time())  # b goes on with the replica it had
    redis_server.start()
    # a writes everything again (Redis lost it), b reads it: nothing lost, the change
    # made during the outage arrives too
    await until(lambda: len(b.shared.replica) == 2, timeout=15)
    assert b.location.reach(AOR, time.time())
    assert b.location.reach("pbx.local/1001", time.time())
    assert sorted(await a.link.client.hkeys("t:loc:a")) == [
        "pbx.local/1000\tsip:1000@127.0.51.1:5062",
        "pbx.local/1001\tsip:1001@127.0.51.3:5062",
    ]


async def test_an_announcement_that_arrives_while_the_snapshot_is_read_is_kept(
    nodes: tuple[Node, Node], redis_server: RedisServer
) -> None:
    """The snapshot and the announcements come over two connections: a change announced
    after the snapshot was taken but heard before its answer is applied to it too."""
    a, _ = nodes  # a's announcement, as a listed node's (an unlisted one's is kept anyway)
    await until(lambda: a.shared.epoch is not None)
    # a third node, its tasks not started: this test alone reads its snapshot
    location = LocationService()
    link = RedisLink(redis_server.url, 0.5, "c")
    c = SharedLocation(link, location, "t:", "c", 0.5)
    record = json.dumps(record_of(AOR, binding("sip:1000@127.0.51.9:5062"), "a"))
    field = field_of(AOR, "sip:1000@127.0.51.9:5062")
    run = link.run

    async def heard_meanwhile(what: str, command: Any, waits: float = 0.0) -> Any:
        answer = await run(what, command, waits)
        if what == "location snapshot" and answer is not None:
            message = {"node": "a", "reset": False, "changes": [[field, record]]}
            c.on_message(f"{int(answer[0]) + 1} {answer[1]} {json.dumps(message)}")
        return answer

    link.run = heard_meanwhile  # type: ignore[method-assign]
    try:
        assert await c.sync()
        location.elsewhere = c.replica.lookup
        assert [x.contact for x in location.reach(AOR, time.time())] == ["sip:1000@127.0.51.9:5062"]
    finally:
        await link.close()
