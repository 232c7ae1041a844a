"""Node-to-node relay: what one node signs, another takes only from that node's address,
unchanged, and fresh; the replica routes a direct binding through its node."""

from __future__ import annotations

import time
from typing import Any

from pbxwarden.cluster.location import Replica
from pbxwarden.cluster.relay import HEADER, NodeRelay
from pbxwarden.sip.message import Request, parse_message
from pbxwarden.sip.transaction import Address
from pbxwarden.store.db import BindingRow

A = Address("UDP", "10.0.0.1", 5060)
B = Address("UDP", "10.0.0.2", 5060)
VIEW: list[dict[str, Any]] = [
    {"node": "a", "state": "up", "addresses": ["udp:10.0.0.1:5060", "tcp:10.0.0.1:5060"]},
    {"node": "b", "state": "up", "addresses": ["udp:10.0.0.2:5060"]},
    {"node": "c", "state": "lost", "addresses": ["udp:10.0.0.3:5060"]},
    {"node": "d", "state": "up", "addresses": ["udp:0.0.0.0:5060"]},
]


def relay(node: str, secret: bytes | None = b"s" * 64) -> NodeRelay:
    r = NodeRelay(None, "p:", node, lambda: VIEW)  # type: ignore[arg-type]
    r.secret = secret
    return r


def invite(uri: str = "sip:1000@192.0.2.7:5062") -> Request:
    text = (
        f"INVITE {uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1\r\n"
        "From: <sip:2000@10.0.0.2>;tag=1\r\nTo: <sip:1000@10.0.0.2>\r\n"
        "Call-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


def through_a() -> Address:
    return Address("UDP", "192.0.2.7", 5062, A)


def test_a_signed_request_is_taken_from_its_node_only_and_only_unchanged() -> None:
    b, a = relay("b"), relay("a")
    request = invite()
    assert b.sign(request, through_a())
    reparsed = parse_message(request.to_bytes())
    assert isinstance(reparsed, Request)
    assert a.verify(reparsed, B) == "b" and a.relayed == 1
    assert a.verify(reparsed, Address("UDP", "10.0.0.9", 5060)) is None  # not B's address
    assert a.verify(reparsed, Address("UDP", "192.0.2.7", 5062, B)) is None  # relayed by a front
    other = invite("sip:1000@192.0.2.8:5062")  # the same header on another request
    other.headers.add(HEADER, reparsed.headers.get(HEADER) or "")
    assert a.verify(other, B) is None
    assert relay("a", b"t" * 64).verify(reparsed, B) is None  # another PBX's secret
    assert relay("a", None).verify(reparsed, B) is None  # no secret yet: nothing taken
    assert a.refused == 3


def test_an_old_signature_is_refused() -> None:
    b, a = relay("b"), relay("a")
    request = invite()
    at = str(int(time.time()) - 120)
    request.headers.add(HEADER, f"b;t={at};sig={b._mac('b', at, request)}")
    assert a.verify(request, B) is None


def test_only_requests_through_an_up_node_are_signed() -> None:
    b = relay("b")
    assert not b.sign(invite(), Address("UDP", "192.0.2.7", 5062))  # straight to a phone
    front = Address("UDP", "10.0.0.50", 5060)  # a Kamailio front: no node
    assert not b.sign(invite(), Address("UDP", "192.0.2.7", 5062, front))
    assert b.address_of("a") == "udp:10.0.0.1:5060"
    assert b.address_of("c") is None  # lost
    assert b.address_of("d") is None  # listens on every address: none to reach it by
    assert b.address_of("b") is None  # itself


def test_the_replica_routes_a_direct_binding_through_its_node() -> None:
    replica = Replica()
    direct = BindingRow(1, "sip:1000@192.0.2.7:5062", time.time() + 60, None, "c", 1,
                        "udp:192.0.2.7:5062", None)  # fmt: skip
    replica.put("a", "pbx/1000", direct)
    assert replica.lookup("pbx/1000", time.time()) == []  # no way to reach it yet
    replica.via_node = relay("b").address_of
    [found] = replica.lookup("pbx/1000", time.time())
    assert found.source == "udp:192.0.2.7:5062 via udp:10.0.0.1:5060"
