"""Media anchoring, sans-I/O: where each phone wants its RTP, and SDP rewritten to the relay.

A phone behind NAT writes its private address into its SDP; the other phone's RTP sent
there is lost. The relay (:mod:`pbxwarden.transport.rtp`) gives each side of a call its
own ports on the PBX, and this module holds what needs no socket:

- reading an SDP body into its media streams and rewriting it so that every stream
  points at the relay (the ``sdp-transform`` library does the SDP grammar);
- :class:`Endpoint`, the rule for which packets a relay port accepts and where it sends
  them (symmetric RTP, RFC 4961, latched on the first packet as NAT-traversing media
  servers do), kept strict so that a stranger cannot inject or steal a call's audio.

Rewriting also hides the phones' own addresses (``o=``, ``c=``, ICE candidates) from the
other party: a carrier or an attacker on the far leg learns the PBX's address only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sdp_transform  # type: ignore[import-untyped]

SDP_TYPE = "application/sdp"
MAX_STREAMS = 8  # m= lines one call may anchor (audio, video, a few more)
# attributes that name the phone's own addresses: meaningless once media is anchored
_ADDRESS_ATTRIBUTES = (
    "candidates",
    "iceUfrag",
    "icePwd",
    "iceOptions",
    "endOfCandidates",
    "remoteCandidates",
    "iceLite",
)


class MediaError(Exception):
    """Media cannot be anchored (no free ports, unreadable SDP): the call cannot go on."""


class SdpError(MediaError, ValueError):
    """An SDP body the relay cannot anchor (the call then gets 488 with the reason)."""


@dataclass(frozen=True, slots=True)
class MediaStream:
    """One ``m=`` line: where the phone that wrote it wants to receive."""

    kind: str
    host: str
    port: int  # 0: the stream is refused or disabled (RFC 3264 5.1)
    rtcp_port: int
    direction: str = "sendrecv"  # sendonly, recvonly or inactive: a call on hold

    @property
    def enabled(self) -> bool:
        return self.port != 0


class MediaAnchor(Protocol):
    """What the B2BUA needs from a relay (:class:`pbxwarden.transport.rtp.MediaRelay`)."""

    def anchor(self, token: int, leg: str, body: bytes, signaling_host: str) -> bytes: ...
    def release(self, token: int) -> None: ...


def is_sdp(content_type: str | None, body: bytes) -> bool:
    if not body or content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == SDP_TYPE


def _parse(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8 text") from None
    try:
        session = sdp_transform.parse(text)
    except Exception as exc:  # the library raises whatever its grammar trips on
        raise SdpError(f"unreadable SDP ({type(exc).__name__})") from None
    if not isinstance(session, dict) or not session.get("media"):
        raise SdpError("SDP has no media line")
    if len(session["media"]) > MAX_STREAMS:
        raise SdpError(f"SDP has more than {MAX_STREAMS} media lines")
    return session


def _host(connection: Any) -> str | None:
    if not isinstance(connection, dict):
        return None
    ip = str(connection.get("ip", "")).split("/", 1)[0]  # multicast c= carries a TTL
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def _port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise SdpError(f"{what} is not a port number") from None
    if not 0 <= port <= 65535:
        raise SdpError(f"{what} {port} is out of range")
    return port


def streams(body: bytes) -> list[MediaStream]:
    """The media streams of an SDP offer or answer, in ``m=`` line order."""
    session = _parse(body)
    default_host = _host(session.get("connection"))
    default_direction = str(session.get("direction", "sendrecv"))
    found = []
    for index, media in enumerate(session["media"]):
        port = _port(media.get("port"), f"m= line {index + 1} port")
        host = _host(media.get("connection")) or default_host
        if host is None and port:
            raise SdpError(f"m= line {index + 1} has no usable c= address")
        rtcp = media.get("rtcp")
        rtcp_port = port + 1 if port else 0
        if "rtcpMux" in media:
            rtcp_port = port
        elif isinstance(rtcp, dict) and "port" in rtcp:
            rtcp_port = _port(rtcp["port"], f"m= line {index + 1} a=rtcp")
        direction = str(media.get("direction", default_direction))
        found.append(
            MediaStream(str(media.get("type", "")), host or "", port, rtcp_port, direction)
        )
    return found


def _connection(host: str) -> dict[str, Any]:
    return {"version": ipaddress.ip_address(host).version, "ip": host}


def rewrite(body: bytes, host: str, ports: Sequence[int]) -> bytes:
    """The same SDP with every enabled stream on ``host`` at ``ports[i]`` (its RTCP at
    the next port), and no trace of the writer's own addresses.

    ``ports`` has one entry per ``m=`` line; 0 keeps a stream disabled.
    """
    session = _parse(body)
    media_lines = session["media"]
    if len(ports) != len(media_lines):
        raise SdpError("media lines changed while being anchored")
    session["connection"] = _connection(host)
    origin = session.get("origin")
    if isinstance(origin, dict):
        origin["ipVer"] = ipaddress.ip_address(host).version
        origin["address"] = host
    for attribute in _ADDRESS_ATTRIBUTES:
        session.pop(attribute, None)
    for media, port in zip(media_lines, ports, strict=True):
        media["port"] = port
        media.pop("connection", None)
        for attribute in _ADDRESS_ATTRIBUTES:
            media.pop(attribute, None)
        if port and "rtcpMux" not in media:
            media["rtcp"] = {"port": port + 1}
        else:
            media.pop("rtcp", None)
    return str(sdp_transform.write(session)).encode("utf-8")


class Endpoint:
    """One phone as a relay port sees it: which packets are its, and where its go.

    Until the phone's first packet arrives, media for it goes where its SDP says. The
    first packet from the phone's SDP address, or from the address it signals from (the
    same NAT), latches: from then on only that source is the phone, and media for it
    goes back there (symmetric RTP, RFC 4961). RTP and RTCP latch apart, since a NAT
    maps their ports independently. Packets from anyone else are dropped: no stranger
    can inject audio into a call or redirect it to themselves.
    """

    __slots__ = ("latched", "port", "rtcp_port", "sdp_host", "signaling_host")

    def __init__(self, signaling_host: str) -> None:
        self.signaling_host = signaling_host
        self.sdp_host: str | None = None
        self.port = 0
        self.rtcp_port = 0
        self.latched: list[tuple[str, int] | None] = [None, None]  # RTP, RTCP

    def describe(self, stream: MediaStream, signaling_host: str) -> None:
        """The phone's (new) SDP: a changed address starts the latching over."""
        moved = (stream.host, stream.port) != (self.sdp_host, self.port)
        self.sdp_host, self.port, self.rtcp_port = stream.host, stream.port, stream.rtcp_port
        self.signaling_host = signaling_host
        if moved:
            self.latched = [None, None]

    def accepts(self, source: tuple[str, int], rtcp: bool = False) -> bool:
        """Is a packet from ``source`` the phone's? Latches on the first one that is."""
        latched = self.latched[rtcp]
        if latched is not None:
            return source == latched
        if self.port == 0 or source[0] not in (self.sdp_host, self.signaling_host):
            return False
        self.latched[rtcp] = (source[0], source[1])
        return True

    def target(self, rtcp: bool = False) -> tuple[str, int] | None:
        """Where media for this phone goes, or None while its stream is disabled."""
        if self.port == 0 or self.sdp_host is None:
            return None
        latched = self.latched[rtcp]
        if latched is not None:
            return latched
        return (self.sdp_host, self.rtcp_port if rtcp else self.port)


_STATIC_CODECS = {0: ("pcmu", 8000), 3: ("gsm", 8000), 8: ("pcma", 8000), 9: ("g722", 8000)}


def _codecs(media: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """A stream's payload types and the codec each names (static ones need no rtpmap)."""
    named = {
        int(r["payload"]): (str(r.get("codec", "")).lower(), int(r.get("rate") or 0))
        for r in media.get("rtp", [])
        if "payload" in r
    }
    payloads = [int(p) for p in str(media.get("payloads", "")).split() if p.isdigit()]
    return {pt: named.get(pt) or _STATIC_CODECS.get(pt, (str(pt), 0)) for pt in payloads}


def answer(offer: bytes, source: bytes) -> bytes:
    """An SDP answer to ``offer`` made from ``source``, another party's own offer: when
    the PBX joins two phones that both made offers (call pickup), each gets the other's
    description as its answer (RFC 3264 6: the same m= lines in order; per stream the
    codecs both support, in the offerer's order of preference, with the numbers the
    other phone receives them on; a stream the other lacks is rejected with port 0)."""
    asked, given = _parse(offer), _parse(source)
    session = dict(given)
    lines = []
    for index, media in enumerate(asked["media"]):
        other = given["media"][index] if index < len(given["media"]) else None
        wanted = _codecs(media)
        mine = (
            _codecs(other) if other is not None and other.get("type") == media.get("type") else {}
        )
        by_codec = {codec: pt for pt, codec in mine.items()}
        common = [by_codec[codec] for codec in wanted.values() if codec in by_codec]
        if other is None or not common or not int(other.get("port") or 0):
            lines.append(
                {
                    "type": media.get("type"),
                    "port": 0,
                    "protocol": media.get("protocol"),
                    "payloads": str(media.get("payloads", "0")).split()[0],
                }
            )
            continue
        line = dict(other)
        line["payloads"] = " ".join(str(pt) for pt in dict.fromkeys(common))
        line["rtp"] = [r for r in other.get("rtp", []) if int(r.get("payload", -1)) in common]
        line["fmtp"] = [f for f in other.get("fmtp", []) if int(f.get("payload", -1)) in common]
        lines.append(line)
    session["media"] = lines
    return str(sdp_transform.write(session)).encode("utf-8")
