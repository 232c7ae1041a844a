"""The dialplan: where each new call goes, and what a failed leg means.

The calling extension authenticates with digest; the attempt goes through the
authorization hook (:mod:`pbxwarden.pbx.policy`) before anything costs money; then the
call rings an extension's registered phones, goes out through a trunk
(:mod:`pbxwarden.pbx.outbound`), follows the extension's forwarding
(:mod:`pbxwarden.pbx.forwarding`), stays inside for the PBX's own numbers (hairpins), or
is an emergency call (:mod:`pbxwarden.pbx.emergency`). The legs themselves are the
B2BUA core's (:mod:`pbxwarden.pbx.b2bua`).
"""

from __future__ import annotations

import re
from dataclasses import replace

import structlog

from pbxwarden.pbx import caller_id as cid
from pbxwarden.pbx import emergency, node_relay, options, session_timer
from pbxwarden.pbx.auth import Authenticator
from pbxwarden.pbx.b2bua import B2bua
from pbxwarden.pbx.call import (
    MAX_FORKS,
    MAX_FORWARDS,
    Call,
    CallPort,
    CallSettings,
    Cancellable,
    Fork,
    history_info,
    parse_source,
)
from pbxwarden.pbx.dialplan import Group, TimeCondition
from pbxwarden.pbx.directory import Directory
from pbxwarden.pbx.forwarding import DIVERSION_REASONS, FeatureCode, judge_target, parse_feature
from pbxwarden.pbx.groups import Groups
from pbxwarden.pbx.locate import (
    FAILOVER_STATUSES,
    StaticLocator,
    TrunkLocator,
)
from pbxwarden.pbx.location import LocationService
from pbxwarden.pbx.media import MediaAnchor, MediaError
from pbxwarden.pbx.messages import Messages
from pbxwarden.pbx.numbers import Destination, classify, emergency_number
from pbxwarden.pbx.outbound import Outbound
from pbxwarden.pbx.park import Park
from pbxwarden.pbx.pickup import Pickup, pickup_code
from pbxwarden.pbx.policy import CallAttempt, CallAuthorizer
from pbxwarden.pbx.presence import Presence
from pbxwarden.pbx.registrar import aor_key
from pbxwarden.pbx.routing import Did, Routing, Trunk
from pbxwarden.pbx.transfer import Transfers
from pbxwarden.sip.digest import DigestError
from pbxwarden.sip.digest_client import (
    AUTH_HEADERS,
)
from pbxwarden.sip.message import (
    Request,
    Response,
    make_response,
    safe_reason,
)
from pbxwarden.sip.transaction import Address, TransactionKey
from pbxwarden.sip.uri import parse_uri
from pbxwarden.store.db import ExtensionAuth

__all__ = ["CallManager", "CallSettings", "Cancellable", "Target", "history_info"]

# what a number of a tenant's dialplan leads to: an extension's phones, a ring group, or
# a time condition (business hours)
Target = ExtensionAuth | Group | TimeCondition

log = structlog.get_logger("pbxwarden.calls")

_URI_HOST = re.compile(r"sips?:[^@<>;,\s]*@(\[[0-9A-Fa-f:.]+\]|[^:;>,\s]+)")


def _hairpin_reason(did: Did) -> str:
    return (
        f"{did.number} is this PBX's own number (tenant {did.tenant}, extension "
        f"{did.extension}): delivered inside, never to a carrier"
    )


class CallManager(B2bua):
    """The B2BUA with its dialplan; what the server drives (see the module docstring)."""

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
        super().__init__(port, policy, settings, media)
        self.auth = auth
        self.directory = directory
        self.location = location
        self.routing = Routing()  # replaced whole by the server when trunks or DIDs change
        self.locator: TrunkLocator = StaticLocator()  # a trunk's servers (DNS: pbx/locate.py)
        self.outbound = Outbound(self)
        self.transfers = Transfers(self)
        self.messages = Messages(self)
        self.presence = Presence(self)
        self.groups = Groups(self)
        self.pickup = Pickup(self)
        self.park = Park(self)
        # several nodes: who signed a request that another node relays here (cluster)
        self.node_relay: node_relay.RelayCheck | None = None
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
            if self.presence.owns(request):
                self.presence.in_dialog(request, source, key)
            else:
                self.mid.in_dialog(request, source, key)
        elif method == "INVITE":
            self._new_call(request, source, key)
        elif method == "CANCEL":
            self.cancel(request, key)
        elif method == "MESSAGE":
            self.messages.receive(request, source, key)
        elif method == "SUBSCRIBE":
            self.presence.subscribe(request, source, key)
        elif method != "ACK":
            self.port.respond(key, request, make_response(request, 481))

    def line_changed(self, call: Call) -> None:
        for tenant, number in self.presence.line_of(call):
            self.presence.changed(tenant, number)

    def registration_changed(self, realm: str, number: str) -> None:
        """An extension registered or unregistered: its presence watchers are told."""
        extension = self.directory.get(realm, number)
        if extension is not None:
            self.presence.changed(extension.tenant, extension.number)

    def refer(
        self,
        call: Call,
        leg: str,
        request: Request,
        key: TransactionKey | None,
        source: Address,
    ) -> None:
        self.transfers.refer(call, leg, request, key, source)

    def fork_won(self, call: Call, fork: Fork) -> None:
        if call.group is not None:
            self.groups.answered(
                call, fork.extension.number if fork.extension else fork.e164, fork.ref
            )

    def fork_challenged(self, call: Call, fork: Fork, response: Response) -> bool:
        return self.outbound.authenticate_fork(call, fork, response)

    def authenticated(
        self, request: Request, source: Address, key: TransactionKey | None
    ) -> ExtensionAuth | None:
        """The authenticated extension sending an out-of-call request (MESSAGE, SUBSCRIBE),
        or None when it was answered already (a challenge, 403, 400)."""
        core = self
        now = core.port.wall_time()
        try:
            credentials = core.auth.credentials(request)
        except DigestError as exc:
            core.port.respond(
                key, request, make_response(request, 400, f"Bad Request ({safe_reason(str(exc))})")
            )
            return None
        realm = core.auth.realm_for(request)
        extension = core.directory.get(realm, credentials.username) if credentials else None
        outcome = core.auth.authenticate(request, credentials, extension, now)
        if outcome.response is not None:
            if credentials is not None and outcome.response.status == 403:
                core.port.auth_failed(source, credentials.username, extension)
            core.port.respond(key, request, outcome.response)
            return None
        sender = outcome.extension
        assert sender is not None and credentials is not None
        if core.port.refuse_credentials(sender, source) or not sender.allows(source.host):
            core.port.respond(key, request, core.auth.forbidden(request))
            return None
        return sender

    def _new_call(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        now = self.port.wall_time()
        missing = options.unsupported(request)
        if missing:  # RFC 3261 8.2.2.3: an extension it requires that we do not perform
            self.port.respond(
                key,
                request,
                make_response(request, 420, headers=[("Unsupported", ", ".join(missing))]),
            )
            return
        try:
            session_timer.asked(request, self.settings.min_se)
        except session_timer.TooBrief as exc:  # RFC 4028 6: ask for a longer interval
            self.port.respond(
                key, request, make_response(request, 422, headers=[("Min-SE", str(exc.min_se))])
            )
            return
        except ValueError as exc:
            self.port.respond(
                key, request, make_response(request, 400, f"Bad Request ({safe_reason(str(exc))})")
            )
            return
        relay = self.node_relay
        node = relay.verify(request, source) if relay is not None else None
        if node is not None:  # another node's call for a phone registered here
            node_relay.take(self, request, source, key, node, now)
            return
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
        # *67 or #31# before the number: this call withholds the caller ID
        dialed, withheld = cid.strip_withhold(request.uri.user or "")
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
        replaces = request.headers.get("Replaces")
        if replaces is not None:  # a busy lamp key pressed: pick up the call it shows
            self.pickup.replacing(request, key, source, caller, replaces)
            return
        wanted = pickup_code(dialed)
        if wanted is not None:  # *8, **NNN: answer a colleague's ringing phone
            self.pickup.pick(request, key, source, caller, wanted)
            return
        if self.park.parks(dialed):  # *701: take the call parked there
            slot = self.park.slot_of(dialed)
            if slot is None:
                why = f"transfer a call to {dialed} to park it; dial its slot to take it back"
                self.port.respond(
                    key, request, make_response(request, 484, f"Address Incomplete ({why})")
                )
                return
            self.park.retrieve(request, key, source, caller, slot)
            return
        code = self.settings.hours_code
        if code and dialed.startswith(code) and len(dialed) > len(code):
            condition = self.routing.time_conditions.get((caller.tenant, dialed[len(code) :]))
            if condition is not None:
                self._hours_override(request, key, source, caller, condition, now)
                return
        feature = parse_feature(dialed, self.features)
        if feature is not None:
            self._feature_code(request, key, source, caller, feature[0], feature[1], now)
            return
        callee = self.target(caller.tenant, caller.realm, dialed) if request.uri.is_sip else None
        destination = None
        tenant, payer, caller_id, kind = caller.tenant, caller.number, caller.number, "internal"
        did = None
        if callee is None:
            destination = classify(dialed, self.routing.countries.get(caller.tenant, "US"))
            did = self.own_did(destination)
            if did is None:
                kind = "external"
            else:  # one of the PBX's own numbers: delivered inside, never to a carrier
                callee = self.did_target(did)
                if did.tenant != caller.tenant:  # another tenant's DID: a call in, to it
                    tenant, payer, kind = did.tenant, did.extension, "inbound"
                    caller_id = (
                        self.routing.callback_number(caller.tenant, caller.number) or caller.number
                    )
        attempt = CallAttempt(tenant, payer, caller_id, dialed, kind, str(source), now, destination)
        decision = self.policy.authorize(attempt)
        if did is not None:
            decision = replace(decision, reasons=(_hairpin_reason(did), *decision.reasons))
        call = self.open(
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
        call.a_extension = caller
        call.identity = cid.outbound(
            self.routing,
            caller.tenant,
            caller.number,
            caller.caller_id,
            withheld or caller.withhold_caller_id,
        )
        if did is not None and callee is None:
            self.fail(call, 404, "the DID's extension does not exist")
            return
        if not decision.allow:
            log.warning(
                "call denied",
                extension=caller.number,
                dialed=dialed[:64],
                reasons=list(decision.reasons),
            )
            self.fail(call, decision.status, decision.reasons[0], disposition="blocked")
            if decision.severity == "critical":
                self.police(now)  # a suspension cuts the extension's other calls at once
            return
        self.policy.on_call_start(attempt, call.token)
        if not self.anchor_offer(call):
            return
        if callee is not None:
            self.ring(call, callee, now)
            return
        assert destination is not None
        self.outbound.call_out(call, caller.tenant, destination)

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

    def target(self, tenant: str, realm: str, number: str) -> Target | None:
        """What ``number`` is in the tenant's dialplan: an extension, a ring group, a time
        condition."""
        routing = self.routing
        return (
            self.directory.get(realm, number)
            or routing.groups.get((tenant, number))
            or routing.time_conditions.get((tenant, number))
        )

    def resolve(
        self, by: Target, target: str
    ) -> tuple[Target | None, Destination | None, Did | None]:
        """Where a number ``by`` sends a call on to (a diversion, a transfer) leads: an
        extension or group of its tenant, else a number (and the PBX's own DID it is, if
        any, with what the DID rings: delivered inside; None when that does not exist)."""
        inside = self.target(by.tenant, by.realm, target)
        if inside is not None:
            return inside, None, None
        destination = classify(target, self.routing.countries.get(by.tenant, "US"))
        did = self.own_did(destination)
        return (self.did_target(did) if did is not None else None), destination, did

    def ring(self, call: Call, target: Target, now: float) -> None:
        """Ring an extension's phones, a ring group's members, or where a time condition
        leads now."""
        if isinstance(target, Group):
            self.groups.ring(call, target, now)
        elif isinstance(target, TimeCondition):
            self._time_condition(call, target, now)
        else:
            self.ring_extension(call, target, now)

    def _time_condition(self, call: Call, condition: TimeCondition, now: float) -> None:
        """Business hours: the open or the closed destination, by the tenant's clock (a
        number outside is a diversion paid by the time condition, judged by the guard)."""
        if (condition.tenant, condition.number) in call.visited:
            self.fail(call, 482, "time conditions lead to each other", disposition="failed")
            return
        call.visited.add((condition.tenant, condition.number))
        state = "open" if condition.is_open(now) else "closed"
        if condition.override is not None:
            state += " (override)"
        base = call.outcome.get("reasons") or "; ".join(call.decision.reasons)
        call.outcome["reasons"] = f"{base}; time condition {condition.number}: {state}"[:2000]
        destination = condition.destination(now)
        inside = self.target(condition.tenant, condition.realm, destination)
        if inside is None:
            self.divert(call, condition, destination, "always", now)
        else:
            self.ring(call, inside, now)

    def _hours_override(
        self,
        request: Request,
        key: TransactionKey | None,
        source: Address,
        ext: ExtensionAuth,
        condition: TimeCondition,
        now: float,
    ) -> None:
        """``*62`` and a time condition's number, dialled on a phone of its tenant: force
        it the other way from what its hours say now (closing early, a snow day), or, when
        it is forced already, let its hours rule again. Stored and audited like the API's
        override; the phone hears the new state in the decline's reason."""
        if condition.override is None:
            override: str | None = "closed" if condition.is_open(now) else "open"
            state = f"{override} (override; dial again to follow the hours)"
        else:
            override = None
        changed = replace(condition, override=override)
        if override is None:
            state = f"{'open' if changed.is_open(now) else 'closed'} (its hours)"
        conditions = {**self.routing.time_conditions, (condition.tenant, condition.number): changed}
        self.routing = replace(self.routing, time_conditions=conditions)
        self.port.set_hours_override(
            condition.tenant, condition.number, override, f"phone {ext.number}", str(source)
        )
        log.warning(
            "time condition overridden from a phone",
            tenant=ext.tenant,
            number=condition.number,
            override=override,
            extension=ext.number,
        )
        reason = f"Decline (time condition {condition.number} now {state})"
        self.port.respond(key, request, make_response(request, 603, safe_reason(reason)))

    def own_did(self, destination: Destination | None) -> Did | None:
        """The PBX's own DID ``destination`` is, if it is one (hairpins stay inside)."""
        if destination is None or not destination.valid or destination.short:
            return None
        return self.routing.dids.get(destination.e164)

    def did_target(self, did: Did) -> Target | None:
        """What the DID rings (its extension, enabled; or a ring group)."""
        callee = self.target(did.tenant, self.routing.realms.get(did.tenant, ""), did.extension)
        return None if isinstance(callee, ExtensionAuth) and not callee.enabled else callee

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
        call = self.open(
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
        call.identity = cid.Identity(route.callback)  # never withheld: it must call back
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
            call.offer = self.anchored(
                call, "a", request.headers.get("Content-Type"), request.body, source.host
            )
        except MediaError as exc:  # no relay ports or odd SDP: the call still goes, unanchored
            log.warning("emergency call's media not anchored", call_id=call.id, error=str(exc))
            call.offer = None
        if route.trunk is None:
            self.fail(call, 503, "no trunk for emergency calls: the tenant has no trunk")
            return
        self.outbound.call_out(call, caller.tenant, destination, route.trunk)

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
        call = self.open(
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
            self.fail(call, 404, "no such number here")
            return
        looped = self._looped_back(request, did)
        if looped is not None:
            log.warning("our own call came back from the carrier", did=did.number, why=looped)
            self.fail(call, 482, f"loop: {looped}", disposition="failed")
            return
        if not decision.allow:
            self.fail(call, decision.status, decision.reasons[0], disposition="blocked")
            return
        self.policy.on_call_start(attempt, call.token)  # the guard watches for probing calls
        if not self.anchor_offer(call):
            return
        callee = self.did_target(did)
        if callee is None:
            self.fail(call, 404, "the DID's extension does not exist")
            return
        self.ring(call, callee, now)

    def ring_extension(self, call: Call, callee: ExtensionAuth, now: float) -> None:
        call.visited.add((callee.tenant, callee.number))
        if callee.forward_always:
            self.divert(call, callee, callee.forward_always, "always", now)
            return
        bindings = self.location.reach(aor_key(callee.realm, callee.number), now)
        targets = [
            (binding.contact, dest)
            for binding in bindings
            if (dest := parse_source(binding.source)) is not None
        ][:MAX_FORKS]
        if not targets:
            if callee.forward_noanswer:  # not reachable counts as not answering
                self.divert(call, callee, callee.forward_noanswer, "noanswer", now)
                return
            self.fail(call, 480, "the extension is not registered")
            return
        call.ringing = callee
        self.port.respond(call.a_key, call.a_request, make_response(call.a_request, 100))
        ringing_leg: object
        if len(targets) == 1:
            self.send_b_invite(call, parse_uri(targets[0][0]), targets[0][1])
            ringing_leg = call.b_key
        else:
            self.forking.ring(call, targets)
            ringing_leg = call.forks
        self.arm_ring_timer(call)
        self.line_changed(call)
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
        self.cancel_b(call)
        self.divert(call, callee, callee.forward_noanswer, "noanswer", self.port.wall_time())

    def divert(self, call: Call, by: Target, target: str, why: str, now: float) -> None:
        """Divert the call: a new leg to ``target`` paid by ``by``, through the hook.

        Forwarding set on the PBX, forwarding on busy or no answer, and a 3xx redirect
        from the phone (set on its web page: the attack we exist for) all come here.
        """
        if call.b_key is not None:  # the previous leg is over; ignore its late answers
            self.by_b_key.pop(call.b_key, None)
        rang = call.ringing
        call.b_key = call.b_request = call.b_dest = None
        call.b_trunk, call.b_auth_attempts, call.b_failover = None, 0, None
        call.b_provisional = False
        call.ringing = None
        call.forks = []  # cancelled forks stay in forking.forks: a late 2xx gets ACK and BYE
        if rang is not None:  # its lamp stops blinking
            self.presence.changed(rang.tenant, rang.number)
        call.forwarded_by.append(by.number)
        call.visited.add((by.tenant, by.number))
        call.outcome["forwarded_by"] = ",".join(call.forwarded_by)[:255]
        if len(call.forwarded_by) > MAX_FORWARDS or target in call.forwarded_by:
            self.fail(call, 482, "forwarding loop", disposition="failed")
            return
        if emergency_number(target, self.routing.countries.get(by.tenant, "US")) is not None:
            # a diversion (or a phone's 3xx) to 112 would send the company's callers there
            log.warning("diversion to an emergency number refused", extension=by.number)
            self.fail(call, 403, f"calls cannot be forwarded to the emergency number {target}")
            return
        host, _ = self.port.local_address(call.a_source.transport)
        call.diversion = (
            f"<sip:{by.number}@{host}>;reason={DIVERSION_REASONS[why]};"
            f"counter={len(call.forwarded_by)}"
        )
        call.history = history_info(call.history, host, by.number, target, why)
        target_ext, destination, did = self.resolve(by, target)
        if did is not None and target_ext is None:
            self.fail(call, 404, "the DID's extension does not exist")
            return
        if target_ext is not None and (target_ext.tenant, target_ext.number) in call.visited:
            self.fail(call, 482, "forwarding loop", disposition="failed")
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
            self.fail(
                call, decision.status, f"forwarding to {target} refused", disposition="blocked"
            )
            if decision.severity == "critical":
                self.police(now)  # a suspension cuts the extension's other calls at once
            return
        call.callee = target
        if target_ext is not None:
            self.ring(call, target_ext, now)
            return
        assert destination is not None
        if call.identity is None:  # a call from a carrier, forwarded out to one
            call.identity = cid.forwarded(self.routing, by.tenant, by.number, call.caller_id)
        self.outbound.call_out(call, by.tenant, destination)

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

    def leg_failed(self, call: Call, response: Response, *, busy: bool, timeout: bool) -> None:
        """The b leg (or every fork) failed: answer the carrier's challenge, try its next
        server, follow a redirect, forward on busy, or fail the call with the answer."""
        trunk = call.b_trunk
        if timeout:
            if not self.outbound.next_server(call, "no answer"):
                self.fail(call, 408, "no answer from the callee's phone")
            return
        if response.status in AUTH_HEADERS and trunk is not None and trunk.username:
            self.outbound.authenticate(call, trunk, response)
            return
        if response.status in FAILOVER_STATUSES and self.outbound.next_server(
            call, f"{response.status}"
        ):
            return
        if call.group is not None:  # a ring group's step: the next one rings
            self.groups.step_failed(call, response)
            return
        status = response.status
        ringing = call.ringing
        now = self.port.wall_time()
        if 300 <= status < 400:
            # A redirect is a new call paid by the redirecting extension: never followed
            # blindly, always through the authorization hook.
            target = response.contacts[0].uri.user if response.contacts else None
            if ringing is not None and target:
                self.divert(call, ringing, target, "redirect", now)
            else:
                self.fail(call, 480, "redirect not followed", sip_code=status)
        elif busy and ringing is not None and ringing.forward_busy:
            self.divert(call, ringing, ringing.forward_busy, "busy", now)
        else:
            self.fail(call, status, response.reason or None, sip_code=status)
