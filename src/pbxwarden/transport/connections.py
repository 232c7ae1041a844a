"""Which TCP/TLS connection to admit, refuse or close: the decisions, sans-I/O.

Every SIP-over-TCP/TLS connection holds a file descriptor and a slot, and idle ones
cost an attacker nothing: a few thousand from one address (or a few hundred from each
of a few dozen) used to fill the table so that no phone could connect. Production
stacks bound this globally (Kamailio ``tcp_max_connections`` and
``tcp_connection_lifetime``, Asterisk's ``tcpauthlimit``/``tcpauthtimeout`` for
connections not yet authenticated); this table adds what they leave to scripts:

* a per-source limit (an IPv4 address, or an IPv6 /64: one LAN), higher for sources
  the firewall trusts; the connection over it is refused and reported, so that the
  server can ban the source and close the rest of its connections;
* a short deadline for a new connection to send a valid SIP request (TLS handshake
  included), not extended by anything it sends meanwhile (no slow drip of bytes);
* once the table is three quarters full ("crowded"), shorter deadlines still: new
  connections get ``crowded_new_timeout``, established ones ``crowded_idle_timeout``
  (RFC 5626 keep-alives come every 95-120 s, so phones that send them stay);
* when it is full, a newcomer takes the slot of the oldest connection that has not
  yet sent a valid request, else of an established one idle past the crowded idle
  timeout, else it is refused: idle attackers go first, phones that talk stay.

Keys are whatever the I/O layer uses for a connection (hashable); time is the
caller's monotonic clock. Written by hand: no library makes SIP-aware decisions about
sockets, and the state is two ordered dicts and a count per source.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

CROWDED_FRACTION = 0.75  # of max_connections: from here on, the shorter deadlines apply


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 4096
    per_source: int = 64  # a phone needs one; an office behind one NAT a few dozen
    trusted_per_source: int = 1024  # trunks and allow-listed networks multiplex
    new_timeout: float = 10.0  # to send a first valid request, TLS handshake included
    idle_timeout: float = 900.0  # established and silent (keep-alives count as traffic)
    crowded_new_timeout: float = 2.0
    crowded_idle_timeout: float = 120.0

    @property
    def crowded_at(self) -> int:
        return max(1, int(self.max_connections * CROWDED_FRACTION))


@dataclass(frozen=True, slots=True)
class Admission(Generic[K]):
    """The verdict on a new connection: admitted or not, and what to close first."""

    accepted: bool
    evict: tuple[K, ...] = ()  # close these (already forgotten by the table)
    over_limit: bool = False  # refused because its source is at its limit: report it
    source_count: int = 0  # the source's connections (before this one)


@dataclass(slots=True)
class _Entry:
    source: str
    opened: float
    last: float


def source_key(host: str) -> str:
    """The unit a per-source limit counts: an IPv4 address, or an IPv6 /64 (one LAN;
    an attacker holds a whole /64 as easily as one address). IPv4-mapped IPv6
    addresses (a dual-stack listener) count as their IPv4 address."""
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address) + "/64"


class ConnectionTable(Generic[K]):
    """Connections by state: new (no valid request yet, oldest first) and established
    (least recently active first), with a count per source."""

    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits or ConnectionLimits()
        self._new: OrderedDict[K, _Entry] = OrderedDict()
        self._established: OrderedDict[K, _Entry] = OrderedDict()
        self._per_source: dict[str, int] = {}
        self._members: dict[str, set[K]] = {}

    def __len__(self) -> int:
        return len(self._new) + len(self._established)

    def __contains__(self, key: object) -> bool:
        return key in self._new or key in self._established

    @property
    def new_count(self) -> int:
        return len(self._new)

    @property
    def crowded(self) -> bool:
        return len(self) >= self.limits.crowded_at

    def source_count(self, host: str) -> int:
        return self._per_source.get(source_key(host), 0)

    def is_established(self, key: K) -> bool:
        return key in self._established

    def set_max_connections(self, value: int) -> None:
        """Lower (or raise) the cap, e.g. to what the process's file limit allows."""
        self.limits = replace(self.limits, max_connections=max(1, value))

    # -- events ---------------------------------------------------------------------

    def admit(self, key: K, host: str, trusted: bool, now: float) -> Admission[K]:
        """A connection was accepted from ``host``: keep it, or say why not."""
        lim = self.limits
        source = source_key(host)
        count = self._per_source.get(source, 0)
        if count >= (lim.trusted_per_source if trusted else lim.per_source):
            return Admission(False, over_limit=True, source_count=count)
        evict: tuple[K, ...] = ()
        if len(self) >= lim.max_connections:
            victim = self._victim(now)
            if victim is None:
                return Admission(False, source_count=count)
            self.release(victim)
            evict = (victim,)
        self._new[key] = _Entry(source, now, now)
        # (not count + 1: the victim just evicted may have been this source's own)
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self._members.setdefault(source, set()).add(key)
        return Admission(True, evict, source_count=count)

    def confirm(self, key: K, now: float) -> None:
        """The connection sent a valid SIP request: it is established from now on."""
        entry = self._new.pop(key, None)
        if entry is not None:
            entry.last = now
            self._established[key] = entry
        else:
            self.touch(key, now)

    def touch(self, key: K, now: float) -> None:
        """Traffic on an established connection (a keep-alive counts). New connections
        keep their first deadline whatever they send."""
        entry = self._established.get(key)
        if entry is not None:
            entry.last = now
            self._established.move_to_end(key)

    def release(self, key: K) -> bool:
        """Forget a connection (closed, or about to be); False if it was not here."""
        entry = self._new.pop(key, None)
        if entry is None:
            entry = self._established.pop(key, None)
        if entry is None:
            return False
        left = self._per_source[entry.source] - 1
        if left:
            self._per_source[entry.source] = left
            self._members[entry.source].discard(key)
        else:
            del self._per_source[entry.source]
            del self._members[entry.source]
        return True

    def expired(self, now: float) -> list[K]:
        """Connections past their deadline, forgotten here: the caller closes them."""
        lim = self.limits
        crowded = self.crowded
        new_timeout = min(lim.new_timeout, lim.crowded_new_timeout) if crowded else lim.new_timeout
        idle_timeout = (
            min(lim.idle_timeout, lim.crowded_idle_timeout) if crowded else lim.idle_timeout
        )
        out: list[K] = []
        while self._new:  # oldest first: opening order
            key, entry = next(iter(self._new.items()))
            if entry.opened > now - new_timeout:
                break
            self.release(key)
            out.append(key)
        while self._established:  # least recently active first
            key, entry = next(iter(self._established.items()))
            if entry.last > now - idle_timeout:
                break
            self.release(key)
            out.append(key)
        return out

    def drop_source(self, host: str) -> list[K]:
        """Every connection of ``host``'s source (it was banned), forgotten here."""
        keys = list(self._members.get(source_key(host), ()))
        for key in keys:
            self.release(key)
        return keys

    def members(self) -> list[K]:
        return [*self._new, *self._established]

    def _victim(self, now: float) -> K | None:
        if self._new:
            return next(iter(self._new))
        if self._established:
            key, entry = next(iter(self._established.items()))
            idle_limit = min(self.limits.idle_timeout, self.limits.crowded_idle_timeout)
            if now - entry.last >= idle_limit:
                return key
        return None
