"""Suspensions shared by the nodes: an extension suspended on one node (by the guard, on
corroborated fraud, or by an administrator) makes no costly call on any node, and a
lift on one node lifts it everywhere.

The same shape as the shared locks (:mod:`pbxwarden.cluster.node`): the guard tells
each change made here (:meth:`SharedSuspensions.changed`, synchronous, so it only
queues), a task writes it with ``SET_SUSPENSION``, which keeps the newest change of each
extension (a lift at the same moment as a suspension wins) and announces it in the same
step; every node adopts an announced change that is newer than what it knows
(:meth:`~pbxwarden.guard.engine.Guard.adopt_suspension`: a suspension also cuts the
extension's calls in progress there) and stores it in its own database, so that its CLI,
API and metrics show it and a restart keeps it. A reconcile round compares the whole
shared set with what this node knows, both ways (a node that started later, or missed
announcements while Redis was down). Keyed by tenant and extension number, not database
ids, which differ between nodes that do not share a database.

Redis down: suspensions and lifts go on locally (the guard's own state and database);
the reconcile round when Redis answers again pushes what changed here meanwhile and
adopts the others' newer changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden.cluster import scripts
from pbxwarden.store.db import StoreError

if TYPE_CHECKING:
    from pbxwarden.cluster.connection import RedisLink
    from pbxwarden.server import SipServer

log = structlog.get_logger("pbxwarden.cluster")

LIFT_MEMORY = 86400.0  # lifts are remembered this long in Redis (and here)
QUEUE_LIMIT = 10_000

Key = tuple[str, str]  # (tenant, number)


def newer(record: dict[str, Any], than: dict[str, Any] | None) -> bool:
    """Whether ``record`` supersedes ``than``: later, or a lift at the same moment."""
    if than is None:
        return True
    at, other = float(record["at"]), float(than["at"])
    return at > other or (at == other and not record["suspended"] and bool(than["suspended"]))


class SharedSuspensions:
    """The guard's :class:`~pbxwarden.guard.shared.SharedSuspensions` for a cluster node."""

    def __init__(self, server: SipServer, link: RedisLink, key: str, channel: str) -> None:
        self.server, self.link, self.key, self.channel = server, link, key, channel
        self.node = link.node
        self._set = link.client.register_script(scripts.SET_SUSPENSION)
        self._all = link.client.register_script(scripts.SUSPENSIONS)
        self.known: dict[Key, dict[str, Any]] = {}  # the newest change of each, either side
        self._queue: asyncio.Queue[tuple[Key, dict[str, Any]]] = asyncio.Queue(QUEUE_LIMIT)
        self.shared = 0
        self.adopted = 0

    # -- made here --------------------------------------------------------------------

    def changed(self, tenant: str, extension: str, reason: str | None, at: float, by: str) -> None:
        key = (tenant, extension)
        record: dict[str, Any] = {
            "suspended": reason is not None,
            "reason": (reason or "")[:500],
            "at": at,
            "by": by,
            "node": self.node,
        }
        if not newer(record, self.known.get(key)):
            return
        self.known[key] = record
        log.warning(
            "extension suspension in force here, shared"
            if reason is not None
            else "extension suspension lifted here, shared",
            tenant=tenant,
            extension=extension,
            at=at,
        )
        with contextlib.suppress(asyncio.QueueFull):  # the reconcile round has it
            self._queue.put_nowait((key, record))

    async def pushing(self) -> None:
        while True:
            key, record = await self._queue.get()
            if self.link.healthy or not self.link.known:
                try:
                    await self.share(key, record)
                except Exception:
                    log.exception("sharing a suspension failed", extension=key[1])

    async def share(self, key: Key, record: dict[str, Any]) -> bool:
        tenant, number = key
        message = json.dumps({"kind": "suspension", "tenant": tenant, "number": number, **record})
        args: list[str | float] = [f"{tenant}/{number}", record["at"]]
        args += ["1" if record["suspended"] else "0", json.dumps(record), self.channel, message]
        result = await self.link.run(
            "suspension", lambda c: self._set(keys=[self.key], args=args, client=c)
        )
        if result:
            self.shared += 1
        return result is not None

    # -- made elsewhere ---------------------------------------------------------------

    async def on_message(self, message: dict[str, Any]) -> None:
        try:
            key = (str(message["tenant"]), str(message["number"]))
        except KeyError:
            return
        await self.adopt(key, message)

    async def adopt(self, key: Key, raw: dict[str, Any]) -> bool:
        """Apply another node's change if newer than what this node knows."""
        try:
            record: dict[str, Any] = {
                "suspended": bool(raw["suspended"]),
                "reason": str(raw.get("reason", ""))[:500],
                "at": float(raw["at"]),
                "by": str(raw.get("by", "admin"))[:64],
                "node": str(raw.get("node", "?")),
            }
        except (KeyError, TypeError, ValueError):
            return False
        if not newer(record, self.known.get(key)):
            return False
        self.known[key] = record
        tenant, number = key
        guard, store = self.server.guard, self.server.store
        reason = (record["reason"] or "suspended on another node") if record["suspended"] else None
        if guard.adopt_suspension(tenant, number, reason):
            self.adopted += 1
            if reason is not None:
                self.server.calls.police(time.time())  # its calls here end now
            log.warning(
                "extension suspension adopted" if reason else "extension suspension lift adopted",
                tenant=tenant,
                extension=number,
                reason=record["reason"],
                node=record["node"],
            )
        try:  # stored here too: the CLI, the API, metrics and restarts see it
            if reason is not None:
                await asyncio.to_thread(
                    store.suspend_extension, tenant, number, reason, record["at"], record["by"]
                )
            else:
                await asyncio.to_thread(self._lift_stored, tenant, number, record["at"])
        except StoreError:
            pass  # not an extension of this node's database
        return True

    def _lift_stored(self, tenant: str, number: str, at: float) -> None:
        """The stored suspension goes, unless it was made after the lift (an
        administrator here, not yet seen by the guard)."""
        store = self.server.store
        for row in store.suspended_extensions():
            if (row["tenant"], row["extension"]) == (tenant, number):
                if float(row["at"] or 0.0) <= at:
                    store.resume_extension(tenant, number, force=True)
                return

    # -- catching up -------------------------------------------------------------------

    async def reconcile(self) -> bool:
        now = time.time()
        forget = now - LIFT_MEMORY
        flat = await self.link.run(
            "suspensions", lambda c: self._all(keys=[self.key], args=[forget], client=c)
        )
        if flat is None:
            return False
        items = [str(x) for x in flat or ()]
        shared: dict[Key, dict[str, Any]] = {}
        for name, text in zip(items[::2], items[1::2], strict=True):
            tenant, _, number = name.rpartition("/")
            with contextlib.suppress(ValueError, TypeError):
                record = json.loads(text)
                shared[(tenant, number)] = record
                await self.adopt((tenant, number), record)
        for key, record in list(self.known.items()):
            if not record["suspended"] and float(record["at"]) < forget:
                del self.known[key]  # an old lift: forgotten here as in Redis
            elif newer(record, shared.get(key)) and not await self.share(key, record):
                return False
        return True
