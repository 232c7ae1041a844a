"""What the CLI asks the running server over the control socket (live calls, ending one,
live registrations and removing one, counters): live state that only the server's
memory holds (see :mod:`pbxwarden.control`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden import _core
from pbxwarden.pbx.registrar import aor_key
from pbxwarden.store.db import binding_view

if TYPE_CHECKING:
    from pbxwarden.server import SipServer

log = structlog.get_logger("pbxwarden.server")


class ControlCommands:
    def __init__(self, server: SipServer) -> None:
        self.server = server

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answers the CLI over the control socket (see :mod:`pbxwarden.control`)."""
        command = request.get("cmd")
        if command == "calls":
            return {"calls": self.local_calls(time.time())}
        if command == "end":
            call_id = str(request.get("call_id", ""))
            if not self.server.calls.end_call(call_id):
                raise ValueError(f"no call {call_id!r} in progress")
            return {"ended": call_id}
        if command == "registrations":
            return {"registrations": self.live_bindings(time.time())}
        if command == "unregister":
            tenant, number = str(request.get("tenant", "")), str(request.get("number", ""))
            handle = str(request.get("id", ""))
            for row in self.live_bindings(time.time()):
                if (row["tenant"], row["number"], row["id"]) == (tenant, number, handle):
                    realm = self.server.calls.routing.realms.get(tenant, "")
                    self.server.location.remove(aor_key(realm, number), str(row["contact"]))
                    log.warning(
                        "registration removed by an administrator",
                        tenant=tenant,
                        extension=number,
                        source=row["address"],
                        user_agent=row["user_agent"],
                    )
                    return {"removed": row}
            raise ValueError(f"extension {number} of tenant {tenant} has no registration {handle}")
        if command == "firewall":  # the CLI or the API stored or lifted a ban
            self.server.sync.firewall_due = True
            return {"firewall": "adopting"}
        if command == "stats":
            return {
                "stats": self.server.stats.__dict__,
                "bindings": len(self.server.location),
                "transactions": self.server.tx.active_count,
                "calls": len(self.server.calls.active),
                "bans": len(self.server.firewall.bans),
                "overload": self.server._overload,
                **self.server.transports.describe(),
                "trunk_registrations": self.server.trunk_registrations.status(),
                "trunk_dns": self.server.resolver.describe(self.server.sync.stored_routing.trunks),
                "sip_core": _core.mode(),
                "database": "down" if self.server.cdrs.down_since is not None else "up",
                "cdrs_spooled": self.server.cdrs.spooled,
                **self.server.baselines.describe(),
                **(self.server.cluster.describe() if self.server.cluster is not None else {}),
                **(self.server.workers.describe() if self.server.workers is not None else {}),
                **(
                    {f"media_{k}": v for k, v in self.server.media.counters.__dict__.items()}
                    if self.server.media
                    else {}
                ),
            }
        raise ValueError(f"unknown command {command!r}")

    async def handle_async(self, request: dict[str, Any]) -> dict[str, Any]:
        """The control socket's and the API's entry: in a cluster, ``calls`` lists every
        node's calls and ``end`` ends one wherever it is (``cluster/callreg.py``); an
        error the HTTP API should not answer 404 to comes with its ``status``."""
        cluster = self.server.cluster
        command = request.get("cmd")
        if cluster is None or command not in ("calls", "end"):
            return self.handle(request)
        from pbxwarden.cluster.callreg import EndError

        if command == "calls":
            return await cluster.callreg.listing(self.local_calls(time.time()))
        call_id = str(request.get("call_id", ""))
        node = request.get("node")
        if node in (None, cluster.node) and self.server.calls.end_call(call_id):
            return {"ended": call_id, "node": cluster.node}
        if node == cluster.node:
            raise ValueError(f"no call {call_id!r} in progress on node {cluster.node}")
        try:
            return await cluster.callreg.end(call_id, None if node is None else str(node))
        except EndError as exc:
            return {"error": str(exc), "status": exc.status}

    def local_calls(self, now: float) -> list[dict[str, Any]]:
        """This node's calls in progress, as ``pbxwarden calls`` lists them."""
        return [
            {
                "call_id": c.id,
                "tenant": c.tenant,
                "caller": c.caller_id,
                "callee": c.callee,
                "state": "answered" if c.answered else "ringing",
                "seconds": int(now - (c.answered or c.started)),
                **({"media": self.server.media.describe(c.token)} if self.server.media else {}),
            }
            for c in self.server.calls.active
        ]

    def live_bindings(self, now: float) -> list[dict[str, Any]]:
        tenants = {realm: tenant for tenant, realm in self.server.calls.routing.realms.items()}
        rows = []
        for aor, binding in self.server.location.items():
            if binding.expires_at <= now:
                continue
            realm, _, number = aor.rpartition("/")
            rows.append(binding_view(tenants.get(realm, realm), number, binding, now))
        rows.sort(key=lambda r: (r["tenant"], r["number"], r["registered_at"] or 0.0))
        return rows
