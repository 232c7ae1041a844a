"""Location service: the contact bindings of every extension (RFC 3261 10.3).

Kept in memory for the per-request path and written back to the database in batches
(like Kamailio's usrloc write-back mode), so REGISTER storms do not become
per-request disk syncs while a restart still finds every binding.

Nothing here is paid per binding while nothing happens: expiry goes by deadline (a
heap of expiry times, looked at only when its earliest one is due), and the write-back
takes only what changed. Memory is per binding too, tens of thousands of them: an AOR
holds its one binding as is (most have one: a tuple of one is 48 bytes more, in the
main process and a worker), a tuple of them for more, never a dictionary.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Iterator

from pbxwarden.store.db import BindingRow

# One binding, as kept here and as written: immutable, so the write-back can take the
# very objects the registrar made (a refresh replaces its binding, never edits it).
Binding = BindingRow


ChangeListener = Callable[[str, str, "Binding | None"], None]
"""(AOR, contact, the new binding or None when removed)."""

Elsewhere = Callable[[str, float], "list[Binding]"]
"""(AOR, now) -> the live bindings other nodes hold (a cluster's replica)."""

# (expires_at, AOR, contact) of every binding put, in expiry order. An entry whose
# binding was refreshed or removed since is stale and dropped when it comes due.
_Expiry = tuple[float, str, str]


def _all(held: Binding | tuple[Binding, ...]) -> tuple[Binding, ...]:
    return (held,) if isinstance(held, Binding) else held


def _held(bindings: tuple[Binding, ...]) -> Binding | tuple[Binding, ...]:
    return bindings[0] if len(bindings) == 1 else bindings


def _find(bindings: tuple[Binding, ...], contact: str) -> int:
    for i, b in enumerate(bindings):
        if b.contact == contact:
            return i
    return -1


def compact(binding: Binding) -> Binding:
    """The same binding with its User-Agent shared with every other binding that has
    the same one (a site's phones are a few models; each REGISTER parses its own copy)."""
    agent = binding.user_agent
    if agent is None:
        return binding
    shared = sys.intern(agent)
    if shared is agent:
        return binding
    return Binding(
        binding.extension_id,
        binding.contact,
        binding.expires_at,
        binding.q,
        binding.call_id,
        binding.cseq,
        binding.source,
        shared,
        binding.registered_at,
    )


class LocationService:
    """AOR key (``realm/number``) -> its bindings; tracks unsaved changes."""

    def __init__(self, listener: ChangeListener | None = None) -> None:
        """With a ``listener``, changes go to it instead of the write-back queue (a
        registrar worker: the main process keeps the routing copy and writes)."""
        self._bindings: dict[str, Binding | tuple[Binding, ...]] = {}
        self._count = 0
        self._expiries: list[_Expiry] = []
        self._dirty: dict[tuple[int, str], Binding | None] = {}
        self._listener = listener
        # a cluster node's replica of the other nodes' bindings (cluster/location.py)
        self.elsewhere: Elsewhere | None = None
        # every change made here, also with a write-back listener (the cluster shares it)
        self.observer: ChangeListener | None = None

    def __len__(self) -> int:
        return self._count

    def load(self, rows: list[tuple[str, BindingRow]]) -> None:
        """Add bindings (from the database, or the main process's copy), reporting and
        queueing nothing."""
        bindings = self._bindings
        expiries = self._expiries
        for aor, r in rows:
            r = compact(r)
            held = bindings.get(aor)
            if held is None:
                bindings[aor] = r
                self._count += 1
            else:
                known = _all(held)
                i = _find(known, r.contact)
                if i < 0:
                    bindings[aor] = (*known, r)
                    self._count += 1
                else:
                    bindings[aor] = _held((*known[:i], r, *known[i + 1 :]))
            expiries.append((r.expires_at, aor, r.contact))
        heapq.heapify(expiries)
        self._maybe_compact()

    def items(self) -> Iterator[tuple[str, Binding]]:
        """Every binding with its AOR (expired ones included until purged)."""
        for aor, held in self._bindings.items():
            for binding in _all(held):
                yield aor, binding

    def clear(self) -> None:
        """Forget every binding, without reporting or queueing anything."""
        self._bindings = {}
        self._count = 0
        self._expiries = []

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings, highest q first (RFC 3261 16.6 target ordering)."""
        held = self._bindings.get(aor)
        if held is None:
            return []
        if isinstance(held, Binding):
            return [held] if held.expires_at > now else []
        live = [b for b in held if b.expires_at > now]
        live.sort(key=lambda b: -(b.q if b.q is not None else 1.0))
        return live

    def reach(self, aor: str, now: float) -> list[Binding]:
        """Where to call the AOR: this node's live bindings and, in a cluster, those
        other nodes hold (a contact registered here wins), highest q first. The
        registrar keeps using :meth:`lookup`: it answers for this node's bindings only."""
        own = self.lookup(aor, now)
        elsewhere = self.elsewhere
        if elsewhere is None:
            return own
        theirs = elsewhere(aor, now)
        if not theirs:
            return own
        seen = {b.contact for b in own}
        merged = own + [b for b in theirs if b.contact not in seen]
        merged.sort(key=lambda b: -(b.q if b.q is not None else 1.0))
        return merged

    def get(self, aor: str, contact: str) -> Binding | None:
        held = self._bindings.get(aor)
        if held is None:
            return None
        if isinstance(held, Binding):
            return held if held.contact == contact else None
        bindings = held
        i = _find(bindings, contact)
        return None if i < 0 else bindings[i]

    def put(self, aor: str, binding: Binding) -> None:
        binding = compact(binding)
        contact = binding.contact
        held = self._bindings.get(aor)
        if held is None:
            self._bindings[aor] = binding
            self._count += 1
        else:
            known = _all(held)
            i = _find(known, contact)
            if i < 0:
                self._bindings[aor] = (*known, binding)
                self._count += 1
            else:  # a refresh keeps its place (the order of equal-q targets)
                self._bindings[aor] = _held((*known[:i], binding, *known[i + 1 :]))
        heapq.heappush(self._expiries, (binding.expires_at, aor, contact))
        self._maybe_compact()
        if self._listener is not None:
            self._listener(aor, contact, binding)
        else:
            self._dirty[(binding.extension_id, contact)] = binding
        if self.observer is not None:
            self.observer(aor, contact, binding)

    def remove(self, aor: str, contact: str) -> None:
        binding = self._drop(aor, contact)
        if binding is not None:
            if self._listener is not None:
                self._listener(aor, contact, None)
            else:
                self._dirty[(binding.extension_id, contact)] = None
            if self.observer is not None:
                self.observer(aor, contact, None)

    def _drop(self, aor: str, contact: str) -> Binding | None:
        held = self._bindings.get(aor)
        if held is None:
            return None
        known = _all(held)
        i = _find(known, contact)
        if i < 0:
            return None
        binding = known[i]
        if len(known) == 1:
            del self._bindings[aor]
        else:
            self._bindings[aor] = _held((*known[:i], *known[i + 1 :]))
        self._count -= 1
        return binding  # its expiry entry goes stale: dropped when it comes due

    def next_expiry(self) -> float | None:
        """When the earliest binding expires (or a stale entry comes due): nothing to
        purge before then."""
        return self._expiries[0][0] if self._expiries else None

    def purge(self, now: float) -> int:
        """Drop bindings expired by ``now`` from memory (the database purges its own on
        write-back). Only the bindings due are looked at, not every one."""
        expiries = self._expiries
        removed = 0
        while expiries and expiries[0][0] <= now:
            _, aor, contact = heapq.heappop(expiries)
            binding = self.get(aor, contact)
            if binding is not None and binding.expires_at <= now:
                self._drop(aor, contact)
                removed += 1
        return removed

    def _maybe_compact(self) -> None:
        # Refreshes leave stale entries behind until their old expiry; rebuild when they
        # dominate, so that phones refreshing every minute cannot bloat the heap.
        expiries = self._expiries
        if len(expiries) > 64 and len(expiries) > 2 * self._count:
            self._expiries = [
                (b.expires_at, aor, b.contact)
                for aor, held in self._bindings.items()
                for b in _all(held)
            ]
            heapq.heapify(self._expiries)

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
