"""The guard's learned baselines in the database: one row per tenant, extension and node.

Each node writes only its own rows (what it learned itself); a node of a cluster reads
the other nodes' rows to merge them into what it judges with (``pbxwarden.baseline_sync``).
Rows of node "" are a single node's, or from before nodes had rows of their own: the
first node of a cluster that loads them takes them over (:func:`claim`), so that their
learning is neither lost nor counted twice. The :class:`pbxwarden.store.db.Store`
methods of the same names call these.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, and_, exists, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from pbxwarden.store.models import GuardBaselineRow

Key = tuple[str, str]  # tenant, extension ("" for the tenant's own)
CHUNK = 200  # keys per query when reading rows by key


def _data(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None  # a damaged row is relearned, not fatal
    return data if isinstance(data, dict) else None


def save(engine: Engine, rows: Sequence[tuple[str, str, dict[str, Any]]], node: str) -> None:
    """Upsert this node's rows: (tenant, extension or "", data)."""
    if not rows:
        return
    now = time.time()
    with Session(engine) as s, s.begin():
        for tenant, extension, data in rows:
            row = s.get(GuardBaselineRow, (tenant, extension, node))
            text = json.dumps(data, separators=(",", ":"))
            if row is None:
                s.add(
                    GuardBaselineRow(
                        tenant=tenant, extension=extension, node=node, data=text, updated_at=now
                    )
                )
            else:
                row.data, row.updated_at = text, now


def load(engine: Engine, node: str) -> list[tuple[str, str, dict[str, Any]]]:
    """This node's rows."""
    with Session(engine) as s:
        out = []
        for row in s.scalars(select(GuardBaselineRow).where(GuardBaselineRow.node == node)):
            data = _data(row.data)
            if data is not None:
                out.append((row.tenant, row.extension, data))
        return out


def claim(engine: Engine, node: str) -> int:
    """Node "" rows become ``node``'s, where it has none of that key yet; how many.

    One statement: of two nodes starting at once, each row goes to exactly one."""
    if not node:
        return 0
    mine = aliased(GuardBaselineRow)
    taken = exists().where(
        and_(
            mine.tenant == GuardBaselineRow.tenant,
            mine.extension == GuardBaselineRow.extension,
            mine.node == node,
        )
    )
    with Session(engine) as s, s.begin():
        result = s.execute(
            update(GuardBaselineRow)
            .where(GuardBaselineRow.node == "", ~taken)
            .values(node=node)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)


def versions(engine: Engine, node: str) -> dict[tuple[str, str, str], float]:
    """When each other node's row was saved: (tenant, extension, node) -> time. No data:
    a node reads this every minute and then only the rows that changed."""
    columns = (
        GuardBaselineRow.tenant,
        GuardBaselineRow.extension,
        GuardBaselineRow.node,
        GuardBaselineRow.updated_at,
    )
    with Session(engine) as s:
        rows = s.execute(select(*columns).where(GuardBaselineRow.node != node))
        return {(t, e, n): float(at) for t, e, n, at in rows}


def others(
    engine: Engine, keys: Iterable[Key], node: str
) -> list[tuple[str, str, str, float, dict[str, Any]]]:
    """Every other node's rows of these keys: (tenant, extension, node, saved, data)."""
    wanted = sorted(set(keys))
    out = []
    with Session(engine) as s:
        for i in range(0, len(wanted), CHUNK):
            chunk = wanted[i : i + CHUNK]
            query = select(GuardBaselineRow).where(
                tuple_(GuardBaselineRow.tenant, GuardBaselineRow.extension).in_(chunk),
                GuardBaselineRow.node != node,
            )
            for row in s.scalars(query):
                data = _data(row.data)
                if data is not None:
                    out.append((row.tenant, row.extension, row.node, row.updated_at, data))
    return out


def load_merged(engine: Engine, tenant: str, extension: str) -> dict[str, Any] | None:
    """One key's baseline as the nodes together learned it (the API's view), or None."""
    from pbxwarden.guard.baseline import Baseline  # the store's one use of the guard
    from pbxwarden.guard.baseline_merge import merge

    with Session(engine) as s:
        query = select(GuardBaselineRow.data).where(
            GuardBaselineRow.tenant == tenant, GuardBaselineRow.extension == extension
        )
        parts = [d for d in (_data(text) for text in s.scalars(query)) if d is not None]
    if len(parts) <= 1:
        return parts[0] if parts else None
    return merge(*(Baseline.from_json(p) for p in parts)).to_json()
