"""Property-based tests and fuzzing of everything that reads bytes from the network.

The contract (docs/fuzzing.md): random or mutated SIP must never make anything but
:class:`ParseError` (for digest headers: :class:`DigestError`) escape, what the parser
accepts it can write and read back, error responses are always well-formed, and the
running server keeps answering whatever it is sent.

Every test is bounded (a few seconds at most) and talks to loopback only. The product
bugs this suite found are pinned by the ``test_fixed_*`` regression tests at the end.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbxwarden.firewall.engine import Ban, Firewall, FirewallSettings, Verdict
from pbxwarden.sip import digest
from pbxwarden.sip.digest import (
    Algorithm,
    Challenge,
    DigestError,
    build_authorization,
    parse_challenge,
    parse_credentials,
)
from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.message import (
    Message,
    Request,
    Response,
    StreamFramer,
    error_response_bytes,
    generate_branch,
    parse_message,
    parse_via,
)
from pbxwarden.sip.uri import parse_uri
from tests.helpers import options_request, running_pbx, status_of, udp_exchange

HERE = Path(__file__).parent
TORTURE_DIR = HERE.parent / "sip" / "torture"
MANIFEST = json.loads((TORTURE_DIR / "manifest.json").read_text())
TORTURE = {m["name"]: (TORTURE_DIR / m["file"]).read_bytes() for m in MANIFEST}
CORPUS_DIR = HERE / "corpus"
HARNESS = HERE / "fuzz_parser.py"


def examples(n: int) -> settings:
    """Bounded runs: ``n`` is set per test so that each takes a few seconds at most.

    ``PBXWARDEN_FUZZ_SCALE=20`` multiplies every budget, for a longer hunt by hand.
    """
    scale = max(1, int(os.environ.get("PBXWARDEN_FUZZ_SCALE", "1")))
    return settings(
        max_examples=n * scale, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# --------------------------------------------------------------------------- contract


@dataclass(frozen=True)
class Essentials:
    """What must survive ``parse_message(msg.to_bytes())`` unchanged."""

    kind: str
    method_or_status: str
    call_id: str
    cseq: tuple[int, str]
    branches: tuple[str | None, ...]
    body: bytes
    from_tag: str | None
    to_tag: str | None


def essentials(msg: Message) -> Essentials:
    if isinstance(msg, Request):
        kind, first = "request", msg.method
    else:
        assert isinstance(msg, Response)
        kind, first = "response", str(msg.status)
    return Essentials(
        kind,
        first,
        msg.call_id,
        (msg.cseq.number, msg.cseq.method),
        tuple(v.branch for v in msg.via),
        msg.body,
        msg.from_.tag,
        msg.to.tag,
    )


def parse_or_none(data: bytes) -> Request | Response | None:
    """parse_message under the contract: a message, or ParseError with a usable status."""
    try:
        msg = parse_message(data)
    except ParseError as exc:
        assert 400 <= exc.status <= 599, exc.status
        assert exc.reason
        return None
    assert isinstance(msg, Request | Response)
    return msg


def assert_round_trip(msg: Request | Response) -> None:
    wire = msg.to_bytes()
    again = parse_message(wire)  # anything we accept, we must be able to write and read back
    assert essentials(again) == essentials(msg), wire
    if isinstance(msg, Request):
        assert isinstance(again, Request) and str(again.uri) == str(msg.uri)


def assert_error_reply_ok(data: bytes, status: int, reason: str) -> None:
    reply = error_response_bytes(data, status, reason)
    if reply is None:
        return
    assert isinstance(reply, bytes)
    assert reply.startswith(f"SIP/2.0 {status} ".encode()), reply[:80]
    assert reply.endswith(b"\r\n\r\n"), reply[-80:]
    # Exactly one header section: nothing the sender wrote can end it early.
    assert reply.find(b"\r\n\r\n") == len(reply) - 4, reply


def check_message_bytes(data: bytes) -> Request | Response | None:
    """The full contract for one datagram, as the server's per-packet path uses it."""
    msg = parse_or_none(data)
    if msg is None:
        assert_error_reply_ok(data, 400, "Bad Request (fuzz)")
    else:
        assert_round_trip(msg)
        assert_error_reply_ok(data, 500, "Server Internal Error")
    return msg


# --------------------------------------------------------------------------- mutation

# Inserted at random places: SIP's delimiters and a few values that sit on limits.
DELIMITERS: tuple[bytes, ...] = (
    "\u00b2".encode(),  # a digit to str.isdigit(), not to int()
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b":",
    b"@",
    b"%",
    b"=",
    b"?",
    b"&",
    b"[",
    b"]",
    b"/",
    b" ",
    b"\t",
    b"\r\n",
    b"\r\n ",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"\xc3\xa9",
    b"%00",
    b"SIP/2.0",
    b"z9hG4bK",
    b"Content-Length: 0\r\n",
    b"l: 99999\r\n",
    b"0",
    b"65536",
    b"4294967296",
    b"99999999999",
)


def mutate(data: bytes, rng: random.Random, rounds: int | None = None) -> bytes:
    """Byte flips, delimiter insertions, deletions, truncation, duplicated/swapped lines.

    ``rng`` is a plain ``random.Random`` (end-to-end test) or Hypothesis' ``st.randoms``
    (shrinkable); both offer the few methods used here.
    """
    buf = bytearray(data)
    for _ in range(rounds if rounds is not None else rng.randint(1, 6)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op in (2, 3):
            buf[pos:pos] = rng.choice(DELIMITERS)
        elif op == 4:
            del buf[pos : pos + rng.randint(1, 8)]
        elif op == 5:
            del buf[pos:]
        else:
            lines = bytes(buf).split(b"\r\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op == 6:
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            buf = bytearray(b"\r\n".join(lines))
    return bytes(buf)


randoms = st.randoms(use_true_random=False)


# --------------------------------------------------------------------------- generation
# Strategies are built once at import time and draw whole strings where they can:
# Hypothesis spends its time per draw, and these run hundreds of times per test.

ALNUM = string.ascii_letters + string.digits
TOKEN_CHARS = ALNUM + "-.!%*_+`'~"
USER_CHARS = ALNUM + "-_.!~*'()&=+$,;?/"
PASSWORD_CHARS = ALNUM + "-_.!~*'()&=+$,"
PARAM_CHARS = ALNUM + "-_.!~*'()[]/:&+$"
HNV_CHARS = ALNUM + "-_.!~*'()[]/?:+$"
WORD_CHARS = ALNUM + "-.!%*_+`'~()<>:\\/\"[]?{}"
METHODS = (
    "INVITE",
    "ACK",
    "OPTIONS",
    "BYE",
    "CANCEL",
    "REGISTER",
    "INFO",
    "MESSAGE",
    "NOTIFY",
    "SUBSCRIBE",
    "REFER",
    "UPDATE",
    "PRACK",
    "PUBLISH",
)

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=10)
methods = st.one_of(st.sampled_from(METHODS), tokens)
escapes = st.integers(0, 255).map(lambda b: f"%{b:02X}")


def _with_escape(text: str, escape: str | None, at: int) -> str:
    if escape is None:
        return text
    at %= len(text) + 1
    return text[:at] + escape + text[at:]


def _chars(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Text from ``alphabet``, sometimes with one %XX escape inserted."""
    return st.builds(
        _with_escape,
        st.text(alphabet, min_size=min_size, max_size=max_size),
        st.none() | escapes,
        st.integers(0, 20),
    )


# Header text and quoted-string content: any character but controls and surrogates
# (the wire is UTF-8; CR and LF would end the line).
text_chars = st.characters(blacklist_categories=("Cs", "Cc"))
free_text = st.text(text_chars, max_size=20)
quotable = st.text(text_chars, min_size=1, max_size=12)
_label = st.builds(
    lambda a, dash, b: f"{a}-{b}" if dash else a,
    st.text(ALNUM, min_size=1, max_size=4),
    st.booleans(),
    st.text(ALNUM, min_size=1, max_size=3),
)
_toplabel = st.builds(
    lambda first, rest: first + rest, st.sampled_from(string.ascii_letters), _label
)
hostnames = st.builds(
    lambda labels, top, dot: ".".join([*labels, top]) + dot,
    st.lists(_label, max_size=3),
    _toplabel,
    st.sampled_from(["", "", "."]),  # an absolute FQDN ends with a dot
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6_refs = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = st.one_of(hostnames, ipv4, ipv6_refs)
ports = st.one_of(st.none(), st.integers(0, 65535))
hostports = st.builds(lambda h, p: h if p is None else f"{h}:{p}", hosts, ports)

_uri_param = st.one_of(
    st.sampled_from(
        [";transport=udp", ";transport=TCP", ";lr", ";user=phone", ";ttl=15", ";method=INVITE"]
    ),
    hosts.map(lambda h: f";maddr={h}"),
    st.builds(
        lambda n, v: f";{n}" if v is None else f";{n}={v}",
        _chars(PARAM_CHARS, 1, 6),
        st.none() | _chars(PARAM_CHARS, 1, 6),
    ),
)
uri_params = st.lists(_uri_param, max_size=3).map("".join)
uri_headers = st.lists(
    st.builds(lambda k, v: f"{k}={v}", _chars(HNV_CHARS, 1, 5), _chars(HNV_CHARS, 0, 5)),
    min_size=1,
    max_size=3,
).map(lambda pairs: "?" + "&".join(pairs))
_userinfo = st.one_of(
    st.just(""),
    st.builds(
        lambda user, password: f"{user}@" if password is None else f"{user}:{password}@",
        _chars(USER_CHARS, 1, 10),
        st.none() | _chars(PASSWORD_CHARS, 0, 6),
    ),
)
_schemes = st.sampled_from(["sip", "sips", "SIP"])
# The addr-spec-safe form (no params, '?', ',' or ';' that would belong to the header).
plain_sip_uris = st.builds(
    lambda scheme, user, hp: f"{scheme}:{user}{hp}",
    _schemes,
    st.one_of(st.just(""), st.text(ALNUM, min_size=1, max_size=8).map(lambda u: u + "@")),
    hostports,
)
request_sip_uris = st.builds(
    lambda scheme, user, hp, params: f"{scheme}:{user}{hp}{params}",
    _schemes,
    _userinfo,
    hostports,
    uri_params,
)
full_sip_uris = st.builds(
    lambda uri, headers: uri + (headers or ""), request_sip_uris, st.none() | uri_headers
)
tel_uris = st.builds(
    lambda plus, number, params: f"tel:{plus}{number}{params}",
    st.sampled_from(["", "+"]),
    st.text(string.digits + "-.", min_size=1, max_size=10).map(lambda n: "1" + n),
    st.sampled_from(["", ";phone-context=example.com", ";isub=1234"]),
)
other_uris = st.sampled_from(["urn:service:sos", "mailto:alice@example.com", "im:bob@example.org"])
request_uris = st.one_of(request_sip_uris, request_sip_uris, tel_uris, other_uris)
name_addr_uris = st.one_of(full_sip_uris, full_sip_uris, tel_uris, other_uris)

_qd_plain = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'), max_size=12
)
_qd_pair = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n").map(
    lambda c: "\\" + c
)
quoted_strings = st.builds(
    lambda text, pair, at: '"' + _with_escape(text, pair, at) + '"',
    _qd_plain,
    st.none() | _qd_pair,
    st.integers(0, 20),
)
_param_sep = st.sampled_from([";", " ;", "; ", " ; "])
_generic_param = st.builds(
    # "x" prefix: never collides with tag, expires or branch
    lambda sep, name, value: f"{sep}x{name}" if value is None else f"{sep}x{name}={value}",
    _param_sep,
    tokens,
    st.one_of(st.none(), tokens, quoted_strings, ipv6_refs),
)
_contact_params = st.builds(
    lambda expires, q: (
        (f";expires={expires}" if expires is not None else "")
        + (f";q={q}" if q is not None else "")
    ),
    st.none() | st.integers(0, 2**32 - 1),
    st.none() | st.sampled_from(["0", "0.5", "1", "1.0"]),
)


@st.composite
def name_addrs(draw: st.DrawFn, *, contact: bool = False) -> str:
    params = "".join(draw(st.lists(_generic_param, max_size=2)))
    if contact:
        params += draw(_contact_params)
    form = draw(st.integers(0, 3))
    if form == 0:  # addr-spec: everything after the first ';' is a header parameter
        return draw(plain_sip_uris) + params
    uri = draw(name_addr_uris)
    if form == 1:
        return f"<{uri}>{params}"
    if form == 2:
        display = " ".join(draw(st.lists(tokens, min_size=1, max_size=3)))
    else:
        display = draw(quoted_strings)
    return f"{display}{draw(st.sampled_from(['', ' ', '  ']))}<{uri}>{params}"


_via_protocols = st.sampled_from(["SIP/2.0/", "SIP / 2.0 / ", "sip/2.0/"])
_via_transports = st.one_of(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "udp"]), tokens)
_via_optional = st.lists(
    st.one_of(
        st.sampled_from(["rport", "rport=5060", "rport=0", "rport=65535", "ttl=0", "ttl=255"]),
        st.one_of(ipv4, ipv6_refs, ipv6_refs.map(lambda r: r.strip("[]"))).map(
            lambda a: f"received={a}"
        ),
        hosts.map(lambda h: f"maddr={h}"),
        st.builds(lambda n, v: f"x{n}={v}", tokens, st.one_of(tokens, quoted_strings)),
    ),
    max_size=3,
    unique_by=lambda p: p.partition("=")[0],
)


@st.composite
def via_values(draw: st.DrawFn) -> tuple[str, str | None]:
    parts = draw(_via_optional)
    branch: str | None = None
    if draw(st.integers(0, 9)) > 0:  # now and then an RFC 2543 Via without a branch
        branch = draw(st.sampled_from(["z9hG4bK", ""])) + draw(tokens)
        parts.insert(draw(st.integers(0, len(parts))), f"branch={branch}")
    params = "".join(draw(_param_sep) + p for p in parts)
    sent_by = draw(hostports)
    return f"{draw(_via_protocols)}{draw(_via_transports)} {sent_by}{params}", branch


def _cased(name: str, mode: int) -> str:
    """Header names are case-insensitive: keep, lower, upper, or mix by the bits of ``mode``."""
    if mode == 0:
        return name
    if mode == 1:
        return name.lower()
    if mode == 2:
        return name.upper()
    return "".join(c.upper() if mode >> (i % 16) & 1 else c.lower() for i, c in enumerate(name))


COMPACT = {
    "Via": "v",
    "From": "f",
    "To": "t",
    "Call-ID": "i",
    "Contact": "m",
    "Content-Length": "l",
    "Subject": "s",
    "Supported": "k",
    "Content-Type": "c",
}
_header_style = st.tuples(
    st.booleans(),  # compact form, where there is one
    st.sampled_from([": ", ":", " : ", "\t:\t", ":  "]),
    st.one_of(st.integers(0, 2), st.integers(3, 2**16)),  # name case
    st.integers(0, 5),  # 0: fold the line
    st.sampled_from([" ", "\t", "   "]),
    st.integers(0, 1000),  # where to fold
)


def _header(draw: st.DrawFn, name: str, value: str, eol: str, *, fold: bool = True) -> str:
    compact, sep, case, fold_roll, cont, where = draw(_header_style)
    short = COMPACT.get(name)
    if short is not None and compact:
        name = short
    line = f"{_cased(name, case)}{sep}{value}"
    if fold and fold_roll == 0:
        # Folding (RFC 3261 7.3.1): a line break plus whitespace is the same as one space.
        colon = line.index(":") + 1
        spaces = [i for i, c in enumerate(line) if c == " " and i >= colon]
        if spaces:
            i = spaces[where % len(spaces)]
            line = f"{line[:i]}{eol}{cont}{line[i + 1 :]}"
        else:
            line = f"{line[:colon]}{eol}{cont}{line[colon:]}"
    return line


@dataclass
class Generated:
    data: bytes
    valid: bool | None  # None: mutated, so nobody knows
    essentials: Essentials | None = None


def _padded(draw: st.DrawFn, number: int) -> str:
    return str(number).zfill(draw(st.integers(len(str(number)), 10)))


EXTRA_HEADERS = st.sampled_from(
    [
        ("User-Agent", "pbxwarden-fuzz/1.0 (hypothesis)"),
        ("Subject", ""),
        ("Date", "Sat, 13 Nov 2010 23:29:00 GMT"),
        ("Retry-After", "120 (in a meeting);duration=3600"),
        ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"),
        ("Supported", "replaces, timer"),
        ("Content-Type", "application/sdp"),
        ("Route", "<sip:p1.example.com;lr>, <sip:[2001:db8::1]:5070;lr>"),
        ("Record-Route", '"proxy, one" <sip:p1.example.com;lr>'),
        ("Accept", "application/sdp, text/plain;q=0.5"),
    ]
)
_call_id_words = st.text(WORD_CHARS, min_size=1, max_size=12)
call_ids = st.builds(
    lambda a, b: a if b is None else f"{a}@{b}", _call_id_words, st.none() | _call_id_words
)


@st.composite
def sip_messages(draw: st.DrawFn, *, stream: bool = False, mutated: bool = True) -> Generated:
    """Mostly valid requests and responses, with what a correct parser must make of them.

    ``stream``: framed for TCP, so Content-Length always present, exact, unfolded and
    the last line (test_fixed_framer_needs_content_length_as_last_header covers others).
    """
    eol = "\r\n" if stream or draw(st.integers(0, 7)) else "\n"
    is_request = draw(st.booleans())
    cseq_number = draw(st.integers(0, 2**31 - 1))
    if is_request:
        method = draw(methods)
        version = draw(st.sampled_from(["SIP/2.0", "SIP/2.0", "sip/2.0"]))
        start = f"{method} {draw(request_uris)} {version}"
        cseq_method = first = method
    else:
        status = draw(st.integers(100, 699))
        start = f"SIP/2.0 {status} {draw(free_text).strip()}"
        cseq_method, first = draw(methods), str(status)

    lines: list[tuple[str, list[str | None]]] = []  # (line, the Via branches on it)
    for _ in range(draw(st.integers(1, 3))):
        vias = draw(st.lists(via_values(), min_size=1, max_size=3))
        joined = draw(st.sampled_from([",", ", ", " , "])).join(v for v, _ in vias)
        lines.append((_header(draw, "Via", joined, eol), [b for _, b in vias]))
    from_tag, to_tag = draw(tokens), draw(st.none() | tokens)
    from_value = draw(name_addrs()) + f";tag={from_tag}"
    to_value = draw(name_addrs()) + ("" if to_tag is None else f";tag={to_tag}")
    call_id = draw(call_ids)
    cseq_sep = draw(st.sampled_from([" ", "  ", "\t"]))
    lines += [
        (_header(draw, "From", from_value, eol), []),
        (_header(draw, "To", to_value, eol), []),
        (_header(draw, "Call-ID", call_id, eol), []),
        (_header(draw, "CSeq", f"{_padded(draw, cseq_number)}{cseq_sep}{cseq_method}", eol), []),
    ]
    if draw(st.booleans()):
        max_forwards = _padded(draw, draw(st.integers(0, 255)))
        lines.append((_header(draw, "Max-Forwards", max_forwards, eol), []))
    if draw(st.booleans()):
        lines.append((_header(draw, "Expires", str(draw(st.integers(0, 2**32 - 1))), eol), []))
    contact_form = draw(st.integers(0, 4))
    if contact_form == 1:
        lines.append((_header(draw, "Contact", "*", eol, fold=False), []))
    elif contact_form >= 2:
        contacts = draw(st.lists(name_addrs(contact=True), min_size=1, max_size=3))
        if contact_form == 2:
            lines += [(_header(draw, "Contact", c, eol), []) for c in contacts]
        else:
            lines.append((_header(draw, "Contact", ", ".join(contacts), eol), []))
    for name, value in draw(st.lists(EXTRA_HEADERS, max_size=4)):
        lines.append((_header(draw, name, value, eol), []))
    for name, value in draw(st.lists(st.tuples(tokens, free_text), max_size=2)):
        lines.append((_header(draw, "X-" + name, value, eol), []))
    if draw(st.integers(0, 3)) == 0:
        lines.append((_header(draw, "Authorization", draw(authorization_headers()), eol), []))

    body = draw(st.binary(max_size=64))
    valid = True
    expected_body = body
    cl_mode = 0 if stream else draw(st.integers(0, 3))
    cl_line: str | None = None
    if cl_mode == 0:  # exact, maybe with leading zeros
        cl_line = _header(draw, "Content-Length", _padded(draw, len(body)), eol, fold=not stream)
    elif cl_mode == 1:  # shorter than the body: the rest is ignored
        cut = draw(st.integers(0, len(body)))
        cl_line = _header(draw, "Content-Length", str(cut), eol)
        expected_body = body[:cut]
    elif cl_mode == 2:  # longer than the body: refused
        cl_line = _header(draw, "Content-Length", str(len(body) + draw(st.integers(1, 9))), eol)
        valid = False
    # cl_mode 3: no Content-Length, the body is the rest of the datagram
    if cl_line is not None and not stream:
        lines.append((cl_line, []))
    lines = draw(st.permutations(lines))
    if cl_line is not None and stream:
        lines.append((cl_line, []))
    head = eol.join([start, *(line for line, _ in lines)])
    lead = "" if stream else draw(st.sampled_from(["", "", "\r\n", "\r\n\r\n"]))
    data = (lead + head + eol + eol).encode() + body
    if mutated and not stream and draw(st.integers(0, 9)) == 0:
        return Generated(mutate(data, draw(randoms)), None)
    expected = Essentials(
        "request" if is_request else "response",
        first,
        call_id,
        (cseq_number, cseq_method),
        tuple(b for _, branches in lines for b in branches),
        expected_body,
        from_tag,
        to_tag,
    )
    return Generated(data, valid, expected if valid else None)


_nc = st.integers(1, 0xFFFFFFFF)


@st.composite
def authorization_headers(draw: st.DrawFn) -> str:
    algorithm = draw(st.sampled_from(list(Algorithm)))
    # RFC 7616: the -sess algorithms need a cnonce, so a qop (build_authorization refuses).
    qops = ["auth", "auth,auth-int"] if algorithm.is_session else ["auth", "auth,auth-int", None]
    challenge = Challenge(
        realm=draw(quotable),
        nonce=draw(quotable),
        algorithm=algorithm,
        qop=draw(st.sampled_from(qops)),
        opaque=draw(st.none() | quotable),
    )
    return build_authorization(
        challenge,
        draw(st.sampled_from(METHODS)),
        draw(request_sip_uris),
        draw(quotable),
        draw(st.text(max_size=8)),
        cnonce=draw(quotable),
        nc=draw(_nc),
    )


# --------------------------------------------------------------------------- parser


@examples(150)
@given(sip_messages())
def test_generated_messages_parse_and_round_trip(gen: Generated) -> None:
    msg = parse_or_none(gen.data)
    if gen.valid is not None:
        assert (msg is not None) == gen.valid, gen.data
    if msg is not None:
        if gen.essentials is not None:
            assert essentials(msg) == gen.essentials, gen.data
        assert_round_trip(msg)
    assert_error_reply_ok(gen.data, 400, "Bad Request")


@examples(1000)
@given(st.sampled_from(sorted(TORTURE)), randoms)
def test_mutated_torture_messages_keep_the_contract(name: str, rng: random.Random) -> None:
    check_message_bytes(mutate(TORTURE[name], rng))


@examples(600)
@given(st.sampled_from(sorted(TORTURE)), st.integers(0, 4000), st.binary(max_size=40))
def test_truncated_and_extended_torture_messages(name: str, cut: int, tail: bytes) -> None:
    data = TORTURE[name]
    check_message_bytes(data[:cut])
    check_message_bytes(data[:cut] + tail)
    check_message_bytes(tail + data)


@examples(600)
@given(st.binary(max_size=300), st.integers(100, 699), st.text(max_size=60))
def test_error_response_bytes_is_total(data: bytes, status: int, reason: str) -> None:
    head = b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
    for candidate in (data, head + data, head + data.replace(b"\r\n\r\n", b"")):
        assert_error_reply_ok(candidate, status, reason)


# --------------------------------------------------------------------------- stream framer


def feed_in_chunks(stream: bytes, cuts: list[int]) -> list[bytes]:
    framer = StreamFramer()
    out: list[bytes] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        out += framer.feed(stream[last:cut])
        last = cut
    return out


@examples(40)
@given(
    st.lists(
        st.tuples(sip_messages(stream=True), st.sampled_from([b"", b"", b"\r\n", b"\r\n\r\n"])),
        min_size=1,
        max_size=4,
    ),
    st.data(),
)
def test_framer_returns_valid_messages_byte_identical(
    items: list[tuple[Generated, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(sep + gen.data for gen, sep in items)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    out = feed_in_chunks(stream, cuts)
    assert [m for m in out if m] == [gen.data for gen, _ in items]
    assert out.count(b"") == sum(sep == b"\r\n\r\n" for _, sep in items)
    for message in out:
        if message:
            assert essentials(parse_message(message)) == next(
                g.essentials for g, _ in items if g.data == message
            )


@st.composite
def stream_pieces(draw: st.DrawFn) -> tuple[bytes, bool]:
    kind = draw(st.sampled_from(["valid", "torture", "mutated", "random", "ping"]))
    if kind == "valid":
        return draw(sip_messages(stream=True)).data, True
    if kind == "ping":
        return b"\r\n\r\n", True
    if kind == "random":
        return draw(st.binary(max_size=200)), False
    torture = TORTURE[draw(st.sampled_from(sorted(TORTURE)))]
    return (mutate(torture, draw(randoms)) if kind == "mutated" else torture), False


@examples(100)
@given(st.lists(stream_pieces(), min_size=1, max_size=5), st.data())
def test_framer_on_mixed_streams_only_raises_parse_error(
    pieces: list[tuple[bytes, bool]], data: st.DataObject
) -> None:
    stream = b"".join(p for p, _ in pieces)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=10))))
    framer = StreamFramer()
    out: list[bytes] = []
    last = 0
    try:
        for cut in [*cuts, len(stream)]:
            out += framer.feed(stream[last:cut])
            last = cut
    except ParseError as exc:
        assert 400 <= exc.status <= 599  # the connection is closed: nothing more to check
    for message in out:
        if message:
            check_message_bytes(message)
    # Whatever came out before the first invalid piece is exactly what was sent.
    valid_prefix = []
    for piece, ok in pieces:
        if not ok:
            break
        if piece != b"\r\n\r\n":
            valid_prefix.append(piece)
    produced = [m for m in out if m]
    n = min(len(produced), len(valid_prefix))
    assert produced[:n] == valid_prefix[:n]


# --------------------------------------------------------------------------- digest

REAL_AUTHORIZATIONS = [
    # RFC 3261 section 22.4 style, MD5 with qop
    'Digest username="bob", realm="biloxi.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
    'uri="sip:bob@biloxi.com", qop=auth, nc=00000001, cnonce="0a4f113b", '
    'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"',
    # RFC 7616 section 3.9.1, SHA-256
    'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
    'algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
    'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
    'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
    # RFC 2069 style, no qop, as old SIP phones send it
    'Digest username="1000",realm="pbxwarden",nonce="abc",uri="sip:pbx",'
    'response="0123456789abcdef0123456789abcdef",algorithm=MD5',
]
REAL_CHALLENGES = [
    'Digest realm="atlanta.com", domain="sip:boxesbybob.com", qop="auth", '
    'nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", stale=FALSE, algorithm=MD5',
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
]
DIGEST_DELIMITERS = (b'"', b"\\", b",", b"=", b" ", b"\t", b"\r\n", b"\x00", b"\x7f")
DIGEST_DELIMITERS += (b"\xc3\xa9", b"Digest ", b"nc=", b"qop=auth-int", b"algorithm=SHA-256-sess")


def mutate_text(text: str, rng: random.Random) -> str:
    buf = bytearray(text.encode())
    for _ in range(rng.randint(1, 5)):
        pos = rng.randrange(len(buf) + 1)
        op = rng.randrange(5)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.choice(DIGEST_DELIMITERS)
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 6)]
        elif op == 3:
            del buf[pos:]
        else:  # duplicate a parameter
            parts = bytes(buf).split(b",")
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(parts))
            buf = bytearray(b",".join(parts))
    # Header values reach the parser as str from UTF-8: no surrogates.
    return buf.decode("utf-8", "replace")


def digest_parse_or_none(value: str) -> None:
    for parse in (parse_credentials, parse_challenge):
        with contextlib.suppress(DigestError):
            parse(value)


@st.composite
def challenge_headers(draw: st.DrawFn) -> str:
    return Challenge(
        realm=draw(quotable),
        nonce=draw(quotable),
        algorithm=draw(st.sampled_from(list(Algorithm))),
        qop=draw(st.sampled_from(["auth", "auth,auth-int", "auth-int", None])),
        opaque=draw(st.none() | quotable),
        stale=draw(st.booleans()),
    ).to_header()


digest_headers = st.one_of(
    st.sampled_from(REAL_AUTHORIZATIONS + REAL_CHALLENGES),
    authorization_headers(),
    challenge_headers(),
)


@examples(400)
@given(digest_headers, randoms)
def test_digest_parsers_on_mutated_headers_raise_only_digest_error(
    header: str, rng: random.Random
) -> None:
    digest_parse_or_none(mutate_text(header, rng))


@examples(500)
@given(st.text(max_size=120))
def test_digest_parsers_on_arbitrary_text_raise_only_digest_error(value: str) -> None:
    digest_parse_or_none(value)
    digest_parse_or_none("Digest " + value)


@examples(300)
@given(
    st.one_of(
        digest_headers, digest_headers.flatmap(lambda h: randoms.map(lambda r: mutate_text(h, r)))
    )
)
def test_digest_fast_path_agrees_with_exact_parser(value: str) -> None:
    # digest._fast_params promises: "both paths agree on every input".
    fast = digest._fast_params(value)
    if fast is None:
        return
    assert digest._parse_params_exact(value) == fast


@examples(60)
@given(st.sampled_from(REAL_AUTHORIZATIONS), authorization_headers())
def test_unmutated_digest_headers_parse(real: str, generated: str) -> None:
    for value in (real, generated):
        creds = parse_credentials(value)
        assert creds.response == creds.response.lower()
    for value in REAL_CHALLENGES:
        assert parse_challenge(value).realm


# --------------------------------------------------------------------------- firewall

ALLOW_NETS = ("10.0.0.0/8", "2001:db8::/32", "127.0.0.1")
_ALLOW = [ipaddress.ip_network(n) for n in ALLOW_NETS]


def in_allow(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _ALLOW)


def _options(agent: str | None) -> Request:
    ua = f"User-Agent: {agent}\r\n" if agent is not None else ""
    msg = parse_message(
        (
            "OPTIONS sip:100@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.7;branch=z9hG4bKx\r\n"
            "From: <sip:100@pbx>;tag=1\r\nTo: <sip:100@pbx>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
            f"{ua}Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return msg


REQUESTS = [_options(a) for a in (None, "Linphone/5.0", "friendly-scanner", "SIPVicious 0.3", "")]
addresses = st.one_of(
    st.ip_addresses(network="10.0.0.0/29").map(str),
    st.ip_addresses(network="2001:db8::/125").map(str),
    st.ip_addresses(network="203.0.113.0/29").map(str),
    st.ip_addresses(network="2001:db9::/125").map(str),
    st.sampled_from(["127.0.0.1", "::ffff:203.0.113.1", "fe80::1%eth0", "0.0.0.0", "::"]),
    st.text(max_size=12),
)
settings_strategy = st.builds(
    FirewallSettings,
    rate_window=st.sampled_from([0.5, 2.0, 10.0]),
    rate_limit=st.integers(1, 6),
    auth_failure_limit=st.integers(1, 4),
    auth_failure_window=st.sampled_from([1.0, 300.0]),
    distributed_sources=st.integers(1, 3),
    ban_steps=st.sampled_from([(600.0, 3600.0, 86400.0), (5.0, 50.0), (1.0,)]),
    repeat_memory=st.sampled_from([0.0, 100.0, 7 * 86400.0]),
    reject_banned=st.booleans(),
    allow=st.just(ALLOW_NETS),
    max_tracked=st.integers(1, 5),
)


@st.composite
def firewall_scripts(draw: st.DrawFn) -> tuple[FirewallSettings, list[tuple[float, Any]]]:
    """Settings plus a list of (seconds to advance the clock, operation) steps."""
    pool = draw(st.lists(addresses, min_size=1, max_size=6, unique=True))
    address = st.sampled_from(pool)
    ops = [
        st.tuples(st.just("check"), address),
        st.tuples(st.just("check"), address),
        st.tuples(st.just("inspect"), address, st.sampled_from(range(len(REQUESTS)))),
        st.tuples(st.just("auth_failed"), address, st.sampled_from(["1000", "1001", "x" * 70])),
        st.tuples(st.just("auth_succeeded"), address),
        st.tuples(st.just("unban"), address),
        st.tuples(st.just("expire")),
        st.tuples(st.just("drain")),
    ]
    # Explicit and stored bans for any address, allow-listed ones included: those must
    # still never end up banned.
    ops.append(st.tuples(st.just("ban"), address, st.none() | st.floats(0.5, 1000.0)))
    stored = st.tuples(address, st.floats(-100.0, 1000.0), st.integers(1, 3))
    ops.append(st.tuples(st.just("load"), st.lists(stored, max_size=3)))
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from([0.0, 0.01, 0.3, 1.0, 5.0, 700.0, 4000.0]), st.one_of(ops)),
            min_size=1,
            max_size=40,
        )
    )
    return draw(settings_strategy), steps


@examples(200)
@given(firewall_scripts())
def test_firewall_random_sequences(
    script: tuple[FirewallSettings, list[tuple[float, Any]]],
) -> None:
    fw_settings, steps = script
    fw = Firewall(fw_settings)
    now = 1_800_000_000.0
    for dt, op in steps:
        now += dt
        kind = op[0]
        if kind == "check":
            address = op[1]
            banned = address in fw.bans and fw.bans[address].until > now
            verdict = fw.check_source(address, now)
            assert isinstance(verdict, Verdict)
            if banned:
                assert verdict is not Verdict.ALLOW
            elif verdict is not Verdict.ALLOW:
                assert address in fw.bans  # a flood: dropped and banned
            if in_allow(address):
                assert verdict is Verdict.ALLOW
        elif kind == "inspect":
            verdict = fw.inspect(REQUESTS[op[2]], op[1], now)
            if in_allow(op[1]):
                assert verdict is Verdict.ALLOW
        elif kind == "auth_failed":
            fw.auth_failed(op[1], op[2], now)
        elif kind == "auth_succeeded":
            fw.auth_succeeded(op[1])
        elif kind == "ban":
            ban = fw.ban(op[1], "fuzz", now, op[2])
            if in_allow(op[1]):
                assert ban is None and op[1] not in fw.bans
            else:
                assert ban is not None and ban.until > now and ban.level >= 1
        elif kind == "unban":
            fw.unban(op[1])
            assert op[1] not in fw.bans
        elif kind == "expire":
            fw.expire(now)
            assert all(b.until > now for b in fw.bans.values())
        elif kind == "load":
            stored = [Ban(a, now + d, "stored", level, now - 1.0) for a, d, level in op[1]]
            fw.load(stored, now)
            assert all(b.until > now for b in fw.bans.values())
        else:
            for event in fw.drain_events():
                assert event.kind in ("ban", "unban", "distributed-brute-force")
        for address, ban in fw.bans.items():
            assert ban.address == address
            assert not in_allow(address), f"allow-listed {address} banned: {ban}"
            assert not fw.is_allowlisted(address)


# --------------------------------------------------------------------------- real server

FLOOD_OK = {"PBXWARDEN_FIREWALL__RATE_LIMIT": "100000"}
PHONE = {"1000": "Fuzz-Passw0rd-1"}


def seed_messages(dest: tuple[str, int]) -> list[bytes]:
    host, port = dest
    register = (
        f"REGISTER sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch={generate_branch()};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:1000@127.0.0.1>;tag=f1\r\nTo: <sip:1000@127.0.0.1>\r\n"
        "Call-ID: fuzz-reg\r\nCSeq: 2 REGISTER\r\nContact: <sip:1000@127.0.0.1:9>;expires=60\r\n"
        f"Authorization: {REAL_AUTHORIZATIONS[0]}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    sdp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    invite = (
        f"INVITE sip:1000@{host}:{port} SIP/2.0\r\n"
        f"v: SIP/2.0/UDP 127.0.0.1:9;branch={generate_branch()};rport\r\n"
        'f: "Fuzz" <sip:fuzz@127.0.0.1>;tag=a\r\nt: <sip:1000@127.0.0.1>\r\ni: fuzz-inv\r\n'
        "CSeq: 1 INVITE\r\nm: <sip:fuzz@127.0.0.1:9>\r\nc: application/sdp\r\n"
        f"l: {len(sdp)}\r\n\r\n"
    ).encode() + sdp
    response = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKresp\r\n"
        b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>;tag=2\r\nCall-ID: r\r\n"
        b"CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    return [options_request(dest), register, invite, response, *TORTURE.values()]


def _tcp_send(dest: tuple[str, int], payload: bytes, expect: bytes | None = None) -> bytes:
    """Connect, send, read until ``expect`` shows up (or briefly), close."""
    with socket.create_connection(dest, timeout=3.0) as conn:
        conn.sendall(payload)
        conn.settimeout(3.0 if expect is not None else 0.1)
        received = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := conn.recv(65535):
                received += chunk
                if expect is not None and received.endswith(expect):
                    break
        return received


def test_server_survives_fuzz_traffic(tmp_path: Path) -> None:
    rng = random.Random(4475)
    with running_pbx(tmp_path / "data", PHONE, env=FLOOD_OK) as pbx:
        dest = (pbx.host, pbx.port)
        seeds = seed_messages(dest)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            for i in range(400):
                if i % 10 == 0:
                    data = rng.randbytes(rng.randint(1, 400))
                else:
                    base = rng.choice(seeds)
                    data = base if i % 10 == 1 else mutate(base, rng)
                if data in (b"", b"\r\n", b"\r\n\r\n"):
                    continue
                sock.sendto(data[:65000], dest)
                if i % 25 == 0:
                    time.sleep(0.005)  # let the server keep up; this is not a flood test
            time.sleep(0.2)
            replies = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    replies.append(sock.recv(65535))
        assert all(r.startswith(b"SIP/2.0 ") for r in replies)
        statuses = {status_of(r) for r in replies}
        assert 400 in statuses, statuses  # broken requests are answered...
        assert statuses & {200, 401, 405, 501}, statuses  # ...and working ones served

        tcp_options = options_request(dest).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        assert _tcp_send(dest, b"\r\n\r\n", expect=b"\r\n") == b"\r\n"  # RFC 5626 pong
        assert status_of(_tcp_send(dest, tcp_options, expect=b"\r\n\r\n")) == 200
        for payload in (
            rng.randbytes(300),
            TORTURE["wsinv"].replace(b"Content-Length: 150\r\n", b""),  # no framing
            mutate(TORTURE["mpart01"], rng),
            tcp_options[:40],  # closed mid-message
            b"INVITE sip:x SIP/2.0\r\nX: " + b"a" * 70_000,  # header past the size limit
            tcp_options + mutate(tcp_options, rng) + tcp_options,
        ):
            _tcp_send(dest, payload)

        reply = udp_exchange(options_request(dest), dest, timeout=3.0, source_ip="127.0.0.30")
        assert status_of(reply) == 200
        assert pbx.alive()
        log = pbx.log()
        assert "Traceback" not in log, log[-4000:]


# --------------------------------------------------------------------------- atheris


def test_atheris_harness_runs_clean(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    work = tmp_path / "corpus"
    work.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            str(work),  # new inputs go to the first directory, not into the repository
            str(CORPUS_DIR),
            str(TORTURE_DIR),
            "-max_total_time=20",
            "-max_len=16384",
            "-rss_limit_mb=2048",
            "-timeout=10",
            f"-artifact_prefix={tmp_path}{os.sep}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    output = proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.returncode == 0, output
    assert "Done " in proc.stderr, output


# --------------------------------------------------------------------------- known bugs

OPTIONS = (
    b"OPTIONS sip:100@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKq\r\n"
    b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:100@example.com>\r\nCall-ID: bug\r\n"
    b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)
SUPERSCRIPT_TWO = "\u00b2".encode()  # str.isdigit() is True, int() refuses it


@pytest.mark.parametrize(
    "data",
    [
        OPTIONS.replace(b"CSeq: 1 ", b"CSeq: " + SUPERSCRIPT_TWO + b" "),
        OPTIONS.replace(b"@example.com SIP", b"@example.com:" + SUPERSCRIPT_TWO + b" SIP"),
        OPTIONS.replace(b"192.0.2.1:5060", b"192.0.2.1:" + SUPERSCRIPT_TWO),
        b"SIP/2.0 " + SUPERSCRIPT_TWO * 3 + b" OK" + OPTIONS[OPTIONS.index(b"\r\n") :],
    ],
    ids=["cseq", "request-uri-port", "via-port", "status-code"],
)
def test_fixed_non_ascii_digits_escape_as_value_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_message(data)


def test_fixed_framer_needs_content_length_as_last_header() -> None:
    moved = OPTIONS.replace(b"Content-Length: 0\r\n", b"").replace(
        b"CSeq:", b"Content-Length: 0\r\nCSeq:"
    )
    assert parse_message(moved).call_id == "bug"  # a valid message...
    assert StreamFramer().feed(moved) == [moved]  # ...that the framer refuses


def test_fixed_round_trip_many_comma_separated_vias() -> None:
    vias = ", ".join(f"SIP/2.0/UDP 192.0.2.{i % 250 + 1};branch=z9hG4bK{i}" for i in range(130))
    data = OPTIONS.replace(b"Via: ", f"Via: {vias}, ".encode())
    # Refused up front, since written out it would be more header lines than allowed.
    with pytest.raises(ParseError, match="too many header fields"):
        parse_message(data)


def test_fixed_round_trip_long_folded_header() -> None:
    folded = b"X-Long: " + b"\r\n ".join([b"a" * 5000] * 2) + b"\r\n"
    data = OPTIONS.replace(b"Content-Length", folded + b"Content-Length")
    # Refused up front, since unfolded it would be longer than a header line may be.
    with pytest.raises(ParseError, match="header line too long"):
        parse_message(data)


def test_fixed_lf_only_message_with_crlf_in_body() -> None:
    body = b"part\r\n\r\nmore"
    data = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)).replace(
        b"\r\n", b"\n"
    )
    assert parse_message(data + body).body == body


def test_fixed_addr_spec_quoted_param_with_lt() -> None:
    data = OPTIONS.replace(
        b"From: <sip:a@example.com>;tag=1", b'From: sip:a@example.com;x="<";tag=1'
    )
    assert parse_message(data).from_.tag == "1"


def test_fixed_hostname_with_trailing_dot_is_refused() -> None:
    assert parse_uri("sip:alice@example.com.").host == "example.com."


def test_fixed_via_received_ipv6_without_brackets() -> None:
    via = parse_via("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3")
    assert via.params["received"] == "2001:db8::9:255"


def test_fixed_firewall_adopts_stored_ban_for_allowlisted_address() -> None:
    now = 1_800_000_000.0
    fw = Firewall(FirewallSettings(allow=("10.0.0.0/8",)))
    fw.load([Ban("10.0.0.5", now + 600, "manual ban", 1, now - 10)], now)
    assert "10.0.0.5" not in fw.bans
    assert fw.check_source("10.0.0.5", now + 1) is Verdict.ALLOW


def test_fixed_firewall_state_grows_without_bound() -> None:
    fw = Firewall(FirewallSettings(max_tracked=50, distributed_sources=2, auth_failure_limit=10**6))
    now = 1_800_000_000.0
    for i in range(2000):
        fw.auth_failed("203.0.113.1", f"ext-{i}", now)
        fw.auth_failed("203.0.113.2", f"ext-{i}", now)
        fw.drain_events()
    # Total entries over all the firewall's containers (name-independent on purpose).
    entries = sum(len(v) for v in vars(fw).values() if isinstance(v, dict | list))
    assert entries <= 10 * fw.settings.max_tracked, entries


def test_fixed_sender_supplied_received_reflects_responses(tmp_path: Path) -> None:
    with running_pbx(tmp_path / "data", {}) as pbx:
        dest = (pbx.host, pbx.port)
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker,
        ):
            victim.bind(("127.0.0.31", 0))
            victim.settimeout(1.5)
            attacker.bind(("127.0.0.1", 0))
            attacker.settimeout(1.5)
            port = victim.getsockname()[1]
            request = options_request(dest).replace(
                b"Via: SIP/2.0/UDP 127.0.0.1:9;", f"Via: SIP/2.0/UDP 127.0.0.1:{port};".encode()
            )
            request = request.replace(b";rport", b";received=127.0.0.31")
            attacker.sendto(request, dest)
            reflected = None
            with contextlib.suppress(TimeoutError):
                reflected = victim.recv(65535)
            assert reflected is None, "response delivered to the address the sender named"
