"""Where a trunk's carrier is: RFC 3263 server location (NAPTR, SRV, A/AAAA), sans-I/O.

Carriers give a DNS name with SRV records naming their servers in order of preference
(often NAPTR records too, saying which transport and which SRV name to use). This module
is the decision part: which DNS questions to ask for a trunk's host (:class:`Lookup`, a
state machine fed the answers), the (transport, address, port) targets to try in order
(RFC 3263 4.1-4.2; RFC 2782 priorities and weighted random choice within a priority,
drawn anew per request), the addresses the carrier's calls come from, and when to ask
again (the answers' TTL, bounded). :class:`Failover` walks one request's targets: the
next after a timeout or a 503 (RFC 3263 4.3). dnspython asks the questions
(:mod:`pbxwarden.transport.resolver`); it has no SIP server selection, which is why
the ordering is written here.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pbxwarden.pbx.routing import Trunk
from pbxwarden.sip.transaction import Address

DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}
# RFC 3263 4.1 / RFC 3263 section 9: NAPTR services for sip: URIs and the transport each names
NAPTR_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}
SRV_PREFIXES = {"UDP": "_sip._udp.", "TCP": "_sip._tcp.", "TLS": "_sips._tcp."}
ADDRESS_TYPES = ("A", "AAAA")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def dns_name(host: str) -> str | None:
    """``host`` as a DNS host name (lowercase, no final dot), or None if it is not one.

    Letters, digits and hyphens in labels of at most 63 characters (RFC 1123); the last
    label is not all digits, so a mistyped address such as 192.0.2.300 is no name."""
    name = host.strip().lower().removesuffix(".")
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return None
    return name


def trunk_target(host: str, port: int | None, transport: str | None) -> tuple[str, int, str]:
    """A trunk's host, port and transport as stored, or ValueError saying what is wrong.

    An IP address is kept as such (port 5060 and UDP unless given). A DNS name is
    kept lowercase; without a port it is stored as 0 (the port comes from SRV), without
    a transport as ``auto`` (NAPTR, then SRV, decides: RFC 3263 4.1)."""
    transport = (transport or "").strip().lower() or None
    if transport not in (None, "udp", "tcp", "auto"):
        raise ValueError(f"invalid transport {transport!r}: udp, tcp or auto (DNS decides)")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"invalid port {port}")
    stripped = host.strip()
    if is_ip(stripped):
        address = str(ipaddress.ip_address(stripped.strip("[]")))
        return address, port or 5060, "udp" if transport in (None, "auto") else transport
    name = dns_name(stripped)
    if name is None:
        raise ValueError(
            "trunk host must be an IP address or a DNS name such as sip.carrier.example "
            f"(it identifies the carrier), got {host[:80]!r}"
        )
    return name, port or 0, transport or "auto"


def check_networks(networks: Iterable[str]) -> tuple[str, ...]:
    """CIDR networks, normalised, or ValueError naming the one that is not."""
    out: list[str] = []
    for net in networks:
        try:
            out.append(str(ipaddress.ip_network(net.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"not a network: {net[:60]!r} (use CIDR, e.g. 192.0.2.0/24)") from None
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class Naptr:
    order: int
    preference: int
    flags: str
    service: str
    replacement: str  # the SRV name to ask, for flag "s"


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Server:
    """One SRV target (or the host itself) with its addresses, ready to be tried."""

    transport: str
    port: int
    name: str
    addresses: tuple[str, ...]
    priority: int = 0
    weight: int = 0
    rank: int = 0  # which SRV set (NAPTR order, or our transport order) it came from


@dataclass(frozen=True, slots=True)
class Resolution:
    """What DNS said about one trunk host: its servers, the addresses of the name itself
    (a carrier may send from them), and the TTL of the answers that were used."""

    host: str
    servers: tuple[Server, ...]
    own_addresses: tuple[str, ...] = ()
    ttl: float | None = None  # the smallest TTL among the answers used; None: none had one
    errors: tuple[str, ...] = ()  # questions that got no answer (timeouts, SERVFAIL)

    @property
    def addresses(self) -> frozenset[str]:
        """Every address of the carrier: each server's and the name's own."""
        return frozenset(a for s in self.servers for a in s.addresses) | frozenset(
            self.own_addresses
        )

    def targets(self, rng: random.Random | None = None) -> list[Address]:
        """The targets in the order to try them: SRV sets in rank order, within a set by
        priority and weighted random choice (RFC 2782), each server's addresses in turn."""
        rng = rng or random.Random()
        out: list[Address] = []
        seen: set[Address] = set()
        for rank in sorted({s.rank for s in self.servers}):
            ordered = srv_order([s for s in self.servers if s.rank == rank], rng)
            for server in ordered:
                for host in server.addresses:
                    target = Address(server.transport, host, server.port)
                    if target not in seen:
                        seen.add(target)
                        out.append(target)
        return out

    def expires_in(self, floor: float, ceiling: float) -> float:
        """Seconds until DNS is asked again: the TTL bounded by the floor and ceiling."""
        ttl = ceiling if self.ttl is None else self.ttl
        return min(max(ttl, floor), ceiling)


class _Weighted(Protocol):
    @property
    def priority(self) -> int: ...
    @property
    def weight(self) -> int: ...


_W = TypeVar("_W", bound=_Weighted)


def srv_order(records: Sequence[_W], rng: random.Random) -> list[_W]:
    """RFC 2782's ordering: lowest priority first; within a priority, repeatedly pick one
    at random with probability proportional to its weight (zero weights placed first, so
    that they are chosen only when they are all that is left or the draw is 0)."""
    out: list[_W] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight > 0)
        while group:
            total = sum(r.weight for r in group)
            draw = rng.randint(0, total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= draw:
                    out.append(group.pop(index))
                    break
    return out


def naptr_srv_names(records: Iterable[Naptr], supported: Sequence[str]) -> list[tuple[str, str]]:
    """(transport, SRV name) from NAPTR records (RFC 3263 4.1): those with flag "s" and a
    service we support, by order then preference."""
    out: list[tuple[str, str]] = []
    for record in sorted(records, key=lambda r: (r.order, r.preference)):
        transport = NAPTR_SERVICES.get(record.service.upper())
        replacement = record.replacement.lower().removesuffix(".")
        if record.flags.lower() != "s" or transport is None or transport not in supported:
            continue
        if not replacement:
            continue
        if (transport, replacement) not in out:
            out.append((transport, replacement))
    return out


Question = tuple[str, str]  # (name, record type)


@dataclass
class Lookup:
    """The DNS questions for one trunk host, as a state machine (RFC 3263 4.1, 4.2).

    :meth:`questions` says what to ask now (every pending question: ask them all, then
    feed each reply); :meth:`answer` (records, possibly none: a negative answer) or
    :meth:`failed` (no answer: timeout, SERVFAIL) feed the replies; when :attr:`done`,
    :meth:`result` is the :class:`Resolution`. A numeric host
    needs no DNS; a name with a port only its A/AAAA (no SRV); a name with a transport
    the SRV of that transport; a name with neither NAPTR first, then SRV for the
    transports we support, then the name's A/AAAA with the default port. The name's own
    A/AAAA are always asked: a carrier may send its calls from them.
    """

    host: str
    port: int | None = None
    transport: str | None = None
    supported: Sequence[str] = ("UDP",)
    _pending: set[Question] = field(init=False, default_factory=set)
    _asked: set[Question] = field(init=False, default_factory=set)
    _srv_names: list[tuple[str, str]] = field(init=False, default_factory=list)
    _srv: dict[str, list[Srv]] = field(init=False, default_factory=dict)
    _addresses: dict[str, list[str]] = field(init=False, default_factory=dict)
    _ttls: list[float] = field(init=False, default_factory=list)
    _errors: list[str] = field(init=False, default_factory=list)
    _started: bool = field(init=False, default=False)
    _unavailable: bool = field(init=False, default=False)

    def questions(self) -> list[Question]:
        if not self._started:
            self._started = True
            if not is_ip(self.host):
                self._ask_addresses(self.host)
                if self.port is None:
                    if self.transport is None:
                        self._ask((self.host, "NAPTR"))
                    else:
                        self._want_srv([(self.transport, SRV_PREFIXES[self.transport] + self.host)])
        return sorted(self._pending)

    def answer(
        self,
        question: Question,
        records: Sequence[Naptr | Srv | str],
        ttl: float | None = None,
    ) -> None:
        if question not in self._pending:
            return
        self._pending.discard(question)
        name, rdtype = question
        if records and ttl is not None:
            self._ttls.append(ttl)
        if rdtype == "NAPTR":
            chosen = naptr_srv_names((r for r in records if isinstance(r, Naptr)), self.supported)
            if not chosen:  # no usable NAPTR: SRV for each transport we support (4.1)
                chosen = [(t, SRV_PREFIXES[t] + self.host) for t in self.supported]
            self._want_srv(chosen)
        elif rdtype == "SRV":
            srv = [r for r in records if isinstance(r, Srv)]
            # a single "." target: the service is decidedly not available there (RFC 2782),
            # so the name's own address is no fallback either
            if len(srv) == 1 and srv[0].target in ("", "."):
                srv = []
                self._unavailable = True
            self._srv[name] = srv
            for record in srv:
                self._ask_addresses(record.target)
        else:
            self._addresses.setdefault(name, []).extend(r for r in records if isinstance(r, str))

    def failed(self, question: Question, error: str) -> None:
        if question not in self._pending:
            return
        self._errors.append(f"{question[1]} {question[0]}: {error}")
        self.answer(question, [])

    @property
    def done(self) -> bool:
        return self._started and not self._pending

    def result(self) -> Resolution:
        host = self.host.strip("[]")
        if is_ip(host):
            transport = self.transport or "UDP"
            port = self.port or DEFAULT_PORTS[transport]
            return Resolution(host, (Server(transport, port, host, (host,)),))
        own = tuple(self._names_addresses(self.host))
        servers: list[Server] = []
        for rank, (transport, srv_name) in enumerate(self._srv_names):
            for record in self._srv.get(srv_name, []):
                addresses = tuple(self._names_addresses(record.target))
                if addresses:
                    servers.append(
                        Server(
                            transport,
                            record.port,
                            record.target,
                            addresses,
                            record.priority,
                            record.weight,
                            rank,
                        )
                    )
        if not servers and own and not self._unavailable:  # no SRV: the name itself (4.2)
            transport = self.transport or (self._srv_names[0][0] if self._srv_names else "UDP")
            servers.append(Server(transport, self.port or DEFAULT_PORTS[transport], self.host, own))
        ttl = min(self._ttls) if self._ttls else None
        return Resolution(self.host, tuple(servers), own, ttl, tuple(self._errors))

    # -- internals -------------------------------------------------------------------

    def _ask(self, question: Question) -> None:
        if question not in self._asked:
            self._asked.add(question)
            self._pending.add(question)

    def _ask_addresses(self, name: str) -> None:
        name = name.lower().removesuffix(".")
        if is_ip(name):  # an SRV target that is an address (not allowed, but seen)
            self._addresses.setdefault(name, [name])
            return
        for rdtype in ADDRESS_TYPES:
            self._ask((name, rdtype))

    def _want_srv(self, names: list[tuple[str, str]]) -> None:
        for transport, name in names:
            if (transport, name) not in self._srv_names:
                self._srv_names.append((transport, name))
                self._ask((name, "SRV"))

    def _names_addresses(self, name: str) -> list[str]:
        name = name.lower().removesuffix(".")
        out: list[str] = []
        for address in self._addresses.get(name, []):
            if address not in out:
                out.append(address)
        return out


class Failover:
    """The targets one request (a B leg, a REGISTER) may still try, in order.

    The first is :attr:`current`; after a transport timeout (Timer B) or a 503 the next
    one is tried (RFC 3263 4.3); past the last there is none and the request gives up
    with the last answer. ``reason`` says why there is no target at all."""

    def __init__(self, targets: Sequence[Address], reason: str = "") -> None:
        self.targets = tuple(targets)
        self.reason = reason or "no address for the carrier"
        self._index = 0

    @property
    def current(self) -> Address | None:
        return self.targets[self._index] if self._index < len(self.targets) else None

    def next(self) -> Address | None:
        """The target after the current one failed, or None when none is left."""
        if self._index < len(self.targets):
            self._index += 1
        return self.current


FAILOVER_STATUSES = frozenset({503})  # besides timeouts and transport errors (RFC 3263 4.3)


class TrunkLocator(Protocol):
    """Where the B2BUA and trunk registrations send a trunk's requests."""

    def failover(self, trunk: Trunk) -> Failover: ...

    def failed(self, target: Address) -> None:
        """A target gave no answer or a 503: later requests try it after the others."""


class StaticLocator:
    """Trunks by IP address only: the configured host and port, nothing to look up."""

    def failover(self, trunk: Trunk) -> Failover:
        if not is_ip(trunk.host):
            return Failover((), f"{trunk.host} is a DNS name and no resolver runs")
        return Failover([trunk.address])

    def failed(self, target: Address) -> None:
        return None
