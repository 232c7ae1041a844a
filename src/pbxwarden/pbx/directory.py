"""A short-lived cache of extension credentials in front of the database.

REGISTER refreshes arrive every few minutes from every phone; a few seconds of
caching turns a storm of identical lookups into one, while a password changed
from the CLI (another process) still takes effect within ``ttl`` seconds.
Negative answers are cached too, in a bounded LRU, because scanners ask for
thousands of extensions that do not exist.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from pbxwarden.store.db import ExtensionAuth, Store


class Directory:
    def __init__(self, store: Store, ttl: float = 5.0, max_entries: int = 50_000) -> None:
        self._store = store
        self._ttl = ttl
        self._max = max_entries
        self._cache: OrderedDict[tuple[str, str], tuple[float, ExtensionAuth | None]] = (
            OrderedDict()
        )

    def cached(self, realm: str, number: str, now: float) -> tuple[bool, ExtensionAuth | None]:
        """(hit, value) without touching the database."""
        entry = self._cache.get((realm, number))
        if entry is None or entry[0] <= now:
            return False, None
        return True, entry[1]

    async def lookup(self, realm: str, number: str, now: float) -> ExtensionAuth | None:
        hit, value = self.cached(realm, number, now)
        if hit:
            return value
        value = await asyncio.to_thread(self._store.extension_auth, realm, number)
        key = (realm, number)
        self._cache[key] = (now + self._ttl, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return value
