"""RedisLink against a real redis-server that is down, stalled, and back."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pbxwarden.cluster.connection import RedisLink
from tests.helpers import free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis
pytest.importorskip("redis.asyncio")


async def test_nothing_listening_is_an_answer_not_an_exception() -> None:
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", 0.3, "t")
    started = time.monotonic()
    assert await link.run("PING", lambda c: c.ping()) is None
    assert time.monotonic() - started < 1.0
    assert not link.healthy and link.failures == 1
    await link.close()


async def test_a_stalled_redis_costs_one_timeout_and_its_return_is_noticed(
    redis_server: RedisServer,
) -> None:
    recovered: list[bool] = []
    link = RedisLink(redis_server.url, 0.3, "t")
    link.on_recovered = lambda: recovered.append(True)
    assert await link.run("PING", lambda c: c.ping()) is True
    assert link.healthy and not recovered
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # alive, but answers nothing
    try:
        started = time.monotonic()
        assert await link.run("SET", lambda c: c.set("k", "v")) is None
        assert time.monotonic() - started < 1.0
        assert not link.healthy
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert await link.run("PING", lambda c: c.ping()) is True
    assert link.healthy and recovered == [True]
    await link.close()
