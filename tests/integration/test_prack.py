"""Reliable provisional responses (100rel, PRACK: RFC 3262) on both legs, with real peers.

The caller's leg: a SIPp phone requiring 100rel gets a reliable 180 and PRACKs it, or
never does and its INVITE fails with 500 while the callee's leg is cancelled. The
callee's leg: a SIPp phone sending a reliable 183 with SDP and a reliable 180 is
PRACKed by the PBX (with the right RAck, once per RSeq), and the caller gets the early
media. And PJSIP phones set to require 100rel call each other through the PBX.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    SCENARIOS,
    PbxProcess,
    finish_sipp_uas,
    run_sipp,
    running_pbx,
    sipp_available,
    start_sipp_uas,
    status_of,
    udp_exchange,
)
from tests.integration.test_calls import CALLER, USERS, register_callee, target, wait_cdr

pytestmark = [
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
    pytest.mark.timeout(120),
]


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS) as server:
        yield server


def messages(log: Path, first_line: str) -> list[str]:
    """The heads of the messages a SIPp peer logged (``-trace_msg``) whose first line
    starts with ``first_line``."""
    text = log.read_text(errors="replace") if log.exists() else ""
    blocks = re.split(r"\n(?=(?:SIP/2\.0 \d{3}|[A-Z]+ sip:))", text)
    return [b.split("\n\n", 1)[0] for b in blocks if b.startswith(first_line)]


def header(head: str, name: str) -> list[str]:
    return [v.strip() for v in re.findall(rf"^{name}:\s*(.*)$", head, re.M | re.I)]


def caller(pbx: PbxProcess, scenario: str, workdir: Path, log: Path, timeout: float = 30) -> None:
    result = run_sipp(
        scenario,
        target(pbx),
        users=CALLER,
        extra=["-s", "2000", "-trace_msg", "-message_file", str(log)],
        workdir=workdir,
        timeout=timeout,
        recv_timeout_ms=15000,
    )
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-4000:]


def test_a_caller_requiring_100rel_gets_a_reliable_180_and_its_prack_answered(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    port = register_callee(pbx, tmp_path)
    callee_log = tmp_path / "callee-messages.log"
    phone = start_sipp_uas(
        "call_uas_ring_pause.xml",
        port,
        tmp_path,
        extra=["-trace_msg", "-message_file", str(callee_log)],
    )
    log = tmp_path / "caller-messages.log"
    caller(pbx, "call_uac_100rel.xml", tmp_path, log)
    callee = finish_sipp_uas(phone, tmp_path)
    assert callee.successful == 1, callee.output
    [ringing, *_] = messages(log, "SIP/2.0 180")
    assert header(ringing, "Require") == ["100rel"], ringing
    [rseq] = header(ringing, "RSeq")
    assert 1 <= int(rseq) < 2**31, ringing
    [invite] = messages(callee_log, "INVITE sip:")
    assert "100rel" in ", ".join(header(invite, "Supported")), invite  # offered to the callee
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered", row


def test_a_caller_that_never_pracks_gets_500_and_the_callee_is_cancelled(
    tmp_path: Path,
) -> None:
    env = {"PBXWARDEN_SIP__T1": "0.1"}  # 64*T1: 6.4 s without a PRACK
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        port = register_callee(pbx, tmp_path)
        phone = start_sipp_uas("call_uas_ring.xml", port, tmp_path)  # rings until CANCEL
        log = tmp_path / "caller-messages.log"
        caller(pbx, "call_uac_100rel_no_prack.xml", tmp_path, log)
        callee = finish_sipp_uas(phone, tmp_path)
        assert callee.successful == 1, callee.output  # it got the CANCEL
        ringing = messages(log, "SIP/2.0 180")
        assert len(ringing) >= 3, ringing  # retransmitted, T1 doubling
        assert len({tuple(header(r, "RSeq")) for r in ringing}) == 1, ringing  # the same one
        [refused] = messages(log, "SIP/2.0 500")
        assert "PRACK" in refused.split("\n", 1)[0], refused
        [row] = wait_cdr(pbx)
        assert row["disposition"] == "failed" and row["sip_code"] == 500, row
        assert "no PRACK" in str(row["reasons"]), row


@pytest.mark.parametrize("reliable_caller", [False, True], ids=["plain-caller", "100rel-caller"])
def test_a_callee_reliable_183_with_sdp_is_pracked_and_reaches_the_caller(
    pbx: PbxProcess, tmp_path: Path, reliable_caller: bool
) -> None:
    port = register_callee(pbx, tmp_path)
    callee_log = tmp_path / "callee-messages.log"
    phone = start_sipp_uas(
        "call_uas_100rel.xml",
        port,
        tmp_path,
        extra=["-trace_msg", "-message_file", str(callee_log)],
    )
    log = tmp_path / "caller-messages.log"
    scenario = "call_uac_100rel_early.xml" if reliable_caller else "call_uac_early_media.xml"
    caller(pbx, scenario, tmp_path, log)
    callee = finish_sipp_uas(phone, tmp_path)
    assert callee.successful == 1, callee.output + pbx.log()[-4000:]
    pracks = messages(callee_log, "PRACK sip:")
    assert [header(p, "RAck") for p in pracks] == [["1000 1 INVITE"], ["1001 1 INVITE"]]
    [invite] = messages(callee_log, "INVITE sip:")
    cseqs = [int(header(m, "CSeq")[0].split()[0]) for m in messages(callee_log, "PRACK sip:")]
    [bye] = messages(callee_log, "BYE sip:")
    assert int(header(bye, "CSeq")[0].split()[0]) > max(cseqs), bye  # counts on
    assert int(header(invite, "CSeq")[0].split()[0]) < min(cseqs)
    [progress] = messages(log, "SIP/2.0 183")  # the callee's repeat did not come through
    ringing = messages(log, "SIP/2.0 180")
    if reliable_caller:
        first = int(header(progress, "RSeq")[0])
        assert [header(r, "RSeq") for r in ringing[:1]] == [[str(first + 1)]], ringing
    else:
        assert not header(progress, "RSeq") and not header(progress, "Require"), progress
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered", row


def test_the_answer_waits_for_the_prack_of_early_media(pbx: PbxProcess, tmp_path: Path) -> None:
    """RFC 3262 3: the callee answers while the caller has not PRACKed the 183 with SDP
    yet: the caller's 200 goes only after its PRACK's 200 (the caller's scenario fails
    on a 200 during its pause)."""
    port = register_callee(pbx, tmp_path)
    phone = start_sipp_uas("call_uas_100rel_answer.xml", port, tmp_path)
    log = tmp_path / "caller-messages.log"
    caller(pbx, "call_uac_100rel_slow_prack.xml", tmp_path, log)
    callee = finish_sipp_uas(phone, tmp_path)
    assert callee.successful == 1, callee.output
    assert "answer waits for the caller's PRACK" in pbx.log()
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered", row


def test_no_prack_for_early_media_while_the_callee_answered_hangs_the_callee_up(
    tmp_path: Path,
) -> None:
    """The callee answered, its answer waits for a PRACK that never comes: the caller's
    INVITE fails with 500 and the callee, already in the call, gets a BYE."""
    with running_pbx(tmp_path / "data", USERS, env={"PBXWARDEN_SIP__T1": "0.1"}) as pbx:
        port = register_callee(pbx, tmp_path)
        phone = start_sipp_uas("call_uas_100rel_answer.xml", port, tmp_path)  # ends on BYE
        text = (SCENARIOS / "call_uac_100rel_no_prack.xml").read_text()
        scenario = tmp_path / "no_prack_183.xml"
        scenario.write_text(text.replace('<recv response="180">', '<recv response="183">'))
        caller(pbx, str(scenario), tmp_path, tmp_path / "caller-messages.log")
        callee = finish_sipp_uas(phone, tmp_path)
        assert callee.successful == 1, callee.output
        [row] = wait_cdr(pbx)
        assert row["disposition"] == "failed" and row["sip_code"] == 500, row


def test_a_prack_outside_any_invite_gets_481(pbx: PbxProcess) -> None:
    for to_tag in ("", ";tag=no-such-dialog"):
        prack = (
            f"PRACK sip:2000@{pbx.host}:{pbx.port} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-prack-" + str(len(to_tag)) + ";rport\r\n"
            "From: <sip:1000@127.0.0.1>;tag=a\r\n"
            f"To: <sip:2000@127.0.0.1>{to_tag}\r\n"
            "Call-ID: stray-prack\r\nCSeq: 2 PRACK\r\nRAck: 1 1 INVITE\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        assert status_of(udp_exchange(prack, (pbx.host, pbx.port))) == 481


def test_pjsip_phones_requiring_100rel_call_each_other(pbx: PbxProcess) -> None:
    """PJSIP with 100rel mandatory on both phones (before: the caller got 420, and the
    callee, never offered 100rel, would refuse the PBX's INVITE with 421)."""
    from tests.pjsip import pj, pjsip_phones

    with pjsip_phones(pbx.host, pbx.port) as phones:
        caller_phone = phones.add("1000", USERS["1000"], require_100rel=True)
        callee_phone = phones.add("2000", USERS["2000"], require_100rel=True)
        placed = caller_phone.call("2000")
        phones.until(lambda: bool(callee_phone.incoming), "the callee rings")
        phones.until(lambda: placed.last_status == 180, "the caller hears ringing")
        callee_phone.answer(callee_phone.incoming[0])
        phones.until(lambda: placed.confirmed, "the caller's call is answered")
        phones.until(lambda: placed.rtp()[0] > 10, "media reaches the caller")
        answered = callee_phone.incoming[0]
        phones.until(lambda: answered.rtp()[0] > 10, "media reaches the callee")
        placed.hangup(pj.CallOpParam(True))
        phones.until(lambda: answered.disconnected, "the callee gets the BYE")
    log = pbx.log()
    assert "no PRACK" not in log and "refused our PRACK" not in log
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered", row
