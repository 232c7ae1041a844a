"""Alerts sent once for the whole PBX, against a real redis-server and a real syslog
receiver on loopback: the same alert raised on two nodes is sent by one; an escalation
is sent once too; a node whose channels all failed lets the other send; Redis down, the
alert is sent (and no timeout is waited once Redis is known down)."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from pbxwarden.guard.alerts import (
    Alert,
    AlertDispatcher,
    AlertsConfig,
    SyslogChannelConfig,
    WebhookChannelConfig,
)
from tests.helpers import free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis
redis_asyncio = pytest.importorskip("redis.asyncio")

from pbxwarden.cluster.alerts import SharedAlerts  # noqa: E402
from pbxwarden.cluster.connection import RedisLink  # noqa: E402

ELSEWHERE = "suppressed (sent by another node)"


def alert(severity: str = "warning", ext: str = "1000") -> Alert:
    reasons = (f"extension {ext} made 6 costly calls in the last minute (limit 6)",)
    return Alert(1, "acme", ext, severity, "limit", "A call was refused", reasons, time.time())


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[bytes]:
    """Datagrams already waiting (loopback delivers as ``sendto`` returns)."""
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            sock.settimeout(2.0)
            return out


@asynccontextmanager
async def node(url: str, name: str, config: AlertsConfig) -> AsyncIterator[AlertDispatcher]:
    link = RedisLink(url, 0.3, name)
    dispatcher = AlertDispatcher(config)
    dispatcher.shared = SharedAlerts(link, "t:")
    try:
        yield dispatcher
    finally:
        await dispatcher.aclose()
        await link.close()


def syslog(sock: socket.socket) -> AlertsConfig:
    address = f"udp:127.0.0.1:{sock.getsockname()[1]}"
    return AlertsConfig(syslog=SyslogChannelConfig(address=address), repeat_after=600)


async def test_the_same_alert_on_two_nodes_is_sent_once(
    redis_server: RedisServer, udp: socket.socket
) -> None:
    async with (
        node(redis_server.url, "a", syslog(udp)) as a,
        node(redis_server.url, "b", syslog(udp)) as b,
    ):
        assert await a.send(alert(), "acme/1000/limit") == {"syslog": "sent"}
        assert await b.send(alert(), "acme/1000/limit") == {"syslog": ELSEWHERE}
        assert await b.send(alert(ext="1001"), "acme/1001/limit") == {"syslog": "sent"}
        # a critical repeat of the warning is sent, once, by whichever node has it first
        assert await b.send(alert("critical"), "acme/1000/limit") == {"syslog": "sent"}
        assert await a.send(alert("critical"), "acme/1000/limit") == {"syslog": ELSEWHERE}
        assert await a.send(alert(), "acme/1000/limit") == {"syslog": "suppressed (duplicate)"}
        assert len(received(udp)) == 3
        assert a.elsewhere == 1 and b.elsewhere == 1
        client = redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True)
        try:  # remembered for the dispatcher's repeat window, not for ever
            assert 0 < await client.pttl("t:alert:acme/1000/limit") <= 600_000
        finally:
            await client.aclose()


async def test_a_node_that_could_not_deliver_lets_the_other_send(
    redis_server: RedisServer, udp: socket.socket
) -> None:
    broken = AlertsConfig(
        webhook=WebhookChannelConfig(url=f"http://127.0.0.1:{free_port()}/h", secret="s" * 24)
    )
    async with (
        node(redis_server.url, "a", broken) as a,
        node(redis_server.url, "b", syslog(udp)) as b,
    ):
        result = await a.send(alert(), "acme/1000/limit")
        assert result["webhook"].startswith("failed"), result
        assert await b.send(alert(), "acme/1000/limit") == {"syslog": "sent"}
        assert len(received(udp)) == 1


async def test_redis_down_the_alert_is_sent_without_waiting(udp: socket.socket) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # accepts, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
    try:
        async with node(url, "a", syslog(udp)) as a:
            started = time.monotonic()
            assert await a.send(alert(), "acme/1000/limit") == {"syslog": "sent"}
            assert time.monotonic() - started >= 0.25  # waited the timeout (0.3 s) once
            started = time.monotonic()
            for ext in ("1001", "1002", "1003"):
                assert await a.send(alert(ext=ext), f"acme/{ext}/limit") == {"syslog": "sent"}
            assert time.monotonic() - started < 0.6  # known down: not waited again (0.9 s)
            assert len(received(udp)) == 4
    finally:
        silent.close()
