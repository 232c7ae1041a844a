"""Stored caller-ID settings (:mod:`pbxwarden.pbx.caller_id`): an extension's outbound
number and withholding, a trunk's P-Asserted-Identity. Kept apart from
:mod:`pbxwarden.store.db` like the lock store; each method is one short transaction.

The chosen number must be one of the tenant's DIDs, checked here where it is written:
a tenant may present only what it owns (no spoofing), whatever an admin types.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pbxwarden.pbx.numbers import classify
from pbxwarden.store.db import Store, StoreError
from pbxwarden.store.models import DidRow, Extension, TrunkRow

_UNSET: Any = object()


def _settings(ext: Extension) -> dict[str, Any]:
    return {"caller_id": ext.caller_id, "withhold_caller_id": bool(ext.withhold_caller_id)}


class CallerIdStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine

    def set_extension(
        self,
        tenant: str,
        number: str,
        caller_id: str | None = _UNSET,
        withhold: bool | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Change what the extension presents; returns (before, after). ``caller_id``
        None goes back to the default (its own DID, else the tenant's lowest)."""
        with Session(self.engine) as s, s.begin():
            ext = Store._extension_row(s, tenant, number)
            tenant_row = self.store._tenant_row(s, tenant)
            before = _settings(ext)
            if caller_id is not _UNSET:
                if caller_id is None:
                    ext.caller_id = None
                else:
                    dest = classify(caller_id, tenant_row.country)
                    e164 = dest.e164 if dest is not None and dest.valid else None
                    owned = e164 is not None and s.scalar(
                        select(DidRow.number).where(
                            DidRow.number == e164, DidRow.tenant_id == tenant_row.id
                        )
                    )
                    if not owned:
                        raise StoreError(
                            f"{caller_id} is not a DID of tenant {tenant}: an extension may "
                            "present only a number its tenant owns (see 'did list')"
                        )
                    ext.caller_id = e164
            if withhold is not None:
                ext.withhold_caller_id = withhold
            ext.updated_at = time.time()  # running servers reload the extension
            return before, _settings(ext)

    def set_trunk_identity(self, tenant: str, name: str, assert_identity: bool) -> bool:
        """Whether the trunk's carrier gets P-Asserted-Identity; returns the previous."""
        with Session(self.engine) as s, s.begin():
            tenant_row = self.store._tenant_row(s, tenant)
            row = s.scalar(
                select(TrunkRow).where(TrunkRow.tenant_id == tenant_row.id, TrunkRow.name == name)
            )
            if row is None:
                raise StoreError(f"no trunk {name!r} in tenant {tenant}")
            before = row.assert_identity is not False
            row.assert_identity = assert_identity
            return before
