"""The cluster's Lua scripts against a real redis-server: counting, bans, locks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pbxwarden.cluster import scripts
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

redis_asyncio = pytest.importorskip("redis.asyncio")

KEY = "t:authfail:default/1000"
BANS = ["t:bans", "t:bans:until", "t:unbans", "t:unbans:until"]


@pytest.fixture
async def c(redis_server: RedisServer) -> AsyncIterator[Any]:
    c = redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield c
    finally:
        await c.aclose()


async def count(
    c: Any,
    now: float,
    address: str,
    *,
    window: float = 600.0,
    after: float | None = None,
    uid: str = "",
    unbannable: bool = False,
    max_kept: int = 256,
) -> tuple[int, bool, list[str]]:
    member = f"{uid or f'n:{now}:{address}'}|{int(unbannable)}|{address}"
    after = now - window if after is None else after
    answer = await c.eval(scripts.COUNT_FAILURE, 1, KEY, now, window, after, member, max_kept)
    return int(answer[0]), bool(answer[1]), list(answer[2])


async def test_failures_are_counted_with_distinct_sources_in_first_seen_order(c: Any) -> None:
    assert await count(c, 1000.0, "192.0.2.1") == (1, False, ["192.0.2.1"])
    assert await count(c, 1001.0, "192.0.2.2") == (2, False, ["192.0.2.1", "192.0.2.2"])
    assert await count(c, 1002.0, "192.0.2.1") == (3, False, ["192.0.2.1", "192.0.2.2"])
    got = await count(c, 1003.0, "2001:db8::1", unbannable=True)  # IPv6: colons in it
    assert got == (4, True, ["192.0.2.1", "192.0.2.2", "2001:db8::1"])


async def test_the_window_forgets_old_failures_and_the_key_expires(c: Any) -> None:
    for i in range(5):
        await count(c, 1000.0 + i, f"192.0.2.{i}", window=60)
    assert (await count(c, 1061.5, "192.0.2.9", window=60))[0] == 4  # 1000, 1001 gone
    assert (await count(c, 2000.0, "192.0.2.9", window=60))[:2] == (1, False)
    assert await c.zcard(KEY) == 1
    ttl = await c.pttl(KEY)
    assert 0 < ttl <= 60_000


async def test_failures_before_a_password_change_do_not_count_but_stay(c: Any) -> None:
    for i in range(4):
        await count(c, 1000.0 + i, f"192.0.2.{i}")
    got = await count(c, 1010.0, "192.0.2.50", after=1005.0)
    assert got == (1, False, ["192.0.2.50"])
    assert await c.zcard(KEY) == 5  # another node may know of no change


async def test_only_the_newest_failures_are_kept(c: Any) -> None:
    for i in range(30):
        got = await count(c, 1000.0 + i, f"192.0.2.{i}", max_kept=10)
    assert got[0] == 10 and got[2][0] == "192.0.2.20"


async def test_concurrent_counts_from_many_connections_are_atomic(
    redis_server: RedisServer,
) -> None:
    """Ten clients (as ten nodes would) count 300 failures at once: none is lost and each
    call sees its own total, so exactly one call sees the threshold crossed."""
    clients = [
        redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True) for _ in range(10)
    ]
    try:

        async def one(i: int) -> tuple[int, bool, list[str]]:
            c = clients[i % len(clients)]
            return await count(c, 5000.0 + i * 0.001, f"10.0.{i % 7}.1", uid=f"n{i}", max_kept=1000)

        answers = await asyncio.gather(*(one(i) for i in range(300)))
    finally:
        for c in clients:
            await c.aclose()
    assert sorted(a[0] for a in answers) == list(range(1, 301))
    assert max(len(a[2]) for a in answers) == 7
    assert sum(1 for a in answers if a[0] == 10) == 1


async def ban(c: Any, address: str, until: float, created: float, now: float) -> int:
    record = json.dumps({"until": until, "created_at": created, "reason": "r", "level": 1})
    return int(
        await c.eval(scripts.BAN, 4, *BANS, address, until, created, record, now, "t:ev", record)
    )


async def unban(c: Any, address: str, at: float, keep: float, now: float) -> int:
    message = json.dumps({"kind": "unban", "address": address, "at": at})
    return int(await c.eval(scripts.UNBAN, 4, *BANS, address, at, keep, now, "t:ev", message))


async def test_a_ban_is_kept_until_it_ends_and_the_longer_one_wins(c: Any) -> None:
    pubsub = c.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("t:ev")
    assert await ban(c, "192.0.2.1", 2000.0, 1000.0, 1000.0) == 1
    assert await ban(c, "192.0.2.1", 1500.0, 1001.0, 1001.0) == 0  # shorter: no change
    assert await ban(c, "192.0.2.1", 3000.0, 1002.0, 1002.0) == 1
    assert json.loads(await c.hget("t:bans", "192.0.2.1"))["until"] == 3000.0
    announced = []
    for _ in range(20):
        message = await pubsub.get_message(timeout=0.5)
        if message is not None:
            announced.append(json.loads(message["data"])["until"])
        if len(announced) == 2:
            break
    assert announced == [2000.0, 3000.0]  # only the changes
    await ban(c, "192.0.2.7", 1100.0, 1000.0, 1000.0)
    assert await ban(c, "192.0.2.8", 9000.0, 1200.0, 1200.0) == 1  # 192.0.2.7 ended
    assert await c.hexists("t:bans", "192.0.2.7") == 0
    await pubsub.aclose()


async def test_a_lift_is_remembered_so_that_an_older_ban_cannot_come_back(c: Any) -> None:
    await ban(c, "192.0.2.1", 5000.0, 1000.0, 1000.0)
    assert await unban(c, "192.0.2.1", 1100.0, 90000.0, 1100.0) == 1
    assert await c.hexists("t:bans", "192.0.2.1") == 0
    # a node that missed the lift pushes the old ban again: refused
    assert await ban(c, "192.0.2.1", 5000.0, 1000.0, 1200.0) == 0
    # a ban made after the lift is a new one
    assert await ban(c, "192.0.2.1", 6000.0, 1300.0, 1300.0) == 1
    # the same lift again changes nothing and is not announced again
    assert await unban(c, "192.0.2.1", 1100.0, 90000.0, 1400.0) == 0
    assert await c.hexists("t:bans", "192.0.2.1") == 1


async def test_locks_keep_the_newest_and_a_lift_wins(c: Any) -> None:
    async def put(created: float, until: float) -> int:
        record = json.dumps({"created_at": created, "until": until})
        return int(
            await c.eval(
                scripts.SET_LOCK, 1, "t:locks", "default/1000", created, until, record, "t:ev", "m"
            )
        )

    assert await put(1000.0, 4600.0) == 1
    assert await put(1000.0, 4600.0) == 0  # the same: nothing announced
    assert await put(900.0, 9000.0) == 0  # older
    assert await put(1000.0, 2000.0) == 1  # lifted at 2000
    assert await put(1000.0, 4600.0) == 0  # the lift is not undone
    assert await put(3000.0, 6600.0) == 1  # a new lock
    snapshot = await c.eval(
        scripts.SNAPSHOT, 5, *BANS, "t:locks", 3000.0, 7000.0
    )  # locks ended before 7000 forgotten
    assert snapshot == [[], [], []]
