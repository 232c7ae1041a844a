"""Ring and hunt groups and business hours, driven by real PJSIP phones and a SIPp
carrier.

Each strategy with members answering or not: ring all (the first to answer wins, the
others stop ringing), hunt (the next member after the ring time, or at once when one is
busy), round robin (the next call starts after the member who answered), the fallback
when nobody answers, a DID pointing at a group, and an external member judged by the
guard: a national number reaches the carrier with the tenant's own number as caller
ID, a premium one never does. A time condition leads to a group while open and to an
extension once an admin closes it, on the running server.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    PbxProcess,
    carrier_invites,
    cdr_rows,
    cli,
    closed_cdrs,
    finish_sipp_uas,
    free_port,
    sipp_available,
    start_sipp_uas,
)
from tests.pjsip import Phone, PhoneCall, Phones, pj, pjsip_phones

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

CARRIER = "127.0.0.3"
USERS = {
    "1000": "Quartz-Harbor-71x",  # the caller
    "1001": "Maple-Orbit-39q",
    "1002": "Cobalt-Fjord-58k",
    "1003": "Tundra-Pixel-84w",  # never registered
}
DID = "+12025550100"
MOBILE = "+12025550143"  # a national number: the default policy allows it
PREMIUM = "+19005550100"  # US premium rate: refused by default


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PbxProcess, int]]:
    data = tmp_path_factory.mktemp("groups") / "data"
    cli(data, "init")
    carrier_port = free_port(CARRIER)
    for ext, password in USERS.items():
        cli(data, "extension", "add", ext, "--password", password)
    cli(data, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
    group = ("group", "set")
    cli(data, *group, "600", "-m", "1001", "-m", "1002", "--cid-prefix", "Sales: ")
    cli(data, *group, "601", "-m", "1001", "-m", "1002", "--strategy", "hunt", "--ring-time", "5")
    cli(data, *group, "602", "-m", "1001", "-m", "1002", "--strategy", "roundrobin")
    cli(data, *group, "603", "-m", "1001", "-m", MOBILE, "-m", PREMIUM)
    cli(data, *group, "604", "-m", "1003", "-m", "1001", "--strategy", "hunt", "--fallback", "1002")
    cli(data, "did", "add", DID, "--extension", "600")
    always = "mon-sun 00:00-24:00"
    cli(data, "hours", "set", "700", "--hours", always, "--open", "600", "--closed", "1002")
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


def ringing(phones: Phones, phone: Phone, count: int = 1) -> PhoneCall:
    phones.until(lambda: len(phone.incoming) >= count, f"{phone.number} rings")
    return phone.incoming[count - 1]


def hang_up(phones: Phones, placed: PhoneCall, taken: PhoneCall) -> None:
    placed.hangup(pj.CallOpParam(True))
    phones.until(lambda: taken.disconnected, "the member gets the BYE")


def test_ring_all_through_a_did_first_answer_wins(
    pbx: tuple[PbxProcess, int], phones: Phones
) -> None:
    """The caller dials the DID, which points at the ring-all group: both members ring
    with the group's prefix shown; one answers, the other stops ringing; media flows."""
    server, _ = pbx
    before = len(cdr_rows(server))
    caller, first, second = (phones.add(n, USERS[n]) for n in ("1000", "1001", "1002"))
    placed = caller.call(DID)
    one, two = ringing(phones, first), ringing(phones, second)
    assert one.getInfo().remoteUri.startswith('"Sales: 1000"'), one.getInfo().remoteUri
    second.answer(two)
    phones.until(lambda: placed.confirmed and two.confirmed, "the caller talks to 1002")
    phones.until(lambda: one.disconnected, "1001 stops ringing")
    phones.until(lambda: placed.rtp()[0] > 10 and two.rtp()[0] > 10, "media both ways")
    hang_up(phones, placed, two)
    cdr = closed_cdrs(server, before, 1)[-1]
    assert cdr["disposition"] == "answered" and "rung by group 600 (ringall)" in str(
        cdr["reasons"]
    ), cdr


def test_hunt_moves_on_after_the_ring_time(pbx: tuple[PbxProcess, int], phones: Phones) -> None:
    caller, first, second = (phones.add(n, USERS[n]) for n in ("1000", "1001", "1002"))
    placed = caller.call("601")
    one = ringing(phones, first)
    assert not second.incoming, "hunt rings one member at a time"
    started = time.monotonic()
    two = ringing(phones, second)  # after the 5 s ring time
    assert time.monotonic() - started > 3, "the second member rang before the ring time"
    phones.until(lambda: one.disconnected, "the first member stops ringing")
    second.answer(two)
    phones.until(lambda: placed.confirmed, "the caller is put through to 1002")
    hang_up(phones, placed, two)


def test_round_robin_starts_after_the_last_member_who_answered(phones: Phones) -> None:
    caller, first, second = (phones.add(n, USERS[n]) for n in ("1000", "1001", "1002"))
    placed = caller.call("602")
    one = ringing(phones, first)
    assert not second.incoming
    first.answer(one)
    phones.until(lambda: placed.confirmed, "1001 took the first call")
    hang_up(phones, placed, one)
    again = caller.call("602")
    two = ringing(phones, second)  # 1001 answered last time: 1002 is first now
    assert len(first.incoming) == 1, "1001 rang again first"
    second.answer(two)
    phones.until(lambda: again.confirmed, "1002 took the second call")
    hang_up(phones, again, two)


def test_busy_members_then_the_fallback(pbx: tuple[PbxProcess, int], phones: Phones) -> None:
    """Group 604 hunts 1003 (not registered: skipped) then 1001, which is busy: the call
    goes at once to the fallback, 1002, as a diversion paid by the group."""
    server, _ = pbx
    before = len(cdr_rows(server))
    caller, first, fallback = (phones.add(n, USERS[n]) for n in ("1000", "1001", "1002"))
    placed = caller.call("604")
    one = ringing(phones, first)
    first.answer(one, 486)
    two = ringing(phones, fallback)
    fallback.answer(two)
    phones.until(lambda: placed.confirmed, "the caller reaches the fallback")
    hang_up(phones, placed, two)
    cdr = closed_cdrs(server, before, 1)[-1]
    assert cdr["forwarded_by"] == "604" and cdr["disposition"] == "answered", cdr


def test_external_members_are_judged_and_paid_by_the_group(
    pbx: tuple[PbxProcess, int], phones: Phones, tmp_path: Path
) -> None:
    """Group 603 rings 1001, a national number and a premium one at once: the premium
    member is refused by the guard (never at the carrier), the national one reaches the
    carrier with the tenant's own DID as caller ID and answers; 1001 stops ringing."""
    server, carrier_port = pbx
    messages = tmp_path / "carrier-messages.log"
    carrier = start_sipp_uas(
        "call_uas.xml",
        carrier_port,
        tmp_path,
        local_ip=CARRIER,
        timeout=15,
        extra=["-trace_msg", "-message_file", str(messages)],
    )
    before = len(cdr_rows(server))
    try:
        caller, member = phones.add("1000", USERS["1000"]), phones.add("1001", USERS["1001"])
        placed = caller.call("603")
        desk = ringing(phones, member)
        phones.until(lambda: placed.confirmed, "the carrier's member answered")
        phones.until(lambda: desk.disconnected, "the desk phone stops ringing")
        placed.hangup(pj.CallOpParam(True))
        result = finish_sipp_uas(carrier, tmp_path, timeout=15)
    finally:
        if carrier.poll() is None:
            carrier.kill()
            carrier.wait(5)
    assert result.successful == 1, result
    invites = carrier_invites(messages)
    assert [i["user"] for i in invites] == [MOBILE], invites  # the premium member: never
    assert f"sip:{DID}@" in invites[0]["From"], invites[0]
    cdr = closed_cdrs(server, before, 1)[-1]
    assert cdr["trunk"] == "carrier" and cdr["disposition"] == "answered", cdr
    assert f"member {PREMIUM} refused" in str(cdr["reasons"]), cdr


def test_business_hours_lead_to_the_group_until_closed(
    pbx: tuple[PbxProcess, int], phones: Phones
) -> None:
    server, _ = pbx
    before = len(cdr_rows(server))
    caller, first, second = (phones.add(n, USERS[n]) for n in ("1000", "1001", "1002"))
    placed = caller.call("700")  # open: the sales group rings, both phones
    one, two = ringing(phones, first), ringing(phones, second)
    placed.hangup(pj.CallOpParam(True))
    phones.until(lambda: one.disconnected and two.disconnected, "the group stops ringing")
    assert "time condition 700: open" in str(closed_cdrs(server, before, 1)[-1]["reasons"])
    cli(server.data_dir, "hours", "override", "700", "closed")  # an unplanned closure
    deadline = time.monotonic() + 10
    while True:  # the running server follows within its reload interval
        rang = len(first.incoming), len(second.incoming)
        placed = caller.call("700")
        phones.until(lambda r=rang: len(second.incoming) > r[1], "1002 rings")
        phones.run(0.3)  # and 1001 too, while the override is not yet followed
        if len(first.incoming) == rang[0]:
            break
        placed.hangup(pj.CallOpParam(True))
        phones.until(lambda p=placed: p.disconnected, "the caller hung up")
        assert time.monotonic() < deadline, "the override never took effect"
        phones.run(0.5)
    taken = second.incoming[-1]
    second.answer(taken)
    phones.until(lambda: placed.confirmed, "closed: 1002 answers")
    hang_up(phones, placed, taken)
    assert "time condition 700: closed (override)" in str(
        closed_cdrs(server, before, 1)[-1]["reasons"]
    )


def test_a_phone_overrides_business_hours_with_the_feature_code(
    pbx: tuple[PbxProcess, int], phones: Phones
) -> None:
    """*62700 forces time condition 700 the other way from its hours at once (closing
    early), audited with the phone as the actor; dialled again, the hours rule again."""
    server, _ = pbx
    caller, first, second = (phones.add(n, USERS[n]) for n in ("1000", "1001", "1002"))

    def toggle() -> str:
        placed = caller.call("*62700")
        phones.until(lambda: placed.disconnected, "the override code is answered")
        assert placed.last_status == 603, (placed.last_status, placed.last_reason)
        return placed.last_reason

    state = toggle()
    if "open (its hours)" in state:  # an override was left by an earlier test: now cleared
        state = toggle()
    assert "now closed (override" in state, state
    rang = len(first.incoming), len(second.incoming)
    placed = caller.call("700")  # closed: only 1002, at once (no reload interval)
    phones.until(lambda: len(second.incoming) > rang[1], "1002 rings")
    phones.run(0.3)
    assert len(first.incoming) == rang[0], "the group rang although the override closed it"
    placed.hangup(pj.CallOpParam(True))
    phones.until(lambda: placed.disconnected, "the caller hung up")
    assert "now open (its hours)" in toggle()
    placed = caller.call("700")  # open again: the group rings both
    one, two = ringing(phones, first, rang[0] + 1), ringing(phones, second, rang[1] + 2)
    placed.hangup(pj.CallOpParam(True))
    phones.until(lambda: one.disconnected and two.disconnected, "the group stops ringing")

    def actors() -> list[str]:
        with sqlite3.connect(server.data_dir / "pbxwarden.db") as db:
            query = "SELECT actor FROM audit_log WHERE action = 'hours.override' ORDER BY id"
            return [row[0] for row in db.execute(query)]

    phones.until(lambda: actors()[-2:] == ["phone 1000", "phone 1000"], "both in the audit log")


def test_group_pickup_answers_a_colleagues_ringing_phone(
    pbx: tuple[PbxProcess, int], phones: Phones
) -> None:
    """1000 calls 1001; 1002 dials *8: 1001 stops ringing, 1000 and 1002 talk."""
    server, _ = pbx
    before = len(cdr_rows(server))
    caller, rung, picker = (phones.add(n, USERS[n]) for n in ("1000", "1001", "1002"))
    nothing = picker.call("*8")
    phones.until(lambda: nothing.disconnected, "nothing to pick up: refused")
    placed = caller.call("1001")
    ringing_call = ringing(phones, rung)
    picked = picker.call("*8")
    phones.until(lambda: picked.confirmed and placed.confirmed, "the picker has the call")
    phones.until(lambda: ringing_call.disconnected, "1001 stops ringing")
    phones.until(lambda: placed.rtp()[0] > 10 and picked.rtp()[0] > 10, "media both ways")
    hang_up(phones, placed, picked)
    cdr = closed_cdrs(server, before, 1)[-1]
    assert cdr["callee"] == "1001" and "picked up by 1002" in str(cdr["reasons"]), cdr
    assert cdr["disposition"] == "answered", cdr


def test_group_pickup_stays_within_the_pickers_departments(phones: Phones) -> None:
    """1002 belongs to ring groups (with 1001 and 1003): *8 answers only calls ringing
    those colleagues, not 1000 (in no group); **1000 still picks that call up."""
    caller, rung, picker = (phones.add(n, USERS[n]) for n in ("1001", "1000", "1002"))
    placed = caller.call("1000")
    ringing_call = ringing(phones, rung)
    other = picker.call("*8")
    phones.until(lambda: other.disconnected, "another department's call is not offered")
    assert other.last_status == 480, (other.last_status, other.last_reason)
    assert not ringing_call.disconnected, "1000 still rings"
    picked = picker.call("**1000")
    phones.until(lambda: picked.confirmed and placed.confirmed, "a directed pickup takes it")
    phones.until(lambda: ringing_call.disconnected, "1000 stops ringing")
    hang_up(phones, placed, picked)


def test_directed_pickup_of_a_ringing_group(phones: Phones) -> None:
    caller, one, two, picker = (phones.add(n, USERS[n]) for n in USERS)
    placed = caller.call("600")
    first, second = ringing(phones, one), ringing(phones, two)
    wrong = picker.call("**1999")  # nothing rings 1999
    phones.until(lambda: wrong.disconnected, "a directed pickup of a quiet number is refused")
    picked = picker.call("**600")
    phones.until(lambda: picked.confirmed and placed.confirmed, "1003 picked up the group call")
    phones.until(lambda: first.disconnected and second.disconnected, "the group stops ringing")
    hang_up(phones, placed, picked)
