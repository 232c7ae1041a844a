"""Reliable provisional responses (RFC 3262), the pure state machines, on a fake clock."""

from __future__ import annotations

import itertools

import pytest

from pbxwarden.sip.message import Request, Response, make_response, parse_message
from pbxwarden.sip.reliable import (
    MAX_QUEUED,
    PrackMatch,
    RAck,
    Received,
    ReliableReceiver,
    ReliableSender,
    parse_rack,
    rseq_of,
)

T1, T2 = 0.5, 4.0
CSEQ = 2


def invite() -> Request:
    message = parse_message(
        (
            "INVITE sip:2000@pbx.example SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK74bf9\r\n"
            "From: <sip:1000@pbx.example>;tag=1928301774\r\n"
            "To: <sip:2000@pbx.example>\r\n"
            "Call-ID: a84b4c76e66710\r\n"
            f"CSeq: {CSEQ} INVITE\r\n"
            "Require: 100rel\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(message, Request)
    return message


def provisional(status: int = 180) -> Response:
    return make_response(invite(), status, to_tag="pbx-tag")


def rack(rseq: int, cseq: int = CSEQ, method: str = "INVITE") -> RAck:
    return RAck(rseq, cseq, method)


def test_a_reliable_provisional_carries_require_and_rseq() -> None:
    sender = ReliableSender(CSEQ, 4711, T1, T2)
    out = sender.send(provisional(), sdp=False, now=0.0)
    assert out is not None
    assert out.headers.get_all("Require") == ["100rel"]
    assert out.headers.get("RSeq") == "4711"
    assert rseq_of(out) == 4711
    assert b"RSeq: 4711" in out.to_bytes()


def test_retransmitted_at_t1_doubling_up_to_t2_then_given_up_at_64_t1() -> None:
    sender = ReliableSender(CSEQ, 1, T1, T2)
    first = sender.send(provisional(), sdp=False, now=0.0)
    times = []
    now = 0.0
    while not sender.timed_out:
        deadline = sender.deadline
        assert deadline is not None and deadline > now
        now = deadline
        again = sender.poll(now)
        if again is not None:
            assert again is first  # the same response, same RSeq
            times.append(now)
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]  # T1, then 2T1, 4T1, T2 apart
    assert all(b - a == T2 for a, b in itertools.pairwise(times[3:]))
    assert now == 64 * T1 and sender.deadline is None
    assert sender.poll(now + 10) is None


def test_a_poll_before_the_deadline_sends_nothing() -> None:
    sender = ReliableSender(CSEQ, 1, T1, T2)
    sender.send(provisional(), sdp=False, now=10.0)
    assert sender.poll(10.4) is None
    assert sender.poll(10.5) is not None
    assert sender.deadline == 11.5


def test_a_matching_prack_stops_retransmissions() -> None:
    sender = ReliableSender(CSEQ, 77, T1, T2)
    sender.send(provisional(), sdp=False, now=0.0)
    assert sender.prack(rack(77), 0.2) == (PrackMatch.MATCHED, None)
    assert sender.deadline is None and sender.poll(5.0) is None and not sender.timed_out
    assert sender.acknowledged == 1
    # the same PRACK again (a new transaction): nothing unacknowledged matches it
    assert sender.prack(rack(77), 0.3) == (PrackMatch.UNMATCHED, None)


@pytest.mark.parametrize(
    "wrong", [rack(78), rack(76), rack(77, cseq=CSEQ + 1), rack(77, method="UPDATE")]
)
def test_a_prack_that_does_not_match_is_unmatched(wrong: RAck) -> None:
    sender = ReliableSender(CSEQ, 77, T1, T2)
    sender.send(provisional(), sdp=False, now=0.0)
    assert sender.prack(wrong, 0.1) == (PrackMatch.UNMATCHED, None)
    assert sender.poll(0.5) is not None  # still retransmitted


def test_a_prack_before_anything_was_sent_is_unmatched() -> None:
    assert ReliableSender(CSEQ, 5).prack(rack(5), 0.0)[0] is PrackMatch.UNMATCHED


def test_one_unacknowledged_at_a_time_the_next_goes_on_the_prack() -> None:
    sender = ReliableSender(CSEQ, 100, T1, T2)
    ringing = sender.send(provisional(180), sdp=False, now=0.0)
    assert ringing is not None and ringing.headers.get("RSeq") == "100"
    assert sender.send(provisional(183), sdp=True, now=0.1) is None  # queued
    assert sender.send(provisional(181), sdp=False, now=0.2) is None
    matched, progress = sender.prack(rack(100), 0.3)
    assert matched is PrackMatch.MATCHED
    assert progress is not None and progress.status == 183
    assert progress.headers.get("RSeq") == "101"  # one more, exactly
    assert sender.holds_answer  # it carries SDP
    assert sender.deadline == pytest.approx(0.8)  # its own schedule, from when it went
    matched, forwarded = sender.prack(rack(101), 0.4)
    assert forwarded is not None and forwarded.headers.get("RSeq") == "102"
    assert not sender.holds_answer
    assert sender.prack(rack(102), 0.5) == (PrackMatch.MATCHED, None)


def test_the_queue_is_bounded() -> None:
    sender = ReliableSender(CSEQ, 1, T1, T2)
    sender.send(provisional(), sdp=False, now=0.0)
    for _ in range(MAX_QUEUED + 5):
        sender.send(provisional(), sdp=False, now=0.0)
    assert len(sender.queue) == MAX_QUEUED


def test_a_timeout_drops_the_queue_and_refuses_more() -> None:
    sender = ReliableSender(CSEQ, 1, T1, T2)
    sender.send(provisional(), sdp=True, now=0.0)
    sender.send(provisional(183), sdp=False, now=0.0)
    assert sender.holds_answer
    sender.poll(64 * T1)
    assert sender.timed_out and not sender.queue and not sender.holds_answer
    assert sender.send(provisional(), sdp=False, now=40.0) is None


def test_stop_after_a_final_response_keeps_matching_prack() -> None:
    sender = ReliableSender(CSEQ, 9, T1, T2)
    sender.send(provisional(), sdp=False, now=0.0)
    sender.send(provisional(183), sdp=False, now=0.0)
    sender.stop()
    assert sender.deadline is None and sender.poll(1.0) is None and not sender.queue
    assert sender.prack(rack(9), 2.0) == (PrackMatch.MATCHED, None)  # nothing follows
    assert sender.send(provisional(), sdp=False, now=3.0) is None


def test_only_101_to_199_and_a_first_rseq_in_range() -> None:
    sender = ReliableSender(CSEQ, 1)
    with pytest.raises(ValueError):
        sender.send(make_response(invite(), 100), sdp=False, now=0.0)
    with pytest.raises(ValueError):
        sender.send(make_response(invite(), 200), sdp=False, now=0.0)
    for first in (0, 2**31):
        with pytest.raises(ValueError):
            ReliableSender(CSEQ, first)


def test_an_existing_require_gains_100rel_once() -> None:
    response = provisional()
    response.headers.add("Require", "timer")
    out = ReliableSender(CSEQ, 3).send(response, sdp=False, now=0.0)
    assert out is not None and out.headers.get_all("Require") == ["timer", "100rel"]
    again = provisional()
    again.headers.add("Require", "100rel")
    out = ReliableSender(CSEQ, 3).send(again, sdp=False, now=0.0)
    assert out is not None and out.headers.get_all("Require") == ["100rel"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("776656 1 INVITE", RAck(776656, 1, "INVITE")),
        ("  5   2  invite ", RAck(5, 2, "INVITE")),
        ("4294967295 7 INVITE", RAck(2**32 - 1, 7, "INVITE")),
        ("0 1 INVITE", None),
        ("4294967296 1 INVITE", None),
        ("1 INVITE", None),
        ("x 1 INVITE", None),
        ("1 2 INVITE extra", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_rack(value: str | None, expected: RAck | None) -> None:
    assert parse_rack(value) == expected


def test_rseq_of_needs_require_100rel_and_a_valid_rseq() -> None:
    plain = provisional()
    plain.headers.add("RSeq", "5")
    assert rseq_of(plain) is None  # no Require: 100rel: not reliable
    reliable = provisional()
    reliable.headers.add("Require", "timer, 100REL")
    reliable.headers.add("RSeq", "5")
    assert rseq_of(reliable) == 5
    reliable.headers.set("RSeq", "five")
    assert rseq_of(reliable) is None
    final = make_response(invite(), 200, to_tag="t")
    final.headers.add("Require", "100rel")
    final.headers.add("RSeq", "5")
    assert rseq_of(final) is None


def test_the_receiver_takes_in_order_and_ignores_repeats_and_gaps() -> None:
    receiver = ReliableReceiver()
    assert receiver.receive(8000) is Received.NEW  # the first: any number
    assert receiver.receive(8000) is Received.REPEAT  # its retransmission
    assert receiver.receive(8002) is Received.GAP  # 8001 is missing
    assert receiver.receive(8001) is Received.NEW
    assert receiver.receive(7999) is Received.REPEAT
    assert receiver.receive(8002) is Received.NEW
    assert receiver.last == 8002
