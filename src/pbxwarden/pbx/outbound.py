"""Calls out through carriers: the tenant's trunk, its servers (DNS, RFC 3263) and the
carrier's digest challenges.

The b leg of a call to a number goes to the trunk with the longest matching prefix (or
one chosen by a feature, such as the emergency trunk); when the carrier's server does not
answer or says 503, the leg moves to its next server (RFC 3263 4.3); a 401/407 is
answered with the trunk's credentials once (twice after a stale nonce), never in a loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from pbxwarden.pbx.call import (
    MAX_TRUNK_AUTH_ATTEMPTS,
    Call,
    Fork,
    stale_challenge,
)
from pbxwarden.pbx.numbers import Destination
from pbxwarden.pbx.routing import Trunk
from pbxwarden.sip.digest import DigestError
from pbxwarden.sip.digest_client import (
    ClientCredentials,
    DigestClient,
    with_credentials,
)
from pbxwarden.sip.message import (
    Response,
    make_response,
    safe_reason,
)
from pbxwarden.sip.uri import URI

if TYPE_CHECKING:
    from pbxwarden.pbx.calls import CallManager

log = structlog.get_logger("pbxwarden.calls")


class Outbound:
    def __init__(self, core: CallManager) -> None:
        self.core = core

    def call_out(
        self, call: Call, tenant: str, destination: Destination, trunk: Trunk | None = None
    ) -> None:
        """The B leg to a carrier: the tenant's trunk with the longest matching prefix."""
        if trunk is None:
            trunk = self.core.routing.trunk_for(tenant, destination.route_key)
        if trunk is None:
            self.core.fail(call, 503, f"no trunk route for {destination.e164}")
            return
        call.trunk = trunk.name
        call.b_trunk, call.b_auth_attempts = trunk, 0
        call.out_e164 = destination.e164
        call.b_failover = self.core.locator.failover(trunk)
        dest = call.b_failover.current
        if dest is None:  # a name DNS gives no address for
            self.core.fail(call, 503, f"trunk {trunk.name}: {call.b_failover.reason}")
            return
        self.core.port.respond(call.a_key, call.a_request, make_response(call.a_request, 100))
        target = URI("sip", user=destination.e164, host=trunk.host, port=trunk.uri_port)
        self.core.send_b_invite(call, target, dest)
        self.core.arm_ring_timer(call)

    def next_server(self, call: Call, why: str) -> bool:
        """The carrier's server did not answer or said 503: the B leg goes to its next
        server from DNS (RFC 3263 4.3), if it has one. False: give up with this answer."""
        failover, invite = call.b_failover, call.b_request
        if failover is None or invite is None or call.b_trunk is None:
            return False
        failed, dest = failover.current, failover.next()
        if failed is not None:
            self.core.locator.failed(failed)
        if dest is None:
            return False
        log.warning(
            "carrier server failed; trying the next one",
            trunk=call.b_trunk.name,
            failed=str(failed),
            why=why,
            next=str(dest),
        )
        if call.b_key is not None:
            self.core.by_b_key.pop(call.b_key, None)
        call.b_auth_attempts, call.b_provisional = 0, False
        self.core.send_b_invite(call, invite.uri, dest)
        return True

    def authenticate(self, call: Call, trunk: Trunk, response: Response) -> None:
        """The carrier challenged our INVITE (the transaction layer has ACKed it): send it
        again with the trunk's credentials as a new transaction, which CANCEL then follows.
        """
        status = response.status
        invite, dest = call.b_request, call.b_dest
        assert invite is not None and dest is not None and trunk.username is not None
        if trunk.password is None:  # sealed under another install secret
            log.warning("trunk password unusable: set it again", trunk=trunk.name)
            self.core.fail(
                call,
                503,
                f"trunk {trunk.name}: no usable password for the carrier",
                sip_code=status,
            )
            return
        if call.b_auth_attempts > 0 and (
            call.b_auth_attempts >= MAX_TRUNK_AUTH_ATTEMPTS or not stale_challenge(response)
        ):
            log.warning("carrier rejected the trunk credentials", trunk=trunk.name, status=status)
            self.core.fail(
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
            self.core.fail(
                call,
                502,
                f"trunk {trunk.name}: cannot answer the carrier's challenge ({exc})",
                sip_code=status,
            )
            return
        if call.b_key is not None:
            self.core.by_b_key.pop(call.b_key, None)
        call.b_auth_attempts += 1
        call.b_provisional = False
        call.b_request = with_credentials(invite, header, value)
        call.b_key = self.core.port.send_request(call.b_request, dest)
        self.core.by_b_key[call.b_key] = call

    def authenticate_fork(self, call: Call, fork: Fork, response: Response) -> bool:
        """A carrier challenged the INVITE of a ring group's external member: sent again
        with the trunk's credentials (once; twice after a stale nonce). False: that
        member fails with the challenge, the group goes on."""
        trunk = fork.trunk
        if trunk is None or trunk.username is None or trunk.password is None:
            return False
        if fork.auth_attempts > 0 and (
            fork.auth_attempts >= MAX_TRUNK_AUTH_ATTEMPTS or not stale_challenge(response)
        ):
            log.warning("carrier rejected the trunk credentials", trunk=trunk.name)
            return False
        client = DigestClient(ClientCredentials(trunk.username, trunk.password, trunk.realm))
        invite = fork.request
        try:
            header, value = client.answer(response, "INVITE", str(invite.uri), invite.body)
        except DigestError as exc:
            log.warning("carrier challenge cannot be answered", trunk=trunk.name, error=str(exc))
            return False
        fork.auth_attempts += 1
        fork.provisional = False
        fork.request = with_credentials(invite, header, value)
        fork.key = self.core.port.send_request(fork.request, fork.dest)
        self.core.forking.register(call, fork)
        return True
