"""Reliable provisional responses (RFC 3262, 100rel and PRACK), sans-I/O.

Two pure state machines, fed messages and the time (any monotonic seconds) like
:mod:`pbxwarden.sip.transaction`, so their schedules are testable with plain numbers:

- :class:`ReliableSender`, the UAS side of one INVITE: stamps each provisional response
  it is given with ``Require: 100rel`` and ``RSeq`` (a random start, then one more each),
  sends at most one unacknowledged at a time (later ones wait in order, RFC 3262 3),
  says when to retransmit it (T1 doubling, at most T2) and when to give up (64*T1 with
  no PRACK: the INVITE must then be rejected with a 5xx), and matches PRACKs by their
  ``RAck`` (RSeq, CSeq number, method).
- :class:`ReliableReceiver`, the UAC side of one early dialog: which reliable
  provisionals are new (to be PRACKed and passed on) and which are retransmissions or
  out of order (RFC 3262 4: neither is PRACKed nor passed on).

The PRACK request itself is an ordinary non-INVITE transaction: its retransmissions
are the transaction layer's. What the B2BUA does with all this is
:mod:`pbxwarden.pbx.prack`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from pbxwarden.sip.message import Message, Response

TAG = "100rel"
MAX_RSEQ = 2**32 - 1  # RFC 3262 7.1: RSeq is 1 to 2**32 - 1
MAX_FIRST_RSEQ = 2**31 - 1  # the first is chosen in 1 to 2**31 - 1 (room to count up)
MAX_QUEUED = 8  # provisionals waiting behind an unacknowledged one; more are dropped


def option_tags(message: Message, name: str) -> set[str]:
    """The option tags of ``Require`` or ``Supported`` (any number of fields), lowercase."""
    return {
        t.strip().lower() for v in message.headers.get_all(name) for t in v.split(",") if t.strip()
    }


def _number(text: str, limit: int) -> int | None:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if 0 < value <= limit else None


def rseq_of(response: Response) -> int | None:
    """The RSeq of a reliable provisional response (``Require: 100rel`` and a valid
    ``RSeq``), or None: the response is an ordinary, unreliable one."""
    if not 100 < response.status < 200 or TAG not in option_tags(response, "Require"):
        return None
    value = response.headers.get("RSeq")
    return _number(value, MAX_RSEQ) if value is not None else None


@dataclass(frozen=True, slots=True)
class RAck:
    rseq: int
    cseq: int
    method: str

    def __str__(self) -> str:
        return f"{self.rseq} {self.cseq} {self.method}"


def parse_rack(value: str | None) -> RAck | None:
    """``RAck: 776656 1 INVITE`` (RFC 3262 7.2), or None when absent or unreadable."""
    if value is None:
        return None
    parts = value.split()
    if len(parts) != 3:
        return None
    rseq, cseq = _number(parts[0], MAX_RSEQ), _number(parts[1], MAX_RSEQ)
    if rseq is None or cseq is None:
        return None
    return RAck(rseq, cseq, parts[2].upper())


@dataclass(slots=True)
class _Outstanding:
    response: Response
    rseq: int
    sdp: bool  # it carries a session description (the 2xx waits for its PRACK)
    sent: float  # first sent
    interval: float  # until the next retransmission
    due: float  # the next retransmission
    retransmitting: bool = True


class PrackMatch(Enum):
    """How a PRACK matched (:meth:`ReliableSender.prack`)."""

    MATCHED = "matched"  # it acknowledges the outstanding provisional: answer 2xx
    UNMATCHED = "unmatched"  # nothing of ours it could acknowledge: answer 481


class ReliableSender:
    """The reliable provisionals of one INVITE server transaction (RFC 3262 3).

    ``send`` stamps a provisional and returns it when it may go now (None: it waits
    behind the unacknowledged one); ``prack`` takes a PRACK's RAck; ``poll`` returns
    the retransmission due at ``now``, if any; ``deadline`` is when to poll next. When
    ``timed_out`` turns True, no PRACK came in 64*T1: reject the INVITE with a 5xx.
    ``stop`` once a final response went out: no more retransmissions nor queued
    provisionals, though a PRACK for the outstanding one still matches.
    """

    def __init__(self, invite_cseq: int, first_rseq: int, t1: float = 0.5, t2: float = 4.0) -> None:
        if not 0 < first_rseq <= MAX_FIRST_RSEQ:
            raise ValueError("the first RSeq must be 1 to 2**31 - 1")
        self.invite_cseq = invite_cseq
        self.t1, self.t2 = t1, t2
        self._next_rseq = first_rseq
        self.outstanding: _Outstanding | None = None
        self.queue: deque[tuple[Response, bool]] = deque()
        self.acknowledged = 0  # PRACKs matched
        self.timed_out = False
        self.stopped = False

    def send(self, response: Response, sdp: bool, now: float) -> Response | None:
        """``response`` (a 101-199, changed in place) with Require: 100rel and its RSeq,
        to send now; None when it is queued (or dropped: the queue is full, or a final
        response went out already)."""
        if not 100 < response.status < 200:
            raise ValueError("only 101-199 are sent reliably")
        if self.stopped or self.timed_out:
            return None
        if self.outstanding is not None:
            if len(self.queue) < MAX_QUEUED:
                self.queue.append((response, sdp))
            return None
        return self._start(response, sdp, now)

    def _start(self, response: Response, sdp: bool, now: float) -> Response:
        rseq = self._next_rseq
        self._next_rseq = min(rseq + 1, MAX_RSEQ)
        tags = option_tags(response, "Require")
        if TAG not in tags:
            response.headers.add("Require", TAG)
        response.headers.set("RSeq", str(rseq))
        self.outstanding = _Outstanding(response, rseq, sdp, now, self.t1, now + self.t1)
        return response

    def prack(self, rack: RAck, now: float) -> tuple[PrackMatch, Response | None]:
        """A PRACK's RAck: whether it matched, and the next provisional to send now (the
        first one queued behind the acknowledged one)."""
        out = self.outstanding
        if (
            out is None
            or rack.rseq != out.rseq
            or rack.cseq != self.invite_cseq
            or rack.method != "INVITE"
        ):
            return PrackMatch.UNMATCHED, None
        self.outstanding = None
        self.acknowledged += 1
        if self.stopped or self.timed_out or not self.queue:
            return PrackMatch.MATCHED, None
        response, sdp = self.queue.popleft()
        return PrackMatch.MATCHED, self._start(response, sdp, now)

    @property
    def deadline(self) -> float | None:
        out = self.outstanding
        if out is None or not out.retransmitting or self.timed_out:
            return None
        return min(out.due, out.sent + 64 * self.t1)

    def poll(self, now: float) -> Response | None:
        """The retransmission due at ``now``, if any; sets ``timed_out`` at 64*T1."""
        out = self.outstanding
        if out is None or not out.retransmitting or self.timed_out:
            return None
        if now >= out.sent + 64 * self.t1:
            self.timed_out = True
            self.queue.clear()
            return None
        if now < out.due:
            return None
        out.interval = min(out.interval * 2, self.t2)
        out.due = now + out.interval
        return out.response

    @property
    def holds_answer(self) -> bool:
        """An unacknowledged provisional carries SDP: a 2xx must wait for its PRACK
        (RFC 3262 3); a non-2xx final may go at once."""
        return self.outstanding is not None and self.outstanding.sdp and not self.timed_out

    def stop(self) -> None:
        """A final response went out: stop retransmitting (RFC 3262 3 SHOULD NOT go on),
        forget what is queued; a PRACK for the outstanding one still matches."""
        self.stopped = True
        self.queue.clear()
        if self.outstanding is not None:
            self.outstanding.retransmitting = False


class Received(Enum):
    NEW = "new"  # in order: PRACK it and pass it on
    REPEAT = "repeat"  # a retransmission (this RSeq or a lower one): ignore
    GAP = "gap"  # one or more missing before it: not acknowledged (RFC 3262 4)


class ReliableReceiver:
    """The reliable provisionals of one early dialog, as their UAC sees them (RFC 3262 4):
    the first may have any RSeq, each later one exactly one more."""

    def __init__(self) -> None:
        self.last: int | None = None

    def receive(self, rseq: int) -> Received:
        if self.last is None or rseq == self.last + 1:
            self.last = rseq
            return Received.NEW
        if rseq <= self.last:
            return Received.REPEAT
        return Received.GAP
