"""Busy lamps and presence through SUBSCRIBE/NOTIFY: a SIPp desk phone's BLF key on the
dialog package (RFC 4235) sees idle, ringing, on a call and idle again while PJSIP phones
call; a PJSIP phone's buddy list (presence, PIDF) sees a colleague register and go on
the phone; another tenant's extension answers exactly like a missing one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    PbxProcess,
    finish_sipp_uac,
    sipp_available,
    start_sipp_uac,
    two_tenant_office,
)
from tests.pjsip import Phone, Phones, pj, pjsip_phones

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

USERS = {"1000": "Quartz-Harbor-71x", "1001": "Maple-Orbit-39q", "1002": "Cobalt-Fjord-58k"}


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PbxProcess]:
    data = tmp_path_factory.mktemp("presence") / "data"
    two_tenant_office(data, USERS)
    server = PbxProcess(data)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def phones(pbx: PbxProcess) -> Iterator[Phones]:
    with pjsip_phones(pbx.host, pbx.port) as endpoint:
        yield endpoint


def wait_log(pbx: PbxProcess, text: str, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while pbx.log().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the server log"
        time.sleep(0.05)


def test_a_busy_lamp_follows_a_call(pbx: PbxProcess, phones: Phones, tmp_path: Path) -> None:
    watched, caller = phones.add("1001", USERS["1001"]), phones.add("1002", USERS["1002"])
    before = pbx.log().count("subscribed")
    lamp_dir = tmp_path / "lamp"
    lamp_dir.mkdir()
    lamp = start_sipp_uac(
        "blf_subscriber.xml",
        f"{pbx.host}:{pbx.port}",
        users={"1000": USERS["1000"]},
        extra=["-s", "1001"],
        workdir=lamp_dir,
        recv_timeout_ms=20000,
    )
    try:
        wait_log(pbx, "subscribed", before + 1)
        placed = caller.call("1001")
        phones.until(lambda: bool(watched.incoming), "the watched phone rings")
        phones.run(0.3)
        watched.answer(watched.incoming[0])
        phones.until(lambda: placed.confirmed, "the call is answered")
        phones.run(0.3)
        placed.hangup(pj.CallOpParam(True))
        phones.until(lambda: watched.incoming[0].disconnected, "the call is over")
    finally:
        result = finish_sipp_uac(lamp, lamp_dir)
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]


def test_a_buddy_sees_a_colleague_register_and_go_on_the_phone(phones: Phones) -> None:
    watcher = phones.add("1000", USERS["1000"])
    buddy = watcher.watch("1001")
    offline = pj.PJSUA_BUDDY_STATUS_OFFLINE
    online = pj.PJSUA_BUDDY_STATUS_ONLINE
    phones.until(lambda: bool(buddy.states) and buddy.states[-1][0] == offline, "offline")
    colleague, caller = phones.add("1001", USERS["1001"]), phones.add("1002", USERS["1002"])
    phones.until(lambda: buddy.states[-1] == (online, "Available"), "the colleague is online")
    placed = caller.call("1001")
    phones.until(lambda: bool(colleague.incoming), "the colleague's phone rings")
    colleague.answer(colleague.incoming[0])
    phones.until(lambda: buddy.states[-1] == (online, "On the phone"), "on the phone")
    placed.hangup(pj.CallOpParam(True))
    phones.until(lambda: buddy.states[-1] == (online, "Available"), "available again")


def test_another_tenants_extension_looks_like_a_missing_one(phones: Phones) -> None:
    watcher = phones.add("1000", USERS["1000"])
    theirs, missing = watcher.watch("2000"), watcher.watch("2999")
    phones.until(lambda: theirs.ended() is not None and missing.ended() is not None, "refused")
    assert theirs.ended() == missing.ended(), (theirs.ended(), missing.ended())
    assert theirs.ended()[0] == 404, theirs.ended()  # type: ignore[index]


def test_a_busy_lamp_key_picks_up_the_ringing_call_it_shows(
    pbx: PbxProcess, phones: Phones, tmp_path: Path
) -> None:
    """A desk phone's lamp shows 1001 ringing with the dialog's identifiers (RFC 4235);
    pressing the key sends an INVITE with Replaces naming that dialog (RFC 3891): the
    call is picked up. The same Replaces from another tenant, or naming no call, is
    answered 481 alike."""
    caller, watched, desk = (phones.add(n, USERS[n]) for n in ("1000", "1001", "1002"))
    outsider = phones.add("2000", "Velvet-Canyon-24z", domain="other.example")
    before = pbx.log().count("subscribed")
    lamp_log = tmp_path / "lamp.log"
    lamp = start_sipp_uac(
        "blf_pickup.xml",
        f"{pbx.host}:{pbx.port}",
        users={"1002": USERS["1002"]},
        extra=["-s", "1001", "-trace_logs", "-log_file", str(lamp_log)],
        workdir=tmp_path,
        recv_timeout_ms=20000,
    )
    try:
        wait_log(pbx, "subscribed", before + 1)
        placed = caller.call("1001")
        phones.until(lambda: bool(watched.incoming), "the watched phone rings")
        phones.until(
            lambda: lamp_log.exists() and "ringing dialog" in lamp_log.read_text(),
            "the lamp shows the ringing dialog",
        )
        line = lamp_log.read_text().split("ringing dialog", 1)[1].split()
        call_id, our_tag = line[0], line[1]

        def refused(phone: Phone, replaces: str) -> int:
            tried = phone.call("1001", {"Replaces": replaces})
            phones.until(lambda: tried.disconnected, "the pickup INVITE is answered")
            return tried.last_status

        assert refused(outsider, f"{call_id};to-tag=x;from-tag={our_tag}") == 481
        assert refused(desk, f"no-such-call;to-tag=x;from-tag={our_tag}") == 481
        assert placed.state != pj.PJSIP_INV_STATE_DISCONNECTED, "the call still rings"
        picked = desk.call("1001", {"Replaces": f"{call_id};to-tag=;from-tag={our_tag};early-only"})
        phones.until(lambda: picked.confirmed and placed.confirmed, "the key picked it up")
        phones.until(lambda: watched.incoming[0].disconnected, "1001 stops ringing")
        rx_caller, rx_desk = placed.rtp()[0], picked.rtp()[0]
        phones.until(
            lambda: placed.rtp()[0] > rx_caller + 25 and picked.rtp()[0] > rx_desk + 25,
            "media both ways after the pickup",
        )
        placed.hangup(pj.CallOpParam(True))
        phones.until(lambda: picked.disconnected, "the desk phone gets the BYE")
    finally:
        result = finish_sipp_uac(lamp, tmp_path)
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]
