"""Extension locks: password guessing spread over many addresses, stopped per extension.

The firewall bans a source after a few failed authentications, so a patient attacker
spreads the guesses: twenty addresses with four guesses each never meet a per-source
limit, and a trunk's address is never banned at all (that would cut the carrier's
inbound calls). So failures are also counted per extension, across every source. Past
``failures`` within ``window`` from ``sources`` or more addresses (or from any address
the firewall never bans, whose guesses nothing else stops) the extension is *locked*:

* a correct password from a network the extension never registered from (its known
  /24s and /48s, :mod:`pbxwarden.firewall.netwatch`) gets the same 403 as a wrong one
  and is counted again, so the attacker learns nothing and cannot finish; an extension
  that never registered is locked everywhere;
* its known networks keep working: the legitimate phone is not locked out;
* the lock grows on repeat (``steps``, like bans) and lifts when the password changes
  (the failures counted before the change are forgotten), when it expires, or when an
  administrator lifts it.

Every process that authenticates (the main process, each registrar worker) runs a
tracker fed by its own outcomes, so that a burst of guesses is stopped where it is
answered; the main process also hears the workers' failures, stores the locks it makes
and raises the alert, and every tracker adopts the stored set (:meth:`LockTracker.load`)
so that lifts by an administrator reach all of them.

Hand-written: no library counts SIP authentication outcomes; the state is bounded dicts.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pbxwarden.firewall.netwatch import NetworkWatch, network_of
from pbxwarden.store.db import ExtensionAuth

MAX_FAILURES_KEPT = 256  # per extension: enough to count distinct sources in a window
MAX_SOURCES_NAMED = 20  # in a lock's alert


@dataclass(frozen=True, slots=True)
class LockSettings:
    failures: int = 10
    window: float = 600.0
    sources: int = 2  # distinct addresses; one ordinary address is the firewall's to ban
    steps: tuple[float, ...] = (3600.0, 86400.0, 604800.0)
    repeat_memory: float = 7 * 86400.0  # how long a past lock makes the next one longer
    max_tracked: int = 100_000


@dataclass(frozen=True, slots=True)
class ExtensionLock:
    extension_id: int
    until: float
    level: int  # 1 for a first lock, 2 for the next within repeat_memory, ...
    created_at: float
    reason: str
    sources: tuple[str, ...]  # the addresses whose failures made the lock

    def active(self, now: float, password_changed_at: float | None = None) -> bool:
        """In force: not expired, not lifted, and no new password set since it was made."""
        return self.until > now and (
            password_changed_at is None or password_changed_at < self.created_at
        )


@dataclass(frozen=True, slots=True)
class LockEvent:
    kind: str  # "lock" (made here), "unlock" (lifted through the stored set)
    lock: ExtensionLock
    tenant: str = ""
    number: str = ""


class LockTracker:
    """Failures per extension in, locks out. Sans-I/O: the caller passes the time."""

    def __init__(self, settings: LockSettings | None = None) -> None:
        self.settings = settings or LockSettings()
        # extension id -> recent failures (time, address, from an address never banned)
        self._failures: OrderedDict[int, list[tuple[float, str, bool]]] = OrderedDict()
        self.locks: dict[int, ExtensionLock] = {}  # active, expired and lifted (escalation)
        self._who: dict[int, tuple[str, str]] = {}
        self._events: list[LockEvent] = []
        # Hooks for a cluster node (pbxwarden.cluster), which must not block: each failure
        # counted here (extension id, who, address, time, unbannable, password changed
        # at), and each lock made or lifted here.
        self.on_failure: (
            Callable[[int, tuple[str, str], str, float, bool, float | None], None] | None
        ) = None
        self.on_lock: Callable[[LockEvent], None] | None = None

    def drain_events(self) -> list[LockEvent]:
        events, self._events = self._events, []
        return events

    def active(
        self, extension_id: int, now: float, password_changed_at: float | None = None
    ) -> ExtensionLock | None:
        lock = self.locks.get(extension_id)
        if lock is None or not lock.active(now, password_changed_at):
            return None
        return lock

    def failed(
        self,
        extension_id: int,
        who: tuple[str, str],
        address: str,
        now: float,
        *,
        unbannable: bool = False,
        password_changed_at: float | None = None,
    ) -> ExtensionLock | None:
        """Count one failed authentication; the new lock when this one makes it.

        Failures before the last password change do not count: they guessed a password
        that no longer exists."""
        s = self.settings
        entries = self._failures.get(extension_id)
        if entries is None:
            entries = self._failures[extension_id] = []
            if len(self._failures) > s.max_tracked:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(extension_id)
        cutoff = now - s.window
        if password_changed_at is not None:
            cutoff = max(cutoff, password_changed_at)
        entries[:] = [e for e in entries[-MAX_FAILURES_KEPT + 1 :] if e[0] > cutoff]
        entries.append((now, address[:64], unbannable))
        if self.on_failure is not None:
            self.on_failure(extension_id, who, address[:64], now, unbannable, password_changed_at)
        sources = list(dict.fromkeys(a for _, a, _ in entries))
        return self.decide(
            extension_id,
            who,
            now,
            len(entries),
            sources,
            any(u for _, _, u in entries),
            password_changed_at,
        )

    def decide(
        self,
        extension_id: int,
        who: tuple[str, str],
        now: float,
        failures: int,
        sources: Sequence[str],
        unbannable: bool,
        password_changed_at: float | None = None,
    ) -> ExtensionLock | None:
        """The lock rule on counts already made: ``failures`` within the window from the
        distinct ``sources`` (``unbannable``: one of them is never banned). The counts are
        this process's own (:meth:`failed`) or a whole cluster's (pbxwarden.cluster);
        the new lock, or None."""
        s = self.settings
        if self.active(extension_id, now, password_changed_at) is not None:
            return None  # counted: when the lock ends, a continuing attack relocks at once
        if failures < s.failures:
            return None
        if len(sources) < s.sources and not unbannable:
            return None
        past = self.locks.get(extension_id)
        level = 1
        if past is not None and now - past.created_at <= s.repeat_memory:
            level = past.level + 1
        duration = s.steps[min(level, len(s.steps)) - 1]
        reason = (
            f"{failures} failed authentications from {len(sources)} "
            f"address{'es' if len(sources) > 1 else ''} within {int(s.window)} s"
        )
        lock = ExtensionLock(
            extension_id, now + duration, level, now, reason, tuple(sources[:MAX_SOURCES_NAMED])
        )
        self._remember(lock, who)
        self._events.append(LockEvent("lock", lock, *who))
        if self.on_lock is not None:
            self.on_lock(LockEvent("lock", lock, *who))
        return lock

    def _remember(self, lock: ExtensionLock, who: tuple[str, str] | None) -> None:
        self.locks[lock.extension_id] = lock
        if who is not None:
            self._who[lock.extension_id] = who
        if len(self.locks) > self.settings.max_tracked:
            oldest = min(self.locks.values(), key=lambda lk: lk.created_at).extension_id
            self.locks.pop(oldest)
            self._who.pop(oldest, None)

    def load(self, stored: Iterable[ExtensionLock], now: float) -> None:
        """Adopt the stored locks (made by another process, or lifted by an admin).

        Merged, never replaced: a lock this process made a moment ago may not be stored
        yet. A stored lock as new as ours or newer wins, so an administrator's lift
        (``until`` set to the time of the lift) reaches every process; the failures
        counted before a lift are forgotten with it."""
        for lock in stored:
            mine = self.locks.get(lock.extension_id)
            if mine is not None and (mine.created_at, -mine.until) > (lock.created_at, -lock.until):
                # Ours is newer, not stored yet; or the same lock lifted here and not
                # stored yet (a lock never grows longer, only ends early).
                continue
            self.locks[lock.extension_id] = lock
            if mine is not None and mine.active(now) and not lock.active(now):
                entries = self._failures.get(lock.extension_id)
                if entries:
                    entries[:] = [e for e in entries if e[0] > lock.until]
                who = self._who.get(lock.extension_id, ("", ""))
                self._events.append(LockEvent("unlock", lock, *who))
                if self.on_lock is not None:
                    self.on_lock(LockEvent("unlock", lock, *who))

    def who(self, extension_id: int) -> tuple[str, str] | None:
        """(tenant, number) of an extension this tracker made or adopted a lock of."""
        return self._who.get(extension_id)

    def adopt(self, lock: ExtensionLock, who: tuple[str, str], now: float) -> bool:
        """A lock made or lifted elsewhere (another node): :meth:`load` for one, keeping
        who it is for; True if it changed anything here."""
        mine = self.locks.get(lock.extension_id)
        if mine is not None and (mine.created_at, -mine.until) >= (lock.created_at, -lock.until):
            return False  # ours is newer, or the same
        self._who[lock.extension_id] = who
        self.load([lock], now)
        return True


class ExtensionLocks:
    """The questions the registrar and the call handler ask, for one process.

    Besides the lock, the trust rule for trunk addresses lives here: a carrier's address
    is trusted for inbound calls to DIDs, not for logging in as an extension. An
    extension's correct password from a trunk's address is refused like a wrong one
    unless an administrator allowed that extension (``trunk_access``)."""

    def __init__(
        self,
        tracker: LockTracker,
        netwatch: NetworkWatch,
        unbannable: Callable[[str], bool],
        report: Callable[[ExtensionAuth, str, float, bool], None] | None = None,
    ) -> None:
        """``unbannable``: whether the firewall never bans an address (trunks, allow-listed
        networks); ``report``: where a registrar worker forwards each failure, so that the
        main process counts it too."""
        self.tracker = tracker
        self.netwatch = netwatch
        self._unbannable = unbannable
        self._report = report
        self.trunk_hosts: frozenset[str] = frozenset()
        # networks trunks' carriers call from (trunk add --inbound-from): trunk addresses too
        self.trunk_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def is_trunk(self, address: str) -> bool:
        if address in self.trunk_hosts:
            return True
        if not self.trunk_networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trunk_networks)

    def failed(self, ext: ExtensionAuth, address: str, now: float) -> ExtensionLock | None:
        unbannable = self.is_trunk(address) or self._unbannable(address)
        if self._report is not None:
            self._report(ext, address, now, unbannable)
        return self.tracker.failed(
            ext.id,
            (ext.tenant, ext.number),
            address,
            now,
            unbannable=unbannable,
            password_changed_at=ext.password_changed_at,
        )

    def refusal(self, ext: ExtensionAuth, address: str, now: float) -> str | None:
        """Why correct credentials must be refused from ``address``; None when they may
        be used. The caller answers exactly as to a wrong password, and counts it."""
        trunk = self.is_trunk(address)
        if trunk and not ext.trunk_access:
            return "credentials used from a trunk's address"
        lock = self.tracker.active(ext.id, now, ext.password_changed_at)
        if lock is None:
            return None
        network = network_of(address)
        if network is None or not self.netwatch.knows(ext.id, network):
            return "extension locked after distributed password guessing; unknown network"
        return None
