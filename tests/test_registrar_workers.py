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
        (b"To: <sip:1000@pbx.example.com>", b"1000"),
        (b"t: <sip:1000@PBX.example.com>", b"1000"),  # compact, any case
        (b'TO : "Desk, 1000" <sips:1000@pbx.example.com:5061>', b"1000"),
        (b"To: sip:1000@pbx.example.com;tag=9", b"1000"),
    ],
)
def test_route_is_the_to_header_user(to_line: bytes, route: bytes) -> None:
    assert registration_route(REGISTER % to_line) == route


def test_no_route_for_other_methods_or_without_a_to_user() -> None:
    assert registration_route(REGISTER.replace(b"REGISTER sip:", b"OPTIONS sip:", 1)) is None
    assert registration_route(REGISTER % b"To: <sip:pbx.example.com>") is None
    assert registration_route(REGISTER % b"X-To: <sip:1000@pbx.example.com>") is None
    # A To in the body is no To header.
    body = (REGISTER % b"Subject: x").replace(b"\r\n\r\n", b"\r\n\r\nTo: <sip:1@h>\r\n")
    assert registration_route(body) is None


def test_worker_choice_is_stable_and_spreads() -> None:
    routes = [str(n).encode() for n in range(1000, 1400)]
    chosen = [worker_for(r, 4) for r in routes]
    assert chosen == [worker_for(r, 4) for r in routes]  # the same in every process
    # crc32, unlike hash(), has no per-process salt: the same worker after a restart.
    assert worker_for(b"1000", 4) == zlib.crc32(b"1000") % 4
    # The user alone decides: one extension's phones meet whatever domain they write.
    by_address = registration_route(REGISTER % b"To: <sip:1000@192.0.2.10>")
    by_name = registration_route(REGISTER % b"To: <sip:1000@pbx.example.com>")
    assert by_address is not None and by_name is not None
    assert worker_for(by_address, 4) == worker_for(by_name, 4)
    counts = [chosen.count(i) for i in range(4)]
    assert min(counts) > 60, counts


def test_binding_reports_round_trip() -> None:
    binding = Binding(7, "sip:1000@192.0.2.1:5060", 1e9, 0.5, "cid", 3, "udp:192.0.2.1:5060", None)
    event = binding_event("pbx.example.com/1000", binding.contact, binding)
    assert binding_from_event(event) == ("pbx.example.com/1000", binding)
    assert binding_event("a", "sip:c", None) == ["u", "a", "sip:c"]
