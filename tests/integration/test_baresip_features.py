"""Transfer and presence driven by a real softphone, Debian's baresip 1.0 (headless, over
ctrl_tcp: :mod:`tests.baresip`), with PJSIP phones (:mod:`tests.pjsip`) as the other
parties so that media can be counted.

- baresip's ``/transfer`` (a blind REFER) is performed by the PBX: the other party and
  the target talk, baresip is told ``200 OK`` in the refer NOTIFY and its call ends;
  the REFER never reaches a phone.
- baresip is transferred by a PJSIP phone (a re-INVITE with the target's offer), or is
  the target (an INVITE without an offer).
- A transfer to a premium number is refused (baresip hears 403, keeps its call) and no
  INVITE reaches the carrier.
- baresip's presence module (RFC 3856, PIDF) watches a colleague: offline, online once
  registered, busy on the phone, online again. baresip 1.0 has no dialog event package
  (RFC 4235) client, so its "BLF" is presence; the SIPp BLF key of test_presence.py
  covers the dialog package.
- baresip's address book follows a transfer between three colleagues.
- Another tenant's extension answers baresip's SUBSCRIBE exactly like a missing one.

baresip 1.0 cannot do attended transfer (its menu has ``/transfer`` only), and on a
failed transfer its menu hangs up the call itself instead of taking it back.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.baresip import Baresip, running_baresip
from tests.helpers import (
    PbxProcess,
    cdr_rows,
    cli,
    closed_cdrs,
    finish_sipp_uas,
    free_port,
    sipp_available,
    start_sipp_uas,
)
from tests.pjsip import Phone, PhoneCall, Phones, pj, pjsip_phones

pytestmark = [
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip not installed"),
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
    pytest.mark.timeout(120),
]

CARRIER = "127.0.0.2"
PREMIUM = "+19005550123"
USERS = {
    "1000": "Quartz-Harbor-71x",  # baresip
    "1001": "Maple-Orbit-39q",  # the other party of baresip's call
    "1002": "Cobalt-Fjord-58k",  # the transfer target; the caller in the presence test
    "1003": "Amber-Delta-62w",  # watched by baresip's presence module
    "1004": "Indigo-Tundra-85m",  # baresip, when it tries a premium transfer
}
BARESIP = "1000"
SUSPECT = "1004"  # suspended by the guard after its transfer to a premium number


@contextlib.contextmanager
def office(data: Path) -> Iterator[tuple[PbxProcess, int]]:
    """The default tenant with USERS and a carrier trunk; tenant ``other`` with 2000
    (:func:`tests.helpers.two_tenant_office` in fewer CLI runs: the suite is loaded)."""
    cli(data, "init")
    users = data / "extensions.csv"
    users.write_text("".join(f"{n},{p}\n" for n, p in USERS.items()))
    cli(data, "extension", "import", str(users))
    cli(data, "tenant", "add", "other", "--realm", "other.example", "--country", "US")
    cli(data, "extension", "add", "2000", "--password", "Velvet-Canyon-24z", "--tenant", "other")
    carrier_port = free_port(CARRIER)
    cli(data, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
    server = PbxProcess(data)
    server.start()
    try:
        yield server, carrier_port
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PbxProcess, int]]:
    with office(tmp_path_factory.mktemp("baresip-features") / "data") as server:
        yield server


@pytest.fixture
def phones(pbx: tuple[PbxProcess, int]) -> Iterator[Phones]:
    server, _ = pbx
    with pjsip_phones(server.host, server.port) as endpoint:
        yield endpoint


def registered(phones: Phones, ua: Baresip) -> None:
    """baresip's REGISTER was answered 200 (often before ctrl_tcp is up to report it)."""
    phones.until(lambda: "200 OK (pbxwarden)" in ua.trace(), "baresip registered")


def in_call(phones: Phones, ua: Baresip, other: Phone, baresip_calls: bool) -> PhoneCall:
    """baresip and ``other`` talk (baresip called, or answered ``other``'s call); the
    PJSIP side of the call, once media comes from baresip."""
    if baresip_calls:
        assert ua.command("dial", other.number)["ok"], ua.log()
        phones.until(lambda: bool(other.incoming), f"{other.number} rings")
        call = other.incoming[0]
        other.answer(call)
    else:
        call = other.call(BARESIP)  # answermode=auto: baresip answers at once
    phones.until(lambda: call.confirmed, "baresip's call is answered")
    phones.until(lambda: ua.seen("CALL_ESTABLISHED") is not None, "baresip is in the call")
    phones.until(lambda: call.rtp()[0] > 10, "RTP from baresip")
    return call


def sip_messages(
    ua: Baresip, start: str, to_port: int | None = None, from_port: int | None = None
) -> list[str]:
    """The SIP messages in baresip's trace (``-s``) whose first line starts with
    ``start`` (sent to or received from a port on loopback, if given), each as its
    head and body."""
    blocks = re.split(r"\x1b\[36;1m#\n", ua.trace().replace("\r\n", "\n"))
    found = []
    for block in blocks:
        lines = block.split("\n", 1)
        if len(lines) != 2 or not lines[1].startswith(start):
            continue
        source, _, dest = lines[0].partition(" -> ")
        if to_port is not None and not dest.endswith(f":{to_port}"):
            continue
        if from_port is not None and not source.endswith(f":{from_port}"):
            continue
        found.append(lines[1].split("\x1b[;m", 1)[0])
    return found


@pytest.mark.parametrize("baresip_calls", [False, True], ids=["answered", "placed"])
def test_baresip_transfers_its_call_blind_and_the_pbx_joins_the_two(
    pbx: tuple[PbxProcess, int], phones: Phones, tmp_path: Path, baresip_calls: bool
) -> None:
    """baresip answered 1001's call (or called 1001) and transfers 1001 to 1002 with
    its ``/transfer`` command: the PBX places the call to 1002, re-INVITEs 1001 with
    1002's offer, tells baresip 100, 180 and 200 in refer NOTIFYs, and baresip's call
    ends; 1001 and 1002 then hear each other."""
    server, _ = pbx
    before = len(cdr_rows(server))
    other, colleague = phones.add("1001", USERS["1001"]), phones.add("1002", USERS["1002"])
    with running_baresip(tmp_path, server, BARESIP, USERS[BARESIP], tone=True) as ua:
        registered(phones, ua)
        stays = in_call(phones, ua, other, baresip_calls)

        assert ua.command("transfer", "1002")["ok"], ua.log()
        phones.until(lambda: bool(colleague.incoming), "the colleague's phone rings")
        ringing = colleague.incoming[0]
        phones.run(0.3)
        assert ua.seen("CALL_CLOSED") is None, "baresip's call goes on while the target rings"
        colleague.answer(ringing)
        phones.until(lambda: ringing.confirmed, "the colleague answered")
        phones.until(lambda: ua.seen("CALL_CLOSED") is not None, "baresip's call ends")
        closed = ua.seen("CALL_CLOSED")
        assert closed is not None and closed["param"] == "Call transfered", closed
        assert ua.seen("TRANSFER_FAILED") is None, ua.events

        rx_stays, rx_colleague = stays.rtp()[0], ringing.rtp()[0]
        phones.until(
            lambda: stays.rtp()[0] > rx_stays + 25 and ringing.rtp()[0] > rx_colleague + 25,
            "RTP both ways between the transferred party and the colleague",
        )
        assert stays.confirmed, "the transferred party's call survived the transfer"
        assert not stays.refers and not ringing.refers, "the REFER was passed on"
        stays.hangup(pj.CallOpParam(True))
        phones.until(lambda: ringing.disconnected, "the colleague gets the BYE")

        # what baresip was told: the REFER accepted, then the transfer's progress
        [refer] = sip_messages(ua, "REFER sip:")
        assert "Refer-To: sip:1002@" in refer, refer
        accepted = [m for m in sip_messages(ua, "SIP/2.0 202 ") if " REFER\n" in m]
        assert len(accepted) == 1, accepted
        frags = [
            (m.split("\n\n", 1)[1].strip(), re.search(r"Subscription-State: (\S+)", m))
            for m in sip_messages(ua, "NOTIFY sip:")
            if "Event: refer" in m
        ]
        bodies = [body for body, _ in frags]
        assert bodies[0] == "SIP/2.0 100 Trying" and bodies[-1] == "SIP/2.0 200 OK", bodies
        last_state = frags[-1][1]
        assert last_state is not None and last_state.group(1).startswith("terminated"), frags

    original, transferred = closed_cdrs(server, before, 2)
    assert original["disposition"] == "answered", original
    assert f"transferred by {BARESIP} to 1002" in str(original["reasons"]), original
    assert transferred["kind"] == "transferred", transferred
    assert (transferred["extension"], transferred["callee"]) == (BARESIP, "1002"), transferred
    assert transferred["caller"] == "1001", transferred
    assert transferred["disposition"] == "answered" and transferred["answer_ts"], transferred


@pytest.mark.parametrize("role", ["transferee", "target"])
def test_baresip_is_transferred_or_is_the_target_of_a_pjsip_transfer(
    pbx: tuple[PbxProcess, int], phones: Phones, tmp_path: Path, role: str
) -> None:
    """A PJSIP phone transfers. As the transferee, baresip takes the PBX's re-INVITE
    with the target's offer (RFC 3725 flow I) and its RTP reaches the target. As the
    target, baresip answers the PBX's INVITE without an offer with its own, and the
    transferred PJSIP caller and baresip hear each other.

    Only baresip's sending is counted when it is transferred: when the RTP it gets
    changes source (new SSRC) mid-call, baresip 1.0 (libre 1.1's jitter buffer) drops
    every packet whose sequence number is behind the old source's, about one run in
    two, a client limitation the PBX, out of the media path, cannot mend."""
    server, _ = pbx
    before = len(cdr_rows(server))
    one, two = phones.add("1001", USERS["1001"]), phones.add("1002", USERS["1002"])
    with running_baresip(tmp_path, server, BARESIP, USERS[BARESIP], tone=True) as ua:
        registered(phones, ua)
        if role == "transferee":  # 1001 called baresip, and transfers it to 1002
            transferor = in_call(phones, ua, one, baresip_calls=True)
            transferor.xfer(phones.uri("1002"), pj.CallOpParam(True))
            phones.until(lambda: bool(two.incoming), "1002 rings")
            other = two.incoming[0]
            two.answer(other)
        else:  # 1001 called 1002, which transfers 1001 to baresip
            other = one.call("1002")
            phones.until(lambda: bool(two.incoming), "1002 rings")
            transferor = two.incoming[0]
            two.answer(transferor)
            phones.until(lambda: other.confirmed, "1001 and 1002 talk")
            transferor.xfer(phones.uri(BARESIP), pj.CallOpParam(True))
        phones.until(lambda: transferor.disconnected, "the PBX hangs up the transferor")
        assert transferor.transfers[-1] == (200, True), transferor.transfers
        phones.until(lambda: other.confirmed, "baresip's new party is in the call")
        rx = other.rtp()[0]
        phones.until(lambda: other.rtp()[0] > rx + 25, "baresip's RTP reaches its new party")
        if role == "target":
            established = ua.seen("CALL_ESTABLISHED")
            assert established is not None and established["direction"] == "incoming"
            [invite] = sip_messages(ua, "INVITE sip:", from_port=server.port)
            assert "application/sdp" not in invite, invite  # the offer was baresip's
            sent = other.rtp()[1]
            phones.until(lambda: other.rtp()[1] > sent + 25, "1001 sends to baresip")
        else:
            # the re-INVITE with 1002's offer (then, maybe, PJSIP's own to settle a codec)
            invites = sip_messages(ua, "INVITE sip:", from_port=server.port)
            assert invites and "application/sdp" in invites[0], invites
        assert not other.refers and not transferor.refers, "the REFER was passed on"
        other.hangup(pj.CallOpParam(True))
        phones.until(lambda: ua.seen("CALL_CLOSED") is not None, "baresip gets the BYE")
    rows = closed_cdrs(server, before, 2)
    [transferred] = [r for r in rows if r["kind"] == "transferred"]
    target = "1002" if role == "transferee" else BARESIP
    assert (transferred["callee"], transferred["disposition"]) == (target, "answered"), rows


def test_baresip_transferring_to_a_premium_number_is_refused_before_the_carrier(
    pbx: tuple[PbxProcess, int], phones: Phones, tmp_path: Path
) -> None:
    """baresip's REFER to a premium number is answered 403 with the reason, and baresip
    reports the transfer failed. The PBX does not end the call: baresip 1.0's menu
    module hangs up itself on a failed transfer (later versions take the call back), and
    its BYE is what ends it. The carrier never sees an INVITE; the attempt is a blocked
    CDR and an alert (which suspends the extension: baresip is 1004 here, whom no
    other test uses)."""
    server, carrier_port = pbx
    before = len(cdr_rows(server))
    other = phones.add("1001", USERS["1001"])
    messages = tmp_path / "carrier-messages.log"
    with running_baresip(tmp_path, server, SUSPECT, USERS[SUSPECT], tone=True) as ua:
        registered(phones, ua)
        call = in_call(phones, ua, other, baresip_calls=True)
        carrier = start_sipp_uas(  # it would get the INVITE, were the transfer placed
            "call_uas.xml",
            carrier_port,
            tmp_path,
            local_ip=CARRIER,
            timeout=6,
            extra=["-trace_msg", "-message_file", str(messages)],
        )
        try:
            assert ua.command("transfer", PREMIUM)["ok"], ua.log()
            phones.until(
                lambda: ua.seen("TRANSFER_FAILED") is not None, "baresip hears the refusal"
            )
            failed = ua.seen("TRANSFER_FAILED")
            assert failed is not None and str(failed["param"]).startswith("403"), failed
            [refused] = [m for m in sip_messages(ua, "SIP/2.0 403 ") if " REFER\n" in m]
            assert PREMIUM in refused.split("\n", 1)[0], refused  # the reason, in the phrase
            phones.until(lambda: call.disconnected, "baresip hung up")
            assert not call.refers, "the REFER was passed on"
            assert sip_messages(ua, "BYE sip:", to_port=server.port), ua.log()
            assert not sip_messages(ua, "BYE sip:", from_port=server.port), ua.log()
        finally:
            finish_sipp_uas(carrier, tmp_path, timeout=15)
    log = messages.read_text(errors="replace") if messages.exists() else ""
    assert "INVITE sip:" not in log, log[:2000]
    rows = closed_cdrs(server, before, 2)
    [blocked] = [r for r in rows if r["kind"] == "transferred"]
    assert blocked["disposition"] == "blocked" and blocked["decision"] == "deny", blocked
    assert blocked["extension"] == SUSPECT and PREMIUM in str(blocked["reasons"]), blocked
    [original] = [r for r in rows if r["kind"] != "transferred"]
    assert original["disposition"] == "answered", original
    assert "caller hung up" in str(original["reasons"]), original  # baresip's BYE

    def alerted() -> list[dict[str, object]]:
        with sqlite3.connect(server.data_dir / "pbxwarden.db") as db:
            db.row_factory = sqlite3.Row
            found = db.execute("SELECT * FROM alerts WHERE extension = ?", (SUSPECT,))
            return [dict(r) for r in found if PREMIUM in str(r["summary"]) + str(r["reasons"])]

    deadline = time.monotonic() + 10
    while not alerted() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alerted(), "no alert about the refused transfer"


class Contacts:
    """baresip's address book as its ``contacts`` command lists it: each contact's
    presence (Unknown, Online, Offline, Busy) by number, asked at most every 0.2 s."""

    LINE = re.compile(r"(Unknown|Online|Offline|Busy)\S*\s+(\S+) <sip:")

    def __init__(self, ua: Baresip) -> None:
        self.ua = ua
        self.asked = 0.0
        self.states: dict[str, str] = {}
        self.history: dict[str, list[str]] = {}

    def state(self, number: str) -> str | None:
        if time.monotonic() - self.asked > 0.2:
            self.asked = time.monotonic()
            listing = str(self.ua.command("contacts").get("data", ""))
            for state, name in self.LINE.findall(listing):
                self.states[name] = state
                seen = self.history.setdefault(name, [])
                if not seen or seen[-1] != state:
                    seen.append(state)
        return self.states.get(number)

    def becomes(self, number: str, state: str) -> Callable[[], bool]:
        return lambda: self.state(number) == state


def test_baresip_watches_a_colleague_register_go_on_the_phone_and_come_back(
    pbx: tuple[PbxProcess, int], phones: Phones, tmp_path: Path
) -> None:
    """baresip's presence module subscribes to 1003 (presence, PIDF): offline while 1003
    is not registered, online once it is, busy while it is on a call with 1002 and
    online again when the call is over; every change came as a NOTIFY."""
    server, _ = pbx
    with running_baresip(tmp_path, server, BARESIP, USERS[BARESIP], watch=("1003",)) as ua:
        book = Contacts(ua)
        phones.until(book.becomes("1003", "Offline"), "1003 is offline")
        watched = phones.add("1003", USERS["1003"])
        phones.until(book.becomes("1003", "Online"), "1003 is online once registered")
        caller = phones.add("1002", USERS["1002"])
        placed = caller.call("1003")
        phones.until(lambda: bool(watched.incoming), "1003 rings")
        watched.answer(watched.incoming[0])
        phones.until(lambda: placed.confirmed, "1003 answered")
        phones.until(book.becomes("1003", "Busy"), "1003 is busy on the phone")
        placed.hangup(pj.CallOpParam(True))
        phones.until(lambda: watched.incoming[0].disconnected, "the call is over")
        phones.until(book.becomes("1003", "Online"), "1003 is available again")
        seen = book.history["1003"]
        seen = seen[1:] if seen[0] == "Unknown" else seen  # before the first NOTIFY
        assert seen == ["Offline", "Online", "Busy", "Online"], book.history
        notes = [
            re.findall(r"<note>([^<]*)</note>", m)[0]
            for m in sip_messages(ua, "NOTIFY sip:")
            if "Event: presence" in m
        ]
        # each state once, in order: no NOTIFY for what did not change
        assert notes == ["Offline", "Available", "On the phone", "Available"], notes
        # every NOTIFY was answered 200 by baresip: none was refused as unreadable
        answers = [m for m in sip_messages(ua, "SIP/2.0 ") if " NOTIFY\n" in m]
        assert answers and all(m.startswith("SIP/2.0 200 ") for m in answers), answers


def test_baresip_sees_the_lines_of_a_transfer(
    pbx: tuple[PbxProcess, int], phones: Phones, tmp_path: Path
) -> None:
    """baresip watches three colleagues while 1001 calls 1002 and 1002 transfers 1001
    to 1003 (PJSIP): the transferor is available once the transfer is done, the
    transferred caller and the target are on the phone, and all are available after."""
    server, _ = pbx
    lines = ("1001", "1002", "1003")
    with running_baresip(tmp_path, server, BARESIP, USERS[BARESIP], watch=lines) as ua:
        book = Contacts(ua)

        def shows(*states: str) -> Callable[[], bool]:
            return lambda: all(book.state(n) == s for n, s in zip(lines, states, strict=True))

        caller, reception, colleague = (phones.add(n, USERS[n]) for n in lines)
        phones.until(shows("Online", "Online", "Online"), "all three online")
        placed = caller.call("1002")
        phones.until(lambda: bool(reception.incoming), "1002 rings")
        taken = reception.incoming[0]
        reception.answer(taken)
        phones.until(shows("Busy", "Busy", "Online"), "1001 and 1002 on the phone")
        taken.xfer(phones.uri("1003"), pj.CallOpParam(True))
        phones.until(lambda: bool(colleague.incoming), "1003 rings")
        ringing = colleague.incoming[0]
        colleague.answer(ringing)
        phones.until(lambda: taken.disconnected, "the PBX hangs up the transferor")
        phones.until(shows("Busy", "Online", "Busy"), "the transferor is free, the others talk")
        placed.hangup(pj.CallOpParam(True))
        phones.until(lambda: ringing.disconnected, "the call is over")
        phones.until(shows("Online", "Online", "Online"), "all three available again")


def _normalized(response: str) -> str:
    """A response with what differs between any two (tags, branch, Call-ID, CSeq number,
    the URI's user) taken out."""
    out = re.sub(r";tag=[^;\s>]+", ";tag=X", response)
    out = re.sub(r"branch=[^;\s]+", "branch=X", out)
    out = re.sub(r"Call-ID: \S+", "Call-ID: X", out)
    out = re.sub(r"CSeq: \d+", "CSeq: N", out)
    return re.sub(r"sip:(2000|2999)@", "sip:N@", out)


def test_baresip_subscribing_to_another_tenants_extension_sees_a_missing_one(
    pbx: tuple[PbxProcess, int], tmp_path: Path
) -> None:
    """2000 exists in tenant ``other``; 2999 nowhere. baresip (default tenant) gets the
    same 404, byte for byte but for tags and ids, for both, and knows no more of
    either; its own colleague 1002 it may watch (200)."""
    server, _ = pbx
    with running_baresip(
        tmp_path, server, BARESIP, USERS[BARESIP], watch=("2000", "2999", "1002")
    ) as ua:
        deadline = time.monotonic() + 20
        while True:
            refused = [m for m in sip_messages(ua, "SIP/2.0 ") if " SUBSCRIBE\n" in m]
            finals = {
                target: [
                    m for m in refused if f"To: <sip:{target}@" in m and "SIP/2.0 401" not in m
                ]
                for target in ("2000", "2999", "1002")
            }
            if all(finals.values()):
                break
            assert time.monotonic() < deadline, f"SUBSCRIBEs unanswered: {finals}{ua.log()}"
            time.sleep(0.2)
        theirs, missing, ours = finals["2000"][0], finals["2999"][0], finals["1002"][0]
        assert theirs.startswith("SIP/2.0 404 "), theirs
        assert _normalized(theirs) == _normalized(missing), (theirs, missing)
        assert ours.startswith("SIP/2.0 200 "), ours
        book = Contacts(ua)
        assert book.state("2000") == book.state("2999") == "Unknown", book.states
        # the one it may watch got its state
        deadline = time.monotonic() + 10
        while book.state("1002") not in ("Offline", "Online"):
            assert time.monotonic() < deadline, book.states
            time.sleep(0.1)
        notified = {
            user
            for m in sip_messages(ua, "NOTIFY sip:")
            for user in re.findall(r"From: <sip:(\d+)@", m)
        }
        assert notified == {"1002"}, notified
