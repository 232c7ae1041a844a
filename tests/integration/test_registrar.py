"""The real server, driven by real SIP peers over loopback: SIPp and raw datagrams."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxwarden.sip.message import Response, parse_message
from tests.helpers import (
    PbxProcess,
    SipClient,
    cli,
    run_sipp,
    running_pbx,
    sipp_available,
    status_of,
    udp_exchange,
)

USERS = {str(1000 + i): f"Passw0rd-{i:04d}-xyzzy" for i in range(20)}
needs_sipp = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS) as server:
        yield server


def target(pbx: PbxProcess) -> str:
    return f"{pbx.host}:{pbx.port}"


def registrations(pbx: PbxProcess) -> list[dict[str, object]]:
    out = cli(pbx.data_dir, "registrations", "--json").stdout
    return [] if out.strip() == "no registrations" else json.loads(out)


@needs_sipp
def test_sipp_registers_every_user_md5(pbx: PbxProcess, tmp_path: Path) -> None:
    result = run_sipp(
        "register.xml", target(pbx), users=USERS, calls=len(USERS), rate=50, workdir=tmp_path
    )
    assert (result.successful, result.failed) == (len(USERS), 0), result.output
    time.sleep(0.6)  # write-back period
    assert {r["number"] for r in registrations(pbx)} == set(USERS)


@needs_sipp
def test_sipp_registers_over_tcp(pbx: PbxProcess, tmp_path: Path) -> None:
    users = dict(list(USERS.items())[:3])
    result = run_sipp(
        "register.xml", target(pbx), users=users, calls=3, transport="t1", workdir=tmp_path
    )
    assert (result.successful, result.failed) == (3, 0), result.output


@needs_sipp
def test_wrong_password_and_unknown_user_both_get_403(pbx: PbxProcess, tmp_path: Path) -> None:
    bad = {"1000": "not-the-password-at-all", "7777": "Passw0rd-0000-xyzzy"}
    result = run_sipp(
        "register_wrong_password.xml", target(pbx), users=bad, calls=2, workdir=tmp_path
    )
    assert (result.successful, result.failed) == (2, 0), result.output
    time.sleep(0.6)
    assert registrations(pbx) == []


@needs_sipp
def test_unregister_removes_the_binding(pbx: PbxProcess, tmp_path: Path) -> None:
    from tests.helpers import free_port

    one = {"1001": USERS["1001"]}
    port = free_port()
    reg = run_sipp("register.xml", target(pbx), users=one, local_port=port, workdir=tmp_path)
    assert reg.successful == 1, reg.output
    unreg = run_sipp("unregister.xml", target(pbx), users=one, local_port=port, workdir=tmp_path)
    assert unreg.successful == 1, unreg.output
    time.sleep(0.6)
    assert registrations(pbx) == []


@needs_sipp
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_bindings_survive_restart(pbx: PbxProcess, tmp_path: Path, how: int) -> None:
    one = {"1002": USERS["1002"]}
    reg = run_sipp("register.xml", target(pbx), users=one, workdir=tmp_path)
    assert reg.successful == 1, reg.output
    time.sleep(0.6)  # let the write-back run before a hard kill
    pbx.stop(how)
    pbx.start()
    query = run_sipp("query.xml", target(pbx), users=one, workdir=tmp_path)
    assert (query.successful, query.failed) == (1, 0), query.output
    # And the extension can register again after the restart.
    again = run_sipp("register.xml", target(pbx), users=one, workdir=tmp_path)
    assert again.successful == 1, again.output


def test_sha256_digest_when_enabled(tmp_path: Path) -> None:
    env = {"PBXWARDEN_SIP__DIGEST_ALGORITHMS": '["SHA-256", "MD5"]'}
    with running_pbx(tmp_path / "data", {"2000": "Sha256-Passw0rd-ok"}, env=env) as pbx:
        client = SipClient((pbx.host, pbx.port))
        try:
            challenge = parse_message(client.request("2000"))
            assert isinstance(challenge, Response) and challenge.status == 401
            offered = challenge.headers.get_all("WWW-Authenticate")
            assert "algorithm=SHA-256" in offered[0] and "algorithm=MD5" in offered[1]
            ok = parse_message(client.register("2000", "Sha256-Passw0rd-ok"))
            assert isinstance(ok, Response) and ok.status == 200
            bad = parse_message(client.register("2000", "Sha256-Passw0rd-no"))
            assert isinstance(bad, Response) and bad.status == 403
        finally:
            client.close()


def test_expires_rules(pbx: PbxProcess) -> None:
    client = SipClient((pbx.host, pbx.port))
    try:
        brief = parse_message(client.register("1003", USERS["1003"], expires=10))
        assert isinstance(brief, Response) and brief.status == 423
        assert brief.headers.get("Min-Expires") == "60"
        capped = parse_message(client.register("1003", USERS["1003"], expires=999_999))
        assert isinstance(capped, Response) and capped.status == 200
        assert capped.contacts[0].params["expires"] in ("3600", "3599")
        star = parse_message(client.register("1003", USERS["1003"], expires=0, contact="*"))
        assert isinstance(star, Response) and star.status == 200 and not star.contacts
        other = parse_message(client.register("1004", USERS["1003"]))
        assert isinstance(other, Response) and other.status == 403
    finally:
        client.close()


def test_registration_expires_on_time(tmp_path: Path) -> None:
    env = {"PBXWARDEN_SIP__MIN_EXPIRES": "1"}
    with running_pbx(tmp_path / "data", {"3000": "Expiring-Passw0rd"}, env=env) as pbx:
        client = SipClient((pbx.host, pbx.port))
        try:
            ok = parse_message(client.register("3000", "Expiring-Passw0rd", expires=2))
            assert isinstance(ok, Response) and ok.status == 200 and len(ok.contacts) == 1
            time.sleep(2.5)
            query = parse_message(
                client.register("3000", "Expiring-Passw0rd", contact=None, expires=None)
            )
            assert isinstance(query, Response) and query.status == 200
            assert query.contacts == []
        finally:
            client.close()


def test_malformed_input_gets_400_and_server_keeps_serving(pbx: PbxProcess) -> None:
    torture = Path(__file__).parents[1] / "sip" / "torture"
    manifest = json.loads((torture / "manifest.json").read_text())
    dest = (pbx.host, pbx.port)
    for entry in manifest:
        if entry["category"] != "invalid" or entry["kind"] != "request":
            continue
        reply = udp_exchange((torture / f"{entry['name']}.dat").read_bytes(), dest, timeout=1)
        assert status_of(reply) in (400, 505, 501), (entry["name"], reply)
    for garbage in (b"\x00" * 100, b"INVITE", b"\xff\xfe" * 500, b"SIP/2.0 200 OK\r\n\r\n"):
        udp_exchange(garbage, dest, timeout=0.2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.settimeout(10)
        tcp.connect(dest)
        tcp.sendall(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: nope\r\n\r\n")
        tcp.recv(4096)  # answered or closed, but never a crash
    options = (
        f"OPTIONS sip:{pbx.host}:{pbx.port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKopt1;rport\r\n"
        "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
        "Call-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    reply = udp_exchange(options, dest)
    assert status_of(reply) == 200
    assert pbx.alive()
    assert "Traceback" not in pbx.log()


def test_retransmitted_register_is_absorbed(pbx: PbxProcess) -> None:
    """The same REGISTER twice (a UDP retransmission) gets the same answer, processed once."""
    msg = (
        f"REGISTER sip:{pbx.host} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5998;branch=z9hG4bKretrans1;rport\r\n"
        "From: <sip:1005@127.0.0.1>;tag=1\r\nTo: <sip:1005@127.0.0.1>\r\n"
        "Call-ID: retrans-1\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
        "Contact: <sip:1005@127.0.0.1:5998>\r\n"
        'Authorization: Digest username="1005", realm="x", nonce="0", uri="sip:x",'
        ' response="00000000000000000000000000000000"\r\n'
        "Content-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        sock.sendto(msg, (pbx.host, pbx.port))
        first = sock.recv(65535)
        sock.sendto(msg, (pbx.host, pbx.port))
        second = sock.recv(65535)
    assert status_of(first) in (401, 403)
    assert first == second  # replayed from the transaction, not a second attempt


def test_a_challenge_is_stateless(pbx: PbxProcess) -> None:
    """A REGISTER without credentials, twice: each is challenged afresh (statelessly)."""
    msg = (
        f"REGISTER sip:{pbx.host} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5998;branch=z9hG4bKretrans1c;rport\r\n"
        "From: <sip:1005@127.0.0.1>;tag=1\r\nTo: <sip:1005@127.0.0.1>\r\n"
        "Call-ID: retrans-1-c\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
        "Contact: <sip:1005@127.0.0.1:5998>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        sock.sendto(msg, (pbx.host, pbx.port))
        first = sock.recv(65535)
        sock.sendto(msg, (pbx.host, pbx.port))
        second = sock.recv(65535)
    assert status_of(first) == 401
    assert status_of(second) == 401
    assert first != second  # a fresh nonce: a challenge keeps no transaction (absorbs)
