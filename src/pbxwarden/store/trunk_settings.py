"""Per-trunk switches a provider sets on a carrier: whether its REFERs are performed
(:mod:`pbxwarden.pbx.transfer`). Running servers pick changes up with the routing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from pbxwarden.store.basics import StoreError
from pbxwarden.store.models import TrunkRow

if TYPE_CHECKING:
    from pbxwarden.store.db import Store


class TrunkSettings:
    def __init__(self, store: Store) -> None:
        self.store = store

    def set_transfers(self, tenant: str, name: str, accept: bool) -> bool:
        """Whether the carrier of the trunk may ask for transfers; returns the previous."""
        with Session(self.store.engine) as s, s.begin():
            tenant_row = self.store._tenant_row(s, tenant)
            row = s.scalar(
                select(TrunkRow).where(TrunkRow.tenant_id == tenant_row.id, TrunkRow.name == name)
            )
            if row is None:
                raise StoreError(f"no trunk {name!r} in tenant {tenant}")
            before = bool(row.accept_transfers)
            row.accept_transfers = accept
            return before
