"""The guard's learned baselines and the database: stored every minute, and on several
nodes merged every minute.

One node (no cluster): its baselines are rows of node "", saved when they changed, as
before. Several nodes sharing one database (``cluster`` configured): each node saves
only what it learned itself, in rows of its own (``cluster.node``), and every minute
reads the rows the other nodes saved since it last looked, so that each baseline it
judges with is the merge of its own learning and theirs (``pbxwarden.guard.baseline_merge``).
Nothing is counted twice: every row is one node's share, and a newer row of a node
replaces its older one. Rows of node "" (a single node's, or from before migration 0024)
are taken over by the first node that starts.

Through the database, not Redis: baselines change over days, not seconds (a minute's
lag is nothing), they must outlive every node and a Redis restarted empty, and the
database already holds them.

A database outage loses no learning: a save that fails keeps its rows and is tried
again with the next round (newer rows of the same key replace them); a refresh that
fails keeps the baselines as they are; rows still unsaved when the node stops are
written to a spool file in the data directory and loaded at the next start.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import structlog

from pbxwarden.guard.engine import Guard
from pbxwarden.store.db import Store

log = structlog.get_logger("pbxwarden.guard")

SPOOL_FILE = "baseline-spool.json"
Key = tuple[str, str]


class BaselineSync:
    """Owned by the server; ``load`` at start, ``round`` every minute, ``stop`` at the end."""

    def __init__(
        self, guard: Guard, store: Store, node: str, merging: bool, spool: Path | None = None
    ) -> None:
        self.guard = guard
        self.store = store
        self.node = node if merging else ""
        self.merging = merging
        self.spool = spool
        self.pending: dict[Key, dict[str, Any]] = {}  # own rows not stored yet
        self.seen: dict[tuple[str, str, str], float] = {}  # other rows adopted: saved at
        self.saved = 0  # rows written
        self.adopted = 0  # other nodes' rows merged in
        self.claimed = 0  # rows of node "" taken over

    async def load(self) -> None:
        """This node's rows (after taking over those of node ""), the spool of a stop
        during an outage, and on several nodes the others' rows."""
        if self.merging:
            self.guard.merging = True
            self.claimed = await asyncio.to_thread(self.store.claim_baselines, self.node)
            if self.claimed:
                log.info("guard baselines taken over from a single node", rows=self.claimed)
        self.guard.import_baselines(await asyncio.to_thread(self.store.load_baselines, self.node))
        spooled = self._read_spool()
        if spooled:  # newer than the database's: they could not be written at the last stop
            self.guard.import_baselines(spooled)
            self.pending.update({(t, e): d for t, e, d in spooled})
            await self.save()
            log.info("guard baselines spooled at the last stop stored", rows=len(spooled))
        if self.merging:
            await self.refresh()

    async def round(self) -> None:
        """Store what changed; then, on several nodes, merge what the others stored."""
        await self.save()
        if self.merging:
            await self.refresh()

    async def save(self) -> None:
        """Store the baselines that changed (and those a failed save left): on failure
        they stay pending and the error goes to the caller."""
        for tenant, extension, data in self.guard.export_baselines():
            self.pending[(tenant, extension)] = data
        if not self.pending:
            return
        batch = dict(self.pending)
        rows = [(t, e, d) for (t, e), d in batch.items()]
        await asyncio.to_thread(self.store.save_baselines, rows, self.node)
        for key, data in batch.items():
            if self.pending.get(key) is data:  # not replaced by a newer export meanwhile
                del self.pending[key]
        self.saved += len(rows)
        if self.spool is not None and not self.pending:
            self.spool.unlink(missing_ok=True)

    async def refresh(self) -> None:
        """Merge the other nodes' rows saved since the last refresh."""
        versions = await asyncio.to_thread(self.store.baseline_versions, self.node)
        changed = {(t, e) for (t, e, n), at in versions.items() if self.seen.get((t, e, n)) != at}
        if not changed:
            return
        rows = await asyncio.to_thread(self.store.other_baselines, changed, self.node)
        grouped: dict[Key, list[tuple[str, dict[str, Any]]]] = {key: [] for key in changed}
        for tenant, extension, node, at, data in rows:
            grouped[(tenant, extension)].append((node, data))
            self.seen[(tenant, extension, node)] = at
        grouped = {k: v for k, v in grouped.items() if v}
        self.guard.adopt_baselines(grouped, self.node)
        self.adopted += sum(len(v) for v in grouped.values())

    def describe(self) -> dict[str, Any]:
        """For ``pbxwarden stats --json``."""
        return {
            "guard_baselines_node": self.node if self.merging else None,
            "guard_baselines_saved": self.saved,
            "guard_baselines_pending": len(self.pending),
            "guard_baselines_adopted": self.adopted,
            "guard_baselines_claimed": self.claimed,
        }

    async def stop(self) -> None:
        """The last save; if the database cannot take it, the rows go to the spool."""
        try:
            await self.save()
        except Exception as exc:
            if not self.pending or self.spool is None:
                raise
            self._write_spool()
            log.warning(
                "guard baselines could not be stored: spooled for the next start",
                rows=len(self.pending),
                spool=str(self.spool),
                error=(str(exc).strip().splitlines() or [""])[0][:200],
            )

    def _write_spool(self) -> None:
        assert self.spool is not None
        rows = [[t, e, d] for (t, e), d in self.pending.items()]
        tmp = self.spool.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump({"node": self.node, "rows": rows}, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.spool)

    def _read_spool(self) -> list[tuple[str, str, dict[str, Any]]]:
        if self.spool is None or not self.spool.exists():
            return []
        try:
            data = json.loads(self.spool.read_text(encoding="utf-8"))
            if data.get("node") != self.node:  # written under another name: not this node's
                log.warning(
                    "guard baseline spool of another node name ignored", spool=str(self.spool)
                )
                return []
            return [(str(t), str(e), d) for t, e, d in data["rows"] if isinstance(d, dict)]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("guard baseline spool unreadable, ignored", spool=str(self.spool))
            return []
