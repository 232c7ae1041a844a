"""The extension directory: every extension's credentials, held in memory.

A REGISTER or INVITE must be authenticated without waiting on the database, and
scanners asking for extensions that do not exist must cost nothing. So the whole
directory (a few hundred bytes per extension) lives in memory, and is kept in step
with the database by a cheap version check: a password changed or an extension
added from the CLI (another process) takes effect within one refresh period.
"""

from __future__ import annotations

import asyncio

from pbxwarden.store.db import ExtensionAuth, Store


class Directory:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], ExtensionAuth] = {}
        self._version: tuple[int, float] = (-1, 0.0)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, realm: str, number: str) -> ExtensionAuth | None:
        return self._entries.get((realm, number))

    def entries(self) -> list[ExtensionAuth]:
        return list(self._entries.values())

    def replace_all(
        self, entries: list[ExtensionAuth], version: tuple[int, float]
    ) -> list[ExtensionAuth]:
        """Load every entry; returns those whose password changed (see :meth:`update`)."""
        old = self._entries
        self._entries = {(e.realm, e.number): e for e in entries}
        self._version = version
        return _new_passwords(old, entries)

    def update(
        self, entries: list[ExtensionAuth], version: tuple[int, float]
    ) -> list[ExtensionAuth]:
        """Apply changed entries; returns those whose SIP password was changed since we
        last saw them: their registrations and calls may be an attacker's."""
        changed = _new_passwords(self._entries, entries)
        for e in entries:
            self._entries[(e.realm, e.number)] = e
        self._version = version
        return changed

    @property
    def version(self) -> tuple[int, float]:
        return self._version


def fetch_changes(
    store: Store, directory_version: tuple[int, float]
) -> tuple[bool, list[ExtensionAuth], tuple[int, float]] | None:
    """Runs in a worker thread: None if nothing changed, else (full, entries, version).

    A lower count means something was deleted: reload everything. Otherwise load the
    rows updated since the newest change we have seen (equal timestamps re-applied,
    which is harmless, so that a change in the same instant is never missed).
    """
    version = store.extensions_version()
    if version == directory_version:
        return None
    count, newest = directory_version
    if count < 0 or version[0] < count:
        return True, store.extensions_changed_since(None), version
    return False, store.extensions_changed_since(newest), version


def _new_passwords(
    known: dict[tuple[str, str], ExtensionAuth], entries: list[ExtensionAuth]
) -> list[ExtensionAuth]:
    out = []
    for entry in entries:
        before = known.get((entry.realm, entry.number))
        if (
            before is not None
            and before.id == entry.id
            and entry.password_changed_at is not None
            and entry.password_changed_at != before.password_changed_at
        ):
            out.append(entry)
    return out


async def refresh_directory(store: Store, directory: Directory) -> list[ExtensionAuth] | None:
    """Bring ``directory`` up to the database's extensions (the read runs in a thread).

    None when nothing changed; else the extensions whose password changed meanwhile."""
    changes = await asyncio.to_thread(fetch_changes, store, directory.version)
    if changes is None:
        return None
    full, entries, version = changes
    if full:
        return directory.replace_all(entries, version)
    return directory.update(entries, version)
