"""Where calls go that are not between extensions: trunks out, DIDs in.

A snapshot of the database's trunks and DIDs, swapped in whole by the server
when it reloads them, so that a routing decision never waits on the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import phonenumbers

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

    @property
    def address(self) -> Address:
        return Address(self.transport.upper(), self.host, self.port)

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
        mine = sorted(d.number for d in self.dids.values() if d.tenant == tenant)
        direct = [n for n in mine if self.dids[n].extension == extension]
        if direct:
            return direct[0]
        return mine[0] if mine else None

    def trunk_at(self, host: str) -> Trunk | None:
        """The trunk whose carrier sends from ``host`` (IP-authenticated trunks)."""
        for trunk in self.trunks:
            if trunk.host == host:
                return trunk
        return None
