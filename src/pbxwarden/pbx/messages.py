"""Instant messages between extensions (SIP MESSAGE, RFC 3428), out of any call.

The sender authenticates with digest like a caller; the target must be an extension of
the sender's own tenant (another tenant's extension and a missing one answer the same
404: no enumeration); a message is never sent to a carrier, whatever number it names;
its body is size-limited. The PBX is the sender towards the target's phones: each
registered contact gets its own MESSAGE (new Call-ID, the sender's number in From, no
header of the sender's but Content-Type), and the sender gets 200 when any phone took
it, else the best failure (RFC 3261 16.7), or 480 when none is registered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import structlog

from pbxwarden.pbx.call import MAX_FORKS, best_response, parse_source
from pbxwarden.pbx.registrar import aor_key
from pbxwarden.sip.message import (
    CSeq,
    Headers,
    Request,
    Response,
    Via,
    generate_branch,
    generate_call_id,
    generate_tag,
    make_response,
    safe_reason,
)
from pbxwarden.sip.transaction import Address, TransactionKey
from pbxwarden.sip.uri import URI, NameAddr, parse_uri
from pbxwarden.store.db import ExtensionAuth

if TYPE_CHECKING:
    from pbxwarden.pbx.calls import CallManager

log = structlog.get_logger("pbxwarden.messages")

MAX_BODY = 1300  # bytes (RFC 3428 5: a MESSAGE must fit a UDP datagram on any path)


@dataclass(eq=False)
class _Delivery:
    """One message on its way to the target's phones, and what they answered."""

    request: Request
    key: TransactionKey | None
    pending: int
    answers: list[Response] = field(default_factory=list)
    answered: bool = False


class Messages:
    """MESSAGE requests, for the dialplan (:class:`pbxwarden.pbx.calls.CallManager`)."""

    def __init__(self, core: CallManager) -> None:
        self.core = core
        self.delivered = 0  # messages at least one phone accepted, for metrics

    def receive(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        core = self.core

        def answer(status: int, why: str | None = None) -> None:
            phrase = None
            if why:
                phrase = f"{make_response(request, status).reason} ({safe_reason(why)})"
            core.port.respond(key, request, make_response(request, status, phrase))

        sender = core.authenticated(request, source, key)
        if sender is None:
            return
        if len(request.body) > MAX_BODY:
            answer(413, f"a message may carry at most {MAX_BODY} bytes")
            return
        ctype = request.headers.get("Content-Type")
        if not request.body or not ctype:
            answer(400, "a message needs a body and its Content-Type")
            return
        number = request.uri.user or ""
        target = core.directory.get(sender.realm, number) if request.uri.is_sip else None
        if target is None or not target.enabled:
            # the same answer for another tenant's extension, a number outside and one
            # that does not exist: MESSAGE must not tell an attacker what is there
            answer(404, "no such extension")
            return
        now = core.port.wall_time()
        bindings = core.location.reach(aor_key(target.realm, target.number), now)
        targets = [
            (b.contact, dest) for b in bindings if (dest := parse_source(b.source)) is not None
        ][:MAX_FORKS]
        if not targets:
            answer(480, f"extension {target.number} is not registered")
            return
        delivery = _Delivery(request, key, len(targets))
        for contact, dest in targets:
            out = self._message(sender, target, contact, dest, ctype, request.body)
            core.request(out, dest, partial(self._answered, delivery))
        log.info("message sent on", sender=sender.number, target=target.number, phones=len(targets))

    def _message(
        self,
        sender: ExtensionAuth,
        target: ExtensionAuth,
        contact: str,
        dest: Address,
        ctype: str,
        body: bytes,
    ) -> Request:
        core = self.core
        host, port = core.port.local_address(dest.transport)
        headers = Headers()
        headers.add("Content-Type", ctype)
        return Request(
            via=[Via(dest.transport, host, port, {"branch": generate_branch(), "rport": None})],
            from_=NameAddr(
                URI("sip", user=sender.number, host=host), None, {"tag": generate_tag()}
            ),
            to=NameAddr(URI("sip", user=target.number, host=host)),
            call_id=generate_call_id(),
            cseq=CSeq(1, "MESSAGE"),
            headers=headers,
            body=body,
            max_forwards=70,
            method="MESSAGE",
            uri=parse_uri(contact),
        )

    def _answered(self, delivery: _Delivery, response: Response | None) -> None:
        delivery.pending -= 1
        if response is not None:
            delivery.answers.append(response)
        if delivery.answered:
            return
        ok = next((r for r in delivery.answers if 200 <= r.status < 300), None)
        if ok is None and delivery.pending > 0:
            return
        delivery.answered = True
        request = delivery.request
        if ok is not None:
            self.delivered += 1
            answer = make_response(request, 200)
        elif delivery.answers:
            best = best_response(delivery.answers)
            answer = make_response(request, best.status, best.reason)
        else:
            answer = make_response(request, 408, "Request Timeout (no phone answered)")
        self.core.port.respond(delivery.key, request, answer)
