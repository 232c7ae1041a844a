"""The B2BUA core: legs, forks, answers, relays, timers and endings of every call.

Holding both legs is what lets the PBX authorize a call before it costs anything,
account for it, and end it at any moment (a spend cap, a fraud alert, an operator). The
core places b legs where it is told, rings several at once (:mod:`pbxwarden.pbx.forking`),
relays provisional and final answers to the caller, anchors media, retransmits its 2xx
until the ACK, and ends calls; what a failed leg means (follow a redirect, forward on
busy, try the carrier's next server, answer a challenge) is the dialplan's decision
(:meth:`B2bua.leg_failed`, implemented by :class:`pbxwarden.pbx.calls.CallManager`).
Mid-call requests and keep-alives are :mod:`pbxwarden.pbx.mid_call`, reliable
provisional responses (100rel, PRACK) on both legs :mod:`pbxwarden.pbx.prack`.

Sans-I/O: timers use the scheduler of the :class:`CallPort`, messages leave through it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden.pbx import caller_id, options, session_timer
from pbxwarden.pbx.call import (
    DISPOSITIONS,
    Call,
    CallPort,
    CallSettings,
    Fork,
)
from pbxwarden.pbx.forking import Forking
from pbxwarden.pbx.locate import (
    is_ip,
)
from pbxwarden.pbx.media import MediaAnchor, MediaError, SdpError, is_sdp
from pbxwarden.pbx.mid_call import MidCall
from pbxwarden.pbx.numbers import Destination
from pbxwarden.pbx.policy import CallAuthorizer, Decision
from pbxwarden.pbx.prack import Prack
from pbxwarden.pbx.routing import Trunk
from pbxwarden.pbx.sdp_origin import SdpOrigins
from pbxwarden.sip.dialog import Dialog
from pbxwarden.sip.digest_client import (
    AUTH_HEADERS,
)
from pbxwarden.sip.message import (
    REASON_PHRASES,
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
from pbxwarden.sip.uri import URI, NameAddr

if TYPE_CHECKING:
    pass

log = structlog.get_logger("pbxwarden.calls")


class B2bua:
    """The calls in progress and the machinery of their legs; see the module docstring."""

    def __init__(
        self,
        port: CallPort,
        policy: CallAuthorizer,
        settings: CallSettings | None = None,
        media: MediaAnchor | None = None,
    ) -> None:
        self.port = port
        self.policy = policy
        self.settings = settings or CallSettings()
        self.media = media  # the RTP relay, when media is anchored at the PBX
        self.calls: dict[int, Call] = {}
        self._by_invite: dict[TransactionKey, Call] = {}
        self.by_b_key: dict[TransactionKey, Call] = {}
        self.dialogs: dict[tuple[str, str], tuple[Call, str]] = {}
        self._tokens = itertools.count(1)
        self.attempts: dict[str, int] = {}  # call attempts by kind, for metrics
        self.mid = MidCall(self)
        self.forking = Forking(self)
        self.prack = Prack(self)  # reliable provisional responses (RFC 3262)
        # requests a feature sent in a call's dialogs, and who takes their final answers
        self.awaiting: dict[TransactionKey, Callable[[Response | None], None]] = {}
        self.refs: dict[int, Call] = {}  # further guard references (group members' legs)
        # the SDP origin each phone sees in its dialog (the server rewrites what it sends)
        self.origins = SdpOrigins()

    def leg_failed(self, call: Call, response: Response, *, busy: bool, timeout: bool) -> None:
        """The b leg (or every fork) ended without an answer: ``response`` is its final
        answer (a stand-in 408 when ``timeout``). The dialplan decides what follows."""
        raise NotImplementedError

    def line_changed(self, call: Call) -> None:
        """A call rang, was answered or ended: busy lamps may change (the dialplan's)."""

    def fork_won(self, call: Call, fork: Fork) -> None:
        """``fork`` answered and is the call's B leg now (a ring group moves on)."""

    def fork_challenged(self, call: Call, fork: Fork, response: Response) -> bool:
        """A carrier challenged a fork's INVITE: True when it was sent again with
        credentials (the dialplan knows the trunk's)."""
        return False

    def refer(
        self,
        call: Call,
        leg: str,
        request: Request,
        key: TransactionKey | None,
        source: Address,
    ) -> None:
        """A REFER in a call (a transfer): never relayed; the dialplan performs it."""
        self.port.respond(key, request, make_response(request, 501))

    def request(
        self, request: Request, dest: Address, on_final: Callable[[Response | None], None]
    ) -> TransactionKey:
        """Send an in-dialog request for a feature: ``on_final`` gets each final answer
        (a 2xx to an INVITE may come again until ACKed), or None when none came."""
        key = self.port.send_request(request, dest)
        self.awaiting[key] = on_final
        return key

    def _forget_awaiting(self, key: TransactionKey) -> None:
        self.awaiting.pop(key, None)

    def on_response(self, response: Response, key: TransactionKey) -> None:
        if self.mid.on_response(response, key):
            return
        handler = self.awaiting.get(key)
        if handler is not None:
            if response.status >= 200:
                if response.status >= 300 or response.cseq.method != "INVITE":
                    del self.awaiting[key]
                else:  # its retransmissions still need an ACK for a while
                    self.port.schedule(64 * self.settings.t1, lambda: self._forget_awaiting(key))
                handler(response)
            return
        forked = self.forking.forks.get(key)
        if forked is not None:
            if response.cseq.method == "INVITE":
                self.forking.response(forked[0], forked[1], response)
            return
        call = self.by_b_key.get(key)
        if call is None:
            return
        if response.cseq.method == "INVITE":
            self._b_invite_response(call, response)

    def on_timeout(self, key: TransactionKey) -> None:
        if self.mid.on_timeout(key):
            return
        handler = self.awaiting.pop(key, None)
        if handler is not None:
            handler(None)
            return
        forked = self.forking.forks.get(key)
        if forked is not None:
            fork_call, fork = forked
            if fork.final is None and fork.dialog is None:
                fork.final = make_response(fork.request, 408)
                self.forking.over(fork_call, fork)
            return
        call = self.by_b_key.get(key)
        if call is not None and not call.ended and call.answered is None:
            assert call.b_request is not None
            self.leg_failed(call, make_response(call.b_request, 408), busy=False, timeout=True)

    def police(self, now: float) -> int:
        """Cut off the calls the authorizer says must end now (spend cap, suspension)."""
        ended = 0
        for token, reason in self.policy.police(now):
            call = self.calls.get(token) or self.refs.get(token)
            if call is not None and not call.ended:
                log.warning("call cut off", call_id=call.id, reason=reason)
                self.hang_up(call, reason)
                ended += 1
        return ended

    def end_extension_calls(self, tenant: str, number: str, reason: str) -> int:
        """End every call of an extension (placed, paid or answered by it) but emergency
        calls: after a password change, any of them may be an attacker's."""
        ended = 0
        for call in list(self.calls.values()):
            if call.ended or call.emergency:
                continue
            rung = call.ringing
            if (call.tenant == tenant and call.extension == number) or (
                rung is not None and rung.tenant == tenant and rung.number == number
            ):
                log.warning("call ended", call_id=call.id, reason=reason)
                self.hang_up(call, reason)
                ended += 1
        return ended

    def end_call(self, call_id: str, reason: str = "ended by an administrator") -> bool:
        """End a call in progress: BYE on both legs (or CANCEL if it is still ringing).
        A transferred call shares its Call-ID with the call it came from: both end."""
        ended = False
        for call in list(self.calls.values()):
            if call.id == call_id and not call.ended:
                self.hang_up(call, reason)
                ended = True
        return ended

    # -- a new call ----------------------------------------------------------------------

    def open(
        self,
        request: Request,
        key: TransactionKey | None,
        source: Address,
        tenant: str,
        extension: str,
        caller_id: str,
        dialed: str,
        kind: str,
        decision: Decision,
        now: float,
        destination: Destination | None,
    ) -> Call:
        call = Call(
            next(self._tokens),
            tenant,
            extension,
            caller_id,
            dialed,
            request,
            key,
            source,
            generate_tag(),
            decision,
            now,
        )
        self.attempts[kind] = self.attempts.get(kind, 0) + 1
        self.port.cdr_open(
            call.token,
            {
                "call_id": request.call_id[:255],
                "tenant": tenant,
                "extension": extension or None,
                "caller": caller_id[:128],
                "callee": dialed[:128],
                "kind": kind,
                "decision": decision.label,
                "reasons": "; ".join(decision.reasons)[:2000],
                "score": decision.score,
                "severity": decision.severity,
                "start_ts": now,
                "callee_e164": destination.e164 if destination else None,
                "dest_country": destination.country if destination else None,
                "number_type": destination.number_type if destination else None,
            },
        )
        with contextlib.suppress(ValueError, session_timer.TooBrief):  # judged by the dialplan
            call.session_timer = session_timer.asked(request, self.settings.min_se)
        self.calls[call.token] = call
        if key is not None:
            self._by_invite[key] = call
        return call

    def new_ref(self, call: Call) -> int:
        """A further guard reference for one of ``call``'s legs (a group's external
        member): counted, answered and ended on its own, cut off as the call."""
        ref = next(self._tokens)
        self.refs[ref] = call
        call.refs.append(ref)
        return ref

    def end_ref(self, call: Call, ref: int, now: float) -> None:
        """That leg is over (it lost, or its step ended): the guard releases it."""
        if ref in call.refs:
            call.refs.remove(ref)
            self.refs.pop(ref, None)
            cost = self.policy.on_call_end(ref, now)
            if cost:
                call.outcome["member_cost"] = call.outcome.get("member_cost", 0.0) + cost

    def arm_ring_timer(self, call: Call) -> None:
        call.timers.append(
            self.port.schedule(self.settings.ring_timeout, lambda: self._ring_timeout(call))
        )

    def send_b_invite(self, call: Call, target: URI, dest: Address) -> None:
        invite = self.b_invite(call, target, dest)
        call.b_request, call.b_dest = invite, dest
        call.b_key = self.port.send_request(invite, dest)
        self.by_b_key[call.b_key] = call

    def b_invite(
        self, call: Call, target: URI, dest: Address, trunk: Trunk | None = None
    ) -> Request:
        a = call.a_request
        trunk = trunk or call.b_trunk
        host, port = self.port.local_address(dest.transport)
        tag = generate_tag()
        headers = Headers()
        if trunk is not None and call.identity is not None:
            # towards a carrier: a number the tenant owns, never what the phone put in From
            from_, extra = caller_id.from_and_headers(
                call.identity, host, tag, trunk.assert_identity
            )
            for extra_name, extra_value in extra:
                headers.add(extra_name, extra_value)
        else:
            from_ = NameAddr(URI("sip", user=call.caller_id, host=host), call.display, {"tag": tag})
        # towards a carrier the number it routes (E.164, or the emergency number as such)
        to_user = target.user if trunk is not None and target.user else call.callee
        # a carrier by DNS name is addressed by its domain, as in the Request-URI
        named = trunk is not None and not is_ip(trunk.host)
        to = NameAddr(URI("sip", user=to_user, host=target.host if named else host))
        # a joined call's B leg is placed without an offer: the answer brings one
        body = b"" if call.joined is not None else call.offer if call.offer is not None else a.body
        for name in ("Allow",) if call.joined is not None else ("Content-Type", "Allow"):
            value = a.headers.get(name)
            if value is not None:
                headers.add(name, value)
        supported = options.offered(a.headers.get("Supported"), prack=bool(body))
        if supported is not None:
            headers.add("Supported", supported)
        if call.diversion is not None:
            headers.add("Diversion", call.diversion)
        if call.history:
            headers.add("History-Info", ", ".join(call.history))
        return Request(
            via=[Via(dest.transport, host, port, {"branch": generate_branch(), "rport": None})],
            from_=from_,
            to=to,
            call_id=generate_call_id(),
            cseq=CSeq(1, "INVITE"),
            headers=headers,
            body=body,
            max_forwards=max(0, (a.max_forwards if a.max_forwards is not None else 70) - 1),
            contacts=[self.contact(dest.transport)],
            method="INVITE",
            uri=target,
        )

    def dialog_request(
        self,
        dialog: Dialog,
        dest: Address,
        method: str,
        *,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> Request:
        """A request of ours in ``dialog`` to the phone at ``dest``: our Via and Contact
        for its transport (re-INVITE, UPDATE, NOTIFY from the PBX itself)."""
        host, port = self.port.local_address(dest.transport)
        return dialog.new_request(
            method,
            Via(dest.transport, host, port, {"rport": None}),
            contact=str(self.contact(dest.transport)),
            body=body,
            headers=headers or [],
        )

    def contact(self, transport: str) -> NameAddr:
        host, port = self.port.local_address(transport)
        params: dict[str, str | None] = (
            {} if transport == "UDP" else {"transport": transport.lower()}
        )
        return NameAddr(URI("sip", host=host, port=port, params=params))

    # -- the B leg answers ---------------------------------------------------------------

    def _b_invite_response(self, call: Call, response: Response) -> None:
        status = response.status
        if status < 200:
            if status > 100:
                call.b_provisional = True
                if not self.prack.from_callee(
                    call, call.b_key, call.b_request, call.b_dest, response
                ):
                    return  # a retransmission of a reliable one
                if not call.ended and call.b_dest is not None:
                    self.relay_to_a(call, response, call.b_dest.host)
            return
        if status < 300:
            if call.b_dialog is None:
                assert call.b_request is not None
                call.b_dialog = Dialog.as_uac(call.b_request, response)
                self.prack.confirmed(call.b_key, call.b_dialog)
                self.dialogs[(call.b_request.call_id, call.b_dialog.local_tag)] = (call, "b")
            self.ack_b(call)
            if call.ended:  # answered after the caller gave up: hang up at once
                self.bye(call, "b")
                return
            if call.answered is None:
                self.answer_a(call, response)
            return
        if call.ended:
            return
        self.leg_failed(call, response, busy=status in (486, 600), timeout=False)

    def relay_to_a(self, call: Call, response: Response, b_host: str) -> None:
        if call.joined is not None:
            call.joined.progress(call, response)
            return
        headers = [("Contact", str(self.contact(call.a_source.transport)))]
        ctype = response.headers.get("Content-Type")
        body = response.body if ctype else b""
        try:
            body = self.anchored(call, "b", ctype, body, b_host)
        except MediaError as exc:  # early media cannot be relayed: ringing all the same
            log.warning("early media not anchored", call_id=call.id, error=str(exc))
            body = b""
        if body:
            headers.append(("Content-Type", ctype or ""))
        self.prack.to_caller(
            call,
            make_response(
                call.a_request,
                response.status,
                response.reason,
                to_tag=call.a_tag,
                headers=headers,
                body=body,
            ),
        )

    def ack_b(self, call: Call) -> None:
        assert call.b_dialog is not None and call.b_request is not None
        assert call.b_dest is not None
        if call.b_request.body or call.ended:
            self.ack(call.b_request, call.b_dialog, call.b_dest)
        elif call.b_ack is not None:  # delayed offer: the caller's answer goes on
            self.ack(call.b_request, call.b_dialog, call.b_dest, *call.b_ack)
        # else: the caller's ACK (with the answer) is awaited; see _caller_acked

    def caller_acked(self, call: Call, request: Request) -> None:
        call.a_acked = True
        if call.b_ack is not None or call.b_request is None or call.b_request.body:
            return
        ctype = request.headers.get("Content-Type")
        body = request.body if ctype else b""
        try:
            body = self.anchored(call, "a", ctype, body, call.a_source.host)
        except MediaError as exc:
            log.warning("caller's answer not anchored", call_id=call.id, error=str(exc))
            ctype, body = None, b""
        call.b_ack = (ctype if body else None, body)
        self.ack_b(call)

    def ack(
        self,
        invite: Request,
        dialog: Dialog,
        dest: Address,
        ctype: str | None = None,
        body: bytes = b"",
    ) -> None:
        host, port = self.port.local_address(dest.transport)
        # RFC 3261 22.1: the ACK for a 2xx carries the INVITE's credentials
        credentials = [
            (name, value)
            for _, name in AUTH_HEADERS.values()
            for value in invite.headers.get_all(name)
        ]
        if ctype and body:
            credentials.append(("Content-Type", ctype))
        ack = dialog.new_request(
            "ACK",
            Via(dest.transport, host, port, {"rport": None}),
            cseq=invite.cseq.number,
            headers=credentials,
            body=body,
        )
        self.port.send_direct(ack, dest)

    def answer_a(self, call: Call, response: Response) -> None:
        if call.joined is not None:  # the a leg is up already: the feature joins them
            call.joined.answered(call, response)
            return
        if self.prack.hold_answer(call, lambda: self.answer_a(call, response)):
            return  # RFC 3262 3: a provisional with SDP is not PRACKed yet
        ctype = response.headers.get("Content-Type")
        assert call.b_dest is not None
        try:
            body = self.anchored(call, "b", ctype, response.body, call.b_dest.host)
        except MediaError as exc:
            log.warning("callee's media not anchored", call_id=call.id, error=str(exc))
            self.bye(call, "b")
            self.fail(call, 502, f"the callee's media cannot be relayed: {exc}")
            return
        now = self.port.wall_time()
        self.mark_answered(call, now)
        self.policy.on_call_answer(call.token, now)
        headers = [("Contact", str(self.contact(call.a_source.transport)))]
        if ctype:
            headers.append(("Content-Type", ctype))
        if call.session_timer is not None:
            headers += session_timer.answer_headers(call.session_timer)
        ok = make_response(call.a_request, 200, to_tag=call.a_tag, headers=headers, body=body)
        call.a_final = ok
        call.a_dialog = Dialog.as_uas(call.a_request, call.a_tag)
        self.dialogs[(call.a_request.call_id, call.a_tag)] = (call, "a")
        self.port.respond(call.a_key, call.a_request, ok)
        self.retransmit_2xx(
            call,
            lambda: self.port.respond(call.a_key, call.a_request, ok),
            lambda: call.a_acked,
            "no ACK from the caller",
        )
        self.arm_answered(call)
        log.info("call answered", caller=call.caller_id, callee=call.callee)

    def mark_answered(self, call: Call, now: float) -> None:
        """The call is up from ``now``; its CDR is told at once (``CallPort.cdr_answer``)."""
        call.answered = now
        self.port.cdr_answer(call.token, now)

    def arm_answered(self, call: Call) -> None:
        """An answered call's limits: its maximum duration, the keep-alive pings and the
        caller's session timer."""
        self.line_changed(call)
        if not call.emergency:  # an emergency call lasts as long as the answering point wants
            call.timers.append(
                self.port.schedule(
                    self.settings.max_duration,
                    lambda: self.hang_up(call, "maximum duration"),
                )
            )
            self.mid.arm_keepalive(call)
            if call.session_timer is not None:
                call.session_refreshed = self.port.wall_time()
                self.mid.session_check(call, session_timer.expiry(call.session_timer.interval))
                if call.session_timer.refresher == "uas":
                    self.mid.session_refresh(call)

    # -- keep-alive: does each phone still know the call? --------------------------------

    def retransmit_2xx(
        self,
        call: Call,
        resend: Callable[[], None],
        acked: Callable[[], bool],
        why: str,
        interval: float | None = None,
        waited: float = 0.0,
    ) -> None:
        """RFC 3261 13.3.1.4: resend our 2xx (T1 doubling up to T2) until the ACK
        arrives, or give up after 64*T1 and hang up."""
        step = self.settings.t1 if interval is None else interval

        def fire() -> None:
            if call.ended or acked():
                return
            if waited + step >= 64 * self.settings.t1:
                self.hang_up(call, why)
                return
            resend()
            next_step = min(step * 2, self.settings.t2)
            self.retransmit_2xx(call, resend, acked, why, next_step, waited + step)

        call.timers.append(self.port.schedule(step, fire))

    # -- media anchoring -----------------------------------------------------------------

    def anchored(
        self, call: Call, leg: str, ctype: str | None, body: bytes, signaling_host: str
    ) -> bytes:
        """SDP from the phone on ``leg`` as the other phone gets it: pointing at the
        relay's ports when media is anchored, unchanged otherwise."""
        if self.media is None or not is_sdp(ctype, body):
            return body
        return self.media.anchor(call.token, leg, body, signaling_host)

    def anchor_offer(self, call: Call) -> bool:
        """The caller's offer, anchored once for every B leg the call may try (forks,
        forwarding); a call whose media cannot be anchored is refused here."""
        a = call.a_request
        try:
            call.offer = self.anchored(
                call, "a", a.headers.get("Content-Type"), a.body, call.a_source.host
            )
        except SdpError as exc:
            self.fail(call, 488, str(exc))
            return False
        except MediaError as exc:
            log.warning("no media ports for a call", call_id=call.id, error=str(exc))
            self.fail(call, 503, str(exc))
            return False
        return True

    # -- in-dialog requests --------------------------------------------------------------

    def cancel(self, request: Request, key: TransactionKey | None) -> None:
        call = next(
            (
                c
                for c in self.calls.values()
                if c.a_request.call_id == request.call_id
                and c.a_request.cseq.number == request.cseq.number
                and c.a_request.via[0].branch == request.via[0].branch
            ),
            None,
        )
        if call is None:
            self.port.respond(key, request, make_response(request, 481))
            return
        self.port.respond(key, request, make_response(request, 200))
        if call.answered is None and not call.ended:
            self.cancel_b(call)
            self.fail(call, 487, None, disposition="cancelled")

    # -- endings -------------------------------------------------------------------------

    def _ring_timeout(self, call: Call) -> None:
        if call.answered is None and not call.ended:
            self.cancel_b(call)
            self.fail(call, 480, "no answer", disposition="no-answer")

    def cancel_b(self, call: Call) -> None:
        if self.prack.drop_held(call):  # the callee answered already: it gets a BYE
            self.bye(call, "b")
            return
        if call.forks and call.answered is None:
            for fork in call.forks:
                self.forking.cancel(fork, None)
            return
        if call.b_key is not None and call.b_dest is not None and call.answered is None:
            self.port.send_request(self.port.build_cancel(call.b_key), call.b_dest)

    def fail(
        self,
        call: Call,
        status: int,
        reason: str | None,
        *,
        disposition: str | None = None,
        sip_code: int | None = None,
    ) -> None:
        phrase = None
        if reason:
            phrase = f"{REASON_PHRASES.get(status, 'Error')} ({safe_reason(reason)})"
        self.port.respond(
            call.a_key,
            call.a_request,
            make_response(call.a_request, status, phrase, to_tag=call.a_tag),
        )
        self.finish(
            call,
            disposition or DISPOSITIONS.get(status, "failed"),
            sip_code or status,
            reason or "",
        )

    def bye(self, call: Call, leg: str) -> None:
        dialog, dest = call.leg(leg)
        if dialog is None or dest is None:
            return
        self.send_bye(dialog, dest)

    def send_bye(self, dialog: Dialog, dest: Address) -> None:
        host, port = self.port.local_address(dest.transport)
        bye = dialog.new_request("BYE", Via(dest.transport, host, port, {"rport": None}))
        self.port.send_request(bye, dest)

    def hang_up(self, call: Call, reason: str) -> None:
        if call.ended:
            return
        if call.moved_to is not None:  # its transferred leg goes too (a spend cap, an admin)
            self.hang_up(call.moved_to, reason)
        if call.ended:
            return
        if call.answered is None:
            self.cancel_b(call)
            self.fail(call, 480, reason, disposition="terminated")
            return
        self.bye(call, "a")
        self.bye(call, "b")
        self.finish(call, "answered", 200, reason)

    def finish(self, call: Call, disposition: str, sip_code: int, note: str) -> None:
        if call.ended:
            return
        if call.moved_to is not None and not call.moved_to.ended:
            # a leg of this call lives on, transferred: accounted for here until it ends
            if call.finish_pending is None:
                call.finish_pending = (disposition, sip_code, note)
                self.line_changed(call)
            return
        call.ended = True
        self.line_changed(call)
        if self.media is not None:
            self.media.release(call.token)
        now = self.port.wall_time()
        cost = self.policy.on_call_end(call.token, now)
        for ref in list(call.refs):  # a group's external member that answered
            self.end_ref(call, ref, now)
        member_cost = call.outcome.pop("member_cost", None)
        if member_cost:
            cost = (cost or 0.0) + member_cost
        for timer in call.timers:
            timer.cancel()
        call.timers.clear()
        fields: dict[str, Any] = {
            "cost": cost,
            "disposition": disposition,
            "sip_code": sip_code,
            "end_ts": now,
            "answer_ts": call.answered,
            "trunk": call.trunk,
            **call.outcome,
        }
        if call.answered is not None:
            fields["duration"] = max(0.0, now - call.answered)
        if note:
            base = call.outcome.get("reasons") or "; ".join(call.decision.reasons)
            fields["reasons"] = f"{base}; {note}"[:2000]
        self.port.cdr_close(call.token, fields)
        log.info(
            "call ended",
            caller=call.caller_id,
            callee=call.callee,
            disposition=disposition,
            code=sip_code,
            note=note,
        )
        # Keep the dialogs a little while for late BYEs and retransmissions, then forget.
        self.port.schedule(32.0, lambda: self._forget(call))
        if call.joined is not None:
            call.joined.ended(call, disposition, sip_code)

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.token, None)
        self.origins.forget((call.a_request.call_id, call.a_tag))
        if call.b_uas and call.b_dialog is not None:  # a picker's INVITE: our tag is its To
            self.origins.forget((call.b_dialog.call_id, call.b_dialog.local_tag))
        for leg in [call.b_request, *(f.request for f in call.forks)]:
            if leg is not None and (tag := leg.from_.params.get("tag")):
                self.origins.forget((leg.call_id, tag))
        for ref in call.refs:
            self.refs.pop(ref, None)
        if call.a_key is not None:
            self._by_invite.pop(call.a_key, None)
        if call.b_key is not None:
            self.by_b_key.pop(call.b_key, None)
        for key in [k for k, (c, _) in self.dialogs.items() if c is call]:
            del self.dialogs[key]
        forks = self.forking.forks
        for fork_key in [k for k, (c, _) in forks.items() if c is call]:
            del forks[fork_key]
        self.mid.forget(call)
        self.prack.forget(call)

    @property
    def active(self) -> list[Call]:
        return [c for c in self.calls.values() if not c.ended]
