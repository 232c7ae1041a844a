"""The UDP listener's view of its kernel receive queue (SO_MEMINFO)."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from pbxwarden.transport.network import Transports


@pytest.mark.skipif(sys.platform != "linux", reason="SO_MEMINFO is Linux's")
async def test_udp_backlog_counts_what_waits_unread() -> None:
    transports = Transports(lambda data, source: None)
    await transports.listen_udp("127.0.0.1", 0)
    try:
        assert transports.udp_backlog() == 0
        host, port = transports.bound["UDP"]
        proto = transports._udp
        assert proto is not None
        proto.pause_reading()  # the loop stops reading: datagrams pile up
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(50):
                sender.sendto(b"OPTIONS sip:x SIP/2.0\r\n\r\n" + bytes(500), (host, port))
        await asyncio.sleep(0.05)
        queued = transports.udp_backlog()
        assert queued is not None and queued >= 50 * 500
        proto.resume_reading()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if transports.udp_backlog() == 0:
                break
        assert transports.udp_backlog() == 0
    finally:
        await transports.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_a_socket_bound_first_queues_until_read(host: str) -> None:
    """What the registrar workers rely on: datagrams sent to a socket bound before the
    loop reads it wait in the kernel, and are all delivered once reading starts."""
    from pbxwarden.transport.network import bind_udp

    sock = bind_udp(host, 0)
    assert sock.family == (socket.AF_INET6 if ":" in host else socket.AF_INET)
    port = sock.getsockname()[1]
    family = sock.family
    with socket.socket(family, socket.SOCK_DGRAM) as sender:
        for i in range(5):
            sender.sendto(b"OPTIONS sip:x SIP/2.0 %d\r\n\r\n" % i, (host, port))
    received: list[bytes] = []
    transports = Transports(lambda data, source: received.append(data))
    await transports.listen_udp(host, port, sock)
    try:
        for _ in range(100):
            if len(received) == 5:
                break
            await asyncio.sleep(0.01)
        assert sorted(received) == [b"OPTIONS sip:x SIP/2.0 %d\r\n\r\n" % i for i in range(5)]
        assert transports.bound["UDP"][1] == port
    finally:
        await transports.close()


async def test_alarm_keeps_the_earliest_deadline_and_fires_once() -> None:
    from pbxwarden.transport.network import Alarm

    loop = asyncio.get_running_loop()
    fired: list[float] = []
    alarm = Alarm(lambda: fired.append(loop.time()))
    start = loop.time()
    alarm.arm(start + 0.2)
    alarm.arm(start + 0.05)  # earlier: replaces
    alarm.arm(start + 0.1)  # later than the pending one: ignored
    alarm.arm(None)  # nothing due: no change
    await asyncio.sleep(0.15)
    assert len(fired) == 1 and fired[0] >= start + 0.05
    await asyncio.sleep(0.1)
    assert len(fired) == 1  # the 0.2 s and 0.1 s requests were folded into the first
    alarm.arm(loop.time() + 0.02)
    alarm.cancel()
    await asyncio.sleep(0.05)
    assert len(fired) == 1


async def test_udp_serves_calls_in_progress_before_new_calls() -> None:
    """A burst read in one go: the BYEs (calls in progress) are handled before the new
    INVITEs that arrived first; with no wait left, the INVITEs go to the shed callback."""
    from pbxwarden.transport.ingress import Ingress

    handled: list[bytes] = []
    shed: list[bytes] = []
    transports = Transports(
        lambda data, source: handled.append(data[:6]),
        shed=lambda data, source: shed.append(data[:6]),
        ingress=Ingress(wait=0.25, limit=3),
    )
    await transports.listen_udp("127.0.0.1", 0)
    try:
        host, port = transports.bound["UDP"]
        proto = transports._udp
        assert proto is not None
        proto.pause_reading()
        invite = b"INVITE sip:1001@x SIP/2.0\r\nTo: <sip:1001@x>\r\n\r\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(5):
                sender.sendto(invite, (host, port))
            sender.sendto(b"BYE sip:x SIP/2.0\r\nTo: <sip:x>;tag=1\r\n\r\n", (host, port))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if transports.udp_backlog() and transports.udp_backlog() >= 6 * 40:
                break
        proto.resume_reading()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(handled) + len(shed) == 6:
                break
        assert handled[0] == b"BYE si", handled  # read last, served first
        assert handled[1:] == [b"INVITE"] * 3 and shed == [b"INVITE"] * 2  # over the limit
    finally:
        await transports.close()
