"""Interoperability with a real softphone: Debian's baresip registers and calls through
the PBX, headless (no sound card: the ``aubridge`` null device) and scripted over its
``ctrl_tcp`` interface (netstring-framed JSON commands and events) on loopback
(:mod:`tests.baresip`)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.baresip import Baresip
from tests.helpers import (
    PbxProcess,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    running_pbx,
    sipp_available,
    start_sipp_uas,
)

pytestmark = [
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip not installed"),
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
    pytest.mark.timeout(60),
]

USERS = {"1000": "Caller-Passw0rd-x", "2000": "Callee-Passw0rd-y"}
PHONE = "1000"  # baresip's extension
PEER = "2000"  # the SIPp phone's extension


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS) as server:
        yield server


@pytest.fixture
def phone(tmp_path: Path, pbx: PbxProcess) -> Iterator[Baresip]:
    ua = Baresip(tmp_path, pbx, PHONE, USERS[PHONE])
    try:
        ua.start()
        yield ua
    finally:
        ua.stop()


def target(pbx: PbxProcess) -> str:
    return f"{pbx.host}:{pbx.port}"


def registrations(pbx: PbxProcess) -> list[dict[str, Any]]:
    out = cli(pbx.data_dir, "registrations", "--json").stdout.strip()
    return json.loads(out) if out.startswith("[") else []


def wait_registered(pbx: PbxProcess, number: str, ua: Baresip) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for row in registrations(pbx):
            if row["number"] == number:
                return row
        time.sleep(0.2)
    raise AssertionError(f"{number} never registered{ua.log()}\n{pbx.log()[-3000:]}")


def cdrs(pbx: PbxProcess) -> list[dict[str, Any]]:
    out = cli(pbx.data_dir, "cdr", "--json").stdout
    return [] if out.strip() == "no call records" else json.loads(out)


def wait_cdr(pbx: PbxProcess) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = cdrs(pbx)
        if rows and all(r["disposition"] != "in-progress" for r in rows):
            return rows
        time.sleep(0.2)
    return cdrs(pbx)


def test_baresip_registers_with_digest_auth(pbx: PbxProcess, phone: Baresip) -> None:
    row = wait_registered(pbx, PHONE, phone)
    assert row["user_agent"].startswith("baresip"), row
    assert row["contact"].startswith("sip:1000") and "@127.0.0.1:" in row["contact"], row
    assert 500 < row["expires_in"] <= 600, row  # regint=600 was granted
    assert "401" in phone.log(tail=10**6) and "200 OK (pbxwarden)" in phone.log(tail=10**6)


def test_baresip_calls_a_sipp_phone_and_hangs_up(
    pbx: PbxProcess, phone: Baresip, tmp_path: Path
) -> None:
    wait_registered(pbx, PHONE, phone)
    port = free_port()
    reg = run_sipp(
        "register.xml", target(pbx), users={PEER: USERS[PEER]}, local_port=port, workdir=tmp_path
    )
    assert reg.successful == 1, reg.output
    callee = start_sipp_uas("call_uas.xml", port, tmp_path, timeout=20)
    try:
        response = phone.command("dial", PEER)  # completed with the account's domain
        assert response["ok"], f"{response}{phone.log()}"
        established = phone.wait_event("CALL_ESTABLISHED")
        assert established["peeruri"].startswith(f"sip:{PEER}@127.0.0.1"), established
        time.sleep(1)
        assert phone.command("hangup")["ok"], phone.log()
        phone.wait_event("CALL_CLOSED")
        answered = finish_sipp_uas(callee, tmp_path, timeout=10)
    finally:
        if callee.poll() is None:
            callee.kill()
            callee.wait(5)
    assert answered.successful == 1, answered.output + phone.log() + pbx.log()[-3000:]
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["sip_code"]) == ("answered", 200), row
    assert (row["caller"], row["callee"], row["kind"]) == (PHONE, PEER, "internal"), row
    assert 0.8 <= float(row["duration"]) < 10, row
    assert "caller hung up" in str(row["reasons"]), row


def test_sipp_calls_baresip_which_answers(pbx: PbxProcess, phone: Baresip, tmp_path: Path) -> None:
    wait_registered(pbx, PHONE, phone)
    caller = run_sipp(
        "call_uac.xml",
        target(pbx),
        users={PEER: USERS[PEER]},
        extra=["-s", PHONE],
        workdir=tmp_path,
        timeout=20,
    )
    assert (caller.successful, caller.failed) == (1, 0), (
        caller.output + phone.log() + pbx.log()[-3000:]
    )
    # answermode=auto: baresip 1.0.0 answers at once, with no CALL_INCOMING event.
    established = phone.wait_event("CALL_ESTABLISHED")
    assert established["direction"] == "incoming", established
    assert established["peeruri"].startswith(f"sip:{PEER}@127.0.0.1"), established
    phone.wait_event("CALL_CLOSED")  # the BYE reached baresip through the PBX
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["sip_code"]) == ("answered", 200), row
    assert (row["caller"], row["callee"], row["kind"]) == (PEER, PHONE, "internal"), row
    assert 0.8 <= float(row["duration"]) < 10, row


def test_baresip_media_flows_through_the_relay(tmp_path: Path) -> None:
    """A softphone's real RTP (a sine tone, G.711) through the PBX's relay to a SIPp phone
    that echoes it back: both directions counted at the relay, which both phones were
    pointed at by the SDP the B2BUA rewrote."""
    base = free_port() & ~1
    env = {
        "PBXWARDEN_MEDIA__RELAY": "true",
        "PBXWARDEN_MEDIA__PORT_MIN": str(base),
        "PBXWARDEN_MEDIA__PORT_MAX": str(base + 99),
    }
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        ua = Baresip(tmp_path, pbx, PHONE, USERS[PHONE], tone=True)
        ua.start()
        callee = None
        try:
            wait_registered(pbx, PHONE, ua)
            port = free_port()
            reg = run_sipp(
                "register.xml",
                target(pbx),
                users={PEER: USERS[PEER]},
                local_port=port,
                workdir=tmp_path,
            )
            assert reg.successful == 1, reg.output
            echo_port = free_port() & ~1
            callee = start_sipp_uas(
                "call_uas.xml",
                port,
                tmp_path,
                timeout=20,
                extra=["-rtp_echo", "-mp", str(echo_port)],
            )
            assert ua.command("dial", PEER)["ok"], ua.log()
            ua.wait_event("CALL_ESTABLISHED")
            time.sleep(2)
            live = json.loads(cli(pbx.data_dir, "calls", "--json").stdout)
            [stream] = live[0]["media"]
            assert ua.command("hangup")["ok"], ua.log()
            ua.wait_event("CALL_CLOSED")
            answered = finish_sipp_uas(callee, tmp_path, timeout=10)
        finally:
            if callee is not None and callee.poll() is None:
                callee.kill()
                callee.wait(5)
            ua.stop()
        assert answered.successful == 1, answered.output + pbx.log()[-3000:]
        # 20 ms packets for ~2 s each way: baresip's tone, and SIPp's echo of it
        assert stream["a_packets"] >= 50, (stream, ua.log())
        assert stream["b_packets"] >= 50, (stream, ua.log())
        assert stream["b_latched"] == f"127.0.0.1:{echo_port}", stream
        stats = json.loads(cli(pbx.data_dir, "stats", "--json").stdout)
        assert stats["media_sessions"] == 0 and stats["media_strangers"] == 0, stats


def test_baresip_answers_keepalives_and_keeps_its_call(tmp_path: Path) -> None:
    """With keep-alive OPTIONS every second, a 3-second call to a real softphone is not
    taken for dead: baresip answers in-dialog OPTIONS, and the caller ends the call."""
    env = {"PBXWARDEN_CALLS__KEEPALIVE": "1", "PBXWARDEN_SIP__T1": "0.1"}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        ua = Baresip(tmp_path, pbx, PHONE, USERS[PHONE])
        ua.start()
        try:
            wait_registered(pbx, PHONE, ua)
            caller = run_sipp(
                "call_uac_media.xml",
                target(pbx),
                users={PEER: USERS[PEER]},
                extra=["-s", PHONE, "-aa", "-d", "3000", "-key", "mport", str(free_port())],
                workdir=tmp_path,
                timeout=20,
            )
            assert (caller.successful, caller.failed) == (1, 0), caller.output + ua.log()
            [row] = wait_cdr(pbx)
        finally:
            ua.stop()
    assert (row["disposition"], row["sip_code"]) == ("answered", 200), row
    assert "caller hung up" in str(row["reasons"]), row
    assert 2.8 <= float(row["duration"]) < 10, row
    pings = ua.log(tail=10**7).count("OPTIONS sip:")
    assert pings >= 2, ua.log()  # keep-alives reached baresip, and it answered them
