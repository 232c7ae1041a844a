"""The pure pieces of the registrar workers: choosing a worker before parsing, and the
binding reports' round trip."""

from __future__ import annotations

import zlib

import pytest

from pbxwarden.pbx.location import Binding
from pbxwarden.registrar_workers import (
    binding_event,
    binding_from_event,
    registration_route,
    worker_for,
)

REGISTER = (
    b"REGISTER sip:pbx.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"From: <sip:1000@pbx.example.com>;tag=1\r\n"
    b"%s\r\n"
    b"Call-ID: x\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("to_line", "route"),
    [
        (b"To: <sip:1000@pbx.example.com>", (b"1000", b"pbx.example.com")),
        (b"t: <sip:1000@PBX.example.com>", (b"1000", b"pbx.example.com")),  # compact, any case
        (b'TO : "Desk, 1000" <sips:1000@pbx.example.com:5061>', (b"1000", b"pbx.example.com")),
        (b"To: sip:1000@pbx.example.com;tag=9", (b"1000", b"pbx.example.com")),
    ],
)
def test_route_is_the_to_header_address_of_record(
    to_line: bytes, route: tuple[bytes, bytes]
) -> None:
    assert registration_route(REGISTER % to_line) == route


def test_no_route_for_other_methods_or_without_a_to_user() -> None:
    assert registration_route(REGISTER.replace(b"REGISTER sip:", b"OPTIONS sip:", 1)) is None
    assert registration_route(REGISTER % b"To: <sip:pbx.example.com>") is None
    assert registration_route(REGISTER % b"X-To: <sip:1000@pbx.example.com>") is None
    # A To in the body is no To header.
    body = (REGISTER % b"Subject: x").replace(b"\r\n\r\n", b"\r\n\r\nTo: <sip:1@h>\r\n")
    assert registration_route(body) is None


def test_worker_choice_is_stable_and_spreads() -> None:
    routes = [(str(n).encode(), b"pbx.example.com") for n in range(1000, 1400)]
    chosen = [worker_for(r, 4) for r in routes]
    assert chosen == [worker_for(r, 4) for r in routes]  # the same in every process
    # crc32, unlike hash(), has no per-process salt: the same worker after a restart.
    assert worker_for((b"1000", b"pbx.example.com"), 4) == zlib.crc32(b"1000") % 4
    # The user alone decides: one extension's phones meet whatever domain they write.
    assert worker_for((b"1000", b"192.0.2.10"), 4) == worker_for((b"1000", b"pbx.example.com"), 4)
    counts = [chosen.count(i) for i in range(4)]
    assert min(counts) > 60, counts


def test_binding_reports_round_trip() -> None:
    binding = Binding(7, "sip:1000@192.0.2.1:5060", 1e9, 0.5, "cid", 3, "udp:192.0.2.1:5060", None)
    event = binding_event("pbx.example.com/1000", binding.contact, binding)
    assert binding_from_event(event) == ("pbx.example.com/1000", binding)
    assert binding_event("a", "sip:c", None) == ["u", "a", "sip:c"]
