"""A lost node's calls are closed by a survivor.

A node killed (SIGKILL, power, kernel panic) leaves its calls' CDRs open in the shared
database: nobody will send their BYE, and a bill or a report would show them "in
progress" forever. Every node watches the node registry (``registry.py``); when one
shows a node ``lost`` (no heartbeat for its ``lost_after``), exactly one survivor, the
first to claim it with ``SET NX`` on ``<prefix>takeover:<node>:<last heartbeat>``, closes
that node's CDRs still open and started before its last heartbeat as ``interrupted``,
ending them at that last heartbeat; an answered one (its answer time is written when it
is answered, ``pbx/cdr.py``) gets its duration up to it. The last heartbeat, not the
takeover: it is the last time the node is known to have carried the call (off by at
most one heartbeat interval), while the takeover comes ``lost_after`` later at best,
and much later if no survivor could reach Redis meanwhile. The claim names the
heartbeat, so a node that comes back and is lost again is taken over again; it lasts a
day.

If the node was only cut off from Redis and its calls go on, its own close of each call
writes the real end over the survivor's: the CDR is right in the end either way. The
node's shared call reservations need no takeover: they lapse by themselves
(``calls.py``). Its phones re-register through the front to another node (docs/cluster.md,
"Failover, measured").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from pbxwarden.cluster.connection import RedisLink

log = structlog.get_logger("pbxwarden.cluster")

CLAIM_TTL = 86400  # seconds a takeover claim is kept


class Takeover:
    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        node: str,
        view: Callable[[], list[dict[str, Any]]],
        close: Callable[[str, float, float], int],
        publish: Callable[[str, dict[str, Any], float], None] | None = None,
    ) -> None:
        self.link, self.prefix, self.node = link, prefix, node
        self.view, self.close, self.publish = view, close, publish
        self.done: set[tuple[str, float]] = set()  # (node, last heartbeat) handled here
        self.closed = 0  # CDRs this node closed for lost nodes

    async def round(self) -> list[tuple[str, int]]:
        """Take over every lost node not yet taken over: [(node, CDRs closed)]."""
        taken: list[tuple[str, int]] = []
        for other in self.view():
            name, last_seen = str(other.get("node")), other.get("last_seen")
            if other.get("state") != "lost" or name == self.node:
                continue
            if not isinstance(last_seen, int | float) or (name, last_seen) in self.done:
                continue
            key = f"{self.prefix}takeover:{name}:{last_seen}"
            claimed = await self.link.run("takeover claim", self._claim(key))
            if claimed is None and not self.link.healthy:
                return taken  # Redis down: try again next round
            self.done.add((name, last_seen))
            if not claimed:
                continue  # another survivor has it
            now = time.time()
            count = await asyncio.to_thread(self.close, name, float(last_seen), now)
            self.closed += count
            taken.append((name, count))
            log.warning(
                "cluster node lost: its calls in progress closed as interrupted",
                node=name,
                calls=count,
                last_seen=last_seen,
            )
            if self.publish is not None:
                self.publish("cluster.takeover", {"node": name, "calls": count}, now)
        return taken

    def _claim(self, key: str) -> Callable[[Any], Awaitable[Any]]:
        def claim(client: Any) -> Awaitable[Any]:
            return client.set(key, self.node, nx=True, ex=CLAIM_TTL)  # type: ignore[no-any-return]

        return claim
