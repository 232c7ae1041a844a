"""The new-call lane: calls in progress first, new calls in order, late ones shed."""

from __future__ import annotations

from pbxwarden.sip.transaction import Address
from pbxwarden.transport.ingress import Ingress, Lane, has_credentials, new_call

SRC = Address("UDP", "192.0.2.10", 5060)


def invite(to_tag: str = "", auth: bool = False, compact: bool = False) -> bytes:
    to = f"{'t' if compact else 'To'}: <sip:1001@pbx>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        "INVITE sip:1001@pbx SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1",
        "From: <sip:1000@pbx>;tag=a",
        to,
        "Call-ID: c1",
        "CSeq: 1 INVITE",
    ]
    if auth:
        lines.append('Authorization: Digest username="1000", realm="pbx"')
    body = "v=0\r\nTo: <sip:x>;tag=not-a-header\r\n"  # the body is never looked at
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def test_only_invites_that_start_a_call_and_cancels_are_new_calls() -> None:
    assert new_call(invite())
    assert new_call(invite(compact=True))
    assert not new_call(invite("b7"))  # a re-INVITE in a dialog
    assert not new_call(invite("b7", compact=True))
    assert not new_call(invite(auth=True))  # answers our challenge: an admitted attempt
    assert new_call(b"CANCEL sip:1001@pbx SIP/2.0\r\nTo: <sip:1001@pbx>\r\n\r\n")
    for other in (
        b"ACK sip:x SIP/2.0\r\n\r\n",
        b"BYE sip:x SIP/2.0\r\n\r\n",
        b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n\r\n",
        b"REGISTER sip:pbx SIP/2.0\r\n\r\n",
    ):
        assert not new_call(other)
    assert has_credentials(invite(auth=True)) and not has_credentials(invite())


def test_everything_but_new_calls_is_handled_at_once() -> None:
    lane = Ingress(wait=0.25)
    assert lane.offer(b"BYE sip:x SIP/2.0\r\n\r\n", SRC, 0.0) is Lane.NOW
    assert lane.offer(invite("b7"), SRC, 0.0) is Lane.NOW
    assert len(lane) == 0


def test_new_calls_wait_in_order_and_are_shed_once_late() -> None:
    lane = Ingress(wait=0.25)
    first, cancel, late = invite(), b"CANCEL sip:1001@pbx SIP/2.0\r\n\r\n", invite()
    assert lane.offer(first, SRC, 0.0) is Lane.QUEUED
    assert lane.offer(cancel, SRC, 0.0) is Lane.QUEUED
    assert lane.offer(late, SRC, 0.1) is Lane.QUEUED
    assert lane.take(0.2) == (first, SRC, False)  # in time
    assert lane.take(0.9) == (cancel, SRC, False)  # a CANCEL is never shed, nor overtakes
    assert lane.take(0.9) == (late, SRC, True)
    assert lane.take(1.0) is None
    assert lane.shed == 1


def test_an_invite_answering_our_challenge_is_served_at_once() -> None:
    assert Ingress(wait=0.25).offer(invite(auth=True), SRC, 0.0) is Lane.NOW


def test_while_calls_in_progress_wait_to_be_read_only_late_calls_leave_the_lane() -> None:
    lane = Ingress(wait=0.25)
    first, second = invite(), invite()
    lane.offer(first, SRC, 0.0)
    lane.offer(second, SRC, 0.2)
    assert lane.take(0.1, admit=False) is None  # not late: it waits for its turn
    assert lane.take(0.3, admit=False) == (first, SRC, True)  # late: shed
    assert lane.take(0.3, admit=False) is None
    assert lane.take(0.3) == (second, SRC, False)


def test_past_the_limit_a_new_invite_is_shed_on_arrival_but_a_cancel_waits() -> None:
    lane = Ingress(wait=0.25, limit=2)
    assert lane.offer(invite(), SRC, 0.0) is Lane.QUEUED
    assert lane.offer(invite(), SRC, 0.0) is Lane.QUEUED
    assert lane.offer(invite(), SRC, 0.0) is Lane.SHED
    assert lane.offer(b"CANCEL sip:x SIP/2.0\r\n\r\n", SRC, 0.0) is Lane.QUEUED


def test_wait_zero_keeps_arrival_order() -> None:
    lane = Ingress(wait=0)
    assert lane.offer(invite(), SRC, 0.0) is Lane.NOW
