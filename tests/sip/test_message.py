"""Parser and serializer: RFC 4475 torture messages and the rules they exercise."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.message import (
    Request,
    Response,
    StreamFramer,
    error_response_bytes,
    make_response,
    parse_message,
)
from pbxwarden.sip.uri import parse_name_addr, parse_uri

TORTURE = Path(__file__).parent / "torture"
MANIFEST = json.loads((TORTURE / "manifest.json").read_text())
BY_NAME = {m["name"]: m for m in MANIFEST}


def load(name: str) -> bytes:
    return (TORTURE / f"{name}.dat").read_bytes()


# Messages that are syntactically fine: 3.1.1 (valid), 3.3 (application-level errors the
# parser must let through), 3.4 (RFC 2543 backward compatibility).
PARSE_OK = [m["name"] for m in MANIFEST if m["category"] in ("valid", "backward")] + [
    m["name"]
    for m in MANIFEST
    if m["category"] == "application" and m["name"] not in ("insuf", "multi01", "mcl01")
]
# 3.1.2 invalid, plus the 3.2/3.3 messages a strict parser rejects outright: a missing
# transaction id (branch equal to the bare magic cookie), missing required headers,
# several values in single-value headers, two Content-Lengths.
PARSE_REJECT = [m["name"] for m in MANIFEST if m["category"] in ("invalid", "transaction")] + [
    "insuf",
    "multi01",
    "mcl01",
]


def test_manifest_covers_every_file() -> None:
    files = {p.stem for p in TORTURE.glob("*.dat")}
    assert files == set(BY_NAME)
    assert set(PARSE_OK) | set(PARSE_REJECT) == set(BY_NAME)
    assert not set(PARSE_OK) & set(PARSE_REJECT)


@pytest.mark.parametrize("name", PARSE_OK)
def test_torture_accepted(name: str) -> None:
    message = parse_message(load(name))
    expected_kind = BY_NAME[name]["kind"]
    assert isinstance(message, Request if expected_kind == "request" else Response)
    # What we serialize must parse again to the same essentials.
    again = parse_message(message.to_bytes())
    assert again.call_id == message.call_id
    assert again.cseq == message.cseq
    assert [str(v) for v in again.via] == [str(v) for v in message.via]
    assert str(again.to) == str(message.to)
    assert again.body == message.body


@pytest.mark.parametrize("name", PARSE_REJECT)
def test_torture_rejected(name: str) -> None:
    data = load(name)
    if name == "baddn":
        data += b"\r\n"  # the archive's copy lacks the final CRLF (see torture/README.md)
    with pytest.raises(ParseError) as info:
        parse_message(data)
    expected = BY_NAME[name].get("expected_response")
    allowed = {expected, *BY_NAME[name].get("alternative_responses", []), 400}
    assert info.value.status in allowed
    assert info.value.reason  # the 400 names the problem


@pytest.mark.parametrize("name", [n for n in PARSE_REJECT if BY_NAME[n]["kind"] == "request"])
def test_torture_rejected_requests_get_an_answer(name: str) -> None:
    data = load(name)
    with pytest.raises(ParseError) as info:
        parse_message(data)
    reply = error_response_bytes(data, info.value.status, info.value.reason)
    assert reply is not None
    assert reply.startswith(f"SIP/2.0 {info.value.status} ".encode())
    assert b"\r\nVia: " in reply and reply.endswith(b"\r\n\r\n")


def test_wsinv_details() -> None:
    msg = parse_message(load("wsinv"))
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.max_forwards == 68
    assert msg.cseq.number == 9 and msg.cseq.method == "INVITE"
    assert [v.branch for v in msg.via] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert msg.via[1].transport == "TCP" and msg.via[1].host == "spindle.example.com"
    assert msg.to.tag == "1918181833n"
    assert msg.from_.tag == "98asjd8"
    assert msg.contacts[0].params["q"] == "0.33"
    assert msg.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert msg.headers.get("Subject") == ""
    assert len(msg.body) == 150


def test_dblreq_takes_first_message_only() -> None:
    msg = parse_message(load("dblreq"))
    assert isinstance(msg, Request) and msg.method == "REGISTER" and msg.body == b""


def test_semiuri_user_keeps_semicolon() -> None:
    msg = parse_message(load("semiuri"))
    assert isinstance(msg, Request)
    assert msg.uri.user == "user;par=u%40example.net"
    assert msg.uri.host == "example.com"


def test_noreason_and_unreason() -> None:
    no = parse_message(load("noreason"))
    assert isinstance(no, Response) and no.status == 100 and no.reason == ""
    un = parse_message(load("unreason"))
    assert isinstance(un, Response) and un.status == 200
    assert un.reason.startswith("= 2**3 * 5**2 ") and "\u043d\u043e" in un.reason  # raw UTF-8


def test_badvers_is_505() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(load("badvers"))
    assert info.value.status == 505


REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKabc;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"f: <sip:1000@example.com>;tag=a1\r\n"
    b"t: <sip:1000@example.com>\r\n"
    b"i: reg-1@192.0.2.1\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"m: <sip:1000@192.0.2.1:5062;transport=udp>;expires=120, <sip:1000@[2001:db8::1]>\r\n"
    b"Expires: 3600\r\n"
    b"l: 0\r\n\r\n"
)


def test_compact_forms_and_multi_contacts() -> None:
    msg = parse_message(REGISTER)
    assert isinstance(msg, Request)
    assert msg.via[0].port == 5062 and msg.via[0].params["rport"] is None
    assert [str(c.uri) for c in msg.contacts] == [
        "sip:1000@192.0.2.1:5062;transport=udp",
        "sip:1000@[2001:db8::1]",
    ]
    assert msg.contacts[0].params["expires"] == "120"
    assert msg.expires == 3600
    assert msg.call_id == "reg-1@192.0.2.1"


def test_make_response_copies_and_tags() -> None:
    req = parse_message(REGISTER)
    assert isinstance(req, Request)
    resp = make_response(req, 200, to_tag="xyz")
    assert resp.to.tag == "xyz" and resp.from_.tag == "a1"
    parsed = parse_message(resp.to_bytes())
    assert isinstance(parsed, Response) and parsed.status == 200 and parsed.reason == "OK"
    assert parsed.via[0].branch == "z9hG4bKabc"


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [
        ((b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE"), "CSeq method"),
        ((b"Expires: 3600", b"Expires: 99999999999"), "Expires"),
        ((b"Max-Forwards: 70", b"Max-Forwards: 256"), "Max-Forwards"),
        ((b"l: 0", b"l: 10"), "Content-Length"),
        ((b"i: reg-1@192.0.2.1\r\n", b""), "Call-ID"),
        (
            (b"REGISTER sip:example.com SIP/2.0", b"REGISTER  sip:example.com SIP/2.0"),
            "Request-Line",
        ),
        ((b";expires=120", b";expires=-1"), "expires"),
        ((b"192.0.2.1:5062;branch", b"192.0.2.1:99999;branch"), "port"),
    ],
)
def test_bad_fields_named(mutation: tuple[bytes, bytes], reason: str) -> None:
    data = REGISTER.replace(*mutation)
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert reason.lower() in info.value.reason.lower()


def test_size_limit() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(REGISTER + b"x" * 70_000)
    assert info.value.status == 513


def test_stream_framer_splits_and_pings() -> None:
    framer = StreamFramer()
    body_msg = REGISTER.replace(b"l: 0", b"l: 5") + b"hello"
    stream = b"\r\n\r\n" + REGISTER + body_msg
    out: list[bytes] = []
    for i in range(0, len(stream), 7):  # arbitrary chunking
        out += framer.feed(stream[i : i + 7])
    assert out[0] == b""
    assert out[1] == REGISTER
    assert out[2] == body_msg
    assert parse_message(out[2]).body == b"hello"


def test_stream_framer_requires_content_length() -> None:
    with pytest.raises(ParseError):
        StreamFramer().feed(REGISTER.replace(b"l: 0\r\n", b""))


def test_uri_forms() -> None:
    uri = parse_uri("sips:alice:pw@[2001:db8::1]:5061;transport=tls;lr?subject=x&priority=urgent")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips",
        "alice",
        "pw",
        "[2001:db8::1]",
        5061,
    )
    assert uri.params == {"transport": "tls", "lr": None}
    assert uri.headers == "subject=x&priority=urgent"
    assert str(uri) == "sips:alice:pw@[2001:db8::1]:5061;transport=tls;lr?subject=x&priority=urgent"
    tel = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert tel.scheme == "tel" and tel.user == "+1-201-555-0123"
    with pytest.raises(ParseError):
        parse_uri("sip:user@host:port")
    with pytest.raises(ParseError):
        parse_uri("sip:user@999.1.1.1")


def test_name_addr_forms() -> None:
    na = parse_name_addr('"Alice \\"A\\"" <sip:alice@example.com>;tag=1', "From")
    assert na.display_name == '"Alice \\"A\\""' and na.tag == "1"
    bare = parse_name_addr("sip:bob@example.com;tag=2", "To")
    assert bare.tag == "2" and bare.uri.params == {}
    token = parse_name_addr("Bob Smith <sip:bob@example.com>", "To")
    assert token.display_name == "Bob Smith"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_message(data)
    error_response_bytes(data, 400, "x")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_messages_never_crash(data: st.DataObject) -> None:
    base = bytearray(data.draw(st.sampled_from([REGISTER, load("wsinv"), load("intmeth")])))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(base) - 1))
        choice = data.draw(
            st.sampled_from(
                [
                    b"",
                    b";",
                    b",",
                    b"<",
                    b">",
                    b'"',
                    b"\r\n",
                    b" ",
                    b":",
                    b"@",
                    b"%",
                    b"\x00",
                    b"\xff",
                    b"=",
                    b"?",
                ]
            )
        )
        base[pos : pos + data.draw(st.integers(0, 3))] = choice
    try:
        msg = parse_message(bytes(base))
    except ParseError:
        return
    parse_message(msg.to_bytes())  # what we accept, we can write and read back


def test_ipv6_hosts_are_bracketed_whether_parsed_or_from_a_socket() -> None:
    """RFC 5118: URIs and Via sent-by name IPv6 addresses in brackets; a socket's address
    (``::1``) must come out as ``[::1]``, one parsed from the wire stays as it was."""
    from pbxwarden.sip.message import Via
    from pbxwarden.sip.uri import URI

    assert str(URI("sip", user="1000", host="::1", port=5060)) == "sip:1000@[::1]:5060"
    assert str(URI("sip", host="2001:db8::7")) == "sip:[2001:db8::7]"
    assert str(parse_uri("sip:1000@[::1]:5070")) == "sip:1000@[::1]:5070"
    assert str(URI("sip", host="192.0.2.1", port=5060)) == "sip:192.0.2.1:5060"
    assert str(Via("UDP", "::1", 5060, {"branch": "z9hG4bK1"})) == (
        "SIP/2.0/UDP [::1]:5060;branch=z9hG4bK1"
    )
    assert str(Via("TCP", "[2001:db8::1]", None, {})) == "SIP/2.0/TCP [2001:db8::1]"
    parsed = parse_uri(str(URI("sip", user="x", host="fe80::1", port=5062)))
    assert (parsed.host, parsed.port) == ("[fe80::1]", 5062)
