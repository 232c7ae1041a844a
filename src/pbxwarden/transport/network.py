"""The asyncio I/O layer: UDP, TCP and TLS sockets in, raw bytes and source addresses out.

Deliberately thin: it frames streams, remembers connections so that responses go
back the way requests came (RFC 3261 18.2.2), and hands every message to one
callback. It knows nothing of SIP beyond framing.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any, cast

import structlog

from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.message import StreamFramer, error_response_bytes
from pbxwarden.sip.transaction import Address

log = structlog.get_logger("pbxwarden.transport")

MessageHandler = Callable[[bytes, Address], None]
MAX_CONNECTIONS = 4096
SO_MEMINFO = 55  # Linux <linux/sock_diag.h>; not in the socket module
IDLE_TIMEOUT = 900.0  # phones send keep-alives well within this (RFC 5626 suggests ~120 s)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, handler: MessageHandler) -> None:
        self._handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport; same interface.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if data in (b"\r\n\r\n", b"\r\n", b"\x00\x00\x00\x00"):
            return  # NAT keep-alive pings: nothing to answer over UDP
        self._handler(data, Address("UDP", addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable and the like
        log.debug("udp error", error=str(exc))


class _Stream(asyncio.Protocol):
    def __init__(self, owner: Transports, name: str) -> None:
        self._owner = owner
        self._name = name
        self._framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.address: Address | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.address = Address(self._name, peer[0], peer[1])
        if len(self._owner.connections) >= MAX_CONNECTIONS:
            self.transport.abort()
            return
        self._owner.connections[(self._name, peer[0], peer[1])] = self
        self._touch()

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(IDLE_TIMEOUT, self._expire)

    def _expire(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.address is not None
        self._touch()
        try:
            messages = self._framer.feed(data)
        except ParseError as exc:
            # Framing is lost: answer once if we can, then drop the connection (RFC 3261 18.3).
            reply = error_response_bytes(data, exc.status, exc.reason)
            if reply:
                self.transport.write(reply)
            self.transport.close()
            return
        for message in messages:
            if message == b"":
                self.transport.write(b"\r\n")  # RFC 5626 keep-alive pong
            else:
                self._owner.handler(message, self.address)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self.address is not None:
            key = (self._name, self.address.host, self.address.port)
            if self._owner.connections.get(key) is self:
                del self._owner.connections[key]


class Alarm:
    """One pending loop callback, kept at the earliest deadline asked for: the sans-I/O
    transaction layer says when it next needs time, and this wakes it then."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = float("inf")

    def arm(self, deadline: float | None) -> None:
        """Fire at ``deadline`` (loop time) unless already due earlier; None: no change."""
        if deadline is None or deadline >= self._at:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._at = deadline
        self._handle = asyncio.get_running_loop().call_at(deadline, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self._at = None, float("inf")

    def _fire(self) -> None:
        self._handle, self._at = None, float("inf")
        self._callback()


def bind_udp(host: str, port: int) -> socket.socket:
    """A bound, non-blocking UDP socket: bound before anything reads it, so that helper
    processes can be given it first while datagrams wait in the kernel's buffer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    _grow_receive_buffer(sock)
    return sock


class Transports:
    """Every listening socket of one SIP server, and the way back to each peer."""

    def __init__(self, handler: MessageHandler) -> None:
        self.handler = handler
        self.connections: dict[tuple[str, str, int], _Stream] = {}
        self._udp: _Udp | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self.bound: dict[str, tuple[str, int]] = {}

    async def listen_udp(self, host: str, port: int, sock: socket.socket | None = None) -> None:
        """Start reading; ``sock``: a socket already bound (see :func:`bind_udp`)."""
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = bind_udp(host, port)
        _, proto = await loop.create_datagram_endpoint(lambda: _Udp(self.handler), sock=sock)
        self._udp = proto
        assert proto.transport is not None
        self.bound["UDP"] = proto.transport.get_extra_info("sockname")[:2]

    async def listen_stream(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        name = "TLS" if tls is not None else "TCP"
        server = await loop.create_server(
            lambda: _Stream(self, name), host, port, ssl=tls, reuse_address=True
        )
        self._servers.append(server)
        self.bound[name] = server.sockets[0].getsockname()[:2]

    def udp_backlog(self) -> int | None:
        """Bytes waiting in the UDP socket's receive buffer (Linux SO_MEMINFO), or None
        where the kernel cannot tell. Work waiting here is invisible to the event loop:
        with a large buffer it is seconds of delay before the loop looks lagged at all."""
        transport = self._udp.transport if self._udp is not None else None
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return None
        try:
            info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 9)
        except (OSError, AttributeError, TypeError):
            return None
        return int(struct.unpack_from("=I", info, 0)[0])  # SK_MEMINFO_RMEM_ALLOC

    def send(self, data: bytes, dest: Address) -> bool:
        """Send bytes to ``dest``; False when there is no way to (closed connection)."""
        if dest.transport == "UDP":
            if self._udp is None or self._udp.transport is None:
                return False
            self._udp.transport.sendto(data, (dest.host, dest.port))
            return True
        conn = self.connections.get((dest.transport, dest.host, dest.port))
        if conn is None or conn.transport is None or conn.transport.is_closing():
            log.debug("no connection for response", dest=str(dest))
            return False
        conn.transport.write(data)
        return True

    async def close(self) -> None:
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        for server in self._servers:
            server.close()
            await server.wait_closed()


RECEIVE_BUFFER = 8 * 1024 * 1024


def _grow_receive_buffer(sock: Any) -> None:
    """A REGISTER storm must queue in the kernel, not be dropped by it (as Kamailio does).

    SO_RCVBUFFORCE passes the system cap when we may (root); otherwise SO_RCVBUF gets
    as much as ``net.core.rmem_max`` allows.
    """
    if sock is None:
        return
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
            return
        except OSError:
            continue


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx
