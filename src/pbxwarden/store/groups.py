"""Stored ring and hunt groups (:mod:`pbxwarden.pbx.dialplan`). Kept apart from
:mod:`pbxwarden.store.db` like the lock store; each method is one short transaction.

Checked here, where a group is written (CLI and API alike): its number is free in the
tenant's dialplan (no extension has it, it dials no emergency number); each member is an
extension of the tenant or a valid telephone number (members' calls out are judged by
the guard when they ring); the fallback is an extension, a group or a number.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pbxwarden.pbx.dialplan import DEFAULT_RING_TIME, GroupError, check
from pbxwarden.pbx.forwarding import normalise_target
from pbxwarden.pbx.numbers import classify, emergency_number
from pbxwarden.store.db import Store, StoreError
from pbxwarden.store.models import DidRow, Extension, RingGroupRow, Tenant


def _row(tenant: str, r: RingGroupRow) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "number": r.number,
        "name": r.name,
        "strategy": r.strategy,
        "members": r.members.split(","),
        "ring_time": r.ring_time,
        "fallback": r.fallback,
        "cid_prefix": r.cid_prefix,
    }


class GroupStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine

    def put(
        self,
        tenant: str,
        number: str,
        members: list[str],
        strategy: str = "ringall",
        ring_time: float = DEFAULT_RING_TIME,
        fallback: str | None = None,
        cid_prefix: str = "",
        name: str = "",
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Create or replace the group; returns (before, after) for the audit."""
        members = [normalise_target(m) for m in members if m.strip()]
        fallback = normalise_target(fallback) if fallback and fallback.strip() else None
        try:
            check(number, strategy, members, ring_time, cid_prefix, fallback)
        except GroupError as exc:
            raise StoreError(str(exc)) from None
        now = time.time()
        with Session(self.engine) as s, s.begin():
            tenant_row = self.store._tenant_row(s, tenant)
            extensions = set(
                s.scalars(select(Extension.number).where(Extension.tenant_id == tenant_row.id))
            )
            groups = {
                r.number: r
                for r in s.scalars(
                    select(RingGroupRow).where(RingGroupRow.tenant_id == tenant_row.id)
                )
            }
            if number in extensions:
                raise StoreError(f"{number} is an extension of tenant {tenant}: choose another")
            if emergency_number(number, tenant_row.country) is not None:
                raise StoreError(f"{number} dials an emergency number in {tenant_row.country}")
            for member in members:
                if member in groups:
                    raise StoreError(f"member {member} is a group: members are extensions, numbers")
                self._check_external(member, extensions, tenant_row, "member")
            if fallback is not None and fallback not in groups:
                self._check_external(fallback, extensions, tenant_row, "fallback")
            old = groups.get(number)
            before = _row(tenant, old) if old is not None else None
            row = old or RingGroupRow(tenant_id=tenant_row.id, number=number, created_at=now)
            row.name, row.strategy, row.members = name[:64], strategy, ",".join(members)
            row.ring_time, row.fallback, row.cid_prefix = float(ring_time), fallback, cid_prefix
            row.updated_at = now
            if old is None:
                s.add(row)
            try:
                s.flush()
            except IntegrityError:
                raise StoreError(f"group {number} already exists") from None
            return before, _row(tenant, row)

    @staticmethod
    def _check_external(target: str, extensions: set[str], tenant: Tenant, what: str) -> None:
        if target in extensions:
            return
        if emergency_number(target, tenant.country) is not None:
            raise StoreError(f"{what} {target} is an emergency number")
        dest = classify(target, tenant.country)
        if dest is None or not dest.valid:
            raise StoreError(
                f"{what} {target} is neither an extension of tenant {tenant.name} nor a valid "
                "telephone number"
            )

    def remove(self, tenant: str, number: str) -> dict[str, Any]:
        """Delete the group; refused while a DID still rings it."""
        with Session(self.engine) as s, s.begin():
            tenant_row = self.store._tenant_row(s, tenant)
            row = s.scalar(
                select(RingGroupRow).where(
                    RingGroupRow.tenant_id == tenant_row.id, RingGroupRow.number == number
                )
            )
            if row is None:
                raise StoreError(f"no group {number} in tenant {tenant}")
            did = s.scalar(
                select(DidRow.number).where(
                    DidRow.tenant_id == tenant_row.id, DidRow.extension == number
                )
            )
            if did is not None:
                raise StoreError(f"DID {did} rings group {number}: point it elsewhere first")
            before = _row(tenant, row)
            s.execute(delete(RingGroupRow).where(RingGroupRow.id == row.id))
            return before

    def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        stmt = select(Tenant.name, RingGroupRow).join(Tenant, Tenant.id == RingGroupRow.tenant_id)
        if tenant is not None:
            stmt = stmt.where(Tenant.name == tenant)
        with Session(self.engine) as s:
            rows = s.execute(stmt.order_by(Tenant.name, RingGroupRow.number))
            return [_row(t, r) for t, r in rows]

    def get(self, tenant: str, number: str) -> dict[str, Any] | None:
        return next((g for g in self.list(tenant) if g["number"] == number), None)
