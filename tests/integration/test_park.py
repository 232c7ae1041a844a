"""Call park, driven by real PJSIP phones: a receptionist parks a caller by blind
transfer (pjsua2 Call.xfer) to the park code; a desk phone's park key (a SIPp busy lamp
on the slot, RFC 4235) lights; a colleague dials the slot and talks to the caller, with
media both ways; a call nobody takes rings back the one who parked it. Another tenant
cannot see, let alone take, the parked call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    PbxProcess,
    cdr_rows,
    closed_cdrs,
    finish_sipp_uac,
    sipp_available,
    start_sipp_uac,
    two_tenant_office,
)
from tests.pjsip import Phone, PhoneCall, Phones, pj, pjsip_phones

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

USERS = {
    "1000": "Quartz-Harbor-71x",  # the caller
    "1001": "Maple-Orbit-39q",  # the receptionist, who parks
    "1002": "Cobalt-Fjord-58k",  # the colleague who takes the call
    "1003": "Amber-Tundra-42w",  # a desk phone watching the park slot
}
OTHER = ("2000", "Velvet-Canyon-24z")  # tenant "other" (two_tenant_office)


def serve(tmp: Path, park_timeout: float) -> PbxProcess:
    data = tmp / "data"
    two_tenant_office(data, USERS)
    server = PbxProcess(data, env={"PBXWARDEN_CALLS__PARK_TIMEOUT": str(park_timeout)})
    server.start()
    return server


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PbxProcess]:
    server = serve(tmp_path_factory.mktemp("park"), 600)  # nothing rings back here
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def phones(pbx: PbxProcess) -> Iterator[Phones]:
    with pjsip_phones(pbx.host, pbx.port) as endpoint:
        yield endpoint


def talking(phones: Phones, caller: Phone, callee: Phone) -> tuple[PhoneCall, PhoneCall]:
    placed = caller.call(callee.number)
    phones.until(lambda: bool(callee.incoming), f"{callee.number} rings")
    taken = callee.incoming[-1]
    callee.answer(taken)
    phones.until(lambda: placed.confirmed and taken.confirmed, "the two are talking")
    return placed, taken


def park(phones: Phones, parker: PhoneCall, code: str) -> None:
    parker.xfer(phones.uri(code), pj.CallOpParam(True))
    phones.until(
        lambda: any(code == 200 and final for code, final in parker.transfers),
        "the parker is told the call is parked",
    )
    phones.until(lambda: parker.disconnected, "the PBX hangs up the parker")


def wait_log(pbx: PbxProcess, text: str, count: int, phones: Phones) -> None:
    phones.until(lambda: pbx.log().count(text) >= count, f"{text!r} in the server log")


def test_a_parked_call_is_taken_from_its_slot_with_media_and_a_lamp(
    pbx: PbxProcess, phones: Phones, tmp_path: Path
) -> None:
    before = len(cdr_rows(pbx))
    caller, reception, colleague = (phones.add(n, USERS[n]) for n in ("1000", "1001", "1002"))
    subscribed = pbx.log().count("subscribed")
    lamp = start_sipp_uac(
        "blf_park_slot.xml",
        f"{pbx.host}:{pbx.port}",
        users={"1003": USERS["1003"]},
        extra=["-s", "*701"],
        workdir=tmp_path,
        recv_timeout_ms=30000,
    )
    try:
        wait_log(pbx, "subscribed", subscribed + 1, phones)  # the lamp is off: slot empty
        placed, taken = talking(phones, caller, reception)
        park(phones, taken, "*70")  # the first free slot: *701
        assert placed.confirmed, "the parked caller's call goes on"
        wait_log(pbx, "call parked", 1, phones)

        retrieved = colleague.call("*701")
        phones.until(lambda: retrieved.confirmed, "the colleague has the parked call")
        rx_caller, rx_colleague = placed.rtp()[0], retrieved.rtp()[0]
        phones.until(
            lambda: placed.rtp()[0] > rx_caller + 25 and retrieved.rtp()[0] > rx_colleague + 25,
            "RTP both ways between the parked caller and the colleague",
        )
        again = colleague.call("*701")  # the slot is empty now
        phones.until(lambda: again.disconnected, "nothing left to retrieve")
        assert again.last_status == 480, (again.last_status, again.last_reason)
        retrieved.hangup(pj.CallOpParam(True))
        phones.until(lambda: placed.disconnected, "the caller gets the BYE")
    finally:
        result = finish_sipp_uac(lamp, tmp_path)
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]
    rows = closed_cdrs(pbx, before, 2)
    original = next(r for r in rows if r["kind"] == "internal" and r["callee"] == "1001")
    parked = next(r for r in rows if r["kind"] == "parked")
    assert "parked in *701 by 1001" in str(original["reasons"]), original
    assert original["end_ts"] >= parked["end_ts"] - 0.01, "accounted for until the leg ended"
    assert parked["callee"] == "*701" and parked["extension"] == "1001", parked
    assert "retrieved from *701 by 1002" in str(parked["reasons"]), parked
    assert parked["disposition"] == "answered", parked


def test_slots_are_the_tenants_own_and_taken_slots_refuse(pbx: PbxProcess, phones: Phones) -> None:
    caller, reception, colleague = (phones.add(n, USERS[n]) for n in ("1000", "1001", "1002"))
    outsider = phones.add(*OTHER, domain="other.example")
    placed, taken = talking(phones, caller, reception)
    park(phones, taken, "*703")  # a slot of one's choice
    theirs = outsider.call("*703")  # the other tenant's *703 is empty
    phones.until(lambda: theirs.disconnected, "another tenant cannot take it")
    assert theirs.last_status == 480, (theirs.last_status, theirs.last_reason)
    code = colleague.call("*70")  # the park code is for transfers, not for dialling
    phones.until(lambda: code.disconnected, "the park code alone is refused")
    assert code.last_status == 484, (code.last_status, code.last_reason)

    second, other_taken = talking(phones, colleague, phones.add("1003", USERS["1003"]))
    other_taken.xfer(phones.uri("*703"), pj.CallOpParam(True))  # taken: refused
    phones.until(
        lambda: any(final for _, final in other_taken.transfers) or other_taken.disconnected,
        "the transfer to a taken slot is answered",
    )
    phones.run(0.5)
    assert other_taken.confirmed and second.confirmed, "a refused park leaves the call as it was"
    second.hangup(pj.CallOpParam(True))
    phones.until(lambda: other_taken.disconnected, "that call is over")
    placed.hangup(pj.CallOpParam(True))  # the parked caller gives up: the slot is free
    wait_log(pbx, "call ended", 1, phones)
    phones.until(lambda: placed.disconnected, "the caller hung up")
    later = colleague.call("*703")
    phones.until(lambda: later.disconnected, "the slot is empty again")
    assert later.last_status == 480, (later.last_status, later.last_reason)


def test_a_call_nobody_takes_rings_back_the_parker(tmp_path: Path) -> None:
    server = serve(tmp_path, park_timeout=2)
    try:
        with pjsip_phones(server.host, server.port) as phones:
            caller, reception = phones.add("1000", USERS["1000"]), phones.add("1001", USERS["1001"])
            placed, taken = talking(phones, caller, reception)
            park(phones, taken, "*702")
            phones.until(lambda: len(reception.incoming) > 1, "the parker's phone rings again")
            back = reception.incoming[-1]
            reception.answer(back)
            phones.until(lambda: back.confirmed, "the parker takes the call back")
            rx_caller, rx_back = placed.rtp()[0], back.rtp()[0]
            phones.until(
                lambda: placed.rtp()[0] > rx_caller + 25 and back.rtp()[0] > rx_back + 25,
                "RTP both ways again",
            )
            placed.hangup(pj.CallOpParam(True))
            phones.until(lambda: back.disconnected, "the parker gets the BYE")
        rows = closed_cdrs(server, 0, 3)
        assert any("back to 1001, who parked it" in str(r["reasons"]) for r in rows), rows
    finally:
        server.stop()
