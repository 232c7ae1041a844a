"""Calls to a phone registered on another node directly (no SIP front): through that node.

A phone registered on node A without a front (DNS SRV, or a phone pointed at A) is
reachable only through A's socket: its NAT binding is A's, and a packet from node B
would be dropped by the phone's router. So B sends such a call to A exactly as it sends
a call for a phone behind the front to the front, with
``Route: <sip:A;lr;received=sip:phone:port>`` (:func:`pbxwarden.transport.front.front_route`),
and signs it (``X-PBX-Node``); A checks the signature and rings that one binding of its
own as a B2BUA (:mod:`pbxwarden.pbx.node_relay`), never another node's, so nothing
loops.

The signature: the header names the sending node and a time, and carries an
HMAC-SHA256 over node, time, Call-ID, CSeq and Request-URI, keyed by a secret every node
reads from Redis (created once with ``SET NX``: whoever can write to the PBX's Redis
controls it anyway, docs/cluster.md). The request must also come from that node's
registered address (its heartbeat's), within a minute of the time it names. A relay
grants only the ringing of a phone registered on the receiving node: no call out, no
decision of the guard skipped (the sending node's guard judged the call, which is
internal or inbound: a phone of the PBX being called).

Hand-written because it is one header: SIP has no standard for trust between the nodes
of one PBX (RFC 3325 asserts identities between trusted hosts, not requests).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

import structlog

from pbxwarden.cluster.connection import RedisLink
from pbxwarden.sip.message import Request
from pbxwarden.sip.transaction import Address

log = structlog.get_logger("pbxwarden.cluster")

HEADER = "X-PBX-Node"
FRESH = 60.0  # seconds: a signed request older (or newer) than this is refused
_UNSPECIFIED = ("0.0.0.0", "::")


class NodeRelay:
    """Signs this node's requests to other nodes, checks theirs; knows the nodes'
    addresses from the registry's view (``view``: every node's latest record)."""

    def __init__(
        self, link: RedisLink, prefix: str, node: str, view: Callable[[], list[dict[str, Any]]]
    ) -> None:
        self.link, self.node, self.view = link, node, view
        self.key = f"{prefix}relay-secret"
        self.secret: bytes | None = None
        self.signed = 0  # requests this node sent through another
        self.relayed = 0  # requests of other nodes taken here
        self.refused = 0  # requests that named a node but failed the checks

    async def load(self, retry: float = 1.0) -> None:
        """Read (or create) the shared secret; tried again until Redis answers."""
        fresh = secrets.token_hex(32)
        while self.secret is None:

            async def read(c: Any) -> Any:
                await c.set(self.key, fresh, nx=True)
                return await c.get(self.key)

            value = await self.link.run("relay secret", read)
            if isinstance(value, str) and len(value) >= 32:
                self.secret = value.encode("ascii")
                return
            await asyncio.sleep(retry)

    # -- the nodes' addresses ------------------------------------------------------------

    def address_of(self, node: str) -> str | None:
        """Where node ``node`` takes SIP over UDP (``udp:host:port``), if it is up and
        listens on an address others can reach."""
        if node == self.node:
            return None
        for record in self.view():
            if record.get("node") != node or record.get("state") != "up":
                continue
            for address in record.get("addresses") or ():
                kind, _, rest = str(address).partition(":")
                host = rest.rpartition(":")[0].strip("[]")
                if kind == "udp" and host and host not in _UNSPECIFIED:
                    return f"udp:{rest}"
        return None

    def node_at(self, address: Address) -> str | None:
        """The other node listening on ``address`` (UDP), or None."""
        for record in self.view():
            name = str(record.get("node"))
            if name != self.node and record.get("state") == "up":
                host = f"[{address.host}]" if ":" in address.host else address.host
                if f"udp:{host}:{address.port}" in (record.get("addresses") or ()):
                    return name
        return None

    # -- signing and checking ------------------------------------------------------------

    def _mac(self, node: str, at: str, request: Request) -> str:
        assert self.secret is not None
        cseq = request.headers.get("CSeq") or ""
        text = "\n".join((node, at, request.call_id, cseq, str(request.uri)))
        return hmac.new(self.secret, text.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def sign(self, request: Request, dest: Address) -> bool:
        """Sign ``request`` when it goes through another node (``dest``'s hop); False
        (unsigned) if ``dest`` is no node or the secret is not known yet."""
        if dest.front is None or self.secret is None or self.node_at(dest.front) is None:
            return False
        at = str(int(time.time()))
        request.headers.remove(HEADER)
        request.headers.add(HEADER, f"{self.node};t={at};sig={self._mac(self.node, at, request)}")
        self.signed += 1
        return True

    def verify(self, request: Request, source: Address) -> str | None:
        """The node that sent ``request`` if it carries that node's valid signature and
        came from its address; None otherwise (and a request with no header costs a
        dictionary lookup)."""
        value = request.headers.get(HEADER)
        if value is None:
            return None
        node = self._check(value, request, source)
        if node is None:
            self.refused += 1
            log.warning("a request named a node but failed its checks", source=str(source))
        else:
            self.relayed += 1
        return node

    def _check(self, value: str, request: Request, source: Address) -> str | None:
        if self.secret is None:
            return None
        node, *params = (part.strip() for part in value.split(";"))
        fields = dict(p.partition("=")[::2] for p in params)
        at, sig = fields.get("t", ""), fields.get("sig", "")
        if not at.isdigit() or abs(time.time() - int(at)) > FRESH:
            return None
        if not hmac.compare_digest(sig, self._mac(node, at, request)):
            return None
        if source.front is not None or self.node_at(source) != node:
            return None
        return node

    def describe(self) -> dict[str, Any]:
        return {
            "cluster_relay_signed": self.signed,
            "cluster_relay_taken": self.relayed,
            "cluster_relay_refused": self.refused,
        }
