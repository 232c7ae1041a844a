"""The RTP relay on real loopback sockets: two "phones" (UDP sockets) whose media goes
through the relay's ports, strangers dropped, ports given back, the range exhausted."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from pbxwarden.pbx.media import MediaError, SdpError, streams
from pbxwarden.transport.rtp import MediaRelay
from tests.helpers import free_port


def _sdp(host: str, port: int, *, video: int | None = None) -> bytes:
    body = (
        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    if video is not None:
        body += f"m=video {video} RTP/AVP 96\r\n"
    return body.encode()


def _phone(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


async def _receive(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            data, addr = sock.recvfrom(4096)
            return data, (addr[0], addr[1])
        except BlockingIOError:
            await asyncio.sleep(0.005)
    raise AssertionError("nothing arrived")


async def _nothing(sock: socket.socket, wait: float = 0.2) -> bool:
    await asyncio.sleep(wait)
    try:
        sock.recvfrom(4096)
    except BlockingIOError:
        return True
    return False


def _range() -> tuple[int, int]:
    base = free_port() & ~1
    return (base, base + 40) if base + 40 < 65535 else (20000, 20040)


@pytest.fixture
def relay() -> Iterator[MediaRelay]:
    low, high = _range()
    relay = MediaRelay("127.0.0.1", low, high)
    yield relay
    relay.close()


def _port_of(body: bytes, index: int = 0) -> int:
    return streams(body)[index].port


async def test_media_flows_both_ways_through_the_relay(relay: MediaRelay) -> None:
    alice, bob = _phone(), _phone()
    to_bob = relay.anchor(1, "a", _sdp("127.0.0.1", alice.getsockname()[1]), "127.0.0.1")
    to_alice = relay.anchor(1, "b", _sdp("127.0.0.1", bob.getsockname()[1]), "127.0.0.1")
    bob_sends_to, alice_sends_to = _port_of(to_bob), _port_of(to_alice)
    assert bob_sends_to != alice_sends_to
    assert relay.port_min <= bob_sends_to <= relay.port_max and bob_sends_to % 2 == 0

    alice.sendto(b"rtp-from-alice", ("127.0.0.1", alice_sends_to))
    data, source = await _receive(bob)
    assert data == b"rtp-from-alice"
    assert source == ("127.0.0.1", bob_sends_to)  # from the port bob sends to: symmetric
    bob.sendto(b"rtp-from-bob", ("127.0.0.1", bob_sends_to))
    data, source = await _receive(alice)
    assert (data, source) == (b"rtp-from-bob", ("127.0.0.1", alice_sends_to))
    # RTCP on the next ports
    alice.sendto(b"rtcp", ("127.0.0.1", alice_sends_to + 1))
    assert await _nothing(bob)  # bob's RTCP port is its RTP port + 1, not this socket
    [stream] = relay.describe(1)
    assert stream["a_packets"] == 2 and stream["b_packets"] == 1
    assert stream["a_latched"] == f"127.0.0.1:{alice.getsockname()[1]}"
    assert relay.counters.packets == 3 and relay.counters.sessions == 1


def _has_ipv6_loopback() -> bool:
    try:
        _phone("::1").close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_media_flows_both_ways_through_a_relay_on_ipv6() -> None:
    """A relay bound to ::1 writes IP6 SDP, relays both ways and shows where each phone
    sends from as ``[::1]:port``, bracketed (RFC 5118): ``::1:4000`` would be ambiguous."""
    low, high = _range()
    relay = MediaRelay("::1", low, high)
    alice, bob = _phone("::1"), _phone("::1")
    try:
        offer = _sdp("::1", alice.getsockname()[1]).replace(b"IP4", b"IP6")
        answer = _sdp("::1", bob.getsockname()[1]).replace(b"IP4", b"IP6")
        to_bob = relay.anchor(3, "a", offer, "::1")
        to_alice = relay.anchor(3, "b", answer, "::1")
        assert b"c=IN IP6 ::1\r\n" in to_bob and b"c=IN IP6 ::1\r\n" in to_alice
        alice.sendto(b"rtp-from-alice", ("::1", _port_of(to_alice)))
        assert (await _receive(bob))[0] == b"rtp-from-alice"
        bob.sendto(b"rtp-from-bob", ("::1", _port_of(to_bob)))
        assert (await _receive(alice))[0] == b"rtp-from-bob"
        [stream] = relay.describe(3)
        assert stream["a_latched"] == f"[::1]:{alice.getsockname()[1]}", stream
        assert stream["b_latched"] == f"[::1]:{bob.getsockname()[1]}", stream
    finally:
        alice.close()
        bob.close()
        relay.close()


async def test_phone_behind_nat_gets_media_where_it_sends_from(relay: MediaRelay) -> None:
    alice, bob = _phone(), _phone()
    # alice's SDP names a private address; she really sends from the NAT's port
    relay.anchor(2, "a", _sdp("10.1.2.3", 4000), "127.0.0.1")
    to_alice = relay.anchor(2, "b", _sdp("127.0.0.1", bob.getsockname()[1]), "127.0.0.1")
    alice.sendto(b"hello", ("127.0.0.1", _port_of(to_alice)))
    assert (await _receive(bob))[0] == b"hello"
    bob.sendto(b"back", ("127.0.0.1", relay.describe(2)[0]["b_port"]))  # type: ignore[arg-type]
    assert (await _receive(alice))[0] == b"back"  # to the latched source, not 10.1.2.3


async def test_a_stranger_can_neither_inject_nor_steal_media(relay: MediaRelay) -> None:
    alice, bob = _phone(), _phone()
    stranger = _phone("127.0.0.66")
    relay.anchor(3, "a", _sdp("127.0.0.1", alice.getsockname()[1]), "127.0.0.1")
    to_alice = relay.anchor(3, "b", _sdp("127.0.0.1", bob.getsockname()[1]), "127.0.0.1")
    alice_port = _port_of(to_alice)
    stranger.sendto(b"injected", ("127.0.0.1", alice_port))  # before alice latched
    assert await _nothing(bob)
    alice.sendto(b"real", ("127.0.0.1", alice_port))
    assert (await _receive(bob))[0] == b"real"
    stranger.sendto(b"injected", ("127.0.0.1", alice_port))  # after
    assert await _nothing(bob)
    bob.sendto(b"for alice", ("127.0.0.1", relay.describe(3)[0]["b_port"]))  # type: ignore[arg-type]
    assert (await _receive(alice))[0] == b"for alice"
    assert await _nothing(stranger)
    assert relay.counters.strangers == 2


async def test_release_gives_the_ports_back(relay: MediaRelay) -> None:
    body = relay.anchor(4, "a", _sdp("127.0.0.1", 4000, video=4002), "127.0.0.1")
    ports = [s.port for s in streams(body)]
    [a_side] = [relay.describe(4)[0]["a_port"]]
    relay.release(4)
    assert relay.describe(4) == [] and relay.counters.sessions == 0
    for port in (*ports, a_side):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))  # free again
    relay.release(4)  # twice is harmless


async def test_exhausted_port_range_is_an_error_and_leaks_nothing() -> None:
    low, _ = _range()
    relay = MediaRelay("127.0.0.1", low, low + 5)  # room for three pairs: one call and a half
    try:
        relay.anchor(5, "a", _sdp("127.0.0.1", 4000), "127.0.0.1")
        with pytest.raises(MediaError, match="no free media ports"):
            relay.anchor(6, "a", _sdp("127.0.0.1", 4000), "127.0.0.1")
        assert relay.counters.no_ports == 1
        assert relay.counters.sessions == 1 and relay.describe(6) == []
        relay.release(6)
        relay.release(5)
        relay.anchor(7, "a", _sdp("127.0.0.1", 4000), "127.0.0.1")  # the ports came back
    finally:
        relay.close()


async def test_ports_in_use_by_others_are_skipped(relay: MediaRelay) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", relay.port_min + 1))  # the RTCP port of the first pair
    try:
        body = relay.anchor(8, "a", _sdp("127.0.0.1", 4000), "127.0.0.1")
        assert _port_of(body) not in (relay.port_min, relay.port_min + 1)
    finally:
        taken.close()


async def test_bad_sdp_opens_no_port(relay: MediaRelay) -> None:
    with pytest.raises(SdpError):
        relay.anchor(9, "a", b"v=0\r\n", "127.0.0.1")
    assert relay.counters.sessions == 0


async def test_a_call_on_hold_is_not_timed_out_for_silence(relay: MediaRelay) -> None:
    relay.anchor(10, "a", _sdp("127.0.0.1", 4000), "127.0.0.1")
    relay.anchor(10, "b", _sdp("127.0.0.1", 4002), "127.0.0.1")
    later = time.monotonic() + 500
    assert (relay.idle_for(10, later) or 0) >= 500
    hold = _sdp("127.0.0.1", 4000).replace(b"a=rtpmap:0 PCMU/8000", b"a=sendonly")
    relay.anchor(10, "a", hold, "127.0.0.1")  # re-INVITE: on hold
    assert relay.idle_for(10, later) is None
    relay.anchor(10, "a", _sdp("127.0.0.1", 4000), "127.0.0.1")  # off hold again
    idle = relay.idle_for(10, time.monotonic())
    assert idle is not None and idle < 1  # the silence counts from the resumption
    assert relay.idle_for(99, later) is None  # no media anchored
