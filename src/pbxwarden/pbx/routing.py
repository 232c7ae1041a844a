"""Where calls go that are not between extensions: trunks out, DIDs in.

A snapshot of the database's trunks and DIDs, swapped in whole by the server
when it reloads them (or when DNS gives a trunk's name new addresses), so that a
routing decision never waits on the database or on DNS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import phonenumbers

from pbxwarden.pbx.dialplan import Group, TimeCondition
from pbxwarden.sip.transaction import Address


@dataclass(frozen=True, slots=True)
class Trunk:
    tenant: str
    name: str
    host: str
    port: int
    transport: str
    prefixes: tuple[str, ...]  # E.164 prefixes; "+" matches everything
    # Digest credentials towards the carrier; the password is decrypted in memory only and
    # kept out of repr() so that no log line can ever carry it.
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    realm: str | None = None  # informational; preferred when a carrier offers several
    register: bool = False
    register_expires: int = 3600
    emergency: bool = False  # the tenant's emergency calls go out here
    assert_identity: bool = True  # P-Asserted-Identity to this carrier (RFC 3325)
    # its REFERs are performed (the target judged as a call of our party), else 403
    accept_transfers: bool = False
    # networks the carrier also sends calls from, beyond the host's own (DNS) addresses
    inbound_from: tuple[str, ...] = ()

    @property
    def address(self) -> Address:
        """The host as configured, with the transport and port it implies (for an IP
        literal its one target; a name's targets come from DNS, pbx/locate.py)."""
        transport = self.lookup_transport or "UDP"
        return Address(transport, self.host, self.port or (5061 if transport == "TLS" else 5060))

    @property
    def lookup_transport(self) -> str | None:
        """The transport fixed by the trunk, or None: left to DNS (NAPTR, then SRV)."""
        return None if self.transport.lower() == "auto" else self.transport.upper()

    @property
    def uri_port(self) -> int | None:
        """The port in URIs towards the carrier: None when DNS gives it (SRV)."""
        return self.port or None

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.name)

    @property
    def has_credentials(self) -> bool:
        """Challenges from the carrier can be answered (a username and a usable password)."""
        return bool(self.username) and self.password is not None


@dataclass(frozen=True, slots=True)
class Did:
    number: str  # E.164
    tenant: str
    extension: str


@dataclass(frozen=True, slots=True)
class Routing:
    trunks: tuple[Trunk, ...] = ()
    dids: dict[str, Did] = field(default_factory=dict)
    countries: dict[str, str] = field(default_factory=dict)  # tenant -> home country
    realms: dict[str, str] = field(default_factory=dict)  # tenant -> realm
    # addresses a trunk's carrier sends from, by DNS (trunks by name), address -> trunk
    sources: dict[str, Trunk] = field(default_factory=dict)
    groups: dict[tuple[str, str], Group] = field(default_factory=dict)  # (tenant, number)
    time_conditions: dict[tuple[str, str], TimeCondition] = field(default_factory=dict)
    _networks: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Trunk], ...] = field(
        init=False, repr=False, compare=False, default=()
    )
    _ip_hosts: dict[str, Trunk] = field(init=False, repr=False, compare=False, default_factory=dict)
    # callback numbers, computed once per snapshot: every call an extension places asks
    _direct: dict[tuple[str, str], str] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _lowest: dict[str, str] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        for number in sorted(self.dids):
            did = self.dids[number]
            self._lowest.setdefault(did.tenant, number)
            self._direct.setdefault((did.tenant, did.extension), number)
        networks = []
        for trunk in self.trunks:
            try:
                ipaddress.ip_address(trunk.host)
            except ValueError:
                pass  # a DNS name: its addresses come in ``sources``
            else:
                self._ip_hosts.setdefault(trunk.host, trunk)
            for net in trunk.inbound_from:
                try:
                    networks.append((ipaddress.ip_network(net, strict=False), trunk))
                except ValueError:  # validated when stored; never a reason to fail here
                    continue
        object.__setattr__(self, "_networks", tuple(networks))

    def with_addresses(self, addresses: Mapping[tuple[str, str], Iterable[str]]) -> Routing:
        """The same routing with the addresses DNS gave each trunk (by tenant and name)."""
        sources: dict[str, Trunk] = {}
        for trunk in self.trunks:
            for address in addresses.get(trunk.key, ()):
                sources.setdefault(address, trunk)
        return replace(self, sources=sources)

    def trusted_hosts(self) -> set[str]:
        """Every address a trunk's carrier sends from: IP hosts and resolved names."""
        return set(self._ip_hosts) | set(self.sources)

    def trusted_networks(self) -> list[str]:
        return [str(net) for net, _ in self._networks]

    def inbound_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The ``inbound_from`` networks of every trunk, parsed."""
        return tuple(dict.fromkeys(net for net, _ in self._networks))

    def trunk_for(self, tenant: str, e164: str) -> Trunk | None:
        """The tenant's trunk with the longest matching prefix."""
        best: tuple[int, Trunk] | None = None
        for trunk in self.trunks:
            if trunk.tenant != tenant:
                continue
            for prefix in trunk.prefixes:
                if e164.startswith(prefix) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), trunk)
        return best[1] if best else None

    def trunk_named(self, tenant: str, name: str) -> Trunk | None:
        for trunk in self.trunks:
            if trunk.key == (tenant, name):
                return trunk
        return None

    def emergency_trunk(self, tenant: str) -> Trunk | None:
        """Where the tenant's emergency calls go: its trunk marked for them, else its route
        to its own country, else any trunk it has (an emergency call is never refused
        for want of a prefix)."""
        own = [t for t in self.trunks if t.tenant == tenant]
        for trunk in own:
            if trunk.emergency:
                return trunk
        country = self.countries.get(tenant, "US")
        code = phonenumbers.country_code_for_region(country)
        national = self.trunk_for(tenant, f"+{code}") if code else None
        return national or (own[0] if own else None)

    def callback_number(self, tenant: str, extension: str) -> str | None:
        """A number of the tenant's that reaches ``extension`` (its own DID, the lowest if
        several), else the tenant's lowest DID: what an answering point calls back."""
        return self._direct.get((tenant, extension)) or self._lowest.get(tenant)

    def trunk_at(self, host: str) -> Trunk | None:
        """The trunk whose carrier sends from ``host`` (IP-authenticated trunks): its IP
        host, an address its DNS name resolves to, or one of its ``inbound_from`` networks."""
        resolved = self._ip_hosts.get(host) or self.sources.get(host)
        if resolved is not None or not self._networks:
            return resolved
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        for net, candidate in self._networks:
            if ip in net:
                return candidate
        return None
