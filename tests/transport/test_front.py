"""The phone's real source behind a trusted front (pbxwarden.transport.front), and the
way back to it: Address.front, bindings' flow text, Via and response routing."""

from __future__ import annotations

import pytest

from pbxwarden.config import Config
from pbxwarden.pbx.call import parse_source
from pbxwarden.sip.message import Request, parse_message
from pbxwarden.sip.transaction import Address, response_destination, stamp_via
from pbxwarden.sip.uri import parse_uri
from pbxwarden.transport.front import Fronts, front_route, parse_value

FRONT = Address("UDP", "192.0.2.1", 5060)


def request(*extra: str, via: str = "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKfront") -> bytes:
    lines = [
        "REGISTER sip:pbx.example SIP/2.0",
        f"Via: {via}",
        "Via: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKphone;rport",
        "From: <sip:1000@pbx.example>;tag=a",
        "To: <sip:1000@pbx.example>",
        "Call-ID: c1",
        "CSeq: 1 REGISTER",
        *extra,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_fronts_header_is_the_phones_source_and_the_front_the_hop() -> None:
    fronts = Fronts(["192.0.2.1"])
    got = fronts.relayed(request("X-PBX-Source: 198.51.100.7:40123;udp"), FRONT)
    assert (got.transport, got.host, got.port) == ("UDP", "198.51.100.7", 40123)
    assert got.front == FRONT and got.hop == FRONT
    assert str(got) == "udp:198.51.100.7:40123"  # what the firewall, locks and guard see


def test_the_header_from_anyone_else_is_ignored() -> None:
    fronts = Fronts(["192.0.2.1"])
    phone = Address("UDP", "203.0.113.5", 5060)
    data = request("X-PBX-Source: 198.51.100.7:40123;udp")
    assert fronts.relayed(data, phone) is phone
    assert Fronts().relayed(data, FRONT) is FRONT  # nothing trusted by default
    assert not Fronts()


def test_the_fronts_own_requests_and_malformed_headers_stay_the_fronts() -> None:
    fronts = Fronts(["192.0.2.1"])
    assert fronts.relayed(request(), FRONT) is FRONT  # its OPTIONS probes
    for bad in ("nonsense", "198.51.100.7", "198.51.100.7:0;udp", "example.com:5060;udp"):
        assert fronts.relayed(request(f"X-PBX-Source: {bad}"), FRONT) is FRONT, bad


def test_the_last_header_counts_and_only_in_the_head() -> None:
    """The front appends its own after removing the phone's; a body is never read."""
    fronts = Fronts(["192.0.2.1"])
    data = request("x-pbx-source: 203.0.113.66:5060;udp", "X-PBX-Source: 198.51.100.7:1;tcp")
    assert fronts.relayed(data, FRONT).host == "198.51.100.7"
    body = b"\r\nX-PBX-Source: 203.0.113.66:5060;udp\r\n"
    head = request().replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    assert fronts.relayed(head + body, FRONT) is FRONT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("198.51.100.7:5060;udp", ("198.51.100.7", 5060)),
        ("2001:db8::7:5060;tcp", ("2001:db8::7", 5060)),
        ("[2001:db8::7]:5061;tls", ("2001:db8::7", 5061)),
        ("198.51.100.7:5060", ("198.51.100.7", 5060)),
        ("198.51.100.7:99999;udp", None),
        ("", None),
    ],
)
def test_header_values(value: str, expected: tuple[str, int] | None) -> None:
    assert parse_value(value) == expected


def test_a_binding_records_the_way_back_through_the_front() -> None:
    phone = Address("UDP", "198.51.100.7", 40123, FRONT)
    assert phone.flow() == "udp:198.51.100.7:40123 via udp:192.0.2.1:5060"
    assert parse_source(phone.flow()) == phone
    direct = Address("TCP", "2001:db8::7", 5060)
    assert direct.flow() == str(direct) and parse_source(direct.flow()) == direct
    assert parse_source("udp:198.51.100.7:1 via garbage") is None
    # What a request to it carries: the front's Path, its received naming the phone
    assert front_route(phone) == "<sip:192.0.2.1:5060;lr;received=sip:198.51.100.7:40123>"
    # A phone on TCP or TLS to the front (its Contact says so): its link, escaped in
    # received as Kamailio's path module writes it, so the front reuses its connection
    over_tcp = parse_uri("sip:1000@198.51.100.7:40123;transport=TCP;ob")
    assert front_route(phone, over_tcp) == (
        "<sip:192.0.2.1:5060;lr;received=sip:198.51.100.7:40123%3btransport%3dtcp>"
    )
    over_udp = parse_uri("sip:1000@198.51.100.7:40123;transport=udp")
    assert front_route(phone, over_udp) == front_route(phone)
    assert front_route(phone, parse_uri("sip:1000@198.51.100.7:40123;transport=sctp")) == (
        front_route(phone)
    )


def test_via_and_responses_go_by_the_hop() -> None:
    message = parse_message(request())
    assert isinstance(message, Request)
    phone = Address("UDP", "198.51.100.7", 40123, FRONT)
    stamp_via(message, phone)
    assert "received" not in message.via[0].params  # the front's Via, from the front
    assert response_destination(message.via[0], phone) == phone  # sent on to its hop


def test_config_fronts_are_addresses() -> None:
    assert Config.model_validate({"cluster": {"fronts": [" 192.0.2.1 "]}}).cluster.fronts == [
        "192.0.2.1"
    ]
    with pytest.raises(ValueError, match="front must be an IP address"):
        Config.model_validate({"cluster": {"fronts": ["kamailio.example"]}})
    assert Config().cluster.fronts == []


def test_registrar_workers_get_the_phone_and_the_hop() -> None:
    from pbxwarden.registrar_protocol import frame as _frame
    from pbxwarden.registrar_protocol import unframe as _unframe

    phone = Address("UDP", "198.51.100.7", 40123, FRONT)
    assert _unframe(_frame(b"REGISTER ...", phone)) == (b"REGISTER ...", phone)
    direct = Address("UDP", "198.51.100.7", 40123)
    assert _unframe(_frame(b"x", direct)) == (b"x", direct)
