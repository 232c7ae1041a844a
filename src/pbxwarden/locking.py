"""The I/O side of extension locks (:mod:`pbxwarden.firewall.locks`): settings from the
configuration, storing the locks the main process makes, adopting the stored set (lifts
by an administrator, locks made elsewhere) and the critical alert.

The main process runs :class:`LockSync` once a second from its write-back loop; a
registrar worker only adopts (:func:`adopt_stored`), since the main process hears its
failures and makes, stores and announces the same locks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from pbxwarden.config import FirewallConfig
from pbxwarden.firewall.locks import ExtensionLock, ExtensionLocks, LockEvent, LockSettings
from pbxwarden.guard.engine import GuardAlert
from pbxwarden.store.db import Store
from pbxwarden.store.locks import LockStore

log = structlog.get_logger("pbxwarden.locks")


def lock_settings(fw: FirewallConfig) -> LockSettings:
    return LockSettings(
        failures=fw.lock_failures,
        window=fw.lock_window,
        sources=fw.lock_sources,
        steps=tuple(fw.lock_steps),
    )


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def lock_alert(event: LockEvent, known_networks: set[str]) -> GuardAlert:
    """What happened and what to do, in plain words, naming the sources seen."""
    lock = event.lock
    number, tenant = event.number or str(lock.extension_id), event.tenant or "default"
    named = ", ".join(lock.sources[:10])
    more = len(lock.sources) - 10
    networks = sorted(n for n in known_networks if not n.startswith("country:"))
    tenant_opt = "" if tenant == "default" else f" --tenant {tenant}"
    return GuardAlert(
        tenant,
        number,
        "critical",
        "extension-locked",
        f"Extension {number} locked: its SIP password is being guessed "
        f"from {len(lock.sources)} address{'es' if len(lock.sources) != 1 else ''}",
        (
            f"{lock.reason}: someone is trying to crack the SIP password of {number}",
            f"sources: {named}" + (f" and {more} more" if more > 0 else ""),
            f"locked until {_utc(lock.until)} (lock {lock.level}): registrations and calls "
            "with its password from any network it never registered from are refused, "
            "even with the right password",
            (
                f"its own networks keep working: {', '.join(networks)}"
                if networks
                else "it never registered, so it is locked everywhere"
            ),
            f"what to do: give it a new password (pbxwarden extension password {number}"
            f"{tenant_opt}, or New password in the dashboard) and set it on the phone; "
            "the lock lifts then",
            f"if the phone really moved to a new network, lift the lock with "
            f"pbxwarden extension unlock {number}{tenant_opt}",
        ),
        lock.created_at,
    )


class LockSync:
    """Main process: locks made here are stored and announced; the stored set adopted."""

    def __init__(self, store: Store, locks: ExtensionLocks, repeat_memory: float) -> None:
        self.store = LockStore(store)
        self.locks = locks
        self._repeat_memory = repeat_memory
        self._unsaved: list[ExtensionLock] = []

    def keep(self, lock: ExtensionLock) -> None:
        """Store a lock adopted from another node on the next round."""
        self._unsaved.append(lock)

    async def sync(
        self,
        deliver: Callable[[GuardAlert], Awaitable[None]],
        publish: Callable[[str, dict[str, Any]], None],
    ) -> None:
        tracker = self.locks.tracker
        events = tracker.drain_events()
        self._unsaved += [e.lock for e in events if e.kind == "lock"]
        if self._unsaved:
            await asyncio.to_thread(self.store.save_locks, list(self._unsaved))
            self._unsaved.clear()
        now = time.time()
        tracker.load(await asyncio.to_thread(self.store.load_locks, now - self._repeat_memory), now)
        events += tracker.drain_events()
        for event in events:
            lock = event.lock
            publish(
                event.kind,
                {
                    "tenant": event.tenant,
                    "extension": event.number,
                    "until": lock.until,
                    "reason": lock.reason,
                    "sources": list(lock.sources),
                },
            )
            log.warning(
                "extension " + ("locked" if event.kind == "lock" else "unlocked"),
                tenant=event.tenant,
                extension=event.number,
                until=lock.until,
                reason=lock.reason,
                sources=list(lock.sources),
            )
            if event.kind == "lock":
                # a registrar worker's networks reach this process through the database
                stored = await asyncio.to_thread(self.store.networks_of, lock.extension_id)
                known = self.locks.netwatch.networks(lock.extension_id) | stored
                await deliver(lock_alert(event, known))


async def adopt_stored(store: LockStore, locks: ExtensionLocks, repeat_memory: float) -> None:
    """A registrar worker's round: the stored locks and the trunks' addresses."""
    now = time.time()
    locks.tracker.load(await asyncio.to_thread(store.load_locks, now - repeat_memory), now)
    locks.tracker.drain_events()  # announced by the main process
    locks.trunk_hosts = await asyncio.to_thread(store.trunk_hosts)
