"""Location service: the contact bindings of every extension (RFC 3261 10.3).

Kept in memory for the per-request path and written back to the database in batches
(like Kamailio's usrloc write-back mode), so REGISTER storms do not become
per-request disk syncs while a restart still finds every binding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pbxwarden.store.db import BindingRow

# One binding, as kept here and as written: immutable, so the write-back can take the
# very objects the registrar made (a refresh replaces its binding, never edits it).
Binding = BindingRow


ChangeListener = Callable[[str, str, "Binding | None"], None]
"""(AOR, contact, the new binding or None when removed)."""


class LocationService:
    """AOR key (``realm/number``) -> contact URI -> :class:`Binding`; tracks unsaved changes."""

    def __init__(self, listener: ChangeListener | None = None) -> None:
        """With a ``listener``, changes go to it instead of the write-back queue (a
        registrar worker: the main process keeps the routing copy and writes)."""
        self._bindings: dict[str, dict[str, Binding]] = {}
        self._dirty: dict[tuple[int, str], Binding | None] = {}
        self._listener = listener

    def __len__(self) -> int:
        return sum(len(b) for b in self._bindings.values())

    def load(self, rows: list[tuple[str, BindingRow]]) -> None:
        for aor, r in rows:
            self._bindings.setdefault(aor, {})[r.contact] = r

    def items(self) -> Iterator[tuple[str, Binding]]:
        """Every binding with its AOR (expired ones included until purged)."""
        for aor, bindings in self._bindings.items():
            for binding in bindings.values():
                yield aor, binding

    def clear(self) -> None:
        """Forget every binding, without reporting or queueing anything."""
        self._bindings = {}

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings, highest q first (RFC 3261 16.6 target ordering)."""
        bindings = self._bindings.get(aor)
        if not bindings:
            return []
        live = [b for b in bindings.values() if b.expires_at > now]
        live.sort(key=lambda b: -(b.q if b.q is not None else 1.0))
        return live

    def get(self, aor: str, contact: str) -> Binding | None:
        return self._bindings.get(aor, {}).get(contact)

    def put(self, aor: str, binding: Binding) -> None:
        self._bindings.setdefault(aor, {})[binding.contact] = binding
        if self._listener is not None:
            self._listener(aor, binding.contact, binding)
        else:
            self._dirty[(binding.extension_id, binding.contact)] = binding

    def remove(self, aor: str, contact: str) -> None:
        bindings = self._bindings.get(aor)
        if bindings is None:
            return
        binding = bindings.pop(contact, None)
        if binding is not None:
            if self._listener is not None:
                self._listener(aor, contact, None)
            else:
                self._dirty[(binding.extension_id, contact)] = None
        if not bindings:
            del self._bindings[aor]

    def purge(self, now: float) -> int:
        """Drop expired bindings from memory (the database purges its own on write-back)."""
        removed = 0
        for aor in list(self._bindings):
            bindings = self._bindings[aor]
            for contact in [c for c, b in bindings.items() if b.expires_at <= now]:
                del bindings[contact]
                removed += 1
            if not bindings:
                del self._bindings[aor]
        return removed

    def drain_changes(self) -> tuple[list[BindingRow], list[tuple[int, str]]]:
        """Unsaved upserts and deletions since the last call, for the write-back task."""
        upserts = [b for b in self._dirty.values() if b is not None]
        deletes = [key for key, b in self._dirty.items() if b is None]
        self._dirty = {}
        return upserts, deletes

    def requeue(self, upserts: list[BindingRow], deletes: list[tuple[int, str]]) -> None:
        """Give back changes whose write failed, unless newer ones replaced them meanwhile."""
        for row in upserts:
            self._dirty.setdefault((row.extension_id, row.contact), row)
        for key in deletes:
            self._dirty.setdefault(key, None)

    @property
    def has_changes(self) -> bool:
        return bool(self._dirty)
