"""Call park: a call waits in a numbered slot of the tenant's parking lot until someone
dials the slot to take it, or it goes back to the phone that parked it.

A phone parks the call it is in by transferring it blind (REFER) to the park code
(``*70``: the first free slot) or to a slot (``*701`` to ``*709`` by default); the
transferor gets NOTIFY ``200`` and a BYE, as after any transfer. Desk phones watch the
slots with busy lamp keys (the dialog event package, :mod:`pbxwarden.pbx.presence`):
a lamp is lit while its slot holds a call. Any extension of the tenant retrieves the
call by dialling the slot: the parked party is re-INVITEd with the retriever's offer
and its answer answers the retriever, whose INVITE becomes the call's B leg. After
``park_timeout`` seconds in the slot, the call rings the extension that parked it
(a transfer back, :meth:`Transfers.blind`); unanswered, it waits again, and after
:data:`RING_BACKS` tries it is hung up.

The parked party hears silence: nothing sends it media until the media applications
bring music on hold. Parking costs nothing and is not a new attempt for the guard: the
call that was parked stays accounted for (CDR, guard) until the parked party's leg
ends, as every transferred call does; the slot, the parker and the retriever are in
the CDR's reasons. Slots are plain records keyed by tenant and slot number, so that
nodes can share them later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from pbxwarden.pbx import media
from pbxwarden.pbx.call import Call
from pbxwarden.pbx.pickup import answer_as_b_leg
from pbxwarden.pbx.policy import Decision
from pbxwarden.pbx.transfer import refer_notify
from pbxwarden.sip.dialog import Dialog
from pbxwarden.sip.message import Request, Response, make_response, safe_reason
from pbxwarden.sip.transaction import Address, TransactionKey
from pbxwarden.store.db import ExtensionAuth

if TYPE_CHECKING:
    from collections.abc import Callable

    from pbxwarden.pbx.calls import CallManager

log = structlog.get_logger("pbxwarden.park")

KIND = "parked"
RING_BACKS = 3  # times a parked call rings its parker before it is hung up


@dataclass(eq=False)
class Parked:
    """One call in a slot: the :class:`~pbxwarden.pbx.call.Joined` feature of the call
    that holds the parked party's leg."""

    lot: Park
    call: Call  # its a leg is the parked party
    slot: int
    parker: ExtensionAuth
    origin: Call  # the call it was parked from, accounted for until the leg ends
    since: float
    ring_backs: int = 0
    retrieving: bool = False  # a retriever's re-INVITE of the parked party is out

    @property
    def number(self) -> str:
        return self.lot.slot_number(self.slot)

    def held(self) -> bool:
        """Still the slot's (waiting, or ringing its parker back): its lamp is lit."""
        call = self.call
        return not call.ended and call.finish_pending is None and call.b_dialog is None

    def waiting(self) -> bool:
        """In its slot now (not gone, not ringing back, not retrieved)."""
        call = self.call
        return (
            not call.ended
            and call.finish_pending is None
            and call.moved_to is None
            and call.b_dialog is None
        )

    # -- Joined ------------------------------------------------------------------------
    def progress(self, call: Call, response: Response) -> None:  # no B leg is placed
        pass

    def answered(self, call: Call, response: Response) -> None:
        pass

    def ended(self, call: Call, disposition: str, sip_code: int) -> None:
        """The parked party's leg is over: the slot is free, the original call ends."""
        self.lot.release(self)
        if self.origin.finish_pending is not None:
            self.lot.core.finish(self.origin, *self.origin.finish_pending)


class Park:
    """The parking lots of every tenant, for the dialplan."""

    def __init__(self, core: CallManager) -> None:
        self.core = core
        self.slots: dict[tuple[str, int], Parked] = {}

    # -- numbers -------------------------------------------------------------------------
    @property
    def code(self) -> str:
        return self.core.settings.park_code

    def slot_number(self, slot: int) -> str:
        return f"{self.code}{slot}"

    def slot_of(self, number: str) -> int | None:
        """The slot ``number`` dials (``*701`` -> 1), or None."""
        code, count = self.code, self.core.settings.park_slots
        rest = number[len(code) :]
        if not code or not number.startswith(code) or not rest.isdigit() or rest[0] == "0":
            return None
        slot = int(rest)
        return slot if 1 <= slot <= count else None

    def parks(self, target: str) -> bool:
        """A transfer to ``target`` parks the call (the park code or a slot)."""
        if not self.code or self.core.settings.park_slots < 1:
            return False
        return target == self.code or self.slot_of(target) is not None

    def parked(self, tenant: str, slot: int) -> Parked | None:
        parked = self.slots.get((tenant, slot))
        return parked if parked is not None and not parked.call.ended else None

    # -- parking -------------------------------------------------------------------------
    def park(
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
    ) -> None:
        """``by``, on ``leg`` of ``call``, parks the other party (REFER to ``target``)."""
        core = self.core
        slot = self.slot_of(target)
        if slot is None:  # the park code: the first free slot
            free = [
                n
                for n in range(1, core.settings.park_slots + 1)
                if self.parked(by.tenant, n) is None
            ]
            if not free:
                refuse(486, "every park slot is taken")
                return
            slot = free[0]
        elif self.parked(by.tenant, slot) is not None:
            refuse(486, f"park slot {target} is taken")
            return
        accept()
        transfers = core.transfers
        invite, number, moved_ext = transfers.party(call, transferee)
        now = core.port.wall_time()
        slot_number = self.slot_number(slot)
        note = f"parked in {slot_number} by {by.number}"
        new = core.open(
            invite,
            None,
            dest,
            by.tenant,
            by.number,
            number,
            slot_number,
            KIND,
            Decision(True, (note,)),
            now,
            None,
        )
        parked = Parked(self, new, slot, by, call, now)
        new.joined, new.a_dialog, new.a_acked, new.a_extension = parked, dialog, True, moved_ext
        core.mark_answered(new, now)
        transfers.move(call, transferee, dialog, new, "a", note)
        self.slots[(by.tenant, slot)] = parked
        refer_notify(core, call, leg, 200, "OK", final=True)
        core.bye(call, leg)
        if core.media is not None:  # the parked party's old media session is over: silence
            core.media.release(call.token)
        core.finish(call, "answered", 200, "")  # waits for the parked leg (Parked.ended)
        core.arm_answered(new)  # keep-alive: a parked phone that vanished frees its slot
        self._arm(parked)
        log.info("call parked", call_id=call.id, slot=slot_number, by=by.number)
        core.presence.changed(by.tenant, slot_number)

    def release(self, parked: Parked) -> None:
        key = (parked.parker.tenant, parked.slot)
        if self.slots.get(key) is parked:
            del self.slots[key]
            self.core.presence.changed(key[0], parked.number)

    # -- back to the parker ----------------------------------------------------------------
    def _arm(self, parked: Parked) -> None:
        timeout = self.core.settings.park_timeout
        if timeout > 0:
            timer = self.core.port.schedule(timeout, lambda: self._timed_out(parked))
            parked.call.timers.append(timer)

    def _timed_out(self, parked: Parked) -> None:
        call, core = parked.call, self.core
        if call.ended or call.finish_pending is not None or call.b_dialog is not None:
            return  # gone, or retrieved
        if not parked.waiting() or parked.retrieving:  # ringing back, being retrieved
            self._arm(parked)
            return
        if parked.ring_backs >= RING_BACKS:
            log.info("parked call not retrieved", call_id=call.id, slot=parked.number)
            core.hang_up(call, f"nobody retrieved it from {parked.number}")
            return
        parked.ring_backs += 1
        assert call.a_dialog is not None
        parker = parked.parker

        def refused(status: int, why: str) -> None:
            log.warning("parked call cannot ring back", slot=parked.number, why=why)

        log.info("parked call rings back", slot=parked.number, parker=parker.number)
        core.transfers.blind(
            call,
            "b",
            parker,
            parker.number,
            "a",
            call.a_dialog,
            call.a_source,
            lambda: None,
            refused,
            ring_back=True,
        )
        self._arm(parked)

    # -- retrieving ------------------------------------------------------------------------
    def retrieve(
        self,
        request: Request,
        key: TransactionKey | None,
        source: Address,
        retriever: ExtensionAuth,
        slot: int,
    ) -> None:
        """``retriever`` dialled a slot: the call parked there is theirs."""
        core = self.core

        def refuse(status: int, why: str) -> None:
            phrase = f"{'Not Acceptable Here' if status == 488 else 'Temporarily Unavailable'}"
            core.port.respond(
                key, request, make_response(request, status, f"{phrase} ({safe_reason(why)})")
            )

        number = self.slot_number(slot)
        parked = self.parked(retriever.tenant, slot)
        if parked is not None and not parked.waiting() and parked.call.moved_to is not None:
            core.hang_up(parked.call.moved_to, f"retrieved from {number}")  # it rang back
        if parked is None or not parked.waiting() or parked.retrieving:
            refuse(480, f"nothing is parked in {number}")
            return
        call = parked.call
        ctype = request.headers.get("Content-Type")
        if not media.is_sdp(ctype, request.body):
            refuse(488, "retrieving a parked call needs SDP")
            return
        try:
            offer = core.anchored(call, "b", ctype, request.body, source.host)
        except media.MediaError as exc:
            refuse(488, str(exc))
            return
        assert call.a_dialog is not None
        parked.retrieving = True
        reinvite = core.dialog_request(
            call.a_dialog,
            call.a_source,
            "INVITE",
            body=offer,
            headers=[("Content-Type", ctype or media.SDP_TYPE)],
        )

        def answered(response: Response | None) -> None:
            self._answered(parked, reinvite, response, request, key, source, retriever)

        core.request(reinvite, call.a_source, answered)

    def _answered(
        self,
        parked: Parked,
        reinvite: Request,
        response: Response | None,
        request: Request,
        key: TransactionKey | None,
        source: Address,
        retriever: ExtensionAuth,
    ) -> None:
        """The parked party answered the retriever's offer (or did not)."""
        core, call = self.core, parked.call
        dialog = call.a_dialog
        ok = response is not None and 200 <= response.status < 300
        if ok and dialog is not None:
            core.ack(reinvite, dialog, call.a_source)  # every 2xx, retransmissions too
        if call.b_dialog is not None:  # a retransmitted 2xx: the ACK was all it needed
            return
        parked.retrieving = False
        status = 408 if response is None else response.status
        if call.ended or dialog is None or not ok:
            core.port.respond(
                key,
                request,
                make_response(
                    request, 480, f"Temporarily Unavailable (the parked party: {status})"
                ),
            )
            if not call.ended and status in (408, 481):
                core.hang_up(call, "the parked phone no longer knows the call")
            return
        assert response is not None
        ctype = response.headers.get("Content-Type")
        try:
            if not media.is_sdp(ctype, response.body):
                raise media.MediaError("the parked party answered without SDP")
            answer = core.anchored(call, "a", ctype, response.body, call.a_source.host)
        except media.MediaError as exc:
            reason = f"Not Acceptable Here ({safe_reason(str(exc))})"
            core.port.respond(key, request, make_response(request, 488, reason))
            return
        call.b_ack = (ctype, answer)  # joined: mid-call requests are relayed again
        answer_as_b_leg(
            core, call, request, key, source, retriever, answer, "the phone that retrieved it"
        )
        base = call.outcome.get("reasons") or "; ".join(call.decision.reasons)
        note = f"retrieved from {parked.number} by {retriever.number}"
        call.outcome["reasons"] = f"{base}; {note}"[:2000]
        log.info("parked call retrieved", slot=parked.number, by=retriever.number)
        self.release(parked)
        core.line_changed(call)
