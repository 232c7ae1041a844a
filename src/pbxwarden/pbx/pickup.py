"""Call pickup: answering a colleague's ringing phone from one's own.

``*8`` picks up a call ringing a colleague's phone (group pickup): colleagues are the
members of the ring groups the picker belongs to (its departments), or the whole tenant
for an extension in no group; ``**`` and a number picks up the call ringing that
extension or ring group (directed pickup), in any department of the tenant. The
oldest such call is taken: its ringing legs are cancelled as "completed elsewhere"
(RFC 3326: no missed call on the phones that rang), and the picker's own call becomes
that call's B leg, answered by the PBX.

Both phones made offers (the caller when it called, the picker when it dialled the
code), so each gets the other's description as its answer (:func:`media.answer`);
with the relay on, media is anchored afresh for the picker. A pickup costs nothing new
(the call was already ringing inside the tenant), so it is not a new attempt for the
guard; it is only ever a call of the picker's own tenant, from an authenticated
extension (the dialplan checked the password and networks before), and the CDR says
who picked it up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from pbxwarden.pbx import media
from pbxwarden.pbx.call import COMPLETED_ELSEWHERE, Call, Fork
from pbxwarden.sip.dialog import Dialog
from pbxwarden.sip.message import Request, generate_tag, make_response, safe_reason
from pbxwarden.sip.transaction import Address, TransactionKey
from pbxwarden.store.db import ExtensionAuth

if TYPE_CHECKING:
    from pbxwarden.pbx.calls import CallManager

log = structlog.get_logger("pbxwarden.pickup")

GROUP_CODE = "*8"
DIRECTED_PREFIX = "**"


def pickup_code(dialed: str) -> str | None:
    """``""`` for group pickup, the number for directed pickup, None: not a pickup."""
    if dialed == GROUP_CODE:
        return ""
    if dialed.startswith(DIRECTED_PREFIX) and dialed[2:].isdigit() and len(dialed) > 3:
        return dialed[2:]
    return None


class Pickup:
    def __init__(self, core: CallManager) -> None:
        self.core = core

    def rung(self, call: Call) -> list[ExtensionAuth]:
        """The extensions a call is ringing now (its B leg, or a group's forks)."""
        if call.forks:
            return [f.extension for f in call.forks if f.extension and f.final is None]
        return [call.ringing] if call.ringing is not None and call.b_trunk is None else []

    def colleagues(self, picker: ExtensionAuth) -> set[str] | None:
        """Whose ringing phones ``*8`` may answer: the members of the ring groups the
        picker belongs to (its departments), or None (the whole tenant) when it is in
        none."""
        mine: set[str] = set()
        for (tenant, _), group in self.core.routing.groups.items():
            if tenant == picker.tenant and picker.number in group.members:
                mine.update(group.members)
        return mine or None

    def ringing_call(self, picker: ExtensionAuth, target: str) -> Call | None:
        colleagues = None if target else self.colleagues(picker)
        found = []
        for call in self.core.calls.values():
            if call.ended or call.answered is not None or call.joined is not None:
                continue
            caller = call.a_extension
            if caller is not None and (caller.tenant, caller.number) == (
                picker.tenant,
                picker.number,
            ):
                continue  # one's own call
            rung = [e for e in self.rung(call) if e.tenant == picker.tenant]
            if not rung:
                continue
            group = call.group.group if call.group is not None else None
            if colleagues is not None and not any(e.number in colleagues for e in rung):
                continue  # ringing in another department: a directed pickup still can
            if target and not (
                any(e.number == target for e in rung)
                or (group is not None and group.number == target)
            ):
                continue
            found.append(call)
        return min(found, key=lambda c: c.started) if found else None

    def pick(
        self,
        request: Request,
        key: TransactionKey | None,
        source: Address,
        picker: ExtensionAuth,
        target: str,
    ) -> None:
        call = self.ringing_call(picker, target)
        if call is None:
            what = f"nothing is ringing {target}" if target else "nothing is ringing"
            self.core.port.respond(
                key, request, make_response(request, 480, f"Temporarily Unavailable ({what})")
            )
            return
        self.take(request, key, source, picker, call, target or "*")

    def replacing(
        self,
        request: Request,
        key: TransactionKey | None,
        source: Address,
        picker: ExtensionAuth,
        header: str,
    ) -> None:
        """An INVITE with ``Replaces`` (RFC 3891): a desk phone's busy lamp key pressed
        while the watched phone rings names the ringing leg (the Call-ID and tags of
        its dialog-info NOTIFY): a directed pickup of that call. Only a leg ringing an
        extension of the picker's own tenant is found; anything else, another tenant's
        call included, is answered 481 as a dialog that does not exist. Taking over an
        answered call is not offered (a transfer does that, judged by the guard)."""
        core = self.core
        call_id, _, params = header.partition(";")
        tags = {
            name.strip().lower(): value.strip()
            for name, _, value in (p.partition("=") for p in params.split(";"))
        }
        named = {tags.get("to-tag", ""), tags.get("from-tag", "")} - {""}
        call = self._ringing_leg(picker, call_id.strip(), named)
        if call is not None:
            self.take(request, key, source, picker, call, "Replaces")
            return
        answered = next(
            (
                found
                for tag in named
                if (found := core.dialogs.get((call_id.strip(), tag))) is not None
                and found[0].tenant == picker.tenant
                and not found[0].ended
            ),
            None,
        )
        if answered is not None:
            phrase = "Forbidden (taking over an answered call is not offered: transfer it)"
            core.port.respond(key, request, make_response(request, 403, phrase))
            return
        core.port.respond(key, request, make_response(request, 481))

    def _ringing_leg(self, picker: ExtensionAuth, call_id: str, tags: set[str]) -> Call | None:
        """The call one of whose legs ringing an extension of the picker's tenant is the
        dialog named by ``call_id`` and our tag in it."""
        for call in self.core.calls.values():
            if call.ended or call.answered is not None or call.joined is not None:
                continue
            legs = (
                [(f.request, f.extension) for f in call.forks if f.final is None]
                if call.forks
                else [(call.b_request, call.ringing if call.b_trunk is None else None)]
            )
            for leg, extension in legs:
                if (
                    leg is not None
                    and extension is not None
                    and extension.tenant == picker.tenant
                    and leg.call_id == call_id
                    and leg.from_.params.get("tag") in tags
                ):
                    return call
        return None

    def take(
        self,
        request: Request,
        key: TransactionKey | None,
        source: Address,
        picker: ExtensionAuth,
        call: Call,
        target: str,
    ) -> None:
        """The picker's INVITE answers ``call``, which rings elsewhere."""
        core = self.core
        ctype, offer = request.headers.get("Content-Type"), request.body
        caller_offer = call.a_request.body
        if not media.is_sdp(ctype, offer) or not media.is_sdp(
            call.a_request.headers.get("Content-Type"), caller_offer
        ):
            core.port.respond(
                key, request, make_response(request, 488, "Not Acceptable Here (pickup needs SDP)")
            )
            return
        try:
            to_picker = media.answer(offer, call.offer or caller_offer)
            to_caller = media.answer(caller_offer, offer)
        except media.SdpError as exc:
            reason = f"Not Acceptable Here ({safe_reason(str(exc))})"
            core.port.respond(key, request, make_response(request, 488, reason))
            return
        rang = self.rung(call)
        self._release_ringing(call)
        answer_as_b_leg(
            core, call, request, key, source, picker, to_picker, "the phone that picked up"
        )
        base = call.outcome.get("reasons") or "; ".join(call.decision.reasons)
        call.outcome["reasons"] = f"{base}; picked up by {picker.number}"[:2000]
        log.info("call picked up", call_id=call.id, by=picker.number, target=target)
        answer = make_response(
            call.a_request, 200, headers=[("Content-Type", media.SDP_TYPE)], body=to_caller
        )
        core.answer_a(call, answer)
        for ext in rang:  # the phones that rang: their lamps stop blinking
            core.presence.changed(ext.tenant, ext.number)

    def _release_ringing(self, call: Call) -> None:
        """The call's ringing legs stop: CANCEL (a late answer still gets ACK and BYE)."""
        core = self.core
        if call.forks:
            for fork in call.forks:
                core.forking.cancel(fork, COMPLETED_ELSEWHERE)
            call.forks = []
        elif call.b_key is not None and call.b_request is not None and call.b_dest is not None:
            # the single leg becomes a fork no longer in the call, so that its late
            # answer is hung up like a losing fork's
            fork = Fork(call.b_key, call.b_request, call.b_dest, provisional=call.b_provisional)
            core.forking.forks[fork.key] = (call, fork)
            core.by_b_key.pop(call.b_key, None)
            core.forking.cancel(fork, COMPLETED_ELSEWHERE)
        call.group = None


def answer_as_b_leg(
    core: CallManager,
    call: Call,
    request: Request,
    key: TransactionKey | None,
    source: Address,
    extension: ExtensionAuth,
    sdp: bytes,
    who: str,
) -> None:
    """``extension``'s INVITE becomes ``call``'s B leg, answered by the PBX with ``sdp``
    (a pickup's picker, a parked call's retriever); the 2xx is resent until its ACK."""
    tag = generate_tag()
    ok = make_response(
        request,
        200,
        to_tag=tag,
        headers=[
            ("Contact", str(core.contact(source.transport))),
            ("Content-Type", media.SDP_TYPE),
        ],
        body=sdp,
    )
    call.b_request, call.b_key, call.b_dest = request, None, source
    call.b_trunk, call.b_uas, call.b_acked = None, True, False
    call.b_dialog = Dialog.as_uas(request, tag)
    call.ringing = extension
    core.dialogs[(request.call_id, tag)] = (call, "b")
    core.port.respond(key, request, ok)
    core.retransmit_2xx(
        call,
        lambda: core.port.respond(key, request, ok),
        lambda: call.b_acked,
        f"no ACK from {who}",
    )
