"""Call transfer (REFER, RFC 3515 and RFC 5589), performed by the PBX itself.

A phone in a call asks for the other party to be transferred to a number. The REFER is
never passed on: the other party may be a carrier, which would dial whatever it says at
our cost (the fraud path other PBXs left open). The target is judged as a new call paid
by the transferring extension, kind ``transferred``, through the same authorization
hook as every call and diversion: a transfer to a premium or forbidden number is
answered 403 with the reason, recorded in the CDRs and alerted like a diversion.
Carriers' REFERs are refused.

Blind transfer of the transferee C by the transferor R, in call O:

1. R's REFER: 202 Accepted and a NOTIFY ``100 Trying`` (the implicit subscription,
   RFC 3515 2.4.4), or 403 with the reason.
2. C's leg moves out of O into a new call N, whose a leg is that dialog; N's B leg to
   the target is placed without an offer.
3. The target answers with an offer: C is re-INVITEd with it and C's answer goes to
   the target in the ACK (RFC 3725 flow I), so hold, codecs and media ports are
   negotiated anew between the two parties; media is anchored afresh for N.
4. R gets NOTIFY ``200 OK`` and a BYE. If the target fails, R learns why and C goes
   back to R's call (still held by R's phone, which takes it back); if R has hung up
   meanwhile, C is hung up.

O stays accounted for (CDR, guard) until C's leg ends, since that leg may be the costly
one (a carrier leg R placed); N's CDR and cost are the transfer's, paid by R.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import unquote

import structlog

from pbxwarden.pbx import caller_id as cid
from pbxwarden.pbx.call import Call, other_leg
from pbxwarden.pbx.media import MediaError, is_sdp
from pbxwarden.pbx.numbers import Destination, classify, emergency_number
from pbxwarden.pbx.policy import CallAttempt
from pbxwarden.sip.dialog import Dialog
from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.message import (
    REASON_PHRASES,
    Request,
    Response,
    Via,
    make_response,
    safe_reason,
)
from pbxwarden.sip.transaction import Address, TransactionKey
from pbxwarden.sip.uri import parse_name_addr
from pbxwarden.store.db import ExtensionAuth

if TYPE_CHECKING:
    from pbxwarden.pbx.calls import CallManager

log = structlog.get_logger("pbxwarden.transfer")

KIND = "transferred"
SUBSCRIPTION_EXPIRES = 60  # seconds the implicit refer subscription lasts (RFC 3515)


@dataclass(eq=False)
class Transfer:
    """One transfer in progress: the :class:`~pbxwarden.pbx.call.Joined` feature of N."""

    feature: Transfers
    origin: Call  # O, the call the REFER came in
    transferor: str  # R's leg of O
    by: ExtensionAuth  # R
    target: str
    transferee: str  # C's leg of O
    dialog: Dialog  # C's dialog with the PBX, now N's a leg
    reinvite: Request | None = None  # C's re-INVITE with the target's offer
    final_sent: bool = False
    done: bool = False  # C and the target are joined

    # -- Joined: what the core hands over -------------------------------------------------

    def progress(self, call: Call, response: Response) -> None:
        if response.status in (180, 183):
            self.notify(response.status, response.reason or "Ringing", final=False)

    def answered(self, call: Call, response: Response) -> None:
        """The target answered with its offer: C gets it in a re-INVITE."""
        core = self.feature.core
        now = core.port.wall_time()
        call.answered = now
        core.policy.on_call_answer(call.token, now)
        ctype = response.headers.get("Content-Type")
        assert call.b_dest is not None
        try:
            if not is_sdp(ctype, response.body):
                raise MediaError("the target answered without an SDP offer")
            offer = core.anchored(call, "b", ctype, response.body, call.b_dest.host)
        except MediaError as exc:
            self._not_joined(call, 488, f"the transfer target's media: {exc}")
            return
        dest = call.a_source
        host, port = core.port.local_address(dest.transport)
        self.reinvite = self.dialog.new_request(
            "INVITE",
            Via(dest.transport, host, port, {"rport": None}),
            contact=str(core.contact(dest.transport)),
            body=offer,
            headers=[("Content-Type", ctype or "application/sdp")],
        )
        core.request(self.reinvite, dest, lambda r: self._transferee_answered(call, r))

    def ended(self, call: Call, disposition: str, sip_code: int) -> None:
        core = self.feature.core
        origin = self.origin
        if self.done:  # the transfer was complete: O's moved leg is over
            if origin.finish_pending is not None:
                core.finish(origin, *origin.finish_pending)
            return
        phrase = REASON_PHRASES.get(sip_code, "Error") if sip_code >= 300 else "Request Terminated"
        self.notify(sip_code if sip_code >= 300 else 487, phrase, final=True)
        if call.hung_up_by == "a" or origin.finish_pending is not None or origin.ended:
            # C hung up, or R did: nobody is left for the other one
            if call.hung_up_by != "a":
                core.bye(call, "a")
            origin.moved_to = None
            if origin.finish_pending is not None:
                core.finish(origin, *origin.finish_pending)
            else:
                core.hang_up(origin, "the transferred party hung up")
            return
        # the target did not answer: C is R's again (R's phone still holds it)
        log.info("transfer failed; the call goes back", call_id=origin.id, code=sip_code)
        self._reattach()

    # -- the steps ------------------------------------------------------------------------

    def _transferee_answered(self, call: Call, response: Response | None) -> None:
        core = self.feature.core
        invite = self.reinvite
        assert invite is not None
        if call.ended:
            if response is not None and 200 <= response.status < 300:
                core.ack(invite, self.dialog, call.a_source)
            return
        if response is None or response.status >= 300:
            status = 408 if response is None else response.status
            self._not_joined(call, status, f"the transferred party answered {status}")
            return
        core.ack(invite, self.dialog, call.a_source)
        if self.done:  # a retransmitted 2xx: the ACK above was all it needed
            return
        ctype = response.headers.get("Content-Type")
        try:
            if not is_sdp(ctype, response.body):
                raise MediaError("no SDP answer")
            answer = core.anchored(call, "a", ctype, response.body, call.a_source.host)
        except MediaError as exc:
            self._not_joined(call, 488, f"the transferred party's media: {exc}")
            return
        self.done = True
        call.b_ack = (ctype, answer)
        core.ack_b(call)
        core.arm_answered(call)
        log.info(
            "call transferred",
            call_id=self.origin.id,
            by=self.by.number,
            target=self.target[:64],
        )
        self.notify(200, "OK", final=True)
        origin = self.origin
        core.bye(origin, self.transferor)
        if core.media is not None:  # the old media session of C's leg is over
            core.media.release(origin.token)
        core.finish(origin, "answered", 200, "")  # waits for C's leg (see the docstring)

    def _not_joined(self, call: Call, status: int, why: str) -> None:
        """The target answered but the two cannot be joined: the target is hung up and C
        goes back to R (or is hung up, if R is gone)."""
        core = self.feature.core
        log.warning("transfer not completed", call_id=self.origin.id, why=why)
        assert call.b_request is not None and call.b_dialog is not None
        assert call.b_dest is not None
        core.ack(call.b_request, call.b_dialog, call.b_dest)  # no answer to give: then BYE
        core.bye(call, "b")
        core.finish(call, "failed", status, why)

    def _reattach(self) -> None:
        origin, core = self.origin, self.feature.core
        if self.transferee == "a":
            origin.a_dialog = self.dialog
        else:
            origin.b_dialog = self.dialog
        core.dialogs[(self.dialog.call_id, self.dialog.local_tag)] = (origin, self.transferee)
        origin.moved_to = None

    def notify(self, status: int, phrase: str, *, final: bool) -> None:
        """Progress to R as the refer event package's sipfrag (RFC 3515 2.4.5)."""
        origin = self.origin
        if self.final_sent or origin.finish_pending is not None or origin.ended:
            return
        self.final_sent = final
        dialog, dest = origin.leg(self.transferor)
        if dialog is None or dest is None:
            return
        core = self.feature.core
        host, port = core.port.local_address(dest.transport)
        state = (
            "terminated;reason=noresource" if final else f"active;expires={SUBSCRIPTION_EXPIRES}"
        )
        notify = dialog.new_request(
            "NOTIFY",
            Via(dest.transport, host, port, {"rport": None}),
            contact=str(core.contact(dest.transport)),
            body=f"SIP/2.0 {status} {safe_reason(phrase)}\r\n".encode(),
            headers=[
                ("Event", "refer"),
                ("Subscription-State", state),
                ("Content-Type", "message/sipfrag;version=2.0"),
            ],
        )
        core.port.send_request(notify, dest)


class Transfers:
    """REFERs in calls, for the dialplan (:class:`pbxwarden.pbx.calls.CallManager`)."""

    def __init__(self, core: CallManager) -> None:
        self.core = core

    def transferor(self, call: Call, leg: str) -> ExtensionAuth | None:
        """The extension on ``leg`` of ``call``, or None for a carrier."""
        if leg == "a":
            return call.a_extension
        return call.ringing if call.b_trunk is None else None

    def refer(
        self,
        call: Call,
        leg: str,
        request: Request,
        key: TransactionKey | None,
        source: Address,
    ) -> None:
        core = self.core

        def refuse(status: int, why: str) -> None:
            phrase = f"{REASON_PHRASES.get(status, 'Error')} ({safe_reason(why)})"
            core.port.respond(key, request, make_response(request, status, phrase))

        by = self.transferor(call, leg)
        here = call.leg(leg)[1]
        if by is None or here is None or here.host != source.host:
            log.warning("REFER from a carrier refused", call_id=call.id, source=str(source))
            refuse(403, "transfer requests from a carrier are not accepted")
            return
        values = request.headers.get_all("Refer-To")
        if len(values) != 1:
            refuse(400, "a REFER needs exactly one Refer-To")
            return
        try:
            uri = parse_name_addr(values[0], "Refer-To").uri
        except ParseError as exc:
            refuse(400, f"Refer-To: {exc}")
            return
        if uri.headers is not None and "replaces=" in uri.headers.lower():
            refuse(501, "attended transfer (Replaces) is not available yet")
            return
        target = unquote(uri.user or "")
        if not target or len(target) > 64:
            refuse(400, "Refer-To names no number")
            return
        transferee = other_leg(leg)
        dialog, dest = call.leg(transferee)
        if dialog is None or dest is None:
            refuse(481, "the other party has left the call")
            return
        self._transfer(call, leg, by, target, transferee, dialog, dest, request, key, refuse)

    def _transfer(
        self,
        call: Call,
        leg: str,
        by: ExtensionAuth,
        target: str,
        transferee: str,
        dialog: Dialog,
        dest: Address,
        request: Request,
        key: TransactionKey | None,
        refuse: Callable[[int, str], None],
    ) -> None:
        core = self.core
        now = core.port.wall_time()
        country = core.routing.countries.get(by.tenant, "US")
        if emergency_number(target, country) is not None:
            refuse(403, f"calls cannot be transferred to the emergency number {target}")
            return
        target_ext = core.directory.get(by.realm, target)
        destination: Destination | None = None
        if target_ext is None:
            destination = classify(target, country)
            did = core.own_did(destination)
            if did is not None:  # one of our own numbers: delivered inside
                target_ext = core.did_extension(did)
                if target_ext is None:
                    refuse(404, "the DID's extension does not exist")
                    return
        if target_ext is not None and (target_ext.tenant, target_ext.number) == (
            by.tenant,
            by.number,
        ):
            refuse(482, "a call cannot be transferred to the extension transferring it")
            return
        if transferee == "a":
            invite, number, moved_ext = call.a_request, call.caller_id, call.a_extension
        else:
            assert call.b_request is not None
            invite, number = call.b_request, call.callee
            moved_ext = call.ringing if call.b_trunk is None else None
        kind = "internal" if target_ext is not None else KIND
        attempt = CallAttempt(
            by.tenant, by.number, number, target, kind, str(call.leg(leg)[1]), now, destination
        )
        decision = core.policy.authorize(attempt)
        note = f"transferred by {by.number} to {target}"
        decision = replace(decision, reasons=(note, *decision.reasons))
        new = core.open(
            invite,
            None,
            dest,
            by.tenant,
            by.number,
            number,
            target,
            KIND,
            decision,
            now,
            destination,
        )
        if not decision.allow:
            log.warning(
                "transfer denied",
                extension=by.number,
                target=target[:64],
                reasons=list(decision.reasons),
            )
            core.fail(new, decision.status, f"transfer to {target} refused", disposition="blocked")
            why = decision.reasons[1] if len(decision.reasons) > 1 else "not allowed"
            refuse(decision.status, f"transfer to {target} refused: {why}")
            if decision.severity == "critical":
                core.police(now)
            return
        core.port.respond(key, request, make_response(request, 202))
        core.policy.on_call_start(attempt, new.token)
        transfer = Transfer(self, call, leg, by, target, transferee, dialog)
        new.joined, new.a_dialog, new.a_acked, new.a_extension = transfer, dialog, True, moved_ext
        new.identity = cid.outbound(
            core.routing, by.tenant, by.number, by.caller_id, by.withhold_caller_id
        )
        new.visited.add((by.tenant, by.number))
        # C's leg is N's from now on: its requests go there, O no longer ends it
        core.dialogs[(dialog.call_id, dialog.local_tag)] = (new, "a")
        if transferee == "a":
            call.a_dialog = None
        else:
            call.b_dialog = None
        call.moved_to = new
        base = call.outcome.get("reasons") or "; ".join(call.decision.reasons)
        call.outcome["reasons"] = f"{base}; {note}"[:2000]
        transfer.notify(100, "Trying", final=False)
        log.info("transfer accepted", call_id=call.id, by=by.number, target=target[:64])
        if target_ext is not None:
            core.ring_extension(new, target_ext, now)
        else:
            assert destination is not None
            core.outbound.call_out(new, by.tenant, destination)
