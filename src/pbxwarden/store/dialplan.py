"""The stored dialplan beyond extensions (:mod:`pbxwarden.pbx.dialplan`): ring groups
and time conditions. Kept apart from :mod:`pbxwarden.store.db` like the lock store;
each method is one short transaction.

Checked here, where they are written (CLI and API alike): a number is free in the
tenant's dialplan (no extension, group or time condition has it, it dials no emergency
number); a group's member is an extension of the tenant or a valid telephone number
(members' calls out are judged by the guard when they ring); a fallback or a time
condition's destination is anything of the dialplan or a valid number.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pbxwarden.pbx.dialplan import (
    DEFAULT_RING_TIME,
    OVERRIDES,
    GroupError,
    TimeConditionError,
    check,
    check_time_condition,
    format_windows,
    parse_windows,
)
from pbxwarden.pbx.forwarding import normalise_target
from pbxwarden.pbx.numbers import classify, emergency_number
from pbxwarden.store.db import Store, StoreError
from pbxwarden.store.models import DidRow, Extension, RingGroupRow, Tenant, TimeConditionRow


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


def _dialplan(
    s: Session, tenant: Tenant
) -> tuple[set[str], dict[str, RingGroupRow], dict[str, TimeConditionRow]]:
    """The tenant's dialplan numbers: its extensions, groups and time conditions."""
    extensions = set(s.scalars(select(Extension.number).where(Extension.tenant_id == tenant.id)))
    groups = {
        r.number: r
        for r in s.scalars(select(RingGroupRow).where(RingGroupRow.tenant_id == tenant.id))
    }
    conditions = {
        r.number: r
        for r in s.scalars(select(TimeConditionRow).where(TimeConditionRow.tenant_id == tenant.id))
    }
    return extensions, groups, conditions


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
            extensions, groups, conditions = _dialplan(s, tenant_row)
            if number in extensions:
                raise StoreError(f"{number} is an extension of tenant {tenant}: choose another")
            if number in conditions:
                raise StoreError(f"{number} is a time condition of tenant {tenant}")
            if emergency_number(number, tenant_row.country) is not None:
                raise StoreError(f"{number} dials an emergency number in {tenant_row.country}")
            for member in members:
                if member in groups or member in conditions:
                    raise StoreError(f"member {member} is a group: members are extensions, numbers")
                self._check_external(member, extensions, tenant_row, "member")
            if fallback is not None and fallback not in groups and fallback not in conditions:
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
            _not_a_did_target(s, tenant_row, number)
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


def _not_a_did_target(s: Session, tenant: Tenant, number: str) -> None:
    did = s.scalar(
        select(DidRow.number).where(DidRow.tenant_id == tenant.id, DidRow.extension == number)
    )
    if did is not None:
        raise StoreError(f"DID {did} rings {number}: point it elsewhere first")


def _condition(tenant: str, r: TimeConditionRow) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "number": r.number,
        "name": r.name,
        "timezone": r.timezone,
        "hours": r.windows,
        "holidays": [d for d in r.holidays.split(",") if d],
        "open_to": r.open_to,
        "closed_to": r.closed_to,
        "override": r.override,
    }


class TimeConditionStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine

    def put(
        self,
        tenant: str,
        number: str,
        hours: str,
        open_to: str,
        closed_to: str,
        timezone: str | None = None,
        holidays: list[str] | None = None,
        name: str = "",
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Create or replace the time condition (its override is kept); returns (before,
        after) for the audit. ``timezone`` defaults to the tenant's guard policy's."""
        open_to, closed_to = normalise_target(open_to), normalise_target(closed_to)
        days = sorted({d.strip() for d in holidays or [] if d.strip()})
        if timezone is None:
            timezone = str(self.store.policies().get(tenant, {}).get("timezone") or "UTC")
        try:
            windows = parse_windows(hours)
            check_time_condition(number, timezone, days, open_to, closed_to)
        except TimeConditionError as exc:
            raise StoreError(str(exc)) from None
        now = time.time()
        with Session(self.engine) as s, s.begin():
            tenant_row = self.store._tenant_row(s, tenant)
            extensions, groups, rows = _dialplan(s, tenant_row)
            if number in extensions or number in groups:
                raise StoreError(f"{number} is already an extension or a group of tenant {tenant}")
            if emergency_number(number, tenant_row.country) is not None:
                raise StoreError(f"{number} dials an emergency number in {tenant_row.country}")
            inside = extensions | set(groups) | set(rows)
            for target, what in ((open_to, "open destination"), (closed_to, "closed destination")):
                if target not in inside:
                    GroupStore._check_external(target, extensions, tenant_row, what)
            old = rows.get(number)
            before = _condition(tenant, old) if old is not None else None
            row = old or TimeConditionRow(tenant_id=tenant_row.id, number=number, created_at=now)
            row.name, row.timezone, row.windows = name[:64], timezone, format_windows(windows)
            row.holidays, row.open_to, row.closed_to = ",".join(days), open_to, closed_to
            row.updated_at = now
            if old is None:
                s.add(row)
            try:
                s.flush()
            except IntegrityError:
                raise StoreError(f"time condition {number} already exists") from None
            return before, _condition(tenant, row)

    def set_override(
        self, tenant: str, number: str, override: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Force it open or closed (None: follow the hours again)."""
        if override is not None and override not in OVERRIDES:
            raise StoreError(f"override {override!r}: open, closed, or none to follow the hours")
        with Session(self.engine) as s, s.begin():
            row = self._row(s, tenant, number)
            before = _condition(tenant, row)
            row.override, row.updated_at = override, time.time()
            return before, _condition(tenant, row)

    def remove(self, tenant: str, number: str) -> dict[str, Any]:
        with Session(self.engine) as s, s.begin():
            row = self._row(s, tenant, number)
            _not_a_did_target(s, self.store._tenant_row(s, tenant), number)
            before = _condition(tenant, row)
            s.execute(delete(TimeConditionRow).where(TimeConditionRow.id == row.id))
            return before

    def _row(self, s: Session, tenant: str, number: str) -> TimeConditionRow:
        tenant_row = self.store._tenant_row(s, tenant)
        row = s.scalar(
            select(TimeConditionRow).where(
                TimeConditionRow.tenant_id == tenant_row.id, TimeConditionRow.number == number
            )
        )
        if row is None:
            raise StoreError(f"no time condition {number} in tenant {tenant}")
        return row

    def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        stmt = select(Tenant.name, TimeConditionRow).join(
            Tenant, Tenant.id == TimeConditionRow.tenant_id
        )
        if tenant is not None:
            stmt = stmt.where(Tenant.name == tenant)
        with Session(self.engine) as s:
            rows = s.execute(stmt.order_by(Tenant.name, TimeConditionRow.number))
            return [_condition(t, r) for t, r in rows]

    def get(self, tenant: str, number: str) -> dict[str, Any] | None:
        return next((c for c in self.list(tenant) if c["number"] == number), None)
