"""The RTP relay's sockets: a pair of UDP ports (RTP, RTCP) per side of each media stream.

Media is anchored per call: the phone on each leg is told (in the SDP the B2BUA relays)
to send to the PBX's ports for its side, and what arrives there from that phone goes out
of the other side's ports to the other phone. Which packets belong to a phone and where
its media goes is decided by :class:`pbxwarden.pbx.media.Endpoint`; this module only
binds, reads and sends. Sockets are non-blocking and read by the event loop's
``add_reader`` so a port can be opened from the synchronous call path and a datagram
costs one ``recvfrom`` and one ``sendto``, with no transport objects in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from dataclasses import dataclass, field

import structlog

from pbxwarden.pbx.media import Endpoint, MediaError, rewrite, streams

log = structlog.get_logger("pbxwarden.media")

MAX_DATAGRAM = 2048


@dataclass
class MediaCounters:
    sessions: int = 0  # calls with anchored media now
    packets: int = 0  # datagrams relayed
    bytes: int = 0
    strangers: int = 0  # datagrams from neither phone: dropped (injection, scans)
    dropped: int = 0  # datagrams from a phone with nowhere to go yet
    no_ports: int = 0  # calls refused: the port range was exhausted


class _Side:
    """The PBX's ports facing one phone of one stream."""

    __slots__ = ("endpoint", "packets", "port", "sockets")

    def __init__(self, sockets: tuple[socket.socket, socket.socket]) -> None:
        self.sockets = sockets
        self.port: int = sockets[0].getsockname()[1]
        self.endpoint = Endpoint("")
        self.packets = 0  # datagrams received from this phone and relayed


@dataclass(eq=False)
class _Stream:
    a: _Side
    b: _Side


@dataclass(eq=False)
class _Session:
    token: int
    streams: list[_Stream] = field(default_factory=list)
    last_packet: float = 0.0  # monotonic time of the last relayed datagram
    held: bool = False  # the latest SDP put a stream on hold: silence is expected


class MediaRelay:
    """Anchors the media of calls on ports of ``bind_host`` from an even port range.

    ``advertise`` is the address written into SDP (the PBX's address as the phones
    reach it); it defaults to ``bind_host``.
    """

    def __init__(
        self, bind_host: str, port_min: int, port_max: int, advertise: str | None = None
    ) -> None:
        self.bind_host = bind_host
        self.advertise = advertise or bind_host
        self.port_min = port_min + (port_min % 2)
        self.port_max = port_max
        self._next = self.port_min
        self._family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        self._sessions: dict[int, _Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counters = MediaCounters()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # -- what the B2BUA calls ---------------------------------------------------------

    def anchor(self, token: int, leg: str, body: bytes, signaling_host: str) -> bytes:
        """``body`` is SDP from the phone on ``leg`` ("a" or "b"): note where that phone
        wants its media and return the SDP for the other phone, pointing at our ports."""
        described = streams(body)
        session = self._sessions.get(token)
        if session is None:
            session = self._sessions[token] = _Session(token, last_packet=time.monotonic())
            self.counters.sessions += 1
        while len(session.streams) < len(described):
            try:
                a = _Side(self._bind_pair())
                try:
                    b = _Side(self._bind_pair())
                except MediaError:
                    self._close_side(a)
                    raise
            except MediaError:
                self.counters.no_ports += 1
                if not session.streams:
                    self.release(token)
                raise
            session.streams.append(_Stream(a, b))
            self._watch(session, a, b)
            self._watch(session, b, a)
        held = any(m.enabled and m.direction != "sendrecv" for m in described)
        if session.held and not held:  # taken off hold: the silence timer starts anew
            session.last_packet = time.monotonic()
        session.held = held
        ports = []
        for stream, media in zip(session.streams, described, strict=False):
            near, far = (stream.a, stream.b) if leg == "a" else (stream.b, stream.a)
            near.endpoint.describe(media, signaling_host)
            ports.append(far.port if media.enabled else 0)
        return rewrite(body, self.advertise, ports)

    def release(self, token: int) -> None:
        session = self._sessions.pop(token, None)
        if session is None:
            return
        self.counters.sessions -= 1
        for stream in session.streams:
            self._close_side(stream.a)
            self._close_side(stream.b)

    def idle_for(self, token: int, now: float) -> float | None:
        """Seconds since the call's last relayed datagram; None when no media is
        anchored, or while the call is on hold (a phone may then send nothing at all;
        the keep-alive still finds a phone that is gone)."""
        session = self._sessions.get(token)
        if session is None or session.held:
            return None
        return now - session.last_packet

    def describe(self, token: int) -> list[dict[str, object]]:
        """Per stream: the PBX's ports for each side and what each phone sent."""
        session = self._sessions.get(token)
        if session is None:
            return []
        return [
            {
                "a_port": s.a.port,
                "b_port": s.b.port,
                "a_packets": s.a.packets,
                "b_packets": s.b.packets,
                "a_latched": _text(s.a.endpoint.latched[0]),
                "b_latched": _text(s.b.endpoint.latched[0]),
            }
            for s in session.streams
        ]

    def close(self) -> None:
        for token in list(self._sessions):
            self.release(token)

    # -- sockets ----------------------------------------------------------------------

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        """An even port for RTP and the next one for RTCP (RFC 3550 11), both free."""
        span = (self.port_max - self.port_min + 1) // 2
        for _ in range(span):
            port = self._next
            self._next = port + 2 if port + 3 <= self.port_max else self.port_min
            rtp = self._bind(port)
            if rtp is None:
                continue
            rtcp = self._bind(port + 1)
            if rtcp is None:
                rtp.close()
                continue
            return rtp, rtcp
        raise MediaError(f"no free media ports in {self.port_min}-{self.port_max}")

    def _bind(self, port: int) -> socket.socket | None:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.bind_host, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return None
            raise MediaError(f"cannot open media port {port}: {exc.strerror}") from None
        return sock

    def _watch(self, session: _Session, near: _Side, far: _Side) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        for rtcp, sock in enumerate(near.sockets):
            pipe = _Pipe(sock, session, near, far, bool(rtcp), self.counters)
            self._loop.add_reader(sock.fileno(), pipe)

    def _close_side(self, side: _Side) -> None:
        loop = self._loop
        for sock in side.sockets:
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(sock.fileno())
            sock.close()


class _Pipe:
    """What arrives on one of the PBX's sockets from the phone it faces goes out of the
    other side's socket to the other phone: the event loop's callback for that socket.

    One datagram per call: the loop's readiness is level-triggered, so more waiting
    datagrams bring it back at once, and the usual single datagram costs no
    BlockingIOError.
    """

    __slots__ = ("counters", "far", "near", "out", "rtcp", "session", "sock")

    def __init__(
        self,
        sock: socket.socket,
        session: _Session,
        near: _Side,
        far: _Side,
        rtcp: bool,
        counters: MediaCounters,
    ) -> None:
        self.sock, self.session, self.near, self.far = sock, session, near, far
        self.rtcp, self.counters = rtcp, counters
        self.out = far.sockets[rtcp]

    def __call__(self) -> None:
        try:
            data, source = self.sock.recvfrom(MAX_DATAGRAM)
        except OSError:  # nothing after all, or an ICMP error: nothing to relay
            return
        if len(source) != 2:  # IPv6: (host, port, flowinfo, scope)
            source = (source[0], source[1])
        counters = self.counters
        if not self.near.endpoint.accepts(source, self.rtcp):
            counters.strangers += 1
            return
        target = self.far.endpoint.target(self.rtcp)
        if target is None:
            counters.dropped += 1
            return
        try:  # noqa: SIM105 (contextlib.suppress costs a context manager per packet)
            self.out.sendto(data, target)
        except OSError:  # a full socket buffer or an unreachable phone: RTP is lossy
            pass
        self.near.packets += 1
        counters.packets += 1
        counters.bytes += len(data)
        self.session.last_packet = time.monotonic()


def _text(address: tuple[str, int] | None) -> str | None:
    """``host:port``, an IPv6 host in brackets (``[::1]:4000``, RFC 5118)."""
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
