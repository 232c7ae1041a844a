"""Forking: several B legs of one call ringing at once, raced for the answer.

An extension registered from several phones rings on all of them (RFC 3261 16.6
parallel search), and a ring group's step rings its members (:mod:`pbxwarden.pbx.groups`):
one fork per contact or number. The first 2xx wins and becomes the call's B leg (the
core's ``b_*`` fields), the others are cancelled with ``Reason: ... Call completed
elsewhere`` (RFC 3326); a late 2xx still gets its ACK and a BYE (RFC 3261 13.2.2.4).
When every fork failed, the caller gets the most telling answer (RFC 3261 16.7) and
the dialplan decides what follows (:meth:`pbxwarden.pbx.b2bua.B2bua.leg_failed`).

Sans-I/O like the core: messages leave through the core's port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from pbxwarden.pbx.call import COMPLETED_ELSEWHERE, Call, Fork, best_response
from pbxwarden.sip.dialog import Dialog
from pbxwarden.sip.digest_client import AUTH_HEADERS
from pbxwarden.sip.message import Response
from pbxwarden.sip.transaction import Address, TransactionError, TransactionKey
from pbxwarden.sip.uri import parse_uri

if TYPE_CHECKING:
    from pbxwarden.pbx.b2bua import B2bua
    from pbxwarden.pbx.groups import Member

log = structlog.get_logger("pbxwarden.calls")


class Forking:
    """The forks of every call, owned by the B2BUA core."""

    def __init__(self, core: B2bua) -> None:
        self.core = core
        self.forks: dict[TransactionKey, tuple[Call, Fork]] = {}  # every fork until forgotten

    def ring(self, call: Call, targets: list[tuple[str, Address]]) -> None:
        """Ring every contact at once (RFC 3261 16.6 parallel search), one B leg each.

        The first 2xx wins and becomes the call's B leg (``b_*``); the others are
        cancelled with ``Reason: ... Call completed elsewhere`` (RFC 3326). Only the first
        provisional response of any fork reaches the caller (180, or 183 with its early
        media): relaying several phones' early media to one caller cannot work, and one
        "ringing" is all the caller needs.
        """
        call.provisional_relayed = False
        forks = []
        for contact, dest in targets:
            invite = self.core.b_invite(call, parse_uri(contact), dest)
            fork = Fork(self.core.port.send_request(invite, dest), invite, dest)
            self.forks[fork.key] = (call, fork)
            forks.append(fork)
        call.forks = forks
        log.info("ringing contacts in parallel", callee=call.callee, contacts=len(forks))

    def members(self, call: Call, members: list[Member]) -> None:
        """Ring a ring group's step (:mod:`pbxwarden.pbx.groups`): one fork per member
        contact or external number, raced like an extension's contacts."""
        forks = []
        for member in members:
            invite = self.core.b_invite(call, member.uri, member.dest, member.trunk)
            fork = Fork(self.core.port.send_request(invite, member.dest), invite, member.dest)
            fork.extension, fork.trunk = member.extension, member.trunk
            fork.ref, fork.e164 = member.ref, member.e164
            self.forks[fork.key] = (call, fork)
            forks.append(fork)
        call.forks = forks

    def register(self, call: Call, fork: Fork) -> None:
        """``fork``'s INVITE was sent again (with credentials): its answers come here."""
        self.forks[fork.key] = (call, fork)

    def response(self, call: Call, fork: Fork, response: Response) -> None:
        status = response.status
        if status < 200:
            if status == 100:
                return
            fork.provisional = True
            if not self.core.prack.from_callee(call, fork.key, fork.request, fork.dest, response):
                return  # a retransmission of a reliable one
            if fork.cancel_pending is not None:  # cancelled before it could be: now it can
                reason, fork.cancel_pending = fork.cancel_pending, None
                self.cancel(fork, reason or None)
                return
            live = fork in call.forks and not call.ended and call.answered is None
            if live and not call.provisional_relayed:
                call.provisional_relayed = True
                self.core.relay_to_a(call, response, fork.dest.host)
            return
        if status < 300:
            self.answered(call, fork, response)
            return
        if fork.final is not None or fork.dialog is not None:
            return
        live = fork in call.forks and not call.ended and call.answered is None
        if (
            live
            and status in AUTH_HEADERS
            and fork.trunk is not None
            and self.core.fork_challenged(call, fork, response)
        ):
            return
        fork.final = response
        if live and status < 400 and call.group is not None:
            log.warning(  # a group member's own diversion would take the group's call
                "a group member's phone redirected the call: not followed",
                callee=call.callee,
                member=fork.extension.number if fork.extension else None,
            )
        elif live and status < 400 and response.contacts and response.contacts[0].uri.user:
            # One phone of the extension redirects (its own diversion: a hijacked phone's
            # web page does exactly this): judged and followed as a single phone's 3xx is,
            # never dropped because another phone of the extension is still ringing.
            log.info("a ringing contact redirects the call", callee=call.callee)
            for other in call.forks:
                if other is not fork:
                    self.cancel(other, None)
            self.core.leg_failed(call, response, busy=False, timeout=False)
            return
        self.over(call, fork)

    def answered(self, call: Call, fork: Fork, response: Response) -> None:
        if fork.dialog is None:
            fork.dialog = Dialog.as_uac(fork.request, response)
            self.core.prack.confirmed(fork.key, fork.dialog)
        if call.b_key == fork.key:  # the winner's 2xx again: our ACK was lost
            self.core.ack_b(call)
            return
        if call.ended or call.answered is not None or fork not in call.forks:
            # RFC 3261 13.2.2.4: a 2xx from a fork that lost the race (or rang after the
            # caller gave up) still gets its ACK, then a BYE.
            self.core.ack(fork.request, fork.dialog, fork.dest)
            if not fork.hung_up:
                fork.hung_up = True
                log.info("late answer from another contact hung up", callee=call.callee)
                self.core.send_bye(fork.dialog, fork.dest)
            return
        fork.cancel_pending = None
        call.b_request, call.b_key, call.b_dest = fork.request, fork.key, fork.dest
        call.b_provisional = fork.provisional
        call.b_dialog = fork.dialog
        if fork.extension is not None:  # a group member: its line is the one in the call
            call.ringing = fork.extension
        if fork.trunk is not None:  # a group's external member: this carrier is paid
            call.b_trunk, call.trunk, call.out_e164 = fork.trunk, fork.trunk.name, fork.e164
        if fork.ref is not None:
            self.core.policy.on_call_answer(fork.ref, self.core.port.wall_time())
        self.core.dialogs[(fork.request.call_id, fork.dialog.local_tag)] = (call, "b")
        self.core.ack_b(call)
        for other in call.forks:
            if other is not fork:
                self.cancel(other, COMPLETED_ELSEWHERE)
        self.core.fork_won(call, fork)
        self.core.answer_a(call, response)

    def over(self, call: Call, fork: Fork) -> None:
        """A fork failed: when it was the last one ringing (or said 6xx: "nowhere"), the
        caller gets the best of the failures, and busy forwarding if every phone was busy."""
        if call.ended or call.answered is not None or fork not in call.forks:
            return
        assert fork.final is not None
        if fork.final.status >= 600 and call.group is None:  # one member's "no" is not the group's
            for other in call.forks:
                if other is not fork:
                    self.cancel(other, None)
            best, busy = fork.final, fork.final.status == 600
        else:
            finals = [f.final for f in call.forks if f.final is not None]
            if len(finals) < len(call.forks):
                return  # others are still ringing
            best = best_response(finals)
            busy = all(r.status in (486, 600) for r in finals)
        self.core.leg_failed(call, best, busy=busy, timeout=False)

    def cancel(self, fork: Fork, reason: str | None) -> None:
        if fork.cancelled or fork.final is not None or fork.dialog is not None:
            return
        if not fork.provisional:
            # RFC 3261 9.1: no CANCEL before a provisional response; sent when one comes
            fork.cancel_pending = reason or ""
            return
        fork.cancelled = True
        try:
            cancel = self.core.port.build_cancel(fork.key)
        except TransactionError:  # the transaction is already over
            return
        if reason:
            cancel.headers.add("Reason", reason)
        self.core.port.send_request(cancel, fork.dest)
