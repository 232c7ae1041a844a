"""Blind transfer performed by the PBX, driven by real PJSIP phones (pjsua2 Call.xfer).

The receptionist's REFER never reaches the other party: the PBX judges the target as a
call the receptionist pays for, places it, re-INVITEs the transferred caller with the
target's offer (RFC 3725 flow I), reports progress in NOTIFYs and hangs up the
receptionist; media then flows between the caller and the target. A transfer to a
premium number is refused with the reason, and no INVITE reaches the carrier.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    PbxProcess,
    cdr_rows,
    cli,
    closed_cdrs,
    finish_sipp_uas,
    free_port,
    run_sipp,
    sipp_available,
    start_sipp_uas,
)
from tests.pjsip import Phone, PhoneCall, Phones, pj, pjsip_phones

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

CARRIER = "127.0.0.2"
USERS = {
    "1000": "Quartz-Harbor-71x",  # the caller
    "1001": "Maple-Orbit-39q",  # the receptionist, who transfers
    "1002": "Cobalt-Fjord-58k",  # the colleague the call goes to
}


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PbxProcess, int]]:
    data = tmp_path_factory.mktemp("transfer") / "data"
    cli(data, "init")
    carrier_port = free_port(CARRIER)
    for ext, password in USERS.items():
        cli(data, "extension", "add", ext, "--password", password)
    cli(data, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
    server = PbxProcess(data)
    server.start()
    try:
        yield server, carrier_port
    finally:
        server.stop()


@pytest.fixture
def phones(pbx: tuple[PbxProcess, int]) -> Iterator[Phones]:
    server, _ = pbx
    with pjsip_phones(server.host, server.port) as endpoint:
        yield endpoint


def talking(
    phones: Phones, caller: Phone, callee: Phone, number: str
) -> tuple[PhoneCall, PhoneCall]:
    """``caller`` calls ``number`` (``callee``'s), who answers; media flows."""
    placed = caller.call(number)
    phones.until(lambda: bool(callee.incoming), f"{callee.number} rings")
    taken = callee.incoming[-1]
    callee.answer(taken)
    phones.until(lambda: placed.confirmed and taken.confirmed, "the two are talking")
    phones.until(lambda: placed.rtp()[0] > 10 and taken.rtp()[0] > 10, "media both ways")
    return placed, taken


@pytest.mark.parametrize("transferor", ["callee", "caller"])
def test_blind_transfer_joins_the_other_party_and_the_target_with_media(
    pbx: tuple[PbxProcess, int], phones: Phones, transferor: str
) -> None:
    """The receptionist answers a call and transfers the caller (or the caller transfers
    the one it called): the other party ends up talking to the colleague."""
    server, _ = pbx
    before = len(cdr_rows(server))
    caller, reception, colleague = (phones.add(n, p) for n, p in USERS.items())
    placed, taken = talking(phones, caller, reception, "1001")
    refers, stays = (taken, placed) if transferor == "callee" else (placed, taken)

    refers.xfer(phones.uri("1002"), pj.CallOpParam(True))
    phones.until(lambda: bool(colleague.incoming), "the colleague's phone rings")
    ringing = colleague.incoming[0]
    colleague.answer(ringing)
    phones.until(lambda: ringing.confirmed, "the colleague answered")
    phones.until(
        lambda: any(code == 200 and final for code, final in refers.transfers),
        "the transferor is told the transfer succeeded",
    )
    phones.until(lambda: refers.disconnected, "the PBX hangs up the transferor")
    assert refers.transfers[0][0] == 100, refers.transfers  # NOTIFY 100 Trying first
    # media now flows between the one who stayed and the colleague, both ways
    rx_stays, rx_colleague = stays.rtp()[0], ringing.rtp()[0]
    phones.until(
        lambda: stays.rtp()[0] > rx_stays + 25 and ringing.rtp()[0] > rx_colleague + 25,
        "RTP both ways between the transferred party and the colleague",
    )
    assert stays.confirmed, "the transferred party's call survived the transfer"
    stays.hangup(pj.CallOpParam(True))
    phones.until(lambda: ringing.disconnected, "the colleague gets the BYE")

    original, transferred = closed_cdrs(server, before, 2)
    payer = "1001" if transferor == "callee" else "1000"
    assert original["disposition"] == "answered", original
    assert f"transferred by {payer} to 1002" in str(original["reasons"]), original
    assert transferred["kind"] == "transferred", transferred
    assert transferred["extension"] == payer and transferred["callee"] == "1002"
    assert transferred["disposition"] == "answered" and transferred["answer_ts"], transferred


@pytest.mark.parametrize("answered", [True, False], ids=["attended", "semi-attended"])
def test_attended_transfer_joins_the_caller_with_the_consulted_colleague(
    pbx: tuple[PbxProcess, int], phones: Phones, answered: bool
) -> None:
    """The receptionist holds the caller, calls the colleague, then transfers with
    Replaces (pjsua2 xferReplaces): the caller and the colleague talk; the receptionist
    is off both calls. Semi-attended: the colleague's phone still rang when the
    receptionist transferred: the caller is put through to it."""
    server, _ = pbx
    before = len(cdr_rows(server))
    caller, reception, colleague = (phones.add(n, p) for n, p in USERS.items())
    placed, taken = talking(phones, caller, reception, "1001")
    taken.setHold(pj.CallOpParam(True))
    phones.until(lambda: not taken.media_active or taken.held(), "the caller is on hold")
    consult = reception.call("1002")
    phones.until(lambda: bool(colleague.incoming), "the colleague's phone rings")
    first = colleague.incoming[0]
    if answered:
        colleague.answer(first)
        phones.until(lambda: consult.confirmed and first.confirmed, "the consultation")
    taken.xferReplaces(consult, pj.CallOpParam(True))
    if answered:
        talks = first
    else:
        phones.until(lambda: len(colleague.incoming) > 1, "the caller rings the colleague")
        talks = colleague.incoming[1]
        colleague.answer(talks)
    phones.until(
        lambda: any(code == 200 and final for code, final in taken.transfers),
        "the receptionist is told the transfer succeeded",
    )
    phones.until(lambda: taken.disconnected and consult.disconnected, "receptionist is off")
    phones.until(lambda: talks.confirmed, "the colleague is in the call")
    rx_caller, rx_colleague = placed.rtp()[0], talks.rtp()[0]
    phones.until(
        lambda: placed.rtp()[0] > rx_caller + 25 and talks.rtp()[0] > rx_colleague + 25,
        "RTP both ways between the caller and the colleague",
    )
    assert placed.confirmed
    talks.hangup(pj.CallOpParam(True))
    phones.until(lambda: placed.disconnected, "the caller gets the colleague's BYE")
    rows = closed_cdrs(server, before, 3)
    transferred = [r for r in rows if r["kind"] == "transferred"]
    assert len(transferred) == 1 and transferred[0]["extension"] == "1001", rows
    assert transferred[0]["callee"] == "1002", transferred


def test_a_failed_transfer_gives_the_call_back_to_the_transferor(
    phones: Phones,
) -> None:
    caller, reception, colleague = (phones.add(n, p) for n, p in USERS.items())
    placed, taken = talking(phones, caller, reception, "1001")
    taken.xfer(phones.uri("1002"), pj.CallOpParam(True))
    phones.until(lambda: bool(colleague.incoming), "the colleague's phone rings")
    colleague.answer(colleague.incoming[0], 486)  # busy
    phones.until(lambda: any(final for _, final in taken.transfers), "the outcome")
    assert taken.transfers[-1] == (486, True), taken.transfers
    phones.run(0.5)
    assert placed.confirmed and taken.confirmed, "caller and receptionist are still in the call"
    rx_caller, rx_reception = placed.rtp()[0], taken.rtp()[0]
    phones.until(
        lambda: placed.rtp()[0] > rx_caller + 25 and taken.rtp()[0] > rx_reception + 25,
        "the two still hear each other",
    )
    placed.hangup(pj.CallOpParam(True))
    phones.until(lambda: taken.disconnected, "the receptionist gets the caller's BYE")


def test_the_transferor_may_hang_up_before_the_target_answers(phones: Phones) -> None:
    caller, reception, colleague = (phones.add(n, p) for n, p in USERS.items())
    placed, taken = talking(phones, caller, reception, "1001")
    taken.xfer(phones.uri("1002"), pj.CallOpParam(True))
    phones.until(lambda: bool(taken.transfers), "the transfer is under way")
    taken.hangup(pj.CallOpParam(True))  # unattended: the receptionist is gone at once
    phones.until(lambda: taken.disconnected, "the receptionist has hung up")
    phones.until(lambda: bool(colleague.incoming), "the colleague's phone rings")
    ringing = colleague.incoming[0]
    assert placed.confirmed, "the caller waits for the colleague"
    colleague.answer(ringing)
    phones.until(lambda: ringing.confirmed, "the colleague answered")
    rx = ringing.rtp()[0]
    phones.until(lambda: ringing.rtp()[0] > rx + 25, "the colleague hears the caller")
    ringing.hangup(pj.CallOpParam(True))
    phones.until(lambda: placed.disconnected, "the caller gets the colleague's BYE")


def test_a_transfer_to_a_premium_number_is_refused_and_never_reaches_the_carrier(
    pbx: tuple[PbxProcess, int], phones: Phones, tmp_path: Path
) -> None:
    server, carrier_port = pbx
    messages = tmp_path / "carrier-messages.log"
    carrier = start_sipp_uas(
        "call_uas.xml",
        carrier_port,
        tmp_path,
        local_ip=CARRIER,
        timeout=8,
        extra=["-trace_msg", "-message_file", str(messages)],
    )
    before = len(cdr_rows(server))
    try:
        caller, reception = phones.add("1000", USERS["1000"]), phones.add("1001", USERS["1001"])
        call = caller.call("1001")
        phones.until(lambda: bool(reception.incoming), "the receptionist's phone rings")
        taken = reception.incoming[0]
        reception.answer(taken)
        phones.until(lambda: call.confirmed and taken.confirmed, "caller and receptionist talk")
        taken.xfer(phones.uri("+19005550123"), pj.CallOpParam(True))
        phones.until(lambda: bool(taken.transfers), "the receptionist learns the outcome")
        assert taken.transfers[0] == (403, True), taken.transfers
        phones.run(1.0)
        assert call.confirmed and taken.confirmed, "the call itself goes on"
        rx = call.rtp()[0]
        phones.until(lambda: call.rtp()[0] > rx + 10, "the caller still hears the receptionist")
    finally:
        finish_sipp_uas(carrier, tmp_path, timeout=15)
    log = messages.read_text(errors="replace") if messages.exists() else ""
    assert "INVITE sip:" not in log, log[:2000]
    refused = [r for r in cdr_rows(server)[before:] if r["kind"] == "transferred"]
    assert len(refused) == 1, refused
    assert refused[0]["disposition"] == "blocked" and refused[0]["decision"] == "deny"
    assert "+19005550123" in str(refused[0]["reasons"]), refused[0]

    def alerted() -> list[dict[str, object]]:
        with sqlite3.connect(server.data_dir / "pbxwarden.db") as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM alerts WHERE extension = '1001'").fetchall()
        return [dict(r) for r in rows if "transferred" in str(r["summary"])]

    deadline = time.monotonic() + 10
    while not alerted() and time.monotonic() < deadline:
        time.sleep(0.2)
    [alert] = alerted()  # the admins are told who tried to transfer a call where
    assert "+19005550123" in str(alert["summary"]) + str(alert["reasons"]), alert


def test_the_transferred_phone_keeps_one_sdp_session(
    pbx: tuple[PbxProcess, int], phones: Phones, tmp_path: Path
) -> None:
    """The re-INVITE carrying the target's offer presents the session the transferee
    already had, one version on (RFC 3264 8), not the target's own origin: a strict
    phone would take another session's SDP for a different call and ignore it."""
    server, _ = pbx
    port = free_port()
    reg = run_sipp(
        "register.xml",
        f"{server.host}:{server.port}",
        users={"1000": USERS["1000"]},
        local_port=port,
        workdir=tmp_path,
    )
    assert reg.successful == 1, reg.output
    log_file = tmp_path / "origins.log"
    transferee = start_sipp_uas(
        "call_uas_transferred.xml",
        port,
        tmp_path,
        extra=["-trace_logs", "-log_file", str(log_file)],
    )
    reception, colleague = phones.add("1001", USERS["1001"]), phones.add("1002", USERS["1002"])
    placed = reception.call("1000")
    phones.until(lambda: placed.confirmed, "the SIPp phone answered")
    placed.xfer(phones.uri("1002"), pj.CallOpParam(True))
    phones.until(lambda: bool(colleague.incoming), "the colleague's phone rings")
    ringing = colleague.incoming[0]
    colleague.answer(ringing)
    phones.until(lambda: ringing.confirmed, "the colleague has the call")
    phones.until(lambda: log_file.exists() and "origins" in log_file.read_text(), "re-INVITEd")
    ringing.hangup(pj.CallOpParam(True))
    done = finish_sipp_uas(transferee, tmp_path)
    assert done.successful == 1, done.output + server.log()[-3000:]
    first_user, first_session, first_version, user, session, version = (
        log_file.read_text().split("origins", 1)[1].replace("[", " ").replace("]", " ").split()
    )
    assert (user, session) == (first_user, first_session), log_file.read_text()
    assert int(version) == int(first_version) + 1, log_file.read_text()
