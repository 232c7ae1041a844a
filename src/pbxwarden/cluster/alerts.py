"""Alerts sent once for the whole PBX: the same problem seen by two nodes (an attack
spread over them raises the same alert on each) notifies people once.

Each node keeps storing its guard's alerts in its database and counting repeats there,
as on one node (``pbxwarden alerts`` on any node shows what it saw; with a shared
PostgreSQL the repeat is counted into the same open alert); only the notification is
shared. Before its channels send, a node claims the alert's dedupe key (the guard's
``GuardAlert.key``: tenant, extension, rule, kind) in Redis for the dispatcher's
``repeat_after`` window (``CLAIM_ALERT``: SET with expiry, keeping the severity, so a
warning sent by one node does not hold back a later critical one; the first claim
wins). A node that loses the claim does not send; a node whose channels all failed
gives its claim back (``UNCLAIM_ALERT``), so another node's next occurrence tries.

Redis down (or slow past ``cluster.timeout``): the node sends. An extra alert beats a
lost one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pbxwarden.cluster import scripts

if TYPE_CHECKING:
    from pbxwarden.cluster.connection import RedisLink

RANK = {"warning": 0, "critical": 1}


class SharedAlerts:
    """The dispatcher's :class:`~pbxwarden.guard.alerts.SharedDedupe` for a cluster node."""

    def __init__(self, link: RedisLink, prefix: str) -> None:
        self.link, self.prefix = link, prefix
        self._claim = link.client.register_script(scripts.CLAIM_ALERT)
        self._unclaim = link.client.register_script(scripts.UNCLAIM_ALERT)
        self.claimed = 0
        self.lost = 0  # claims another node had made first

    def _key(self, key: str) -> str:
        return f"{self.prefix}alert:{key}"

    async def claim(self, key: str, severity: str, window: float) -> bool:
        if self.link.known and not self.link.healthy:
            self.claimed += 1
            return True  # known down: no timeout's wait before sending
        keys, args = [self._key(key)], [RANK.get(severity, 1), max(1, round(window * 1000))]
        answer = await self.link.run(
            "CLAIM_ALERT", lambda client: self._claim(keys=keys, args=args, client=client)
        )
        if answer is not None and int(answer) == 0:
            self.lost += 1
            return False
        self.claimed += 1
        return True  # claimed, or Redis did not answer: sent all the same

    async def unclaim(self, key: str, severity: str) -> None:
        keys, args = [self._key(key)], [RANK.get(severity, 1)]
        await self.link.run(
            "UNCLAIM_ALERT", lambda client: self._unclaim(keys=keys, args=args, client=client)
        )
