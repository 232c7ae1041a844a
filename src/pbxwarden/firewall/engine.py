"""The SIP firewall's decisions, sans-I/O: addresses, requests and time in; verdicts out.

Scanners find a new SIP server within minutes, enumerate extensions and guess
passwords; every datagram they send should cost us as little as possible and
teach them nothing. So:

* a banned source is refused before its bytes are parsed (one dict lookup);
* a per-source request rate in the manner of Kamailio's ``pike`` (requests per
  sampling window, with the previous window decaying in) bans floods;
* failed authentications are counted per source (ban) and per extension (an
  alert when many sources try the same extension: distributed brute force);
* known scanner fingerprints (User-Agent) are banned on sight;
* repeat offenders get longer bans (10 min, 1 h, 24 h by default);
* configured networks (trunks, admins) are never banned.

Hand-written because no library does SIP-aware banning; the state is a few
bounded dicts so that spoofed sources cannot exhaust memory.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from pbxwarden.sip.message import Request

# Lower-case substrings of User-Agent values sent by SIP scanning and cracking tools.
SCANNER_AGENTS: tuple[str, ...] = (
    "friendly-scanner",  # SIPVicious svmap/svwar/svcrack
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "sip-scan",
    "sipsak",  # often used for sweeps; allowlist the admin network to use it
    "sundayddr",
    "iwar",
    "sivus",
    "smap",
    "pplsip",
    "sipptk",
    "siparmyknife",
    "voip-scanner",
    "nmap",
    "masscan",
)


class Verdict(Enum):
    ALLOW = "allow"
    DROP = "drop"  # say nothing: a scanner learns nothing, not even that we exist
    REJECT = "reject"  # answer 403 (configurable, for operators who prefer it)


@dataclass(frozen=True, slots=True)
class FirewallSettings:
    rate_window: float = 2.0
    rate_limit: int = 100  # requests per source per window; 50/s is far above any phone
    trusted_rate_limit: int = 5000  # allow-listed sources: excess dropped, never banned
    # A source that registered with a right password in the last hour: a desk phone
    # subscribing to 200 busy lamps at boot sends 400 requests at once; banned only past this
    proven_rate_limit: int = 1000
    proven_for: float = 3600.0
    auth_failure_limit: int = 10
    auth_failure_window: float = 300.0
    distributed_sources: int = 5  # distinct sources failing on one extension: alert
    ban_steps: tuple[float, ...] = (600.0, 3600.0, 86400.0)
    repeat_memory: float = 7 * 86400.0  # how long a past ban makes the next one longer
    reject_banned: bool = False
    allow: tuple[str, ...] = ()
    scanner_agents: tuple[str, ...] = SCANNER_AGENTS
    max_tracked: int = 100_000
    # Distinct identities (REGISTER To user, INVITE/OPTIONS/... From user) one address
    # claims per window: a phone claims one, an office behind NAT a few dozen at worst,
    # an enumeration tool hundreds.
    identity_limit: int = 50
    identity_window: float = 60.0


@dataclass(slots=True)
class Ban:
    address: str
    until: float
    reason: str
    level: int  # 1 for a first ban, 2 for the next within repeat_memory, ...
    created_at: float


@dataclass(frozen=True, slots=True)
class FirewallEvent:
    """Something an operator should hear about; goes to logs now, alert channels later."""

    kind: str  # "ban", "unban", "distributed-brute-force"
    address: str
    reason: str
    until: float | None = None
    extension: str | None = None


@dataclass(slots=True)
class _Failures:
    times: list[float] = field(default_factory=list)


class Firewall:
    def __init__(self, settings: FirewallSettings | None = None) -> None:
        self.settings = s = settings or FirewallSettings()
        self._allow = [ipaddress.ip_network(n, strict=False) for n in s.allow]
        self.bans: dict[str, Ban] = {}
        self._history: dict[str, Ban] = {}  # expired bans remembered for escalation
        self._window_start = 0.0
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._source_failures: OrderedDict[str, _Failures] = OrderedDict()
        self._extension_sources: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._alerted: dict[str, float] = {}
        self._events: list[FirewallEvent] = []
        self._allowed_cache: dict[str, bool] = {}
        self._trusted: frozenset[str] = frozenset()
        self._trusted_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._identities: dict[str, dict[str, float]] = {}
        self._proven: OrderedDict[str, float] = OrderedDict()  # address -> last good login
        # Told of every ban made here as it is made (a cluster node shares it at once);
        # must not block: it runs inside the per-datagram check.
        self.on_ban: Callable[[Ban], None] | None = None
        # Addresses whose ban changed (made, adopted, lifted, expired, loaded) since the
        # owner last took them: registrar workers that read the socket get each change.
        # None (the default): not tracked.
        self.changed: set[str] | None = None

    # -- queries -------------------------------------------------------------------------

    def set_trusted(self, addresses: set[str], networks: Iterable[str] = ()) -> None:
        """Addresses (and networks) never banned besides the configured networks: the
        trunks' carriers, by IP, by what their DNS names resolve to, and ``inbound_from``."""
        self._trusted = frozenset(addresses)
        trusted_networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        if trusted_networks != self._trusted_networks:
            self._trusted_networks = trusted_networks
            self._allowed_cache.clear()

    def is_allowlisted(self, address: str) -> bool:
        if address in self._trusted:
            return True
        cached = self._allowed_cache.get(address)
        if cached is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                cached = False
            else:
                cached = any(ip in net for net in (*self._allow, *self._trusted_networks))
            if len(self._allowed_cache) > 10_000:
                self._allowed_cache.clear()
            self._allowed_cache[address] = cached
        return cached

    def drain_events(self) -> list[FirewallEvent]:
        events, self._events = self._events, []
        return events

    # -- the per-datagram check ----------------------------------------------------------

    def check_source(self, address: str, now: float) -> Verdict:
        """Before parsing: banned sources and floods stop here."""
        ban = self.bans.get(address)
        if ban is not None:
            if ban.until > now:
                return Verdict.REJECT if self.settings.reject_banned else Verdict.DROP
            self._expire(address, ban)
        if now - self._window_start >= self.settings.rate_window:
            elapsed_windows = (now - self._window_start) / self.settings.rate_window
            self._previous = self._current if elapsed_windows < 2 else {}
            self._current = {}
            self._window_start = now
        count = self._current.get(address, 0) + 1
        if len(self._current) < self.settings.max_tracked or address in self._current:
            self._current[address] = count
        # Sliding estimate: this window plus the decaying remainder of the last one.
        weight = 1.0 - (now - self._window_start) / self.settings.rate_window
        estimate = count + self._previous.get(address, 0) * max(0.0, weight)
        if estimate > self.settings.rate_limit:
            if not self.is_allowlisted(address):
                proven = self._proven.get(address)
                if (
                    proven is not None
                    and 0 <= now - proven < self.settings.proven_for
                    and estimate <= self.settings.proven_rate_limit
                ):
                    return Verdict.ALLOW  # a phone of ours in a burst, not a flood
                self.ban(address, "request flood", now)
                return Verdict.DROP
            if estimate > self.settings.trusted_rate_limit:
                # A trusted peer (trunk, admin network) is never banned, but a runaway one
                # must not starve everyone else: its excess is dropped.
                return Verdict.DROP
        return Verdict.ALLOW

    def inspect(self, request: Request, address: str, now: float) -> Verdict:
        """After parsing: fingerprints of scanning tools, and extension enumeration."""
        marker = self.scanner_marker(request.headers.get("User-Agent"))
        if marker is not None:
            if self.is_allowlisted(address):
                return Verdict.ALLOW
            self.ban(address, f"scanner fingerprint ({marker})", now)
            return Verdict.DROP
        identity = (request.to if request.method == "REGISTER" else request.from_).uri.user
        if identity and request.method != "ACK" and not self.is_allowlisted(address):
            # Trusted peers (a trunk, an office PBX) legitimately speak for many users.
            return self.observe_identity(address, identity[:64], now)
        return Verdict.ALLOW

    def scanner_marker(self, agent: str | None) -> str | None:
        """The scanning tool a User-Agent names, if any."""
        if agent:
            lowered = agent.lower()
            for marker in self.settings.scanner_agents:
                if marker in lowered:
                    return marker
        return None

    def observe_identity(self, address: str, identity: str, now: float) -> Verdict:
        """Count distinct claimed identities per address (svwar-style enumeration)."""
        s = self.settings
        seen = self._identities.get(address)
        if seen is None:
            seen = self._identities[address] = {}
            if len(self._identities) > s.max_tracked:
                self._identities.pop(next(iter(self._identities)))
        seen[identity] = now
        if len(seen) > s.identity_limit:
            cutoff = now - s.identity_window
            for name in [n for n, t in seen.items() if t <= cutoff]:
                del seen[name]
            if len(seen) > s.identity_limit:
                del self._identities[address]
                self.ban(
                    address,
                    f"extension enumeration ({s.identity_limit}+ identities "
                    f"in {int(s.identity_window)} s)",
                    now,
                )
                return Verdict.DROP
        return Verdict.ALLOW

    # -- authentication outcomes ---------------------------------------------------------

    def auth_failed(self, address: str, extension: str, now: float) -> None:
        s = self.settings
        failures = self._source_failures.get(address)
        if failures is None:
            failures = self._source_failures[address] = _Failures()
            if len(self._source_failures) > s.max_tracked:
                self._source_failures.popitem(last=False)
        cutoff = now - s.auth_failure_window
        failures.times = [t for t in failures.times if t > cutoff]
        failures.times.append(now)
        if len(failures.times) >= s.auth_failure_limit and not self.is_allowlisted(address):
            self.ban(address, f"{len(failures.times)} failed authentications", now)
            del self._source_failures[address]
        sources = self._extension_sources.setdefault(extension[:64], {})
        self._extension_sources.move_to_end(extension[:64])
        if len(self._extension_sources) > s.max_tracked:
            self._extension_sources.popitem(last=False)
        sources[address] = now
        for src in [a for a, t in sources.items() if t <= cutoff]:
            del sources[src]
        key = extension[:64]
        if len(sources) >= s.distributed_sources and self._alerted.get(key, 0) <= cutoff:
            self._alerted[key] = now
            if len(self._alerted) > s.max_tracked:
                self._alerted.pop(next(iter(self._alerted)))
            self._events.append(
                FirewallEvent(
                    "distributed-brute-force",
                    address,
                    f"{len(sources)} sources failed to authenticate as {extension} "
                    f"within {int(s.auth_failure_window)} s",
                    extension=extension,
                )
            )

    def auth_succeeded(self, address: str, now: float | None = None) -> None:
        """A phone registered from ``address`` with a right password: its failures are
        forgiven, and its bursts get :attr:`FirewallSettings.proven_rate_limit`."""
        self._source_failures.pop(address, None)
        self._proven[address] = time.time() if now is None else now
        self._proven.move_to_end(address)
        while len(self._proven) > self.settings.max_tracked:
            self._proven.popitem(last=False)

    # -- bans ----------------------------------------------------------------------------

    def ban(
        self, address: str, reason: str, now: float, duration: float | None = None
    ) -> Ban | None:
        """Ban ``address``; the duration grows with each repeat unless given.

        None for an allow-listed address: those are never banned."""
        if self.is_allowlisted(address):
            return None
        s = self.settings
        past = self._history.get(address)
        level = 1
        if past is not None and now - past.created_at <= s.repeat_memory:
            level = past.level + 1
        if duration is None:
            duration = s.ban_steps[min(level, len(s.ban_steps)) - 1]
        ban = Ban(address, now + duration, reason, level, now)
        self.bans[address] = ban
        if self.changed is not None:
            self.changed.add(address)
        self._history[address] = ban
        if len(self._history) > s.max_tracked:
            self._history.pop(next(iter(self._history)))
        self._events.append(FirewallEvent("ban", address, reason, until=ban.until))
        if self.on_ban is not None:
            self.on_ban(ban)
        return ban

    def adopt(self, ban: Ban, now: float) -> bool:
        """Put a ban made elsewhere (another node) in force; True if it changed anything.

        No event: the node that made it announces it. Never for an allow-listed address,
        and an earlier, longer ban here is kept."""
        if ban.until <= now or self.is_allowlisted(ban.address):
            return False
        mine = self.bans.get(ban.address)
        if mine is not None and mine.until >= ban.until:
            return False
        self.bans[ban.address] = ban
        if self.changed is not None:
            self.changed.add(ban.address)
        known = self._history.get(ban.address)
        if known is None or known.created_at <= ban.created_at:
            self._history[ban.address] = ban
            if len(self._history) > self.settings.max_tracked:
                self._history.pop(next(iter(self._history)))
        return True

    def unban(self, address: str, reason: str = "removed by an administrator") -> bool:
        ban = self.bans.pop(address, None)
        if ban is None:
            return False
        if self.changed is not None:
            self.changed.add(address)
        self._events.append(FirewallEvent("unban", address, reason))
        return True

    def _expire(self, address: str, ban: Ban) -> None:
        del self.bans[address]
        if self.changed is not None:
            self.changed.add(address)
        self._events.append(FirewallEvent("unban", address, "ban expired"))

    def expire(self, now: float) -> None:
        for address, ban in list(self.bans.items()):
            if ban.until <= now:
                self._expire(address, ban)

    def load(self, bans: list[Ban], now: float) -> None:
        """Replace the ban set with the stored one (bans added or removed elsewhere)."""
        # An address in the allow list is never banned, even by a ban stored before the
        # list was extended.
        active = {
            b.address: b for b in bans if b.until > now and not self.is_allowlisted(b.address)
        }
        for address in set(self.bans) - set(active):
            expired = self.bans[address].until <= now
            reason = "ban expired" if expired else "removed by an administrator"
            self._events.append(FirewallEvent("unban", address, reason))
        if self.changed is not None:
            old = self.bans
            self.changed.update(
                a for a in old.keys() | active.keys() if old.get(a) != active.get(a)
            )
        self.bans = active
        for b in bans:
            known = self._history.get(b.address)
            if known is None or known.created_at < b.created_at:
                self._history[b.address] = b
