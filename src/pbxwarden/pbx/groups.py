"""Ring groups and hunt groups: one number that rings several members.

A group is a number in its tenant's dialplan, like an extension's (a DID, a forwarding,
a transfer or a phone can point at it). Its members are extensions of the tenant or
external numbers (a mobile), rung in steps:

- ``ringall``: every member at once, for ``ring_time`` seconds;
- ``hunt``: one member after another, in the order given, ``ring_time`` each;
- ``roundrobin``: one after another, starting after the member that answered the
  group's last call (each call lands on the next person).

A step whose members are all busy, unreachable or refused moves on at once; when every
step has failed the call goes to the group's ``fallback`` (an extension, another group
or a number: a diversion paid by the group, judged by the guard), else it fails 480.

Every external member is a costly leg: it is authorized through the hook when its step
starts, kind ``group``, paid by the group (its number is the payer the guard keeps limits
and spend for), each leg with its own reference so that the guard counts every
concurrent leg and can cut the answered one off. A refused member (a premium number, a
country the tenant does not call) is skipped with its reason in the CDR; the others
ring. Members' own forwarding is not followed (every PBX's ring group ignores it: one
member's diversion would take the whole group's call), and a member's phone answering
with a 3xx is a failure of that member, never a redirect.

Members see which group rang: ``cid_prefix`` goes before the caller's number in the
display name of their ringing leg. Round-robin positions are plain records keyed by
tenant and group number, so several nodes can share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from pbxwarden.pbx import caller_id as cid
from pbxwarden.pbx.call import MAX_FORKS, Call, Cancellable, parse_source
from pbxwarden.pbx.dialplan import Group, steps
from pbxwarden.pbx.numbers import classify, emergency_number
from pbxwarden.pbx.policy import CallAttempt
from pbxwarden.pbx.registrar import aor_key
from pbxwarden.sip.message import Response, make_response
from pbxwarden.sip.transaction import Address
from pbxwarden.sip.uri import URI, parse_uri
from pbxwarden.store.db import ExtensionAuth

if TYPE_CHECKING:
    from pbxwarden.pbx.calls import CallManager
    from pbxwarden.pbx.routing import Trunk

log = structlog.get_logger("pbxwarden.groups")

KIND = "group"  # the guard's kind for an external member's leg


@dataclass(frozen=True, slots=True)
class Member:
    """One leg a step rings: a member's registered contact, or an external number."""

    uri: URI
    dest: Address
    extension: ExtensionAuth | None = None  # an extension member's
    trunk: Trunk | None = None  # an external member's carrier
    ref: int | None = None  # its guard reference
    e164: str | None = None


@dataclass(eq=False)
class GroupRun:
    """A group call's progress: which step rings, and why members were skipped."""

    group: Group
    steps: list[list[str]]
    step: int = -1
    skipped: list[str] = field(default_factory=list)  # why members were not rung (CDR)
    refs: list[int] = field(default_factory=list)  # guard references of external legs
    timer: Cancellable | None = None


class Groups:
    """Rings the groups of every tenant; the B2BUA core places the legs."""

    def __init__(self, core: CallManager) -> None:
        self.core = core
        # (tenant, group number) -> index of the member after the last one who answered
        self.next_member: dict[tuple[str, str], int] = {}

    def ring(self, call: Call, group: Group, now: float) -> None:
        """Ring ``group`` for ``call``, whose a leg is the caller (already authorized)."""
        call.visited.add((group.tenant, group.number))
        start = self.next_member.get((group.tenant, group.number), 0)
        call.group = GroupRun(group, steps(group, start))
        if group.cid_prefix:  # a quoted-string (RFC 3261 25.1), as display names go
            shown = f"{group.cid_prefix}{call.caller_id}".replace("\\", "").replace('"', "")
            call.display = f'"{shown}"'
        self.core.port.respond(call.a_key, call.a_request, make_response(call.a_request, 100))
        self._next_step(call)

    def _next_step(self, call: Call) -> None:
        core, run = self.core, call.group
        assert run is not None
        self._end_step(call)
        now = core.port.wall_time()
        rang = {(f.extension.tenant, f.extension.number) for f in call.forks if f.extension}
        call.forks = []
        while run.step + 1 < len(run.steps):
            run.step += 1
            targets = self._targets(call, run, run.steps[run.step], now)
            if not targets:
                continue
            core.forking.members(call, targets)
            core.line_changed(call)
            timer = core.port.schedule(run.group.ring_time, lambda: self._step_timeout(call))
            run.timer = timer
            call.timers.append(timer)
            break
        for tenant, number in rang:  # the previous step's lamps stop blinking
            core.presence.changed(tenant, number)
        if not call.forks:
            self._exhausted(call, now)

    def _targets(self, call: Call, run: GroupRun, members: list[str], now: float) -> list[Member]:
        core, group = self.core, run.group
        targets: list[Member] = []
        for number in members:
            ext = core.directory.get(group.realm, number)
            if ext is not None:
                caller = call.a_extension
                me = (ext.tenant, ext.number)
                if (
                    not ext.enabled
                    or me in call.visited
                    or (caller is not None and (caller.tenant, caller.number) == me)
                ):
                    continue  # the caller itself, or a member already rung on this call
                bindings = core.location.reach(aor_key(ext.realm, ext.number), now)
                for binding in bindings:
                    dest = parse_source(binding.source)
                    if dest is not None:
                        targets.append(Member(parse_uri(binding.contact), dest, extension=ext))
                continue
            member = self._external(call, run, number, now)
            if member is not None:
                targets.append(member)
        return targets[:MAX_FORKS]

    def _external(self, call: Call, run: GroupRun, number: str, now: float) -> Member | None:
        """An external member's leg, authorized through the hook (None: not rung)."""
        core, group = self.core, run.group
        country = core.routing.countries.get(group.tenant, "US")
        destination = classify(number, country)
        if emergency_number(number, country) is not None or destination is None:
            run.skipped.append(f"member {number} skipped: not a number a group may ring")
            return None
        if core.own_did(destination) is not None:
            run.skipped.append(f"member {number} skipped: one of this PBX's own numbers")
            return None
        attempt = CallAttempt(
            group.tenant,
            group.number,
            call.caller_id,
            number,
            KIND,
            str(call.a_source),
            now,
            destination,
        )
        decision = core.policy.authorize(attempt)
        if not decision.allow:
            log.warning(
                "group member refused",
                group=group.number,
                member=number[:64],
                reasons=list(decision.reasons),
            )
            run.skipped.append(f"member {number} refused: {decision.reasons[0]}")
            if decision.severity == "critical":
                core.police(now)
            return None
        trunk = core.routing.trunk_for(group.tenant, destination.route_key)
        dest = core.locator.failover(trunk).current if trunk is not None else None
        if trunk is None or dest is None:
            run.skipped.append(f"member {number} skipped: no trunk route for {destination.e164}")
            return None
        if call.identity is None:  # a call from a carrier, rung out to a member
            call.identity = cid.forwarded(core.routing, group.tenant, group.number, call.caller_id)
        ref = core.new_ref(call)
        core.policy.on_call_start(attempt, ref)
        run.refs.append(ref)
        uri = URI("sip", user=destination.e164, host=trunk.host, port=trunk.uri_port)
        return Member(uri, dest, trunk=trunk, ref=ref, e164=destination.e164)

    def _step_timeout(self, call: Call) -> None:
        if call.ended or call.answered is not None or call.group is None:
            return
        self.core.cancel_b(call)
        self._next_step(call)

    def _end_step(self, call: Call) -> None:
        """The ringing step is over: its timer stops, its external legs stop counting."""
        run = call.group
        assert run is not None
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        now = self.core.port.wall_time()
        for ref in run.refs:
            self.core.end_ref(call, ref, now)
        run.refs.clear()

    def step_failed(self, call: Call, response: Response) -> None:
        """Every member of the ringing step failed (busy, unreachable, declined)."""
        if call.ended or call.answered is not None:
            return
        self._next_step(call)

    def answered(self, call: Call, number: str | None, ref: int | None) -> None:
        """A member answered: the losers' legs stop counting; round robin moves on."""
        run = call.group
        if run is None:
            return
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        now = self.core.port.wall_time()
        for other in run.refs:
            if other != ref:
                self.core.end_ref(call, other, now)
        run.refs.clear()
        group = run.group
        position = self._position(group, number)
        if position is not None:
            self.next_member[(group.tenant, group.number)] = (position + 1) % len(group.members)
        self._note(call)

    def _position(self, group: Group, number: str | None) -> int | None:
        """Where the member who answered stands (an external one answers as E.164)."""
        if number is None:
            return None
        if number in group.members:
            return group.members.index(number)
        country = self.core.routing.countries.get(group.tenant, "US")
        for position, member in enumerate(group.members):
            destination = classify(member, country)
            if destination is not None and destination.e164 == number:
                return position
        return None

    def _exhausted(self, call: Call, now: float) -> None:
        run = call.group
        assert run is not None
        self._note(call)
        group = run.group
        call.group = None
        call.display = None
        if group.fallback:
            self.core.divert(call, group, group.fallback, "noanswer", now)
            return
        self.core.fail(call, 480, f"nobody in group {group.number} answered")

    def _note(self, call: Call) -> None:
        """The CDR's reasons say which group rang and why members were not rung."""
        run = call.group
        if run is not None:
            base = call.outcome.get("reasons") or "; ".join(call.decision.reasons)
            rang = f"rung by group {run.group.number} ({run.group.strategy})"
            call.outcome["reasons"] = "; ".join([base, rang, *run.skipped])[:2000]
