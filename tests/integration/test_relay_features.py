"""Pickup and park with the RTP relay on (``media.relay = true``): the picker's and the
retriever's media are anchored afresh at the PBX's ports, and RTP flows both ways
through the relay between real PJSIP phones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PbxProcess, cdr_rows, closed_cdrs, free_port, running_pbx, sipp_available
from tests.pjsip import Phone, PhoneCall, Phones, pj, pjsip_phones

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

USERS = {"1000": "Quartz-Harbor-71x", "1001": "Maple-Orbit-39q", "1002": "Cobalt-Fjord-58k"}


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PbxProcess]:
    base = free_port() & ~1
    low = base if base + 200 < 65535 else 30000
    env = {
        "PBXWARDEN_MEDIA__RELAY": "true",
        "PBXWARDEN_MEDIA__PORT_MIN": str(low),
        "PBXWARDEN_MEDIA__PORT_MAX": str(low + 199),
    }
    data: Path = tmp_path_factory.mktemp("relay-features") / "data"
    with running_pbx(data, USERS, env=env) as server:
        yield server


@pytest.fixture
def phones(pbx: PbxProcess) -> Iterator[Phones]:
    with pjsip_phones(pbx.host, pbx.port) as endpoint:
        yield endpoint


def flowing(phones: Phones, one: PhoneCall, other: PhoneCall, what: str) -> None:
    rx_one, rx_other = one.rtp()[0], other.rtp()[0]
    phones.until(lambda: one.rtp()[0] > rx_one + 25 and other.rtp()[0] > rx_other + 25, what)


def three(phones: Phones) -> tuple[Phone, Phone, Phone]:
    caller, rung, other = (phones.add(n, p) for n, p in USERS.items())
    return caller, rung, other


def test_a_picked_up_call_has_media_through_the_relay(pbx: PbxProcess, phones: Phones) -> None:
    caller, rung, picker = three(phones)
    placed = caller.call("1001")
    phones.until(lambda: bool(rung.incoming), "1001 rings")
    picked = picker.call("*8")
    phones.until(lambda: picked.confirmed and placed.confirmed, "the picker has the call")
    flowing(phones, placed, picked, "RTP both ways through the relay after the pickup")
    placed.hangup(pj.CallOpParam(True))
    phones.until(lambda: picked.disconnected, "the picker gets the BYE")


def test_a_retrieved_parked_call_has_media_through_the_relay(
    pbx: PbxProcess, phones: Phones
) -> None:
    before = len(cdr_rows(pbx))
    caller, reception, colleague = three(phones)
    placed = caller.call("1001")
    phones.until(lambda: bool(reception.incoming), "1001 rings")
    taken = reception.incoming[-1]
    reception.answer(taken)
    phones.until(lambda: placed.confirmed and taken.confirmed, "talking")
    flowing(phones, placed, taken, "RTP both ways through the relay")
    taken.xfer(phones.uri("*70"), pj.CallOpParam(True))
    phones.until(lambda: taken.disconnected, "parked: the PBX hangs up the parker")
    retrieved = colleague.call("*701")
    phones.until(lambda: retrieved.confirmed, "the colleague has the parked call")
    flowing(phones, placed, retrieved, "RTP both ways through the relay after retrieval")
    retrieved.hangup(pj.CallOpParam(True))
    phones.until(lambda: placed.disconnected, "the caller gets the BYE")
    rows = closed_cdrs(pbx, before, 2)
    assert any("retrieved from *701 by 1002" in str(r["reasons"]) for r in rows), rows
