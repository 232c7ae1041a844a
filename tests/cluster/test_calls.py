"""Call limits for the whole PBX against a real redis-server: two nodes' reservations
together never pass the extension's limit; ended and lapsed calls free their slots;
Redis down refuses costly calls at once (or judges locally, if so configured)."""

from __future__ import annotations

import time

import pytest

from pbxwarden.cluster.calls import DOWN, UNSTARTED_TTL, SharedCalls
from tests.helpers import free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis
pytest.importorskip("redis")


def nodes(url: str) -> tuple[SharedCalls, SharedCalls]:
    return SharedCalls(url, 0.5, "t:", "a"), SharedCalls(url, 0.5, "t:", "b")


def test_two_nodes_together_hold_exactly_the_extensions_limit(redis_server: RedisServer) -> None:
    a, b = nodes(redis_server.url)
    now = time.time()
    answers = [(a, b)[i % 2].reserve("acme", "1000", 2, 10, now) for i in range(20)]
    assert answers.count(None) == 2, answers
    assert "extension 1000 has 2 costly calls in progress" in str(answers[2])
    a.started("acme", "1000", 1, now)
    b.started("acme", "1000", 7, now)
    assert a.reserve("acme", "1000", 2, 10, now) is not None
    b.ended(7)  # one call over: one slot free, on either node
    assert a.reserve("acme", "1000", 2, 10, now) is None
    assert b.reserve("acme", "1001", 2, 3, now) is None  # the tenant's own limit: 3
    refused = b.reserve("acme", "1002", 2, 3, now)
    assert refused is not None and "tenant acme has 3" in refused, refused
    a.close()
    b.close()


def test_a_reservation_whose_call_never_started_lapses(redis_server: RedisServer) -> None:
    a, b = nodes(redis_server.url)
    now = time.time()
    assert a.reserve("acme", "1000", 1, 10, now) is None
    assert b.reserve("acme", "1000", 1, 10, now + 1) is not None
    assert b.reserve("acme", "1000", 1, 10, now + UNSTARTED_TTL + 1) is None
    a.started("acme", "1000", 1, now)  # lapsed before it started: not brought back
    a.hold_all(now + UNSTARTED_TTL + 2)
    later = now + UNSTARTED_TTL + 3
    assert b.reserve("acme", "2000", 1, 2, later) is None  # the tenant holds b's and this
    assert b.reserve("acme", "2001", 1, 2, later) is not None
    a.close()
    b.close()


def test_redis_down_refuses_costly_calls_at_once_or_judges_locally() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    closed = SharedCalls(url, 0.3, "t:", "a")
    started = time.monotonic()
    assert closed.reserve("acme", "1000", 2, 10, time.time()) == DOWN
    assert closed.reserve("acme", "1000", 2, 10, time.time()) == DOWN  # no second timeout
    assert time.monotonic() - started < 1.0
    assert closed.down
    local = SharedCalls(url, 0.3, "t:", "b", fail_closed=False)
    assert local.reserve("acme", "1000", 2, 10, time.time()) is None
    local.started("acme", "1000", 1, time.time())
    local.ended(1)
    closed.close()
    local.close()
