"""Reliable provisional responses (RFC 3262) on both legs of a call, for the B2BUA core.

The caller's leg (the PBX is the UAS of its INVITE): a caller that requires ``100rel``
gets every provisional but 100 reliably; one that only supports it gets those with SDP
(early media: the callee's answer must not be lost, and the caller then knows the
offer/answer is done) reliably, and every later one too (they must not overtake the
reliable one), the rest as before. A reliable provisional carries ``Require: 100rel``
and ``RSeq``, is resent (T1 doubling, at most T2) until the caller's PRACK, and one at
a time: later ones wait in turn. No PRACK within 64*T1: the call fails with 500 and its
B legs are cancelled, like any caller failure. The callee's 2xx waits for the PRACK of
an unacknowledged provisional with SDP (RFC 3262 3): the callee is already in the call
then, and gets a BYE if the caller goes meanwhile. An offer never travels in a
provisional through the PBX: when the caller's INVITE had no SDP (delayed offer), its
reliable provisionals carry none, and the offer comes in the 2xx as without 100rel. A
PRACK with SDP (a new offer: the PBX cannot renegotiate an early dialog it joins to
another) acknowledges the provisional all the same and is answered 488; one that
acknowledges nothing of ours (an unknown dialog, a wrong RAck) is answered 481.

The B legs (the PBX is the UAC): each INVITE with an offer says ``Supported: 100rel``
(a delayed-offer INVITE does not: a callee's offer in a reliable provisional would need
the caller's answer in our PRACK); a reliable provisional of a callee is PRACKed in its
early dialog (each fork, each To tag its own) and passed on to the caller, reliably or
not as the caller's leg says; retransmissions and provisionals out of order are neither
PRACKed nor passed on (RFC 3262 4). The dialog the callee's 2xx confirms counts its
CSeq on from the PRACKs.

The protocol state is the pure :mod:`pbxwarden.sip.reliable`; this is its glue, and
talks to the core the way :mod:`pbxwarden.pbx.session_timer` does: a few calls from it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from pbxwarden.pbx.call import Call, Cancellable
from pbxwarden.pbx.media import is_sdp
from pbxwarden.sip.dialog import Dialog
from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.message import Headers, Request, Response, Via, make_response
from pbxwarden.sip.reliable import (
    MAX_FIRST_RSEQ,
    TAG,
    PrackMatch,
    Received,
    ReliableReceiver,
    ReliableSender,
    option_tags,
    parse_rack,
    rseq_of,
)
from pbxwarden.sip.transaction import Address, TransactionKey

if TYPE_CHECKING:
    from pbxwarden.pbx.b2bua import B2bua

log = structlog.get_logger("pbxwarden.calls")

NO_PRACK = "no PRACK from the caller for a reliable provisional response"


@dataclass(eq=False)
class _CallerLeg:
    sender: ReliableSender
    timer: Cancellable | None = None
    held: Callable[[], None] | None = None  # the callee's answer, waiting for a PRACK


@dataclass(eq=False)
class _EarlyDialog:
    call: Call
    dialog: Dialog  # the callee's early dialog: PRACKs go in it, its CSeq counts on
    receiver: ReliableReceiver


def caller_wants(request: Request) -> str | None:
    """ "required" or "supported" when the caller's INVITE names 100rel, else None."""
    if TAG in option_tags(request, "Require"):
        return "required"
    return "supported" if TAG in option_tags(request, "Supported") else None


class Prack:
    """Owned by the core: the reliable provisionals of every call, both ways."""

    def __init__(self, core: B2bua) -> None:
        self.core = core
        self.callers: dict[int, _CallerLeg] = {}  # by call token
        self.by_dialog: dict[tuple[str, str], Call] = {}  # (Call-ID, our tag): the caller's
        self.early: dict[tuple[TransactionKey, str], _EarlyDialog] = {}  # (B INVITE, To tag)

    # -- the caller's leg ----------------------------------------------------------------

    def to_caller(self, call: Call, response: Response) -> None:
        """Send a provisional response to the caller: reliably when its leg says so."""
        port = self.core.port
        wants = caller_wants(call.a_request)
        leg = self.callers.get(call.token)
        sdp = is_sdp(response.headers.get("Content-Type"), response.body)
        offered = bool(call.a_request.body)
        reliable = wants == "required" or leg is not None or (wants is not None and sdp and offered)
        if call.a_key is None or not reliable or call.answered is not None:
            port.respond(call.a_key, call.a_request, response)
            return
        if sdp and not offered:  # it would be an offer: that goes in the 2xx
            headers = Headers((n, v) for n, v in response.headers if n != "Content-Type")
            response.headers, response.body, sdp = headers, b"", False
        if leg is None:
            first = 1 + secrets.randbelow(MAX_FIRST_RSEQ)
            sender = ReliableSender(
                call.a_request.cseq.number, first, self.core.settings.t1, self.core.settings.t2
            )
            leg = self.callers[call.token] = _CallerLeg(sender)
            self.by_dialog[(call.a_request.call_id, call.a_tag)] = call
        out = leg.sender.send(response, sdp, port.wall_time())
        if out is not None:
            port.respond(call.a_key, call.a_request, out)
            self._arm(call, leg)

    def _arm(self, call: Call, leg: _CallerLeg) -> None:
        if leg.timer is not None:
            leg.timer.cancel()
            leg.timer = None
        deadline = leg.sender.deadline
        if deadline is not None:
            delay = max(0.0, deadline - self.core.port.wall_time())
            leg.timer = self.core.port.schedule(delay, lambda: self._due(call, leg))

    def _due(self, call: Call, leg: _CallerLeg) -> None:
        leg.timer = None
        if call.ended or self.callers.get(call.token) is not leg:
            return
        if call.answered is not None:  # the 2xx went out: no more retransmissions
            leg.sender.stop()
            return
        again = leg.sender.poll(self.core.port.wall_time())
        if leg.sender.timed_out:
            log.warning("no PRACK from the caller", call_id=call.id)
            self.core.cancel_b(call)
            self.core.fail(call, 500, NO_PRACK, disposition="failed")
            return
        if again is not None:
            self.core.port.respond(call.a_key, call.a_request, again)
        self._arm(call, leg)

    def received(self, request: Request, key: TransactionKey | None) -> None:
        """A PRACK (in an early or confirmed dialog): 200 when it acknowledges a
        reliable provisional of ours, 481 when it acknowledges nothing."""
        port = self.core.port
        call = self.by_dialog.get((request.call_id, request.to.tag or ""))
        leg = self.callers.get(call.token) if call is not None else None
        if call is None or leg is None or request.from_.tag != call.a_request.from_.tag:
            port.respond(key, request, make_response(request, 481))
            return
        rack = parse_rack(request.headers.get("RAck"))
        if rack is None:
            reason = "Bad Request (RAck missing or unreadable)"
            port.respond(key, request, make_response(request, 400, reason))
            return
        matched, following = leg.sender.prack(rack, port.wall_time())
        if matched is PrackMatch.UNMATCHED:
            port.respond(key, request, make_response(request, 481))
            return
        if is_sdp(request.headers.get("Content-Type"), request.body):
            reason = "Not Acceptable Here (no offer in a PRACK through this PBX)"
            port.respond(key, request, make_response(request, 488, reason))
        else:
            port.respond(key, request, make_response(request, 200))
        if following is not None and not call.ended:
            port.respond(call.a_key, call.a_request, following)
        self._arm(call, leg)
        if leg.held is not None and not leg.sender.holds_answer and not call.ended:
            held, leg.held = leg.held, None
            held()

    def hold_answer(self, call: Call, answer: Callable[[], None]) -> bool:
        """The callee answered: True when the caller's 2xx must wait for a PRACK
        (``answer`` then runs when it comes); else the 2xx goes now."""
        leg = self.callers.get(call.token)
        if leg is None:
            return False
        if not leg.sender.holds_answer:
            leg.sender.stop()
            return False
        log.info("answer waits for the caller's PRACK", call_id=call.id)
        leg.sender.queue.clear()  # provisionals after the answer: pointless
        leg.held = answer
        return True

    def drop_held(self, call: Call) -> bool:
        """The caller's leg fails while the callee's answer waited for a PRACK: True
        (the callee is in the call: it needs a BYE, not a CANCEL)."""
        leg = self.callers.get(call.token)
        if leg is None or leg.held is None:
            return False
        leg.held = None
        return True

    # -- the callee's legs ---------------------------------------------------------------

    def from_callee(
        self,
        call: Call,
        key: TransactionKey | None,
        invite: Request | None,
        dest: Address | None,
        response: Response,
    ) -> bool:
        """A provisional response to a B leg's INVITE: a reliable one is PRACKed in its
        early dialog. False when it is not to be passed on (a retransmission)."""
        rseq = rseq_of(response)
        tag = response.to.tag
        if rseq is None or not tag or key is None or invite is None or dest is None:
            return True
        early = self.early.get((key, tag))
        if early is None:
            try:
                dialog = Dialog.as_uac(invite, response)
            except ParseError:
                return True
            early = self.early[(key, tag)] = _EarlyDialog(call, dialog, ReliableReceiver())
        got = early.receiver.receive(rseq)
        if got is not Received.NEW:
            log.debug("reliable provisional not acknowledged", call_id=call.id, got=got.value)
            return False
        host, port = self.core.port.local_address(dest.transport)
        prack = early.dialog.new_request(
            "PRACK",
            Via(dest.transport, host, port, {"rport": None}),
            headers=[("RAck", f"{rseq} {response.cseq.number} {response.cseq.method}")],
        )

        def answered(final: Response | None) -> None:
            if final is None or final.status >= 300:
                status = final.status if final is not None else None
                log.warning("callee refused our PRACK", call_id=call.id, status=status)

        self.core.request(prack, dest, answered)
        return True

    def confirmed(self, key: TransactionKey | None, dialog: Dialog) -> None:
        """A callee's 2xx confirmed ``dialog``: its CSeq counts on from our PRACKs."""
        early = self.early.get((key, dialog.remote_tag)) if key is not None else None
        if early is not None:
            dialog.local_cseq = max(dialog.local_cseq, early.dialog.local_cseq)

    def forget(self, call: Call) -> None:
        leg = self.callers.pop(call.token, None)
        if leg is not None and leg.timer is not None:
            leg.timer.cancel()
        self.by_dialog.pop((call.a_request.call_id, call.a_tag), None)
        for early_key in [k for k, e in self.early.items() if e.call is call]:
            del self.early[early_key]
