"""A carrier's REFER: refused unless its trunk accepts transfers, then performed by the
PBX and judged like any transfer (the target is a call paid by our extension in the
call), without ever counting against that extension as a sign of takeover.

The carriers are SIPp delivering a DID call to a PJSIP phone, then asking (REFER) for
the phone to be transferred: "carrier" (127.0.0.2) accepts transfers, "other"
(127.0.0.3) keeps the default. A SIPp on the first trunk's own port is where outbound
calls would arrive.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    PbxProcess,
    cdr_rows,
    cli,
    closed_cdrs,
    finish_sipp_uac,
    finish_sipp_uas,
    free_port,
    sipp_available,
    start_sipp_uac,
    start_sipp_uas,
)
from tests.pjsip import Phone, PhoneCall, Phones, pj, pjsip_phones

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

CARRIER = "127.0.0.2"
OTHER = "127.0.0.3"
DID = "+12025550100"
USERS = {"1000": "Quartz-Harbor-71x", "1001": "Maple-Orbit-39q"}


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PbxProcess, int]]:
    data = tmp_path_factory.mktemp("carrier-transfer") / "data"
    cli(data, "init")
    carrier_port = free_port(CARRIER)
    for ext, password in USERS.items():
        cli(data, "extension", "add", ext, "--password", password)
    cli(data, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
    cli(data, "trunk", "add", "other", "--host", OTHER, "--port", str(free_port(OTHER)))
    cli(data, "trunk", "transfers", "carrier", "--accept")
    cli(data, "did", "add", DID, "--extension", "1000")
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


def carrier_refers(
    server: PbxProcess, workdir: Path, refer_to: str, source: str = CARRIER
) -> subprocess.Popen[bytes]:
    """The carrier at ``source`` calls the DID and, once answered, asks for a transfer."""
    return start_sipp_uac(
        "carrier_uac_refer.xml",
        f"{server.host}:{server.port}",
        users={"+13125550177": "-"},
        extra=["-s", DID, "-key", "refer_to", refer_to],
        local_ip=source,
        workdir=workdir,
        timeout=30,
    )


def answered_by(phones: Phones, phone: Phone) -> PhoneCall:
    phones.until(lambda: bool(phone.incoming), f"{phone.number} rings")
    call = phone.incoming[-1]
    phone.answer(call)
    phones.until(lambda: call.confirmed, f"{phone.number} answered")
    return call


def suspended(server: PbxProcess, number: str) -> bool:
    with sqlite3.connect(server.data_dir / "pbxwarden.db") as db:
        row = db.execute(
            "SELECT suspended_at FROM extensions WHERE number = ?", (number,)
        ).fetchone()
    return row is not None and row[0] is not None


def test_a_carriers_refer_is_refused_by_default(
    pbx: tuple[PbxProcess, int], phones: Phones, tmp_path: Path
) -> None:
    server, _ = pbx
    phone = phones.add("1000", USERS["1000"])
    carrier = carrier_refers(server, tmp_path, "1001", source=OTHER)
    call = answered_by(phones, phone)
    phones.until(lambda: call.disconnected, "the carrier hangs up after its 403")
    result = finish_sipp_uac(carrier, tmp_path)
    assert result.successful == 1, result.output + server.log()[-3000:]
    assert "REFER from a carrier refused" in server.log()  # the SIPp got its 403
    assert not call.refers, "the REFER was relayed to the phone"


def test_a_trunk_that_accepts_transfers_gets_its_refer_performed(
    pbx: tuple[PbxProcess, int], phones: Phones, tmp_path: Path
) -> None:
    """The carrier's party transfers our phone to a colleague: the PBX places the call,
    re-INVITEs our phone with the colleague's offer and hangs up on the carrier; the two
    phones then talk."""
    server, _ = pbx
    before = len(cdr_rows(server))
    phone, colleague = phones.add("1000", USERS["1000"]), phones.add("1001", USERS["1001"])
    carrier = carrier_refers(server, tmp_path, "1001")
    call = answered_by(phones, phone)
    ringing = answered_by(phones, colleague)
    result = finish_sipp_uac(carrier, tmp_path)  # 202, NOTIFYs answered, then our BYE
    assert result.successful == 1, result.output + server.log()[-3000:]
    assert call.confirmed, "our phone's call survived the transfer"
    rx_phone, rx_colleague = call.rtp()[0], ringing.rtp()[0]
    phones.until(
        lambda: call.rtp()[0] > rx_phone + 25 and ringing.rtp()[0] > rx_colleague + 25,
        "RTP both ways between our phone and the colleague",
    )
    call.hangup(pj.CallOpParam(True))
    phones.until(lambda: ringing.disconnected, "the colleague gets the BYE")
    original, transferred = closed_cdrs(server, before, 2)
    assert "transferred by the carrier" in str(original["reasons"]), original
    assert transferred["kind"] == "carrier-transfer", transferred
    assert transferred["extension"] == "1000" and transferred["callee"] == "1001", transferred
    assert transferred["disposition"] == "answered", transferred


def test_a_carriers_transfer_to_a_premium_number_is_refused_without_suspending(
    pbx: tuple[PbxProcess, int], phones: Phones, tmp_path: Path
) -> None:
    """The classic: call the company, ask to be transferred to a premium number. The
    target is refused with the reason and alerted; no INVITE reaches the carrier; our
    extension, which did nothing, is not suspended; the call goes on until the carrier
    hangs up."""
    server, carrier_port = pbx
    messages = tmp_path / "carrier-messages.log"
    outbound = start_sipp_uas(
        "call_uas.xml",
        carrier_port,
        tmp_path,
        local_ip=CARRIER,
        timeout=8,
        extra=["-trace_msg", "-message_file", str(messages)],
    )
    before = len(cdr_rows(server))
    try:
        phone = phones.add("1000", USERS["1000"])
        carrier = carrier_refers(server, tmp_path, "+19005550123")
        call = answered_by(phones, phone)
        phones.until(lambda: call.disconnected, "the carrier hangs up after its 403")
        result = finish_sipp_uac(carrier, tmp_path)
        assert result.successful == 1, result.output + server.log()[-3000:]
    finally:
        finish_sipp_uas(outbound, tmp_path, timeout=15)
    log = messages.read_text(errors="replace") if messages.exists() else ""
    assert "INVITE sip:" not in log, log[:2000]
    refused = [r for r in cdr_rows(server)[before:] if r["kind"] == "carrier-transfer"]
    assert len(refused) == 1, cdr_rows(server)[before:]
    assert refused[0]["disposition"] == "blocked" and refused[0]["extension"] == "1000"

    def alerted() -> list[dict[str, object]]:
        with sqlite3.connect(server.data_dir / "pbxwarden.db") as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM alerts WHERE extension = '1000'").fetchall()
        return [dict(r) for r in rows if "+19005550123" in str(r["summary"])]

    deadline = time.monotonic() + 10
    while not alerted() and time.monotonic() < deadline:
        time.sleep(0.2)
    [alert] = alerted()
    assert "carrier" in str(alert["summary"]), alert
    assert not suspended(server, "1000"), "the extension was suspended for a carrier's ask"
