"""Call transfer (REFER, RFC 3515 and RFC 5589), performed by the PBX itself.

A phone in a call asks for the other party to be transferred to a number. The REFER is
never passed on: the other party may be a carrier, which would dial whatever it says at
our cost (the fraud path other PBXs left open). The target is judged as a new call paid
by the transferring extension, kind ``transferred``, through the same authorization
hook as every call and diversion: a transfer to a premium or forbidden number is
answered 403 with the reason, recorded in the CDRs and alerted like a diversion.
Carriers' REFERs are refused, unless the trunk accepts transfers (``trunk transfers
NAME --accept``): then a blind transfer the carrier's party asks for is performed the
same way, the target judged as a call paid by our extension in the call (kind
``carrier-transfer``: refused and alerted like any diversion, but never counted as a
sign that the extension itself was taken over).

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

Attended transfer: R has called the target T (call O2) and sends, in O, a REFER whose
Refer-To carries ``Replaces`` naming R's dialog of O2 (RFC 3891). C's leg of O and T's
leg of O2 move into N, T is re-INVITEd without an offer, its offer goes to C and C's
answer back to T; R is hung up on both calls. T's leg was authorized when R called it
and stays accounted to O2. If O2 is still ringing, it is cancelled and C is
transferred blind to the number it rang (the "semi-attended" transfer).

O stays accounted for (CDR, guard) until C's leg ends, since that leg may be the costly
one (a carrier leg R placed); N's CDR and cost are the transfer's, paid by R.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import unquote

import structlog

from pbxwarden.pbx import caller_id as cid
from pbxwarden.pbx.call import Call, other_leg
from pbxwarden.pbx.media import MediaError, is_sdp
from pbxwarden.pbx.numbers import emergency_number
from pbxwarden.pbx.policy import CallAttempt, Decision
from pbxwarden.sip.dialog import Dialog
from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.message import (
    REASON_PHRASES,
    Request,
    Response,
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
# a transfer a carrier asked for (REFER from a trunk that accepts them), paid by our party
CARRIER_KIND = "carrier-transfer"
_REPLACES = re.compile(r"(?:^|&)replaces=([^&]*)", re.IGNORECASE)


def replaces_of(headers: str | None) -> tuple[str, str, str] | tuple[()] | None:
    """The (Call-ID, to-tag, from-tag) of a Refer-To's ``?Replaces=`` (RFC 3891, escaped
    in the URI); () when it is there but unreadable, None when there is none."""
    if headers is None:
        return None
    found = _REPLACES.search(headers)
    if found is None:
        return None
    call_id, *params = unquote(found.group(1)).split(";")
    tags = {}
    for param in params:
        name, _, value = param.strip().partition("=")
        tags[name.lower()] = value
    to_tag, from_tag = tags.get("to-tag"), tags.get("from-tag")
    if not call_id.strip() or to_tag is None or not from_tag:
        return ()  # an empty to-tag: the call still rings, its callee has not tagged it
    return call_id.strip(), to_tag, from_tag


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
    # attended: O2 and R's leg of it; T's leg moved from O2 into N
    consult: tuple[Call, str] | None = None
    t_reinvite: Request | None = None  # T's re-INVITE without an offer (attended)
    answer: tuple[str | None, bytes] | None = None  # C's answer, for T's ACKs
    t_offered: bool = False

    # -- Joined: what the core hands over -------------------------------------------------

    def progress(self, call: Call, response: Response) -> None:
        if response.status in (180, 183):
            self.notify(response.status, response.reason or "Ringing", final=False)

    def answered(self, call: Call, response: Response) -> None:
        """The target answered with its offer: C gets it in a re-INVITE."""
        core = self.feature.core
        now = core.port.wall_time()
        core.mark_answered(call, now)
        core.policy.on_call_answer(call.token, now)
        self._offer_to_transferee(call, response)

    def start_attended(self, call: Call) -> None:
        """Ask T for a fresh offer: a re-INVITE without SDP in its dialog."""
        core = self.feature.core
        assert call.b_dialog is not None and call.b_dest is not None
        dest = call.b_dest
        self.t_reinvite = core.dialog_request(call.b_dialog, dest, "INVITE")
        core.request(self.t_reinvite, dest, lambda r: self._target_offered(call, r))

    def _target_offered(self, call: Call, response: Response | None) -> None:
        core = self.feature.core
        invite = self.t_reinvite
        assert invite is not None and call.b_dialog is not None and call.b_dest is not None
        if response is not None and 200 <= response.status < 300:
            self.t_offered = True
            if self.done or call.ended:  # a retransmitted 2xx: the same ACK again
                ctype, body = self.answer or (None, b"")
                core.ack(invite, call.b_dialog, call.b_dest, ctype, body)
                return
            self._offer_to_transferee(call, response)
            return
        if not call.ended:
            status = 408 if response is None else response.status
            self._not_joined(call, status, f"the transfer target answered {status}")

    def _offer_to_transferee(self, call: Call, response: Response) -> None:
        core = self.feature.core
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
        self.reinvite = core.dialog_request(
            self.dialog,
            dest,
            "INVITE",
            body=offer,
            headers=[("Content-Type", ctype or "application/sdp")],
        )
        core.request(self.reinvite, dest, lambda r: self._transferee_answered(call, r))

    def ended(self, call: Call, disposition: str, sip_code: int) -> None:
        core = self.feature.core
        origin = self.origin
        if self.done:  # the transfer was complete: the moved legs are over
            for done, _ in self._origins():
                if done.finish_pending is not None:
                    core.finish(done, *done.finish_pending)
            return
        phrase = REASON_PHRASES.get(sip_code, "Error") if sip_code >= 300 else "Request Terminated"
        self.notify(sip_code if sip_code >= 300 else 487, phrase, final=True)
        if self.consult is not None:
            self._attended_failed(call)
            return
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
        call.b_ack = self.answer = (ctype, answer)
        if self.t_reinvite is not None:  # attended: the answer goes in the re-INVITE's ACK
            assert call.b_dialog is not None and call.b_dest is not None
            core.ack(self.t_reinvite, call.b_dialog, call.b_dest, ctype, answer)
        else:
            core.ack_b(call)
        core.arm_answered(call)
        log.info(
            "call transferred",
            call_id=self.origin.id,
            by=self.by.number,
            target=self.target[:64],
        )
        self.notify(200, "OK", final=True)
        for origin, transferor in self._origins():
            core.bye(origin, transferor)
            if core.media is not None:  # the old media session of the moved leg is over
                core.media.release(origin.token)
            core.finish(origin, "answered", 200, "")  # waits for the moved leg (docstring)

    def _origins(self) -> list[tuple[Call, str]]:
        """O (and O2 for an attended transfer), each with R's leg of it."""
        return [(self.origin, self.transferor), *([self.consult] if self.consult else [])]

    def _not_joined(self, call: Call, status: int, why: str) -> None:
        """The target answered but the two cannot be joined: the target is hung up and C
        goes back to R (or is hung up, if R is gone). In an attended transfer, T's leg
        goes back to O2 instead, as it was."""
        core = self.feature.core
        log.warning("transfer not completed", call_id=self.origin.id, why=why)
        if self.consult is not None:
            if self.t_offered:  # T's 2xx needs its ACK; the dialog stays as it was
                assert self.t_reinvite is not None and call.b_dialog is not None
                assert call.b_dest is not None
                core.ack(self.t_reinvite, call.b_dialog, call.b_dest)
            core.finish(call, "failed", status, why)
            return
        assert call.b_request is not None and call.b_dialog is not None
        assert call.b_dest is not None
        core.ack(call.b_request, call.b_dialog, call.b_dest)  # no answer to give: then BYE
        core.bye(call, "b")
        core.finish(call, "failed", status, why)

    def _attended_failed(self, call: Call) -> None:
        """Both legs go back to the calls they came from; a call whose other party hung
        up meanwhile is hung up."""
        assert self.consult is not None
        consult, transferor = self.consult
        core = self.feature.core
        self._reattach()
        assert call.b_dialog is not None
        t_leg = other_leg(transferor)
        if t_leg == "a":
            consult.a_dialog = call.b_dialog
        else:
            consult.b_dialog = call.b_dialog
        core.dialogs[(call.b_dialog.call_id, call.b_dialog.local_tag)] = (consult, t_leg)
        consult.moved_to = None
        if call.hung_up_by is not None:  # a party hung up meanwhile: both calls end
            for origin in (self.origin, consult):
                core.hang_up(origin, "the other party hung up during a transfer")

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
        refer_notify(self.feature.core, origin, self.transferor, status, phrase, final=final)


def refer_notify(
    core: CallManager, origin: Call, leg: str, status: int, phrase: str, *, final: bool
) -> None:
    """A transfer's progress to the transferor on ``leg`` of ``origin``, as the refer
    event package's sipfrag (RFC 3515 2.4.5); nothing when that leg is gone."""
    dialog, dest = origin.leg(leg)
    if dialog is None or dest is None:
        return
    state = "terminated;reason=noresource" if final else f"active;expires={SUBSCRIPTION_EXPIRES}"
    notify = core.dialog_request(
        dialog,
        dest,
        "NOTIFY",
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

        def accept() -> None:
            core.port.respond(key, request, make_response(request, 202))

        by = self.transferor(call, leg)
        here = call.leg(leg)[1]
        kind = KIND
        if by is None or here is None or here.host != source.host:
            by = self._for_carrier(call, leg, here, source)
            if by is None:
                log.warning("REFER from a carrier refused", call_id=call.id, source=str(source))
                refuse(403, "transfer requests from a carrier are not accepted")
                return
            kind = CARRIER_KIND
        values = request.headers.get_all("Refer-To")
        if len(values) != 1:
            refuse(400, "a REFER needs exactly one Refer-To")
            return
        try:
            uri = parse_name_addr(values[0], "Refer-To").uri
        except ParseError as exc:
            refuse(400, f"Refer-To: {exc}")
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
        replaces = replaces_of(uri.headers)
        if kind == CARRIER_KIND and (replaces is not None or self.core.park.parks(target)):
            refuse(403, "a carrier may ask for a blind transfer only")
            return
        if replaces is not None:
            if not replaces:
                refuse(400, "unreadable Replaces in Refer-To")
                return
            consult = self._consulted(by, call, replaces)
            if isinstance(consult, str):
                refuse(481 if "no such" in consult else 403, consult)
                return
            o2, o2_leg = consult
            if o2.answered is not None:
                if o2.moved_to is not None or (o2.joined is not None and o2.b_ack is None):
                    refuse(491, "the consulted call is being transferred already")
                    return
                self._attended(call, leg, by, o2, o2_leg, dialog, dest, request, key)
                return
            # semi-attended: the consulted phone still rings; C goes there blind instead
            core.hang_up(o2, "replaced by a transfer")
        if self.core.park.parks(target):  # *70, *701: the call waits in a park slot
            self.core.park.park(call, leg, by, target, transferee, dialog, dest, accept, refuse)
            return
        self.blind(call, leg, by, target, transferee, dialog, dest, accept, refuse, kind=kind)

    def _for_carrier(
        self, call: Call, leg: str, here: Address | None, source: Address
    ) -> ExtensionAuth | None:
        """Who pays for the transfer a carrier asks for on ``leg``: our extension on the
        other leg, when the carrier's trunk accepts transfers and the REFER came from
        that carrier; else None (refused)."""
        if here is None or here.host != source.host:
            return None
        if leg == "b":
            trunk = call.b_trunk
        else:
            trunk = self.core.routing.trunk_named(call.tenant, call.trunk) if call.trunk else None
        if trunk is None or not trunk.accept_transfers:
            return None
        return self.transferor(call, other_leg(leg))

    def _consulted(
        self, by: ExtensionAuth, call: Call, replaces: tuple[str, str, str]
    ) -> tuple[Call, str] | str:
        """The call R's Replaces names (R's own dialog of it), or why it cannot be used."""
        call_id, to_tag, from_tag = replaces
        for local, remote in ((to_tag, from_tag), (from_tag, to_tag)):
            found = self.core.dialogs.get((call_id, local)) if local else None
            if found is None:
                found = self._ringing(call_id, local, remote)
                if found is None:
                    continue
            else:
                dialog = found[0].leg(found[1])[0]
                if dialog is None or dialog.remote_tag != remote:
                    continue
            o2, o2_leg = found
            if o2.ended:
                continue
            mine = self.transferor(o2, o2_leg)
            if o2 is call or mine is None or (mine.tenant, mine.number) != (by.tenant, by.number):
                return "the call named in Replaces is not the transferring extension's"
            return o2, o2_leg
        return "no such call to replace (Replaces)"

    def _ringing(self, call_id: str, local: str, remote: str) -> tuple[Call, str] | None:
        """A call R placed that still rings (no dialog yet), by its tags."""
        for o2 in self.core.calls.values():
            a = o2.a_request
            if (
                o2.answered is None
                and a.call_id == call_id
                and (not local or o2.a_tag == local)
                and a.from_.params.get("tag") == remote
            ):
                return o2, "a"
        return None

    def _attended(
        self,
        call: Call,
        leg: str,
        by: ExtensionAuth,
        o2: Call,
        o2_leg: str,
        dialog: Dialog,
        dest: Address,
        request: Request,
        key: TransactionKey | None,
    ) -> None:
        """Join C (of ``call``) with T (of ``o2``): both legs move into a new call."""
        core = self.core
        t_leg = other_leg(o2_leg)
        t_dialog, t_dest = o2.leg(t_leg)
        if t_dialog is None or t_dest is None:
            core.port.respond(key, request, make_response(request, 481))
            return
        transferee = other_leg(leg)
        invite, number, moved_ext = self.party(call, transferee)
        t_invite, t_number, t_ext = self.party(o2, t_leg)
        now = core.port.wall_time()
        note = f"attended transfer by {by.number}: joined with {t_number}"
        new = core.open(
            invite,
            None,
            dest,
            by.tenant,
            by.number,
            number,
            t_number,
            KIND,
            Decision(True, (note, "the target's leg was authorized when it was called")),
            now,
            None,
        )
        core.port.respond(key, request, make_response(request, 202))
        transfer = Transfer(self, call, leg, by, t_number, transferee, dialog)
        transfer.consult = (o2, o2_leg)
        new.joined, new.a_dialog, new.a_acked, new.a_extension = transfer, dialog, True, moved_ext
        new.b_request, new.b_dialog, new.b_dest = t_invite, t_dialog, t_dest
        new.ringing = t_ext
        if t_leg == "b":
            new.b_trunk, new.trunk = o2.b_trunk, o2.trunk
        core.mark_answered(new, now)
        self.move(call, transferee, dialog, new, "a", note)
        self.move(o2, t_leg, t_dialog, new, "b", note)
        transfer.notify(100, "Trying", final=False)
        log.info("attended transfer", call_id=call.id, by=by.number, target=t_number[:64])
        transfer.start_attended(new)

    def move(
        self, origin: Call, leg: str, dialog: Dialog, new: Call, new_leg: str, note: str
    ) -> None:
        """``origin``'s ``leg`` is ``new``'s ``new_leg`` from now on: its requests go
        there, ``origin`` no longer ends it, and its CDR says why."""
        self.core.dialogs[(dialog.call_id, dialog.local_tag)] = (new, new_leg)
        if leg == "a":
            origin.a_dialog = None
        else:
            origin.b_dialog = None
        origin.moved_to = new
        base = origin.outcome.get("reasons") or "; ".join(origin.decision.reasons)
        origin.outcome["reasons"] = f"{base}; {note}"[:2000]

    @staticmethod
    def party(call: Call, leg: str) -> tuple[Request, str, ExtensionAuth | None]:
        """The INVITE that made ``leg``'s dialog, its number and its extension, if any."""
        if leg == "a":
            return call.a_request, call.caller_id, call.a_extension
        assert call.b_request is not None
        return call.b_request, call.callee, call.ringing if call.b_trunk is None else None

    def blind(
        self,
        call: Call,
        leg: str,
        by: ExtensionAuth,
        target: str,
        transferee: str,
        dialog: Dialog,
        dest: Address,
        accept: Callable[[], None],
        refuse: Callable[[int, str], None],
        *,
        ring_back: bool = False,
        kind: str = KIND,
    ) -> None:
        """Transfer the party on ``transferee`` to ``target``, paid by ``by``: a REFER's
        blind transfer, or (``ring_back``) a parked call going back to the extension
        that parked it (:mod:`pbxwarden.pbx.park`)."""
        core = self.core
        now = core.port.wall_time()
        country = core.routing.countries.get(by.tenant, "US")
        if emergency_number(target, country) is not None:
            refuse(403, f"calls cannot be transferred to the emergency number {target}")
            return
        target_ext, destination, did = core.resolve(by, target)
        if did is not None and target_ext is None:
            refuse(404, "the DID's extension does not exist")
            return
        if (
            not ring_back
            and target_ext is not None
            and (target_ext.tenant, target_ext.number)
            == (
                by.tenant,
                by.number,
            )
        ):
            refuse(482, "a call cannot be transferred to the extension transferring it")
            return
        invite, number, moved_ext = self.party(call, transferee)
        attempt = CallAttempt(
            by.tenant,
            by.number,
            number,
            target,
            "internal" if target_ext is not None else kind,
            str(call.leg(leg)[1]),
            now,
            destination,
        )
        decision = core.policy.authorize(attempt)
        if ring_back:
            note = f"back to {target}, who parked it"
        elif kind == CARRIER_KIND:
            note = f"transferred by the carrier ({call.leg(leg)[1]}) to {target}, for {by.number}"
        else:
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
            kind,
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
        accept()
        core.policy.on_call_start(attempt, new.token)
        transfer = Transfer(self, call, leg, by, target, transferee, dialog)
        new.joined, new.a_dialog, new.a_acked, new.a_extension = transfer, dialog, True, moved_ext
        new.identity = cid.outbound(
            core.routing, by.tenant, by.number, by.caller_id, by.withhold_caller_id
        )
        new.visited.add((by.tenant, by.number))
        self.move(call, transferee, dialog, new, "a", note)
        transfer.notify(100, "Trying", final=False)
        log.info("transfer accepted", call_id=call.id, by=by.number, target=target[:64])
        if target_ext is not None:
            core.ring(new, target_ext, now)
        else:
            assert destination is not None
            core.outbound.call_out(new, by.tenant, destination)
