"""Mid-call requests and keep-alives of calls in progress, for the B2BUA core.

Re-INVITEs (hold, codec changes), UPDATE and INFO (DTMF) from one phone go to the other
in its own dialog and the answer comes back the same way; a relayed re-INVITE's 2xx is
resent until its ACK, which then goes on (it may carry SDP). BYE ends the call. And every
answered call's phones get an in-dialog OPTIONS now and then (as Kamailio's dialog
keep-alive does): a phone that crashed or lost its network sends no BYE, and the call
would go on costing money until its maximum duration. A caller's session timer
(:mod:`pbxwarden.pbx.session_timer`) is watched here too, and refreshed when the caller
asked the PBX to.

A PRACK (:mod:`pbxwarden.pbx.prack`) is not relayed: the PBX acknowledges itself.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import structlog

from pbxwarden.pbx import options, session_timer
from pbxwarden.pbx.call import (
    Call,
    Relayed,
    RelayedAnswer,
    other_leg,
)
from pbxwarden.pbx.media import MediaError
from pbxwarden.sip.message import (
    Request,
    Response,
    Via,
    make_response,
    safe_reason,
)
from pbxwarden.sip.transaction import Address, TransactionKey

# mid-call requests answered here, never passed to the other leg (REFER: a transfer,
# which the PBX performs itself: pbxwarden.pbx.transfer)
NOT_RELAYED = frozenset({"REFER", "SUBSCRIBE", "MESSAGE", "PUBLISH"})

if TYPE_CHECKING:
    from pbxwarden.pbx.b2bua import B2bua

log = structlog.get_logger("pbxwarden.calls")


class MidCall:
    """Owned by the core; keeps the relayed requests and keep-alive pings in flight."""

    def __init__(self, core: B2bua) -> None:
        self.core = core
        # relayed mid-call request's client key -> what to answer the original with
        self.relayed: dict[TransactionKey, Relayed] = {}
        self.answered: dict[TransactionKey, RelayedAnswer] = {}  # by relayed key
        self.pings: dict[TransactionKey, tuple[Call, str]] = {}  # keep-alive OPTIONS

    def on_response(self, response: Response, key: TransactionKey) -> bool:
        """True when the answer was to one of ours (a ping, a relayed request)."""
        ping = self.pings.pop(key, None)
        if ping is not None:
            self._pinged(ping[0], ping[1], response.status)
            return True
        answered = self.answered.get(key)
        if answered is not None:
            # the other phone resends its 2xx until our ACK: resend that once we have it
            if answered.ack is not None and 200 <= response.status < 300:
                self.core.port.send_direct(answered.ack, answered.relayed.dest)
            return True
        if key in self.relayed:
            self._relayed_response(response, key)
            return True
        return False

    def on_timeout(self, key: TransactionKey) -> bool:
        ping = self.pings.pop(key, None)
        if ping is not None:
            self._pinged(ping[0], ping[1], 408)
            return True
        relayed = self.relayed.pop(key, None)
        if relayed is not None:
            self.core.port.respond(
                relayed.in_key, relayed.original, make_response(relayed.original, 408)
            )
            return True
        return False

    def forget(self, call: Call) -> None:
        for out_key in [k for k, a in self.answered.items() if a.relayed.call is call]:
            del self.answered[out_key]
        for ping_key in [k for k, (c, _) in self.pings.items() if c is call]:
            del self.pings[ping_key]

    def arm_keepalive(self, call: Call) -> None:
        if self.core.settings.keepalive > 0:
            call.timers.append(
                self.core.port.schedule(self.core.settings.keepalive, lambda: self._ping(call))
            )

    def session_check(self, call: Call, delay: float) -> None:
        """Hang up when the caller's session was not refreshed in time (RFC 4028 10)."""

        def check() -> None:
            timer = call.session_timer
            if call.ended or timer is None or call.a_dialog is None:  # a_dialog: moved on
                return
            left = session_timer.expiry(timer.interval) - (
                self.core.port.wall_time() - call.session_refreshed
            )
            if left > 0:
                self.session_check(call, left)
                return
            log.warning("session expired", call_id=call.id, interval=timer.interval)
            self.core.hang_up(call, "the caller's session expired: its phone stopped refreshing it")

        call.timers.append(self.core.port.schedule(delay, check))

    def session_refresh(self, call: Call) -> None:
        """The caller asked the PBX to refresh: an UPDATE without SDP at half the interval
        (RFC 4028 10); a phone that no longer knows the call (481) or is gone ends it."""
        timer = call.session_timer
        assert timer is not None

        def refresh() -> None:
            dialog, dest = call.a_dialog, call.a_source
            if call.ended or dialog is None or call.session_timer is not timer:
                return
            update = self.core.dialog_request(
                dialog,
                dest,
                "UPDATE",
                headers=[("Session-Expires", f"{timer.interval};refresher=uas")],
            )
            self.core.request(update, dest, answered)

        def answered(response: Response | None) -> None:
            if call.ended:
                return
            if response is not None and 200 <= response.status < 300:
                call.session_refreshed = self.core.port.wall_time()
                self.session_refresh(call)
            elif response is None or response.status in (408, 481):
                self.core.hang_up(call, "the caller's phone did not answer a session refresh")
            else:  # refused (405...): the session expires unless the caller refreshes
                log.info("session refresh refused", call_id=call.id, status=response.status)

        call.timers.append(self.core.port.schedule(timer.interval / 2, refresh))

    def _ping(self, call: Call) -> None:
        """An in-dialog OPTIONS to each phone (as Kamailio's dialog keep-alive does): a
        phone that crashed or lost its network sends no BYE, and the call would go on
        costing money until its maximum duration."""
        if call.ended:
            return
        for leg in ("a", "b"):
            dialog, dest = call.leg(leg)
            if dialog is None or dest is None:
                continue
            host, port = self.core.port.local_address(dest.transport)
            options = dialog.new_request(
                "OPTIONS", Via(dest.transport, host, port, {"rport": None})
            )
            self.pings[self.core.port.send_request(options, dest)] = (call, leg)
        self.arm_keepalive(call)

    def _pinged(self, call: Call, leg: str, status: int) -> None:
        """Any answer but 481 (no such call) or 408 (none at all) means the phone is there:
        a phone may well refuse OPTIONS (405, 501) and still be in the call."""
        if call.ended or status not in (408, 481):
            return
        who = "caller" if leg == "a" else "callee"
        why = "no longer knows the call (481)" if status == 481 else "does not answer"
        log.warning("dead call hung up", call_id=call.id, leg=leg, status=status)
        self.core.hang_up(call, f"the {who}'s phone {why}")

    def in_dialog(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        if request.method == "PRACK":  # for the PBX's own reliable provisionals
            self.core.prack.received(request, key)
            return
        tag = request.to.tag
        assert tag is not None
        found = self.core.dialogs.get((request.call_id, tag))
        if found is None:
            if request.method != "ACK":
                self.core.port.respond(key, request, make_response(request, 481))
            return
        call, leg = found
        dialog = call.leg(leg)[0]
        if dialog is None:  # a leg that moved to another call (a transfer) meanwhile
            if request.method != "ACK":
                self.core.port.respond(key, request, make_response(request, 481))
            return
        if request.method == "ACK":
            answered = self._awaiting_ack(call, leg, request.cseq.number)
            if answered is not None:
                self._relay_ack(answered, request)
            elif leg == "a":
                self.core.caller_acked(call, request)
            elif call.b_uas:  # the picker's ACK for our 2xx (pbxwarden.pbx.pickup)
                call.b_acked = True
            return
        if not dialog.accepts(request):
            self.core.port.respond(
                key,
                request,
                make_response(request, 500, "Server Internal Error (CSeq out of order)"),
            )
            return
        if request.method == "BYE":
            self.core.port.respond(key, request, make_response(request, 200))
            call.hung_up_by = call.hung_up_by or leg
            if not call.ended and call.answered is None:  # a transferee hung up early
                self.core.hang_up(call, "caller hung up")
            elif not call.ended:
                self.core.bye(call, other_leg(leg))
                self.core.finish(
                    call, "answered", 200, "caller hung up" if leg == "a" else "callee hung up"
                )
            return
        if call.ended:
            self.core.port.respond(key, request, make_response(request, 481))
            return
        if call.moved_to is not None or (call.b_ack is None and call.joined is not None):
            # a transfer is under way: the other party is not joined yet (RFC 3261 14.1)
            reason = "Request Pending (a transfer of this call is under way)"
            self.core.port.respond(key, request, make_response(request, 491, reason))
            return
        if call.answered is None:
            self.core.port.respond(key, request, make_response(request, 481))
            return
        if request.method == "REFER":
            self.core.refer(call, leg, request, key, source)
            return
        if request.method in NOT_RELAYED:
            # A transfer is a new call someone pays for: the PBX must place it itself,
            # through the guard, never let the other phone (or a carrier) act on it.
            log.warning("mid-call request refused", method=request.method, call_id=call.id)
            reason = f"Not Implemented ({request.method} in a call is not available)"
            self.core.port.respond(key, request, make_response(request, 501, reason))
            return
        self._relay_in_dialog(call, leg, request, key, source)

    def _relay_in_dialog(
        self,
        call: Call,
        leg: str,
        request: Request,
        key: TransactionKey | None,
        source: Address,
    ) -> None:
        """Mid-call requests (re-INVITE for hold and codec changes, UPDATE, INFO for DTMF)
        go to the other phone in its own dialog; its answer comes back the same way."""
        dialog, dest = call.leg(other_leg(leg))
        if dialog is None or dest is None:
            self.core.port.respond(key, request, make_response(request, 481))
            return
        try:
            body = self.core.anchored(
                call, leg, request.headers.get("Content-Type"), request.body, source.host
            )
        except MediaError as exc:
            self.core.port.respond(
                key,
                request,
                make_response(request, 488, f"Not Acceptable Here ({safe_reason(str(exc))})"),
            )
            return
        host, port = self.core.port.local_address(dest.transport)
        headers = [
            (n, v) for n in ("Content-Type", "Event") if (v := request.headers.get(n)) is not None
        ]
        supported = options.offered(request.headers.get("Supported"))
        if supported is not None:
            headers.append(("Supported", supported))
        relayed = dialog.new_request(
            request.method,
            Via(dest.transport, host, port, {"rport": None}),
            contact=str(self.core.contact(dest.transport)) if request.method == "INVITE" else None,
            body=body,
            headers=headers,
        )
        out_key = self.core.port.send_request(relayed, dest)
        back = call.leg(leg)[1]
        assert back is not None
        self.relayed[out_key] = Relayed(
            request, key, back.transport, relayed, dest, dialog, call, leg
        )

    def _relayed_response(self, response: Response, out_key: TransactionKey) -> None:
        r = self.relayed[out_key]
        if response.status < 200:
            return
        del self.relayed[out_key]
        original = r.original
        headers: list[tuple[str, str]] = []
        if original.method == "INVITE":
            headers.append(("Contact", str(self.core.contact(r.back_transport))))
        ctype = response.headers.get("Content-Type")
        body = response.body if ctype else b""
        status, reason = response.status, response.reason
        try:
            body = self.core.anchored(r.call, other_leg(r.leg), ctype, body, r.dest.host)
        except MediaError as exc:
            log.warning("re-INVITE answer not anchored", call_id=r.call.id, error=str(exc))
            status, reason, body = 500, "Server Internal Error (answer SDP unreadable)", b""
        if body:
            headers.append(("Content-Type", ctype or ""))
        headers += self._refreshed(r, status)
        answer = make_response(original, status, reason, headers=headers, body=body)
        self.core.port.respond(r.in_key, original, answer)
        if r.relayed.method == "INVITE" and response.status < 300:
            # the other phone gets its ACK when the sender ACKs ours (it may carry SDP)
            answered = self.answered[out_key] = RelayedAnswer(r, out_key)
            self.core.retransmit_2xx(
                r.call,
                lambda: self.core.port.respond(r.in_key, original, answer),
                lambda: answered.ack is not None,
                "no ACK for a re-INVITE",
            )

    def _refreshed(self, r: Relayed, status: int) -> list[tuple[str, str]]:
        """A 2xx to the caller's re-INVITE or UPDATE refreshes its session (RFC 4028 10),
        with the interval it asks for now, if any; the answer says so."""
        call = r.call
        timer = call.session_timer
        if r.leg != "a" or timer is None or not 200 <= status < 300:
            return []
        if r.original.method not in ("INVITE", "UPDATE"):
            return []
        with contextlib.suppress(ValueError, session_timer.TooBrief):
            timer = session_timer.asked(r.original, self.core.settings.min_se) or timer
        call.session_timer = timer
        call.session_refreshed = self.core.port.wall_time()
        return session_timer.answer_headers(timer)

    def _awaiting_ack(self, call: Call, leg: str, cseq: int) -> RelayedAnswer | None:
        return next(
            (
                a
                for a in self.answered.values()
                if a.relayed.call is call
                and a.relayed.leg == leg
                and a.relayed.original.cseq.number == cseq
            ),
            None,
        )

    def _relay_ack(self, answered: RelayedAnswer, request: Request) -> None:
        """The sender's ACK for our 2xx: ACK the other phone's 2xx (once; retransmitted
        ACKs are absorbed) and forget it all after 64*T1, when retransmissions stop."""
        if answered.ack is not None:
            return
        r = answered.relayed
        host, port = self.core.port.local_address(r.dest.transport)
        ctype = request.headers.get("Content-Type")
        body = request.body if ctype else b""
        back = r.call.leg(r.leg)[1]
        try:
            body = self.core.anchored(r.call, r.leg, ctype, body, back.host if back else "")
        except MediaError as exc:
            log.warning("ACK's SDP not anchored", call_id=r.call.id, error=str(exc))
            body = b""
        answered.ack = r.dialog.new_request(
            "ACK",
            Via(r.dest.transport, host, port, {"rport": None}),
            cseq=r.relayed.cseq.number,
            body=body,
            headers=[("Content-Type", ctype)] if ctype and body else [],
        )
        self.core.port.send_direct(answered.ack, r.dest)

        def forget() -> None:
            self.answered.pop(answered.key, None)

        self.core.port.schedule(64 * self.core.settings.t1, forget)
