"""Registration watch: an extension registering from a network it never used before.

A desk phone lives on one network for years. When its credentials suddenly register
from elsewhere (another /24 or /48), the password has most likely leaked; that is
the first step of the diversion attack. The first network an extension registers
from is trusted on first use; later new ones raise an alert and, when the operator
asks for it, are refused until approved.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from dataclasses import dataclass


def network_of(address: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) an address belongs to, as text."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass(frozen=True, slots=True)
class NetworkVerdict:
    network: str
    known: bool
    first: bool  # the extension's first network ever: trusted on first use
    allowed: bool


class NetworkWatch:
    """Networks (and, with a GeoIP database, countries as ``country:XX``) per extension."""

    def __init__(
        self, require_approval: bool = False, country_of: Callable[[str], str | None] | None = None
    ) -> None:
        self.require_approval = require_approval
        self._country_of = country_of
        # per extension, its one network as is (most have one: a set costs 216 bytes,
        # a tuple of one 48, in every process for every extension that ever registered),
        # a tuple of them for more
        self._seen: dict[int, str | tuple[str, ...]] = {}
        self._network_of: dict[str, str | None] = {}  # per source address: parsed once

    def load(self, rows: list[tuple[int, str]]) -> None:
        """Add stored (approved) networks to what is known.

        Merged, never replaced: a network seen a moment ago may still be on its way to
        the database, and forgetting it would treat the extension's next registration
        as its first ever (trusted on first use) and write it again.
        """
        for extension_id, network in rows:
            self._add(extension_id, sys.intern(network))  # an office's phones share one

    def _known(self, extension_id: int) -> tuple[str, ...] | None:
        known = self._seen.get(extension_id)
        return (known,) if isinstance(known, str) else known

    def _add(self, extension_id: int, network: str) -> None:
        known = self._known(extension_id)
        if known is None:
            self._seen[extension_id] = network
        elif network not in known:
            self._seen[extension_id] = (*known, network)

    def check(self, extension_id: int, address: str) -> list[NetworkVerdict]:
        """Verdicts for the address's network and, when known, its country.

        A new network or country is remembered at once unless approval is required.
        """
        network = self._network_of.get(address, "")
        if network == "":
            if len(self._network_of) >= 65536:  # addresses come from the network: bounded
                self._network_of.clear()
            network = self._network_of[address] = network_of(address)
        if network is None:
            return []
        verdicts = [self._check(extension_id, network)]
        country = self._country_of(address) if self._country_of is not None else None
        if country is not None:
            verdicts.append(self._check(extension_id, f"country:{country}"))
        return verdicts

    def _check(self, extension_id: int, network: str) -> NetworkVerdict:
        known = self._known(extension_id)
        kind = network.startswith("country:")
        if known is None or not any(n.startswith("country:") == kind for n in known):
            self._add(extension_id, network)
            return NetworkVerdict(network, known=False, first=True, allowed=True)
        if network in known:
            return NetworkVerdict(network, known=True, first=False, allowed=True)
        if self.require_approval:
            return NetworkVerdict(network, known=False, first=False, allowed=False)
        self._add(extension_id, network)
        return NetworkVerdict(network, known=False, first=False, allowed=True)

    def networks(self, extension_id: int) -> set[str]:
        return set(self._known(extension_id) or ())

    def knows(self, extension_id: int, network: str) -> bool:
        """Whether the extension registered successfully from ``network`` (or it was
        approved): what an extension lock still lets through."""
        return network in (self._known(extension_id) or ())
