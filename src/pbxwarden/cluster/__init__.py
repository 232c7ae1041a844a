"""Several pbxwarden nodes as one PBX: the state every node must share, in Redis.

Why Redis, and why only some state: durable records (extensions, CDRs, alerts, the
audit log, bans and locks too) belong in the database, PostgreSQL when nodes share it;
but a scanner banned on one node must be dropped by every node within a second, and a
password guessed from twenty addresses spread over three nodes must count as twenty
guesses, not seven here and six there. Polling a database for that every packet is too
slow and too heavy; Redis gives atomic scripts (no read-modify-write race between nodes)
and pub/sub (changes announced as they happen).

The SIP core stays sans-I/O and synchronous: nothing here is awaited per datagram.
Changes made locally are queued and pushed by a task; changes announced by other nodes
are applied to the local structures (the firewall's ban table, the lock tracker) by a
task; a reconcile round compares the whole shared state with the local one now and
then (messages missed while a connection was down, a node started later). Redis down
never stalls or crashes a node: it keeps serving on its own state and catches up when
Redis answers again. See docs/cluster.md.

Public surface: :class:`ClusterNode` (what the server starts) and :data:`AVAILABLE`.
"""

from __future__ import annotations

from pbxwarden.cluster.connection import AVAILABLE
from pbxwarden.cluster.node import ClusterNode

__all__ = ["AVAILABLE", "ClusterNode"]
