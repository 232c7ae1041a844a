"""A call another node of the PBX sends here for a phone registered on this node
directly (no SIP front): this node rings that one binding, as a B2BUA leg of the other
node's call (``pbxwarden.cluster.relay`` signs and checks; docs/cluster.md).

The other node did everything a call needs before it costs or rings: it authenticated
its caller, judged the call (the guard), followed the callee's forwarding and chose the
contact. So here nothing is judged or diverted again: the request names the contact
(its Request-URI, exactly as this node published the binding), and only a binding of
this node's own is rung, never another node's, so a relay cannot loop. The CDR of the
leg here says ``relay`` (the call's own CDR is the sending node's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import structlog

from pbxwarden.pbx.call import parse_source
from pbxwarden.pbx.policy import Decision
from pbxwarden.pbx.registrar import aor_key
from pbxwarden.sip.message import Request, make_response
from pbxwarden.sip.transaction import Address, TransactionKey
from pbxwarden.sip.uri import URI, parse_uri

if TYPE_CHECKING:
    from pbxwarden.pbx.calls import CallManager
    from pbxwarden.pbx.location import Binding

log = structlog.get_logger("pbxwarden.pbx")

KIND = "relay"


class RelayCheck(Protocol):
    """What the cluster gives the call manager: who signed a request (a node), if anyone."""

    def verify(self, request: Request, source: Address) -> str | None: ...


def _same(contact: str, uri: URI) -> bool:
    try:
        return str(parse_uri(contact)) == str(uri)
    except ValueError:
        return False


def find(core: CallManager, uri: URI, now: float) -> tuple[str, Binding] | None:
    """This node's own live binding whose contact is ``uri``: (AOR, binding). First by
    the contact's user as the extension's number (phones register their number there),
    else among every binding (a contact with another user part)."""
    user = uri.user or ""
    for realm in core.auth.realms:
        aor = aor_key(realm, user)
        for binding in core.location.lookup(aor, now):
            if _same(binding.contact, uri):
                return aor, binding
    for aor, binding in core.location.items():
        if binding.expires_at > now and _same(binding.contact, uri):
            return aor, binding
    return None


def take(
    core: CallManager,
    request: Request,
    source: Address,
    key: TransactionKey | None,
    node: str,
    now: float,
) -> None:
    """Ring the binding ``request`` names, for node ``node``'s call."""
    found = find(core, request.uri, now)
    target = None if found is None else parse_source(found[1].source)
    if found is None or target is None:
        core.port.respond(
            key, request, make_response(request, 480, "Temporarily Unavailable (not here)")
        )
        return
    aor, binding = found
    realm, _, number = aor.rpartition("/")
    callee = core.directory.get(realm, number)
    if callee is None:
        core.port.respond(key, request, make_response(request, 404))
        return
    caller = request.from_.uri.user or ""
    note = f"a call of node {node} to a phone registered on this node"
    call = core.open(
        request, key, source, callee.tenant, "", caller, callee.number, KIND,
        Decision(True, (note,)), now, None,
    )  # fmt: skip
    call.display = request.from_.display_name
    if not core.anchor_offer(call):
        return
    call.ringing = callee
    core.port.respond(key, request, make_response(request, 100))
    core.send_b_invite(call, parse_uri(binding.contact), target)
    core.arm_ring_timer(call)
    core.line_changed(call)
    log.info("call relayed for another node", node=node, callee=callee.number)
