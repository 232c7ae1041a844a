"""The B2BUA: every call is two dialogs joined by the PBX, never a plain proxy.

Holding both legs is what lets the PBX authorize a call before it costs anything,
account for it, and end it at any moment (a spend cap, a fraud alert, an operator).
The calling extension authenticates with digest; the attempt goes through the
authorization hook (:mod:`pbxwarden.pbx.policy`); the callee's registered contact is
called on a new leg; responses are relayed; either side may hang up.

Timers (ringing too long, maximum duration, retransmitting our 2xx until the ACK
comes) use the scheduler of the :class:`CallPort`, so this module stays free of
sockets and event loops.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import quote

import structlog

from pbxwarden.pbx import emergency
from pbxwarden.pbx.auth import Authenticator
from pbxwarden.pbx.directory import Directory
from pbxwarden.pbx.forwarding import DIVERSION_REASONS, FeatureCode, judge_target, parse_feature
from pbxwarden.pbx.location import LocationService
from pbxwarden.pbx.media import MediaAnchor, MediaError, SdpError, is_sdp
from pbxwarden.pbx.numbers import Destination, classify, emergency_number
from pbxwarden.pbx.policy import CallAttempt, CallAuthorizer, Decision
from pbxwarden.pbx.registrar import aor_key
from pbxwarden.pbx.routing import Did, Routing, Trunk
from pbxwarden.sip.dialog import Dialog
from pbxwarden.sip.digest import DigestError
from pbxwarden.sip.digest_client import (
    AUTH_HEADERS,
    ClientCredentials,
    DigestClient,
    select_challenge,
    with_credentials,
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
from pbxwarden.sip.transaction import Address, TransactionError, TransactionKey
from pbxwarden.sip.uri import URI, NameAddr, parse_uri
from pbxwarden.store.db import ExtensionAuth

log = structlog.get_logger("pbxwarden.calls")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class CallPort(Protocol):
    """What the B2BUA needs from the running server."""

    def send_request(self, request: Request, dest: Address) -> TransactionKey: ...
    def send_direct(self, message: Request | Response, dest: Address) -> None: ...
    def respond(self, key: TransactionKey | None, request: Request, response: Response) -> None: ...
    def build_cancel(self, key: TransactionKey) -> Request: ...
    def local_address(self, transport: str) -> tuple[str, int]: ...
    def schedule(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...
    def wall_time(self) -> float: ...
    def cdr_open(self, token: int, fields: dict[str, Any]) -> None: ...
    def cdr_close(self, token: int, fields: dict[str, Any]) -> None: ...
    def auth_failed(
        self, source: Address, username: str, extension: ExtensionAuth | None = None
    ) -> None: ...
    def refuse_credentials(self, extension: ExtensionAuth, source: Address) -> bool: ...
    def set_forwarding(
        self, tenant: str, number: str, kind: str, target: str | None, source: str
    ) -> None: ...
    def forwarding_refused(
        self, tenant: str, number: str, kind: str, target: str, source: str, reason: str
    ) -> None:
        """A phone's forwarding change was refused: it goes into the forwarding history."""

    def notify(
        self,
        tenant: str,
        extension: str,
        rule: str,
        summary: str,
        reasons: tuple[str, ...],
        dedupe: str,
    ) -> None:
        """A critical alert for the tenant's admins that is not the guard's (an emergency
        call): stored, streamed and sent on every alert channel."""


@dataclass(frozen=True, slots=True)
class CallSettings:
    ring_timeout: float = 60.0
    max_duration: float = 4 * 3600.0
    t1: float = 0.5
    t2: float = 4.0
    keepalive: float = 60.0  # seconds between in-dialog OPTIONS to both legs (0: never)


@dataclass(frozen=True, slots=True)
class _Relayed:
    """A mid-call request relayed to the other phone, and how to answer the original."""

    original: Request
    in_key: TransactionKey | None
    back_transport: str
    relayed: Request
    dest: Address
    dialog: Dialog
    call: Call
    leg: str  # the leg the original came from ("a" or "b")


@dataclass(eq=False)
class _RelayedAnswer:
    """A 2xx to a relayed re-INVITE: resent to the sender until its ACK (RFC 3261
    13.3.1.4), which then goes on to the other phone as the ACK of the relayed one."""

    relayed: _Relayed
    key: TransactionKey  # of the relayed re-INVITE
    ack: Request | None = None  # the ACK sent on, resent if the 2xx is retransmitted


MAX_FORWARDS = 3  # a diversion chain longer than this is a loop or an attack
MAX_FORKS = 10  # contacts rung at once for one extension (the registrar's default cap)
# RFC 3326: tells the phones that did not answer why they stop ringing (no "missed call")
COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'
# Credentials go once per B leg; a second only after a stale=TRUE challenge (the password
# was right, the nonce had expired). Anything more is a wrong password: no retry loop.
MAX_TRUNK_AUTH_ATTEMPTS = 2
# RFC 4458 "cause" URI parameter in History-Info (RFC 7044) entries, per diversion reason
HISTORY_CAUSES = {"always": 302, "busy": 486, "noanswer": 408, "redirect": 480}

_DISPOSITIONS = {
    486: "busy",
    600: "busy",
    603: "declined",
    408: "no-answer",
    480: "unavailable",
    487: "cancelled",
}


@dataclass(eq=False)
class _Fork:
    """One of the legs ringing the registered contacts of an extension at once.

    Only used when an extension has more than one contact; the leg that answers first
    is copied into the call's ``b_*`` fields and the rest of the B2BUA sees one B leg.
    """

    key: TransactionKey
    request: Request
    dest: Address
    provisional: bool = False
    final: Response | None = None  # its final non-2xx response (or a stand-in 408)
    cancel_pending: str | None = None  # CANCEL wanted before any provisional (its Reason)
    cancelled: bool = False
    dialog: Dialog | None = None  # set by a 2xx
    hung_up: bool = False  # a losing 2xx was ACKed and BYEd


@dataclass(eq=False)
class Call:
    token: int
    tenant: str
    extension: str  # the extension the call belongs to: the caller's, or the DID's
    caller_id: str
    callee: str
    a_request: Request
    a_key: TransactionKey | None
    a_source: Address
    a_tag: str
    decision: Decision
    started: float
    b_request: Request | None = None
    b_key: TransactionKey | None = None
    b_dest: Address | None = None
    a_dialog: Dialog | None = None
    b_dialog: Dialog | None = None
    b_provisional: bool = False
    trunk: str | None = None
    b_trunk: Trunk | None = None  # the trunk the current B leg goes out through
    b_auth_attempts: int = 0  # INVITEs resent with credentials on the current B leg
    ringing: ExtensionAuth | None = None  # the extension whose phone the B leg rings
    forks: list[_Fork] = field(default_factory=list)  # legs ringing several contacts at once
    provisional_relayed: bool = False  # forking: the caller got its one 180/183 already
    forwarded_by: list[str] = field(default_factory=list)
    visited: set[tuple[str, str]] = field(default_factory=set)  # (tenant, extension) rung
    diversion: str | None = None  # Diversion header value for the current B leg
    history: list[str] = field(default_factory=list)  # History-Info entries (RFC 7044)
    outcome: dict[str, Any] = field(default_factory=dict)  # CDR fields set on the way
    answered: float | None = None
    a_acked: bool = False
    a_final: Response | None = None
    ended: bool = False
    timers: list[Cancellable] = field(default_factory=list)
    offer: bytes | None = None  # the caller's SDP as the B legs get it (media anchored)
    # Delayed offer (an INVITE without SDP): the callee's 2xx carries the offer and the
    # caller's ACK the answer, so the callee's ACK waits for the caller's and carries it.
    b_ack: tuple[str | None, bytes] | None = None  # (Content-Type, body) once the caller ACKed
    out_e164: str | None = None  # the number the current B leg calls through a carrier
    emergency: bool = False  # never cut off: no maximum duration, keep-alive or media timeout
    presented: str | None = None  # the number carriers see in From (and P-Asserted-Identity)

    @property
    def id(self) -> str:
        return self.a_request.call_id

    def leg(self, leg: str) -> tuple[Dialog | None, Address | None]:
        """The PBX's dialog with the phone on ``leg`` ("a" or "b"), and where it is."""
        return (self.a_dialog, self.a_source) if leg == "a" else (self.b_dialog, self.b_dest)


def _other(leg: str) -> str:
    return "b" if leg == "a" else "a"


# RFC 3261 16.7: among failures of the same class, the more telling answer goes back
_VAGUE = {408: 2, 480: 2, 487: 3, 503: 2}


def _best_response(responses: list[Response]) -> Response:
    """The final response the caller gets when every fork failed (RFC 3261 16.7): a 6xx,
    else the lowest class; within a class a busy 486 before "unavailable" or a timeout."""
    return min(
        responses,
        key=lambda r: (0 if r.status >= 600 else r.status // 100, _VAGUE.get(r.status, 1)),
    )


def history_info(entries: list[str], host: str, by: str, target: str, why: str) -> list[str]:
    """The History-Info entries (RFC 7044) after one more diversion of the call.

    The first entry is the original target (``index=1``); each diversion adds the new
    target, one level deeper (1.1, 1.1.1), with the RFC 4458 ``cause`` URI parameter and
    ``mp`` naming the entry it was retargeted from (RFC 7044 10.1: the user changed, so
    ``mp`` rather than ``rc``). The chain is capped by MAX_FORWARDS, so are the entries.
    """
    entries = entries or [f"<sip:{by}@{host}>;index=1"]
    parent = "1" + ".1" * (len(entries) - 1)
    user = quote(target, safe="+-_.!~*'()&=$")  # a 3xx Contact's user part: anything
    cause = HISTORY_CAUSES[why]
    return [*entries, f"<sip:{user}@{host};cause={cause}>;index={parent}.1;mp={parent}"]


def _stale_challenge(response: Response) -> bool:
    """A challenge saying only that our nonce expired: the credentials themselves were fine."""
    try:
        return select_challenge(response)[0].stale
    except DigestError:
        return False


_URI_HOST = re.compile(r"sips?:[^@<>;,\s]*@(\[[0-9A-Fa-f:.]+\]|[^:;>,\s]+)")


def _hairpin_reason(did: Did) -> str:
    return (
        f"{did.number} is this PBX's own number (tenant {did.tenant}, extension "
        f"{did.extension}): delivered inside, never to a carrier"
    )


def _parse_source(source: str) -> Address | None:
    """Bindings remember where a REGISTER came from as ``udp:host:port``."""
    transport, _, rest = source.partition(":")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not (port.isascii() and port.isdigit()):
        return None
    return Address(transport.upper(), host, int(port))


class CallManager:
    def __init__(
        self,
        port: CallPort,
        auth: Authenticator,
        directory: Directory,
        location: LocationService,
        policy: CallAuthorizer,
        settings: CallSettings | None = None,
        media: MediaAnchor | None = None,
    ) -> None:
        self.port = port
        self.media = media  # the RTP relay, when media is anchored at the PBX
        self.auth = auth
        self.directory = directory
        self.location = location
        self.policy = policy
        self.settings = settings or CallSettings()
        self.calls: dict[int, Call] = {}
        self._by_invite: dict[TransactionKey, Call] = {}
        self._by_b_key: dict[TransactionKey, Call] = {}
        self._forks: dict[TransactionKey, tuple[Call, _Fork]] = {}  # every fork until forgotten
        self._dialogs: dict[tuple[str, str], tuple[Call, str]] = {}
        # relayed mid-call request's client key -> (call, original request, its server
        # key, the relayed request, where it went)
        self._relayed: dict[TransactionKey, _Relayed] = {}
        self._answered: dict[TransactionKey, _RelayedAnswer] = {}  # by relayed key
        self._pings: dict[TransactionKey, tuple[Call, str]] = {}  # keep-alive OPTIONS
        self._tokens = itertools.count(1)
        self.attempts: dict[str, int] = {}  # call attempts by kind, for metrics
        self.routing = Routing()  # replaced whole by the server when trunks or DIDs change
        self.features: dict[str, FeatureCode] = {
            "*72": FeatureCode("always", True),
            "*73": FeatureCode("always", False),
            "*90": FeatureCode("busy", True),
            "*91": FeatureCode("busy", False),
            "*92": FeatureCode("noanswer", True),
            "*93": FeatureCode("noanswer", False),
        }

    # -- entry points from the server -----------------------------------------------------

    def on_request(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        method = request.method
        if request.to.tag is not None:
            self._in_dialog(request, source, key)
        elif method == "INVITE":
            self._new_call(request, source, key)
        elif method == "CANCEL":
            self._cancel(request, key)
        elif method != "ACK":
            self.port.respond(key, request, make_response(request, 481))

    def on_response(self, response: Response, key: TransactionKey) -> None:
        ping = self._pings.pop(key, None)
        if ping is not None:
            self._pinged(ping[0], ping[1], response.status)
            return
        answered = self._answered.get(key)
        if answered is not None:
            # the other phone resends its 2xx until our ACK: resend that once we have it
            if answered.ack is not None and 200 <= response.status < 300:
                self.port.send_direct(answered.ack, answered.relayed.dest)
            return
        if key in self._relayed:
            self._relayed_response(response, key)
            return
        forked = self._forks.get(key)
        if forked is not None:
            if response.cseq.method == "INVITE":
                self._fork_response(forked[0], forked[1], response)
            return
        call = self._by_b_key.get(key)
        if call is None:
            return
        if response.cseq.method == "INVITE":
            self._b_invite_response(call, response)

    def on_timeout(self, key: TransactionKey) -> None:
        ping = self._pings.pop(key, None)
        if ping is not None:
            self._pinged(ping[0], ping[1], 408)
            return
        relayed = self._relayed.pop(key, None)
        if relayed is not None:
            self.port.respond(
                relayed.in_key, relayed.original, make_response(relayed.original, 408)
            )
            return
        forked = self._forks.get(key)
        if forked is not None:
            fork_call, fork = forked
            if fork.final is None and fork.dialog is None:
                fork.final = make_response(fork.request, 408)
                self._fork_over(fork_call, fork)
            return
        call = self._by_b_key.get(key)
        if call is not None and not call.ended and call.answered is None:
            self._fail_a(call, 408, "no answer from the callee's phone")

    def police(self, now: float) -> int:
        """Cut off the calls the authorizer says must end now (spend cap, suspension)."""
        ended = 0
        for token, reason in self.policy.police(now):
            call = self.calls.get(token)
            if call is not None and not call.ended:
                log.warning("call cut off", call_id=call.id, reason=reason)
                self._hang_up_both(call, reason)
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
                self._hang_up_both(call, reason)
                ended += 1
        return ended

    def end_call(self, call_id: str, reason: str = "ended by an administrator") -> bool:
        """End a call in progress: BYE on both legs (or CANCEL if it is still ringing)."""
        for call in list(self.calls.values()):
            if call.id == call_id and not call.ended:
                self._hang_up_both(call, reason)
                return True
        return False

    # -- a new call ----------------------------------------------------------------------

    def _new_call(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        now = self.port.wall_time()
        trunk = self.routing.trunk_at(source.host)
        if trunk is not None and "Authorization" not in request.headers:
            self._inbound(request, source, key, trunk, now)
            return
        try:
            credentials = self.auth.credentials(request)
        except DigestError as exc:
            self.port.respond(
                key, request, make_response(request, 400, f"Bad Request ({safe_reason(str(exc))})")
            )
            return
        realm = self.auth.realm_for(request)
        extension = (
            self.directory.get(realm, credentials.username) if credentials is not None else None
        )
        outcome = self.auth.authenticate(request, credentials, extension, now)
        if outcome.response is not None:
            if credentials is not None and outcome.response.status == 403:
                self.port.auth_failed(source, credentials.username, extension)
            self.port.respond(key, request, outcome.response)
            return
        caller = outcome.extension
        assert caller is not None and credentials is not None
        dialed = request.uri.user or ""
        number = emergency_number(dialed, self.routing.countries.get(caller.tenant, "US"))
        if number is not None:
            # Before anything that could refuse it: a locked extension, one outside its
            # networks (a softphone away from the office) still reaches 112. The password
            # was right; the admins are told where the call came from.
            self._emergency(request, key, source, caller, dialed, number, now)
            return
        if self.port.refuse_credentials(caller, source):  # locked, or from a trunk's address
            self.port.respond(key, request, self.auth.forbidden(request))
            return
        if not caller.allows(source.host):
            self.port.auth_failed(source, credentials.username, caller)
            log.warning(
                "call from outside the extension's networks",
                source=str(source),
                extension=caller.number,
                tenant=caller.tenant,
            )
            self.port.respond(key, request, self.auth.forbidden(request))
            return
        feature = parse_feature(dialed, self.features)
        if feature is not None:
            self._feature_code(request, key, source, caller, feature[0], feature[1], now)
            return
        callee = self.directory.get(caller.realm, dialed) if request.uri.is_sip else None
        destination = None
        tenant, payer, caller_id, kind = caller.tenant, caller.number, caller.number, "internal"
        did = None
        if callee is None:
            destination = classify(dialed, self.routing.countries.get(caller.tenant, "US"))
            did = self._own_did(destination)
            if did is None:
                kind = "external"
            else:  # one of the PBX's own numbers: delivered inside, never to a carrier
                callee = self._did_extension(did)
                if did.tenant != caller.tenant:  # another tenant's DID: a call in, to it
                    tenant, payer, kind = did.tenant, did.extension, "inbound"
                    caller_id = (
                        self.routing.callback_number(caller.tenant, caller.number)
                        or caller.number
                    )
        attempt = CallAttempt(
            tenant, payer, caller_id, dialed, kind, str(source), now, destination
        )
        decision = self.policy.authorize(attempt)
        if did is not None:
            decision = replace(decision, reasons=(_hairpin_reason(did), *decision.reasons))
        call = self._open(
            request,
            key,
            source,
            tenant,
            payer,
            caller_id,
            dialed,
            kind,
            decision,
            now,
            destination,
        )
        if did is not None and callee is None:
            self._fail_a(call, 404, "the DID's extension does not exist")
            return
        if not decision.allow:
            log.warning(
                "call denied",
                extension=caller.number,
                dialed=dialed[:64],
                reasons=list(decision.reasons),
            )
            self._fail_a(call, decision.status, decision.reasons[0], disposition="blocked")
            if decision.severity == "critical":
                self.police(now)  # a suspension cuts the extension's other calls at once
            return
        self.policy.on_call_start(attempt, call.token)
        if not self._anchor_offer(call):
            return
        if callee is not None:
            self._ring_extension(call, callee, now)
            return
        assert destination is not None
        self._call_out(call, caller.tenant, destination)

    def _looped_back(self, request: Request, did: Did) -> str | None:
        """Why an inbound call to ``did`` is one of our own outbound legs coming back, if it
        is: a leg of ours to that very number is up, or the carrier kept the Diversion or
        History-Info naming this PBX that our diverted leg carried. Answering it would
        make one call two paid legs, or a loop that bills until someone notices."""
        for other in self.calls.values():
            if not other.ended and other.out_e164 == did.number:
                return f"a call of ours to {did.number} is already going out"
        ours = {self.port.local_address(t)[0] for t in ("UDP", "TCP")}
        for name in ("Diversion", "History-Info"):
            for value in request.headers.get_all(name):
                for host in _URI_HOST.findall(value):
                    if host.strip("[]") in ours:
                        return f"its {name} names this PBX ({host})"
        return None

    def _own_did(self, destination: Destination | None) -> Did | None:
        """The PBX's own DID ``destination`` is, if it is one (hairpins stay inside)."""
        if destination is None or not destination.valid or destination.short:
            return None
        return self.routing.dids.get(destination.e164)

    def _did_extension(self, did: Did) -> ExtensionAuth | None:
        callee = self.directory.get(self.routing.realms.get(did.tenant, ""), did.extension)
        return callee if callee is not None and callee.enabled else None

    def _emergency(
        self,
        request: Request,
        key: TransactionKey | None,
        source: Address,
        caller: ExtensionAuth,
        dialed: str,
        number: str,
        now: float,
    ) -> None:
        """An emergency call (:mod:`pbxwarden.pbx.emergency`): the guard is not asked, the
        admins are told, and the call goes out even when nothing else may."""
        country = self.routing.countries.get(caller.tenant, "US")
        route = emergency.route(self.routing, caller.tenant, caller.number, number)
        destination = Destination(dialed, number, country, "emergency", True, True, short=True)
        call = self._open(
            request,
            key,
            source,
            caller.tenant,
            caller.number,
            caller.number,
            dialed,
            emergency.KIND,
            emergency.decision(number, dialed),
            now,
            destination,
        )
        call.emergency = True
        call.presented = route.callback
        log.warning(
            "emergency call",
            tenant=caller.tenant,
            extension=caller.number,
            number=number,
            trunk=route.trunk.name if route.trunk else None,
            callback=route.callback,
        )
        registered = [
            f"{b.source}" + (f" ({b.user_agent})" if b.user_agent else "")
            for b in self.location.lookup(aor_key(caller.realm, caller.number), now)
        ]
        summary, reasons = emergency.notification(
            caller.tenant,
            caller.number,
            number,
            route.callback,
            route.trunk.name if route.trunk else None,
            registered,
            call.id,
        )
        dedupe = f"{caller.tenant}/{caller.number}/{emergency.RULE}/{call.id}"[:255]
        self.port.notify(caller.tenant, caller.number, emergency.RULE, summary, reasons, dedupe)
        try:
            call.offer = self._anchored(
                call, "a", request.headers.get("Content-Type"), request.body, source.host
            )
        except MediaError as exc:  # no relay ports or odd SDP: the call still goes, unanchored
            log.warning("emergency call's media not anchored", call_id=call.id, error=str(exc))
            call.offer = None
        if route.trunk is None:
            self._fail_a(call, 503, "no trunk for emergency calls: the tenant has no trunk")
            return
        self._call_out(call, caller.tenant, destination, route.trunk)

    def _call_out(
        self, call: Call, tenant: str, destination: Destination, trunk: Trunk | None = None
    ) -> None:
        """The B leg to a carrier: the tenant's trunk with the longest matching prefix."""
        if trunk is None:
            trunk = self.routing.trunk_for(tenant, destination.route_key)
        if trunk is None:
            self._fail_a(call, 503, f"no trunk route for {destination.e164}")
            return
        call.trunk = trunk.name
        call.b_trunk, call.b_auth_attempts = trunk, 0
        call.out_e164 = destination.e164
        self.port.respond(call.a_key, call.a_request, make_response(call.a_request, 100))
        target = URI("sip", user=destination.e164, host=trunk.host, port=trunk.port)
        self._send_b_invite(call, target, trunk.address)
        self._arm_ring_timer(call)

    def _inbound(
        self,
        request: Request,
        source: Address,
        key: TransactionKey | None,
        trunk: Trunk,
        now: float,
    ) -> None:
        """A call from a carrier (IP-authenticated trunk) to one of the tenant's DIDs."""
        dialed = request.uri.user or request.to.uri.user or ""
        destination = classify(dialed, self.routing.countries.get(trunk.tenant, "US"))
        did = self.routing.dids.get(destination.e164) if destination is not None else None
        caller_id = (request.from_.uri.user or "anonymous")[:64]
        attempt = CallAttempt(
            trunk.tenant,
            did.extension if did else "",
            caller_id,
            dialed,
            "inbound",
            str(source),
            now,
            destination,
        )
        decision = self.policy.authorize(attempt)
        call = self._open(
            request,
            key,
            source,
            trunk.tenant,
            did.extension if did else "",
            caller_id,
            dialed,
            "inbound",
            decision,
            now,
            destination,
        )
        call.trunk = trunk.name
        if did is None or did.tenant != trunk.tenant:
            self._fail_a(call, 404, "no such number here")
            return
        looped = self._looped_back(request, did)
        if looped is not None:
            log.warning("our own call came back from the carrier", did=did.number, why=looped)
            self._fail_a(call, 482, f"loop: {looped}", disposition="failed")
            return
        if not decision.allow:
            self._fail_a(call, decision.status, decision.reasons[0], disposition="blocked")
            return
        self.policy.on_call_start(attempt, call.token)  # the guard watches for probing calls
        if not self._anchor_offer(call):
            return
        callee = self.directory.get(self.routing.realms.get(did.tenant, ""), did.extension)
        if callee is None or not callee.enabled:
            self._fail_a(call, 404, "the DID's extension does not exist")
            return
        self._ring_extension(call, callee, now)

    def _open(
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
        self.calls[call.token] = call
        if key is not None:
            self._by_invite[key] = call
        return call

    def _ring_extension(self, call: Call, callee: ExtensionAuth, now: float) -> None:
        call.visited.add((callee.tenant, callee.number))
        if callee.forward_always:
            self._forward(call, callee, callee.forward_always, "always", now)
            return
        bindings = self.location.lookup(aor_key(callee.realm, callee.number), now)
        targets = [
            (binding.contact, dest)
            for binding in bindings
            if (dest := _parse_source(binding.source)) is not None
        ][:MAX_FORKS]
        if not targets:
            if callee.forward_noanswer:  # not reachable counts as not answering
                self._forward(call, callee, callee.forward_noanswer, "noanswer", now)
                return
            self._fail_a(call, 480, "the extension is not registered")
            return
        call.ringing = callee
        self.port.respond(call.a_key, call.a_request, make_response(call.a_request, 100))
        ringing_leg: object
        if len(targets) == 1:
            self._send_b_invite(call, parse_uri(targets[0][0]), targets[0][1])
            ringing_leg = call.b_key
        else:
            self._fork(call, targets)
            ringing_leg = call.forks
        self._arm_ring_timer(call)
        if callee.forward_noanswer:
            call.timers.append(
                self.port.schedule(
                    callee.noanswer_after, lambda: self._noanswer_forward(call, callee, ringing_leg)
                )
            )

    def _noanswer_forward(self, call: Call, callee: ExtensionAuth, leg: object) -> None:
        still_ringing = call.forks is leg if call.forks else call.b_key == leg
        if call.ended or call.answered is not None or not still_ringing:
            return
        assert callee.forward_noanswer is not None
        self._cancel_b(call)
        self._forward(call, callee, callee.forward_noanswer, "noanswer", self.port.wall_time())

    def _forward(self, call: Call, by: ExtensionAuth, target: str, why: str, now: float) -> None:
        """Divert the call: a new leg to ``target`` paid by ``by``, through the hook.

        Forwarding set on the PBX, forwarding on busy or no answer, and a 3xx redirect
        from the phone (set on its web page: the attack we exist for) all come here.
        """
        if call.b_key is not None:  # the previous leg is over; ignore its late answers
            self._by_b_key.pop(call.b_key, None)
        call.b_key = call.b_request = call.b_dest = None
        call.b_trunk, call.b_auth_attempts = None, 0
        call.b_provisional = False
        call.ringing = None
        call.forks = []  # cancelled forks stay in self._forks: a late 2xx gets ACK and BYE
        call.forwarded_by.append(by.number)
        call.visited.add((by.tenant, by.number))
        call.outcome["forwarded_by"] = ",".join(call.forwarded_by)[:255]
        if len(call.forwarded_by) > MAX_FORWARDS or target in call.forwarded_by:
            self._fail_a(call, 482, "forwarding loop", disposition="failed")
            return
        if emergency_number(target, self.routing.countries.get(by.tenant, "US")) is not None:
            # a diversion (or a phone's 3xx) to 112 would send the company's callers there
            log.warning("diversion to an emergency number refused", extension=by.number)
            self._fail_a(call, 403, f"calls cannot be forwarded to the emergency number {target}")
            return
        host, _ = self.port.local_address(call.a_source.transport)
        call.diversion = (
            f"<sip:{by.number}@{host}>;reason={DIVERSION_REASONS[why]};"
            f"counter={len(call.forwarded_by)}"
        )
        call.history = history_info(call.history, host, by.number, target, why)
        target_ext = self.directory.get(by.realm, target)
        destination = None
        did = None
        if target_ext is None:
            destination = classify(target, self.routing.countries.get(by.tenant, "US"))
            did = self._own_did(destination)
            if did is not None:  # a diversion to one of our own numbers stays inside
                target_ext = self._did_extension(did)
                if target_ext is None:
                    self._fail_a(call, 404, "the DID's extension does not exist")
                    return
        if target_ext is not None and (target_ext.tenant, target_ext.number) in call.visited:
            self._fail_a(call, 482, "forwarding loop", disposition="failed")
            return
        kind = "internal" if target_ext is not None else "forwarded"
        attempt = CallAttempt(
            by.tenant, by.number, call.caller_id, target, kind, str(call.a_source), now, destination
        )
        decision = self.policy.authorize(attempt)
        if decision.allow:
            self.policy.on_call_start(attempt, call.token)
        reasons = [f"forwarded by {by.number} ({why}) to {target}", *decision.reasons]
        if did is not None:
            reasons.insert(1, _hairpin_reason(did))
        call.outcome.update(
            {
                "decision": decision.label,
                "callee": target[:128],
                "reasons": "; ".join(reasons)[:2000],
                "score": decision.score,
                "severity": decision.severity,
            }
        )
        if destination is not None:
            call.outcome.update(
                {
                    "callee_e164": destination.e164,
                    "dest_country": destination.country,
                    "number_type": destination.number_type,
                }
            )
        if not decision.allow:
            log.warning(
                "forwarded call denied",
                extension=by.number,
                target=target[:64],
                reasons=list(decision.reasons),
            )
            self._fail_a(
                call, decision.status, f"forwarding to {target} refused", disposition="blocked"
            )
            if decision.severity == "critical":
                self.police(now)  # a suspension cuts the extension's other calls at once
            return
        call.callee = target
        if target_ext is not None:
            self._ring_extension(call, target_ext, now)
            return
        assert destination is not None
        self._call_out(call, by.tenant, destination)

    def _feature_code(
        self,
        request: Request,
        key: TransactionKey | None,
        source: Address,
        ext: ExtensionAuth,
        code: FeatureCode,
        target: str,
        now: float,
    ) -> None:
        """``*72<number>`` and friends, dialled on the phone: set or clear forwarding."""
        if code.sets:
            country = self.routing.countries.get(ext.tenant, "US")
            internal = self.directory.get(ext.realm, target) is not None
            if not internal:
                dest = classify(target, country)
                internal = dest is not None and dest.e164 in self.routing.dids
            decision = judge_target(
                self.policy,
                ext.tenant,
                ext.number,
                target,
                country,
                internal,
                str(source),
                now,
            )
            if not decision.allow:
                log.warning(
                    "forwarding change refused",
                    extension=ext.number,
                    target=target[:64],
                    reasons=list(decision.reasons),
                )
                self.port.forwarding_refused(
                    ext.tenant,
                    ext.number,
                    code.kind,
                    target,
                    str(source),
                    "; ".join(decision.reasons),
                )
                self.port.respond(
                    key,
                    request,
                    make_response(
                        request,
                        403,
                        f"Forbidden (forwarding refused: {safe_reason(decision.reasons[0])})",
                    ),
                )
                return
        elif target:
            self.port.respond(key, request, make_response(request, 484))
            return
        self.port.set_forwarding(
            ext.tenant, ext.number, code.kind, target if code.sets else None, str(source)
        )
        what = f"set to {target}" if code.sets else "cleared"
        self.port.respond(
            key,
            request,
            make_response(request, 603, f"Decline (call forwarding {code.kind} {what})"),
        )

    def _arm_ring_timer(self, call: Call) -> None:
        call.timers.append(
            self.port.schedule(self.settings.ring_timeout, lambda: self._ring_timeout(call))
        )

    def _send_b_invite(self, call: Call, target: URI, dest: Address) -> None:
        invite = self._b_invite(call, target, dest)
        call.b_request, call.b_dest = invite, dest
        call.b_key = self.port.send_request(invite, dest)
        self._by_b_key[call.b_key] = call

    def _b_invite(self, call: Call, target: URI, dest: Address) -> Request:
        a = call.a_request
        host, port = self.port.local_address(dest.transport)
        presented = call.presented or call.caller_id
        from_ = NameAddr(URI("sip", user=presented, host=host), None, {"tag": generate_tag()})
        # towards a carrier the number it routes (E.164, or the emergency number as such)
        to_user = target.user if call.b_trunk is not None and target.user else call.callee
        to = NameAddr(URI("sip", user=to_user, host=host))
        headers = Headers()
        if call.presented is not None:  # RFC 3325: the identity the carrier may rely on
            headers.add("P-Asserted-Identity", f"<sip:{call.presented}@{host}>")
        for name in ("Content-Type", "Supported", "Allow"):
            value = a.headers.get(name)
            if value is not None:
                headers.add(name, value)
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
            body=call.offer if call.offer is not None else a.body,
            max_forwards=max(0, (a.max_forwards if a.max_forwards is not None else 70) - 1),
            contacts=[self._contact(dest.transport)],
            method="INVITE",
            uri=target,
        )

    def _contact(self, transport: str) -> NameAddr:
        host, port = self.port.local_address(transport)
        params: dict[str, str | None] = (
            {} if transport == "UDP" else {"transport": transport.lower()}
        )
        return NameAddr(URI("sip", host=host, port=port, params=params))

    # -- forking: every registered contact of the extension rings at once ---------------

    def _fork(self, call: Call, targets: list[tuple[str, Address]]) -> None:
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
            invite = self._b_invite(call, parse_uri(contact), dest)
            fork = _Fork(self.port.send_request(invite, dest), invite, dest)
            self._forks[fork.key] = (call, fork)
            forks.append(fork)
        call.forks = forks
        log.info("ringing contacts in parallel", callee=call.callee, contacts=len(forks))

    def _fork_response(self, call: Call, fork: _Fork, response: Response) -> None:
        status = response.status
        if status < 200:
            if status == 100:
                return
            fork.provisional = True
            if fork.cancel_pending is not None:  # cancelled before it could be: now it can
                reason, fork.cancel_pending = fork.cancel_pending, None
                self._cancel_fork(fork, reason or None)
                return
            live = fork in call.forks and not call.ended and call.answered is None
            if live and not call.provisional_relayed:
                call.provisional_relayed = True
                self._relay_to_a(call, response, fork.dest.host)
            return
        if status < 300:
            self._fork_answered(call, fork, response)
            return
        if fork.final is not None or fork.dialog is not None:
            return
        fork.final = response
        live = fork in call.forks and not call.ended and call.answered is None
        if live and status < 400 and response.contacts and response.contacts[0].uri.user:
            # One phone of the extension redirects (its own diversion: a hijacked phone's
            # web page does exactly this): judged and followed as a single phone's 3xx is,
            # never dropped because another phone of the extension is still ringing.
            log.info("a ringing contact redirects the call", callee=call.callee)
            for other in call.forks:
                if other is not fork:
                    self._cancel_fork(other, None)
            self._b_failed(call, response, busy=False)
            return
        self._fork_over(call, fork)

    def _fork_answered(self, call: Call, fork: _Fork, response: Response) -> None:
        if fork.dialog is None:
            fork.dialog = Dialog.as_uac(fork.request, response)
        if call.b_key == fork.key:  # the winner's 2xx again: our ACK was lost
            self._ack_b(call)
            return
        if call.ended or call.answered is not None or fork not in call.forks:
            # RFC 3261 13.2.2.4: a 2xx from a fork that lost the race (or rang after the
            # caller gave up) still gets its ACK, then a BYE.
            self._ack(fork.request, fork.dialog, fork.dest)
            if not fork.hung_up:
                fork.hung_up = True
                log.info("late answer from another contact hung up", callee=call.callee)
                self._send_bye(fork.dialog, fork.dest)
            return
        fork.cancel_pending = None
        call.b_request, call.b_key, call.b_dest = fork.request, fork.key, fork.dest
        call.b_provisional = fork.provisional
        call.b_dialog = fork.dialog
        self._dialogs[(fork.request.call_id, fork.dialog.local_tag)] = (call, "b")
        self._ack_b(call)
        for other in call.forks:
            if other is not fork:
                self._cancel_fork(other, COMPLETED_ELSEWHERE)
        self._answer_a(call, response)

    def _fork_over(self, call: Call, fork: _Fork) -> None:
        """A fork failed: when it was the last one ringing (or said 6xx: "nowhere"), the
        caller gets the best of the failures, and busy forwarding if every phone was busy."""
        if call.ended or call.answered is not None or fork not in call.forks:
            return
        assert fork.final is not None
        if fork.final.status >= 600:
            for other in call.forks:
                if other is not fork:
                    self._cancel_fork(other, None)
            best, busy = fork.final, fork.final.status == 600
        else:
            finals = [f.final for f in call.forks if f.final is not None]
            if len(finals) < len(call.forks):
                return  # others are still ringing
            best = _best_response(finals)
            busy = all(r.status in (486, 600) for r in finals)
        self._b_failed(call, best, busy=busy)

    def _cancel_fork(self, fork: _Fork, reason: str | None) -> None:
        if fork.cancelled or fork.final is not None or fork.dialog is not None:
            return
        if not fork.provisional:
            # RFC 3261 9.1: no CANCEL before a provisional response; sent when one comes
            fork.cancel_pending = reason or ""
            return
        fork.cancelled = True
        try:
            cancel = self.port.build_cancel(fork.key)
        except TransactionError:  # the transaction is already over
            return
        if reason:
            cancel.headers.add("Reason", reason)
        self.port.send_request(cancel, fork.dest)

    # -- the B leg answers ---------------------------------------------------------------

    def _b_invite_response(self, call: Call, response: Response) -> None:
        status = response.status
        if status < 200:
            if status > 100:
                call.b_provisional = True
                if not call.ended and call.b_dest is not None:
                    self._relay_to_a(call, response, call.b_dest.host)
            return
        if status < 300:
            if call.b_dialog is None:
                assert call.b_request is not None
                call.b_dialog = Dialog.as_uac(call.b_request, response)
                self._dialogs[(call.b_request.call_id, call.b_dialog.local_tag)] = (call, "b")
            self._ack_b(call)
            if call.ended:  # answered after the caller gave up: hang up at once
                self._bye(call, "b")
                return
            if call.answered is None:
                self._answer_a(call, response)
            return
        if call.ended:
            return
        if status in AUTH_HEADERS and call.b_trunk is not None and call.b_trunk.username:
            self._authenticate_b(call, call.b_trunk, response)
            return
        self._b_failed(call, response, busy=status in (486, 600))

    def _b_failed(self, call: Call, response: Response, *, busy: bool) -> None:
        """The B leg (or every fork) failed: follow a redirect, forward on busy, or fail."""
        status = response.status
        ringing = call.ringing
        now = self.port.wall_time()
        if 300 <= status < 400:
            # A redirect is a new call paid by the redirecting extension: never followed
            # blindly, always through the authorization hook.
            target = response.contacts[0].uri.user if response.contacts else None
            if ringing is not None and target:
                self._forward(call, ringing, target, "redirect", now)
            else:
                self._fail_a(call, 480, "redirect not followed", sip_code=status)
        elif busy and ringing is not None and ringing.forward_busy:
            self._forward(call, ringing, ringing.forward_busy, "busy", now)
        else:
            self._fail_a(call, status, response.reason or None, sip_code=status)

    def _authenticate_b(self, call: Call, trunk: Trunk, response: Response) -> None:
        """The carrier challenged our INVITE (the transaction layer has ACKed it): send it
        again with the trunk's credentials as a new transaction, which CANCEL then follows.
        """
        status = response.status
        invite, dest = call.b_request, call.b_dest
        assert invite is not None and dest is not None and trunk.username is not None
        if trunk.password is None:  # sealed under another install secret
            log.warning("trunk password unusable: set it again", trunk=trunk.name)
            self._fail_a(
                call,
                503,
                f"trunk {trunk.name}: no usable password for the carrier",
                sip_code=status,
            )
            return
        if call.b_auth_attempts > 0 and (
            call.b_auth_attempts >= MAX_TRUNK_AUTH_ATTEMPTS or not _stale_challenge(response)
        ):
            log.warning("carrier rejected the trunk credentials", trunk=trunk.name, status=status)
            self._fail_a(
                call,
                403,
                f"trunk {trunk.name}: the carrier rejected our credentials "
                f"({status} {safe_reason(response.reason)} after authenticating)",
                sip_code=status,
            )
            return
        client = DigestClient(ClientCredentials(trunk.username, trunk.password, trunk.realm))
        try:
            header, value = client.answer(response, "INVITE", str(invite.uri), invite.body)
        except DigestError as exc:
            log.warning("carrier challenge cannot be answered", trunk=trunk.name, error=str(exc))
            self._fail_a(
                call,
                502,
                f"trunk {trunk.name}: cannot answer the carrier's challenge ({exc})",
                sip_code=status,
            )
            return
        if call.b_key is not None:
            self._by_b_key.pop(call.b_key, None)
        call.b_auth_attempts += 1
        call.b_provisional = False
        call.b_request = with_credentials(invite, header, value)
        call.b_key = self.port.send_request(call.b_request, dest)
        self._by_b_key[call.b_key] = call

    def _relay_to_a(self, call: Call, response: Response, b_host: str) -> None:
        headers = [("Contact", str(self._contact(call.a_source.transport)))]
        ctype = response.headers.get("Content-Type")
        body = response.body if ctype else b""
        try:
            body = self._anchored(call, "b", ctype, body, b_host)
        except MediaError as exc:  # early media cannot be relayed: ringing all the same
            log.warning("early media not anchored", call_id=call.id, error=str(exc))
            body = b""
        if body:
            headers.append(("Content-Type", ctype or ""))
        self.port.respond(
            call.a_key,
            call.a_request,
            make_response(
                call.a_request,
                response.status,
                response.reason,
                to_tag=call.a_tag,
                headers=headers,
                body=body,
            ),
        )

    def _ack_b(self, call: Call) -> None:
        assert call.b_dialog is not None and call.b_request is not None
        assert call.b_dest is not None
        if call.b_request.body or call.ended:
            self._ack(call.b_request, call.b_dialog, call.b_dest)
        elif call.b_ack is not None:  # delayed offer: the caller's answer goes on
            self._ack(call.b_request, call.b_dialog, call.b_dest, *call.b_ack)
        # else: the caller's ACK (with the answer) is awaited; see _caller_acked

    def _caller_acked(self, call: Call, request: Request) -> None:
        call.a_acked = True
        if call.b_ack is not None or call.b_request is None or call.b_request.body:
            return
        ctype = request.headers.get("Content-Type")
        body = request.body if ctype else b""
        try:
            body = self._anchored(call, "a", ctype, body, call.a_source.host)
        except MediaError as exc:
            log.warning("caller's answer not anchored", call_id=call.id, error=str(exc))
            ctype, body = None, b""
        call.b_ack = (ctype if body else None, body)
        self._ack_b(call)

    def _ack(
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

    def _answer_a(self, call: Call, response: Response) -> None:
        ctype = response.headers.get("Content-Type")
        assert call.b_dest is not None
        try:
            body = self._anchored(call, "b", ctype, response.body, call.b_dest.host)
        except MediaError as exc:
            log.warning("callee's media not anchored", call_id=call.id, error=str(exc))
            self._bye(call, "b")
            self._fail_a(call, 502, f"the callee's media cannot be relayed: {exc}")
            return
        now = self.port.wall_time()
        call.answered = now
        self.policy.on_call_answer(call.token, now)
        headers = [("Contact", str(self._contact(call.a_source.transport)))]
        if ctype:
            headers.append(("Content-Type", ctype))
        ok = make_response(call.a_request, 200, to_tag=call.a_tag, headers=headers, body=body)
        call.a_final = ok
        call.a_dialog = Dialog.as_uas(call.a_request, call.a_tag)
        self._dialogs[(call.a_request.call_id, call.a_tag)] = (call, "a")
        self.port.respond(call.a_key, call.a_request, ok)
        self._retransmit_2xx(
            call,
            lambda: self.port.respond(call.a_key, call.a_request, ok),
            lambda: call.a_acked,
            "no ACK from the caller",
        )
        if not call.emergency:  # an emergency call lasts as long as the answering point wants
            call.timers.append(
                self.port.schedule(
                    self.settings.max_duration,
                    lambda: self._hang_up_both(call, "maximum duration"),
                )
            )
            self._arm_keepalive(call)
        log.info("call answered", caller=call.caller_id, callee=call.callee)

    # -- keep-alive: does each phone still know the call? --------------------------------

    def _arm_keepalive(self, call: Call) -> None:
        if self.settings.keepalive > 0:
            call.timers.append(
                self.port.schedule(self.settings.keepalive, lambda: self._ping(call))
            )

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
            host, port = self.port.local_address(dest.transport)
            options = dialog.new_request(
                "OPTIONS", Via(dest.transport, host, port, {"rport": None})
            )
            self._pings[self.port.send_request(options, dest)] = (call, leg)
        self._arm_keepalive(call)

    def _pinged(self, call: Call, leg: str, status: int) -> None:
        """Any answer but 481 (no such call) or 408 (none at all) means the phone is there:
        a phone may well refuse OPTIONS (405, 501) and still be in the call."""
        if call.ended or status not in (408, 481):
            return
        who = "caller" if leg == "a" else "callee"
        why = "no longer knows the call (481)" if status == 481 else "does not answer"
        log.warning("dead call hung up", call_id=call.id, leg=leg, status=status)
        self._hang_up_both(call, f"the {who}'s phone {why}")

    def _retransmit_2xx(
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
                self._hang_up_both(call, why)
                return
            resend()
            next_step = min(step * 2, self.settings.t2)
            self._retransmit_2xx(call, resend, acked, why, next_step, waited + step)

        call.timers.append(self.port.schedule(step, fire))

    # -- media anchoring -----------------------------------------------------------------

    def _anchored(
        self, call: Call, leg: str, ctype: str | None, body: bytes, signaling_host: str
    ) -> bytes:
        """SDP from the phone on ``leg`` as the other phone gets it: pointing at the
        relay's ports when media is anchored, unchanged otherwise."""
        if self.media is None or not is_sdp(ctype, body):
            return body
        return self.media.anchor(call.token, leg, body, signaling_host)

    def _anchor_offer(self, call: Call) -> bool:
        """The caller's offer, anchored once for every B leg the call may try (forks,
        forwarding); a call whose media cannot be anchored is refused here."""
        a = call.a_request
        try:
            call.offer = self._anchored(
                call, "a", a.headers.get("Content-Type"), a.body, call.a_source.host
            )
        except SdpError as exc:
            self._fail_a(call, 488, str(exc))
            return False
        except MediaError as exc:
            log.warning("no media ports for a call", call_id=call.id, error=str(exc))
            self._fail_a(call, 503, str(exc))
            return False
        return True

    # -- in-dialog requests --------------------------------------------------------------

    def _in_dialog(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        tag = request.to.tag
        assert tag is not None
        found = self._dialogs.get((request.call_id, tag))
        if found is None:
            if request.method != "ACK":
                self.port.respond(key, request, make_response(request, 481))
            return
        call, leg = found
        dialog = call.leg(leg)[0]
        assert dialog is not None
        if request.method == "ACK":
            answered = self._awaiting_ack(call, leg, request.cseq.number)
            if answered is not None:
                self._relay_ack(answered, request)
            elif leg == "a":
                self._caller_acked(call, request)
            return
        if not dialog.accepts(request):
            self.port.respond(
                key,
                request,
                make_response(request, 500, "Server Internal Error (CSeq out of order)"),
            )
            return
        if request.method == "BYE":
            self.port.respond(key, request, make_response(request, 200))
            if not call.ended:
                self._bye(call, _other(leg))
                self._finish(
                    call, "answered", 200, "caller hung up" if leg == "a" else "callee hung up"
                )
            return
        if call.ended or call.answered is None:
            self.port.respond(key, request, make_response(request, 481))
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
        dialog, dest = call.leg(_other(leg))
        if dialog is None or dest is None:
            self.port.respond(key, request, make_response(request, 481))
            return
        try:
            body = self._anchored(
                call, leg, request.headers.get("Content-Type"), request.body, source.host
            )
        except MediaError as exc:
            self.port.respond(
                key,
                request,
                make_response(request, 488, f"Not Acceptable Here ({safe_reason(str(exc))})"),
            )
            return
        host, port = self.port.local_address(dest.transport)
        headers = [
            (n, v)
            for n in ("Content-Type", "Event", "Supported")
            if (v := request.headers.get(n)) is not None
        ]
        relayed = dialog.new_request(
            request.method,
            Via(dest.transport, host, port, {"rport": None}),
            contact=str(self._contact(dest.transport)) if request.method == "INVITE" else None,
            body=body,
            headers=headers,
        )
        out_key = self.port.send_request(relayed, dest)
        back = call.leg(leg)[1]
        assert back is not None
        self._relayed[out_key] = _Relayed(
            request, key, back.transport, relayed, dest, dialog, call, leg
        )

    def _relayed_response(self, response: Response, out_key: TransactionKey) -> None:
        r = self._relayed[out_key]
        if response.status < 200:
            return
        del self._relayed[out_key]
        original = r.original
        headers: list[tuple[str, str]] = []
        if original.method == "INVITE":
            headers.append(("Contact", str(self._contact(r.back_transport))))
        ctype = response.headers.get("Content-Type")
        body = response.body if ctype else b""
        status, reason = response.status, response.reason
        try:
            body = self._anchored(r.call, _other(r.leg), ctype, body, r.dest.host)
        except MediaError as exc:
            log.warning("re-INVITE answer not anchored", call_id=r.call.id, error=str(exc))
            status, reason, body = 500, "Server Internal Error (answer SDP unreadable)", b""
        if body:
            headers.append(("Content-Type", ctype or ""))
        answer = make_response(original, status, reason, headers=headers, body=body)
        self.port.respond(r.in_key, original, answer)
        if r.relayed.method == "INVITE" and response.status < 300:
            # the other phone gets its ACK when the sender ACKs ours (it may carry SDP)
            answered = self._answered[out_key] = _RelayedAnswer(r, out_key)
            self._retransmit_2xx(
                r.call,
                lambda: self.port.respond(r.in_key, original, answer),
                lambda: answered.ack is not None,
                "no ACK for a re-INVITE",
            )

    def _awaiting_ack(self, call: Call, leg: str, cseq: int) -> _RelayedAnswer | None:
        return next(
            (
                a
                for a in self._answered.values()
                if a.relayed.call is call
                and a.relayed.leg == leg
                and a.relayed.original.cseq.number == cseq
            ),
            None,
        )

    def _relay_ack(self, answered: _RelayedAnswer, request: Request) -> None:
        """The sender's ACK for our 2xx: ACK the other phone's 2xx (once; retransmitted
        ACKs are absorbed) and forget it all after 64*T1, when retransmissions stop."""
        if answered.ack is not None:
            return
        r = answered.relayed
        host, port = self.port.local_address(r.dest.transport)
        ctype = request.headers.get("Content-Type")
        body = request.body if ctype else b""
        back = r.call.leg(r.leg)[1]
        try:
            body = self._anchored(r.call, r.leg, ctype, body, back.host if back else "")
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
        self.port.send_direct(answered.ack, r.dest)

        def forget() -> None:
            self._answered.pop(answered.key, None)

        self.port.schedule(64 * self.settings.t1, forget)

    def _cancel(self, request: Request, key: TransactionKey | None) -> None:
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
            self._cancel_b(call)
            self._fail_a(call, 487, None, disposition="cancelled")

    # -- endings -------------------------------------------------------------------------

    def _ring_timeout(self, call: Call) -> None:
        if call.answered is None and not call.ended:
            self._cancel_b(call)
            self._fail_a(call, 480, "no answer", disposition="no-answer")

    def _cancel_b(self, call: Call) -> None:
        if call.forks and call.answered is None:
            for fork in call.forks:
                self._cancel_fork(fork, None)
            return
        if call.b_key is not None and call.b_dest is not None and call.answered is None:
            self.port.send_request(self.port.build_cancel(call.b_key), call.b_dest)

    def _fail_a(
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
        self._finish(
            call,
            disposition or _DISPOSITIONS.get(status, "failed"),
            sip_code or status,
            reason or "",
        )

    def _bye(self, call: Call, leg: str) -> None:
        dialog, dest = call.leg(leg)
        if dialog is None or dest is None:
            return
        self._send_bye(dialog, dest)

    def _send_bye(self, dialog: Dialog, dest: Address) -> None:
        host, port = self.port.local_address(dest.transport)
        bye = dialog.new_request("BYE", Via(dest.transport, host, port, {"rport": None}))
        self.port.send_request(bye, dest)

    def _hang_up_both(self, call: Call, reason: str) -> None:
        if call.ended:
            return
        if call.answered is None:
            self._cancel_b(call)
            self._fail_a(call, 480, reason, disposition="terminated")
            return
        self._bye(call, "a")
        self._bye(call, "b")
        self._finish(call, "answered", 200, reason)

    def _finish(self, call: Call, disposition: str, sip_code: int, note: str) -> None:
        if call.ended:
            return
        call.ended = True
        if self.media is not None:
            self.media.release(call.token)
        now = self.port.wall_time()
        cost = self.policy.on_call_end(call.token, now)
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

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.token, None)
        if call.a_key is not None:
            self._by_invite.pop(call.a_key, None)
        if call.b_key is not None:
            self._by_b_key.pop(call.b_key, None)
        for key in [k for k, (c, _) in self._dialogs.items() if c is call]:
            del self._dialogs[key]
        for fork_key in [k for k, (c, _) in self._forks.items() if c is call]:
            del self._forks[fork_key]
        for out_key in [k for k, a in self._answered.items() if a.relayed.call is call]:
            del self._answered[out_key]
        for ping_key in [k for k, (c, _) in self._pings.items() if c is call]:
            del self._pings[ping_key]

    @property
    def active(self) -> list[Call]:
        return [c for c in self.calls.values() if not c.ended]
