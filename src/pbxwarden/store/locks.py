"""Stored extension locks and the trunk-address permission (:mod:`pbxwarden.firewall.locks`).

Kept apart from :mod:`pbxwarden.store.db` like the admin store: it shares the engine and
the schema. Every public method is one short synchronous transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from pbxwarden.firewall.locks import ExtensionLock
from pbxwarden.store.db import Store, StoreError
from pbxwarden.store.models import (
    Extension,
    ExtensionLockRow,
    ExtensionNetwork,
    Tenant,
    TrunkRow,
)


def _lock(row: ExtensionLockRow) -> ExtensionLock:
    try:
        sources = tuple(str(a) for a in json.loads(row.sources))
    except (ValueError, TypeError):
        sources = ()
    return ExtensionLock(
        row.extension_id, row.until, row.level, row.created_at, row.reason, sources
    )


class LockStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine

    def save_locks(self, locks: Sequence[ExtensionLock]) -> None:
        """Store new locks (one row per extension: the newest replaces the last)."""
        with Session(self.engine) as s, s.begin():
            for lock in locks:
                if s.get(Extension, lock.extension_id) is None:
                    continue  # deleted meanwhile
                row = s.get(ExtensionLockRow, lock.extension_id)
                if row is None:
                    row = ExtensionLockRow(extension_id=lock.extension_id)
                    s.add(row)
                elif row.created_at > lock.created_at:
                    continue  # a newer one is stored (another process)
                row.until = lock.until
                row.level = lock.level
                row.created_at = lock.created_at
                row.reason = lock.reason[:2000]
                row.sources = json.dumps(list(lock.sources))
                row.lifted_by = None

    def load_locks(self, since: float) -> list[ExtensionLock]:
        """Locks made since ``since`` (in force, ended or lifted: escalation needs them)."""
        stmt = select(ExtensionLockRow).where(ExtensionLockRow.created_at >= since)
        with Session(self.engine) as s:
            return [_lock(row) for row in s.scalars(stmt)]

    def lift(self, tenant: str, number: str, by: str, now: float | None = None) -> bool:
        """End an extension's lock now; False when none is in force."""
        now = time.time() if now is None else now
        with Session(self.engine) as s, s.begin():
            ext = Store._extension_row(s, tenant, number)
            row = s.get(ExtensionLockRow, ext.id)
            if (
                row is None
                or row.until <= now
                or (ext.password_changed_at or 0.0) >= row.created_at
            ):
                return False
            row.until = now
            row.lifted_by = by[:128]
            return True

    def set_trunk_access(self, tenant: str, number: str, allow: bool) -> bool:
        """Whether the extension's credentials may be used from a trunk's address; returns
        the previous setting."""
        with Session(self.engine) as s, s.begin():
            ext = Store._extension_row(s, tenant, number)
            before = bool(ext.trunk_access)
            ext.trunk_access = allow
            ext.updated_at = time.time()  # running servers reload the extension
            return before

    def trunk_hosts(self) -> frozenset[str]:
        """Addresses of every trunk: never banned, never a place to log in from."""
        with self.engine.connect() as conn:
            return frozenset(str(h) for h in conn.scalars(select(TrunkRow.host)))

    def networks_of(self, extension_id: int) -> set[str]:
        """The networks the extension registered from (approved): those a lock spares."""
        stmt = select(ExtensionNetwork.network).where(
            ExtensionNetwork.extension_id == extension_id, ExtensionNetwork.approved.is_(True)
        )
        with self.engine.connect() as conn:
            return {str(n) for n in conn.scalars(stmt)}

    def lock_of(self, tenant: str, number: str) -> ExtensionLock | None:
        with Session(self.engine) as s:
            ext = s.scalar(
                select(Extension)
                .join(Tenant, Tenant.id == Extension.tenant_id)
                .where(Tenant.name == tenant, Extension.number == number)
            )
            if ext is None:
                raise StoreError(f"no extension {number} in tenant {tenant}")
            row = s.get(ExtensionLockRow, ext.id)
            return None if row is None else _lock(row)
