"""The asyncio I/O layer: UDP, TCP and TLS sockets in, raw bytes and source addresses out.

Deliberately thin: it frames streams, remembers connections so that responses go
back the way requests came (RFC 3261 18.2.2), and hands every message to one
callback (over UDP, new calls that waited too long to another, which sheds them:
:mod:`pbxwarden.transport.ingress`). It knows nothing of SIP beyond framing and
telling a new call from the rest. Which connection to admit, refuse
or close is decided by :class:`~pbxwarden.transport.connections.ConnectionTable`;
the server says which connection sent a valid request (:meth:`Transports.confirm`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

import structlog

from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.message import StreamFramer, error_response_bytes
from pbxwarden.sip.transaction import Address
from pbxwarden.transport.connections import ConnectionLimits, ConnectionTable
from pbxwarden.transport.ingress import Ingress, Lane

log = structlog.get_logger("pbxwarden.transport")

MessageHandler = Callable[[bytes, Address], None]
SO_MEMINFO = 55  # Linux <linux/sock_diag.h>; not in the socket module
SWEEP_PERIOD = 0.25  # seconds between looks for connections past their deadline
ACCEPT_BATCH = 256  # accepts per readiness callback, so that UDP is read meanwhile
ACCEPT_RETRY = 0.1  # seconds to wait after running out of descriptors
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn; a flood must not fill it
TLS_SHUTDOWN_TIMEOUT = 5.0  # a closing TLS connection waits this long for close_notify
FILE_RESERVE = 512  # descriptors for everything but connections (database, logs, workers)
MIN_CONNECTIONS = 16


UDP_BATCH = 256  # datagrams read per readiness callback before timers get their turn
# Linux <asm-generic/socket.h>: the kernel stamps each datagram with its arrival time, so
# that time spent waiting in the socket's buffer (a stall, a burst) counts as waiting
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
UDP_SLICE = 0.005  # seconds of new calls served in one go, then the loop's other work
SEND_QUEUE = 4096  # datagrams kept while the kernel's send buffer is full


class _Udp:
    """One UDP socket, read and written directly (not an asyncio datagram transport):
    it reads in batches and sorts what it reads (:mod:`pbxwarden.transport.ingress`),
    calls in progress first, so that new calls wait, and are shed, instead of them."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        handler: MessageHandler,
        shed: MessageHandler,
        ingress: Ingress,
    ) -> None:
        self.loop, self.sock = loop, sock
        self._handler, self._shed, self.ingress = handler, shed, ingress
        self._drain_handle: asyncio.Handle | None = None
        self._pending: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._drained = True  # the last read emptied the socket: new calls may be served
        self.closed = False
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._stamped = True
        except OSError:  # not Linux: a datagram's wait starts when it is read
            self._stamped = False
        loop.add_reader(sock.fileno(), self._readable)

    def pause_reading(self) -> None:
        self.loop.remove_reader(self.sock.fileno())

    def resume_reading(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _deliver(self, handler: MessageHandler, data: bytes, source: Address) -> None:
        try:
            handler(data, source)
        except Exception:  # one bad datagram must not stop the socket being read
            log.exception("handling a datagram failed", source=str(source))

    def _readable(self) -> None:
        self._read()
        if len(self.ingress) and self._drain_handle is None:
            self._drain_handle = self.loop.call_soon(self._drain)

    def _read(self) -> None:
        """One batch: what is not a new call handled as it is read, new calls queued."""
        now = self.loop.time()
        wall = time.time()
        self._drained = False
        for _ in range(UDP_BATCH):
            arrived = now
            try:
                if self._stamped:
                    data, ancillary, _, addr = self.sock.recvmsg(65535, 64)
                    for level, kind, value in ancillary:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = _TIMESPEC.unpack_from(value)
                            arrived = now - max(0.0, wall - (sec + nsec / 1e9))
                else:
                    data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                self._drained = True
                break
            except OSError as exc:  # ICMP unreachable reported on the socket, and the like
                log.debug("udp error", error=str(exc))
                continue
            if data in (b"\r\n\r\n", b"\r\n", b"\x00\x00\x00\x00"):
                continue  # NAT keep-alive pings: nothing to answer over UDP
            source = Address("UDP", addr[0], addr[1])
            lane = self.ingress.offer(data, source, arrived)
            if lane is Lane.NOW:
                self._deliver(self._handler, data, source)
            elif lane is Lane.SHED:
                self._deliver(self._shed, data, source)

    def deliver(self, data: bytes, source: Address, arrived: float) -> None:
        """A datagram another process read from its socket of the group: in through
        the same lanes as one read here (``arrived``: on this loop's clock)."""
        lane = self.ingress.offer(data, source, arrived)
        if lane is Lane.NOW:
            self._deliver(self._handler, data, source)
        elif lane is Lane.SHED:
            self._deliver(self._shed, data, source)
        elif self._drain_handle is None:
            self._drain_handle = self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        """New calls, oldest first, for one slice, once the socket is empty; the rest
        after the loop's other work (timers, and reading again: what arrived meanwhile
        for calls in progress). While it is not, only those waiting too long (503)."""
        self._drain_handle = None
        if self.closed:
            return
        if not self._drained:
            self._read()  # the last batch was full: more may wait for calls in progress
        begin = self.loop.time()
        while True:
            now = self.loop.time()
            item = self.ingress.take(now, admit=self._drained)
            if item is None:
                break
            data, source, shed = item
            self._deliver(self._shed if shed else self._handler, data, source)
            if self.loop.time() - begin > UDP_SLICE:
                break
        if len(self.ingress):
            self._drain_handle = self.loop.call_soon(self._drain)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.closed:
            return
        if not self._pending:
            try:
                self.sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.sock.fileno(), self._writable)
            except OSError as exc:
                log.debug("udp send failed", error=str(exc), dest=f"{addr[0]}:{addr[1]}")
                return
        if len(self._pending) < SEND_QUEUE:
            self._pending.append((data, addr))

    def _writable(self) -> None:
        while self._pending:
            data, addr = self._pending[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp send failed", error=str(exc), dest=f"{addr[0]}:{addr[1]}")
            self._pending.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self.closed:
            return
        self._writable_flush()
        self.closed = True
        if self._drain_handle is not None:
            self._drain_handle.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.loop.remove_writer(self.sock.fileno())
        self.sock.close()

    def _writable_flush(self) -> None:
        """Last answers (BYE's 200s at shutdown) still queued: one try each."""
        while self._pending:
            data, addr = self._pending.popleft()
            with contextlib.suppress(OSError):
                self.sock.sendto(data, addr)


class SourceKind(Enum):
    """What the firewall says of a connecting address, asked before anything is read."""

    NORMAL = "normal"
    TRUSTED = "trusted"  # allow-listed network or trunk host: the higher per-source limit
    BANNED = "banned"  # refused at once


def _normal(host: str) -> SourceKind:
    return SourceKind.NORMAL


def _ignore(host: str, count: int) -> None:
    return None


@dataclass
class StreamCounters:
    """What happened to TCP/TLS connections since start (``pbxwarden stats``)."""

    accepted: int = 0
    refused_banned: int = 0  # from a banned source
    refused_source_limit: int = 0  # over the per-source limit
    refused_full: int = 0  # table full, nothing to evict
    evicted: int = 0  # closed to make room for a newcomer
    expired: int = 0  # past their deadline (no valid request in time, or idle)
    setup_failed: int = 0  # TLS handshake failed or timed out


class _Stream(asyncio.Protocol):
    """One TCP/TLS connection, from accept to close: its slot in the owner's table is
    held from accept on, through the TLS handshake."""

    def __init__(self, owner: Transports, name: str, host: str, port: int) -> None:
        self._owner = owner
        self.key = (name, host, port)
        self.address = Address(name, host, port)
        self._framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.setup: asyncio.Task[None] | None = None
        self.handed = False  # the socket belongs to a transport (or its failed setup)
        self.closed = False

    async def open(self, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        self.handed = True
        loop = asyncio.get_running_loop()
        if tls is None:
            await loop.connect_accepted_socket(lambda: self, sock)
        else:
            # The table's deadline closes a slow handshake first; this is the backstop.
            limits = self._owner.table.limits
            await loop.connect_accepted_socket(
                lambda: self,
                sock,
                ssl=tls,
                ssl_handshake_timeout=limits.new_timeout + 1.0,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
            )

    def setup_done(self, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self.setup = None
        failure = task.cancelled() or task.exception() is not None
        if failure:
            if not self.handed:  # cancelled before it started: the socket is still ours
                sock.close()
            if not self.closed:
                self._owner.counters.setup_failed += 1
                log.debug("connection setup failed", source=str(self.address))
            self._owner._forget(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.closed:  # shut while its transport was being made
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        transport = self.transport
        assert transport is not None
        owner.table.touch(self, owner.now())
        try:
            messages = self._framer.feed(data)
        except ParseError as exc:
            # Framing is lost: answer once if we can, then drop the connection (RFC 3261 18.3).
            reply = error_response_bytes(data, exc.status, exc.reason)
            if reply:
                transport.write(reply)
            transport.close()
            return
        for message in messages:
            if self.closed:
                return  # shut by the handler (its source was banned)
            if message == b"":
                transport.write(b"\r\n")  # RFC 5626 keep-alive pong
            else:
                owner.handler(message, self.address)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._forget(self)

    def shut(self) -> None:
        """Close now, unflushed: an expired, evicted or banned connection."""
        self._owner._forget(self)
        if self.transport is not None:
            self.transport.abort()
        elif self.setup is not None:
            self.setup.cancel()  # accept or TLS handshake under way: closes the socket


class _Listener:
    """A listening TCP socket read by hand rather than by ``loop.create_server``: the
    source is judged before any transport exists (a banned or over-limit source costs
    an accept and a close), and a TLS connection holds its slot during its handshake,
    which asyncio's server would hide until the handshake completed."""

    def __init__(
        self, owner: Transports, name: str, sock: socket.socket, tls: ssl.SSLContext | None
    ) -> None:
        self._owner = owner
        self.name = name
        self.sock = sock
        self.tls = tls
        self._retry: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        self._retry = None
        self._loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: the connection waits in the kernel's
                    # queue; try again shortly instead of spinning on a readable socket.
                    log.error("cannot accept connections", error=str(exc), transport=self.name)
                    self._loop.remove_reader(self.sock.fileno())
                    self._retry = self._loop.call_later(ACCEPT_RETRY, self.start)
                    return
                continue  # the peer gave up already (ECONNABORTED and the like)
            self._owner._accepted(self, sock, peer)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        else:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


_LINGER_RESET = struct.pack("ii", 1, 0)


def _refuse(sock: socket.socket) -> None:
    """Close with a reset: no FIN handshake, no TIME_WAIT kept on our side."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def raise_open_files(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit, as far as ``wanted``
    descriptors; returns the soft limit in force (``wanted`` where there is none)."""
    try:
        import resource
    except ImportError:  # not a Unix
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


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
    grow_receive_buffer(sock)
    return sock


class Transports:
    """Every listening socket of one SIP server, and the way back to each peer.

    ``classify`` tells, per connecting address, whether it is banned or trusted;
    ``over_limit(host, count)`` hears of a source refused at its per-source limit (the
    server bans it and calls :meth:`drop_source`). ``reserved_files``: descriptors the
    rest of the process needs (database, workers, media relay), kept out of the cap.
    """

    def __init__(
        self,
        handler: MessageHandler,
        limits: ConnectionLimits | None = None,
        *,
        classify: Callable[[str], SourceKind] = _normal,
        over_limit: Callable[[str, int], None] = _ignore,
        reserved_files: int = FILE_RESERVE,
        shed: MessageHandler | None = None,
        ingress: Ingress | None = None,
    ) -> None:
        self.handler = handler
        # UDP: a new call that waited too long goes to ``shed`` (the server's 503) instead
        self.shed = shed or handler
        self.ingress = ingress if ingress is not None else Ingress(wait=0)  # 0: in turn
        self.classify = classify
        self.over_limit = over_limit
        self.table: ConnectionTable[_Stream] = ConnectionTable(limits)
        self.counters = StreamCounters()
        self.connections: dict[tuple[str, str, int], _Stream] = {}
        self._reserved_files = reserved_files
        self._udp: _Udp | None = None
        self._extra_udp: list[_Udp] = []  # registrar workers' sockets (transport/steering.py)
        self._listeners: list[_Listener] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._full_logged = -float("inf")
        self.bound: dict[str, tuple[str, int]] = {}

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def listen_udp(self, host: str, port: int, sock: socket.socket | None = None) -> None:
        """Start reading; ``sock``: a socket already bound (see :func:`bind_udp`)."""
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = bind_udp(host, port)
        self._udp = _Udp(loop, sock, self.handler, self.shed, self.ingress)
        self.bound["UDP"] = sock.getsockname()[:2]

    def read_udp(self, sock: socket.socket) -> _Udp:
        """Read another socket of the steered group as if it were the main one (a
        registrar worker's, while that worker is down): same handler, lanes of its own.
        Answers leave through the main socket (same address and port)."""
        loop = asyncio.get_running_loop()
        ingress = Ingress(wait=self.ingress.wait, limit=self.ingress.limit)
        reader = _Udp(loop, sock, self.handler, self.shed, ingress)
        self._extra_udp.append(reader)
        return reader

    def deliver_udp(self, data: bytes, source: Address, age: float) -> None:
        """A datagram a registrar worker read that is the main process's to handle;
        ``age``: seconds since the kernel received it."""
        if self._udp is None or self._udp.closed:
            self.handler(data, source)
            return
        self._udp.deliver(data, source, self._udp.loop.time() - age)

    async def listen_stream(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        name = "TLS" if tls is not None else "TCP"
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if not self._listeners:
            self._fit_file_limit()
            self._sweeper = self._loop.call_later(SWEEP_PERIOD, self._sweep)
        family, _, _, _, where = (
            await self._loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        )[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(where)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        listener = _Listener(self, name, sock, tls)
        listener.start()
        self._listeners.append(listener)
        self.bound[name] = sock.getsockname()[:2]

    def _fit_file_limit(self) -> None:
        """The cap must be reachable: raise the file limit, or lower the cap to it."""
        cap = self.table.limits.max_connections
        soft = raise_open_files(cap + self._reserved_files)
        usable = soft - self._reserved_files
        if usable < cap:
            usable = max(MIN_CONNECTIONS, usable)
            log.warning(
                "sip.max_connections lowered to what the open-files limit allows",
                configured=cap,
                usable=usable,
                nofile=soft,
                hint="raise the hard limit (ulimit -Hn, systemd LimitNOFILE)",
            )
            self.table.set_max_connections(usable)

    def _accepted(self, listener: _Listener, sock: socket.socket, peer: tuple[Any, ...]) -> None:
        host, port = str(peer[0]), int(peer[1])
        kind = self.classify(host)
        if kind is SourceKind.BANNED:
            self.counters.refused_banned += 1
            _refuse(sock)
            return
        stream = _Stream(self, listener.name, host, port)
        verdict = self.table.admit(stream, host, kind is SourceKind.TRUSTED, self.now())
        for victim in verdict.evict:
            self.counters.evicted += 1
            victim.shut()
        if not verdict.accepted:
            _refuse(sock)
            if verdict.over_limit:
                self.counters.refused_source_limit += 1
                self.over_limit(host, verdict.source_count)
            else:
                self.counters.refused_full += 1
                now = self.now()
                if now - self._full_logged >= 10.0:
                    self._full_logged = now
                    log.warning(
                        "connection table full of active connections: newcomers refused",
                        connections=len(self.table),
                        max_connections=self.table.limits.max_connections,
                    )
            return
        self.counters.accepted += 1
        old = self.connections.get(stream.key)
        if old is not None:  # the same address and port again: the old one is gone
            old.shut()
        self.connections[stream.key] = stream
        assert self._loop is not None
        task = self._loop.create_task(stream.open(sock, listener.tls))
        stream.setup = task
        task.add_done_callback(functools.partial(stream.setup_done, sock))

    def _forget(self, stream: _Stream) -> None:
        if stream.closed:
            return
        stream.closed = True
        self.table.release(stream)
        if self.connections.get(stream.key) is stream:
            del self.connections[stream.key]

    def _sweep(self) -> None:
        """Close what is past its deadline; a periodic tick, cheaper than one timer per
        connection rearmed on every read."""
        for stream in self.table.expired(self.now()):
            self.counters.expired += 1
            stream.shut()
        assert self._loop is not None
        self._sweeper = self._loop.call_later(SWEEP_PERIOD, self._sweep)

    def confirm(self, source: Address) -> None:
        """``source`` sent a valid SIP request: its connection (if any) is established."""
        source = source.hop
        if source.transport == "UDP":
            return
        stream = self.connections.get((source.transport, source.host, source.port))
        if stream is not None:
            self.table.confirm(stream, self.now())

    def drop_source(self, host: str) -> int:
        """Close every connection of ``host``'s source (it was banned); how many."""
        streams = self.table.drop_source(host)
        for stream in streams:
            stream.shut()
        return len(streams)

    def describe(self) -> dict[str, int]:
        """Connection figures for ``pbxwarden stats``."""
        return {
            "connections": len(self.table),
            "connections_new": self.table.new_count,
            "max_connections": self.table.limits.max_connections,
            **{f"connections_{k}": v for k, v in self.counters.__dict__.items()},
        }

    def udp_backlog(self) -> int | None:
        """Bytes waiting in the UDP socket's receive buffer (Linux SO_MEMINFO), or None
        where the kernel cannot tell. Work waiting here is invisible to the event loop:
        with a large buffer it is seconds of delay before the loop looks lagged at all."""
        if self._udp is None or self._udp.closed:
            return None
        sock = self._udp.sock
        try:
            info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 9)
        except (OSError, AttributeError, TypeError):
            return None
        return int(struct.unpack_from("=I", info, 0)[0])  # SK_MEMINFO_RMEM_ALLOC

    def send(self, data: bytes, dest: Address) -> bool:
        """Send bytes to ``dest`` (through the front that relayed it, if one did); False
        when there is no way to (closed connection)."""
        dest = dest.hop
        if dest.transport == "UDP":
            if self._udp is None or self._udp.closed:
                return False
            self._udp.sendto(data, (dest.host, dest.port))
            return True
        conn = self.connections.get((dest.transport, dest.host, dest.port))
        if conn is None or conn.transport is None or conn.transport.is_closing():
            log.debug("no connection for response", dest=str(dest))
            return False
        conn.transport.write(data)
        return True

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._udp is not None:
            self._udp.close()
        for reader in self._extra_udp:
            reader.close()
        self._extra_udp.clear()
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for stream in self.table.members():
            if stream.transport is not None:
                stream.transport.close()  # flush what is queued (final BYE answers)
            else:
                stream.shut()
        await asyncio.sleep(0)


RECEIVE_BUFFER = 8 * 1024 * 1024


def grow_receive_buffer(sock: Any) -> None:
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
