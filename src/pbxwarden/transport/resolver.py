"""Trunk names resolved with dnspython's asyncio resolver, cached by TTL.

The decisions (which questions, which order of targets, which TTL) are RFC 3263's and
live in :mod:`pbxwarden.pbx.locate`; this is the thin asyncio part around them. Every
trunk whose host is a DNS name is looked up when it appears and again when its answers
expire (their TTL, bounded by a floor and a ceiling). A lookup that fails (no answer,
SERVFAIL) or finds no address keeps the last good answer, with a warning, and is tried
again after the floor: a carrier's DNS hiccup must not cut the PBX off from it. Calls
and registrations read the cache only, so a routing decision never waits on DNS, and
the event loop never blocks on it (``dns.asyncresolver``). Trunks by IP address are
never looked up and behave exactly as before.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden.pbx.locate import Failover, Lookup, Naptr, Question, Resolution, Srv, is_ip
from pbxwarden.pbx.routing import Trunk
from pbxwarden.sip.transaction import Address

if TYPE_CHECKING:
    import dns.asyncresolver

log = structlog.get_logger("pbxwarden.dns")

# The PBX sends to carriers over UDP (it opens no TCP or TLS connection of its own), so a
# trunk whose transport is left to DNS only takes UDP targets from NAPTR and SRV.
CLIENT_TRANSPORTS = ("UDP",)
# A server that gave no answer (or 503) is tried last for this long: the calls after the
# first do not each wait Timer B for it (32 s by default) before reaching the next one.
FAILED_HOLD = 60.0

LookupKey = tuple[str, int | None, str | None]  # host, port (None: SRV), transport (None: NAPTR)


def lookup_key(trunk: Trunk) -> LookupKey:
    return (trunk.host.lower(), trunk.uri_port, trunk.lookup_transport)


@dataclass
class _Entry:
    good: Resolution | None = None  # the last answer that gave addresses
    due: float = 0.0  # loop/monotonic time to ask again
    error: str | None = None  # why the last lookup was not used
    changed_at: float | None = None  # wall time the addresses were last set


class TrunkResolver:
    """Resolves and caches the trunks' names; the :class:`~pbxwarden.pbx.locate.TrunkLocator`
    of the running server."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] = (),
        *,
        timeout: float = 3.0,
        min_ttl: float = 30.0,
        max_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.timeout = timeout
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self._clock = clock
        self._rng = rng or random.Random()
        self._entries: dict[LookupKey, _Entry] = {}
        # IP versions the PBX can send from (its bound SIP address); None: any. A target
        # of another family could only time out, so it is not tried.
        self.families: frozenset[int] | None = None
        self._failed: dict[Address, float] = {}  # target -> until when it is tried last
        self._setup_error: str | None = None
        self._nameservers = tuple(nameservers)
        # made at the first question: dnspython costs every process (the registrar
        # workers too) a twentieth of a second to import, and most PBXs name no trunk
        self._dns: dns.asyncresolver.Resolver | None = None

    def _resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is not None:
            return self._dns
        import dns.asyncresolver
        import dns.nameserver
        import dns.resolver

        nameservers = self._nameservers
        try:
            resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration as exc:  # no /etc/resolv.conf
            resolver = dns.asyncresolver.Resolver(configure=False)
            self._setup_error = f"no system resolver ({exc}); set dns.nameservers"
        if nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers
            ]
        resolver.cache = None  # answers are cached here, per trunk, by TTL
        self._dns = resolver
        return resolver

    # -- refreshing ------------------------------------------------------------------

    async def refresh(self, trunks: Iterable[Trunk]) -> bool:
        """Look up every named trunk whose answers are due; True if any trunk's
        addresses changed (the routing and the firewall's trusted set then follow)."""
        wanted = {lookup_key(t) for t in trunks if not is_ip(t.host)}
        changed = False
        for key in list(self._entries):
            if key not in wanted:
                del self._entries[key]
                changed = True
        now = self._clock()
        due = [k for k in sorted(wanted, key=str) if self._entry(k).due <= now]
        if not due:
            return changed
        results = await asyncio.gather(*(self._resolve(k) for k in due))
        for key, result in zip(due, results, strict=True):
            changed |= self._keep(key, result)
        return changed

    def _entry(self, key: LookupKey) -> _Entry:
        return self._entries.setdefault(key, _Entry())

    async def _resolve(self, key: LookupKey) -> Resolution:
        host, port, transport = key
        lookup = Lookup(host, port, transport, CLIENT_TRANSPORTS)
        while questions := lookup.questions():
            replies = await asyncio.gather(*(self._ask(q) for q in questions))
            for question, reply in zip(questions, replies, strict=True):
                if isinstance(reply, str):
                    lookup.failed(question, reply)
                else:
                    lookup.answer(question, reply[0], reply[1])
        return lookup.result()

    async def _ask(self, question: Question) -> tuple[list[Naptr | Srv | str], float | None] | str:
        """One DNS question: (records, TTL), ([], None) for a negative answer, or why
        there was no answer."""
        resolver = self._resolver()
        if self._setup_error is not None:
            return self._setup_error
        import dns.exception
        import dns.rdatatype
        import dns.resolver

        name, rdtype = question
        try:
            answer = await resolver.resolve(
                name, rdtype, search=False, lifetime=self.timeout, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], None
        except dns.exception.Timeout:
            return "no answer from the DNS server"
        except dns.resolver.NoNameservers:
            return "the DNS servers failed to answer (SERVFAIL or refused)"
        except dns.exception.DNSException as exc:
            return f"DNS error: {exc}"
        if answer.rrset is None:
            return [], None
        records: list[Naptr | Srv | str] = []
        for rdata in answer.rrset:
            if rdata.rdtype == dns.rdatatype.NAPTR:
                records.append(
                    Naptr(
                        rdata.order,
                        rdata.preference,
                        rdata.flags.decode("ascii", "replace"),
                        rdata.service.decode("ascii", "replace"),
                        rdata.replacement.to_text(omit_final_dot=True),
                    )
                )
            elif rdata.rdtype == dns.rdatatype.SRV:
                records.append(
                    Srv(
                        rdata.priority,
                        rdata.weight,
                        rdata.port,
                        rdata.target.to_text(omit_final_dot=True),
                    )
                )
            elif rdata.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                ip = ipaddress.ip_address(rdata.address)
                if not (ip.is_unspecified or ip.is_multicast):  # no carrier is there
                    records.append(str(ip))
        return records, float(answer.rrset.ttl)

    def _keep(self, key: LookupKey, result: Resolution) -> bool:
        entry = self._entries[key]
        before = entry.good.addresses if entry.good is not None else frozenset()
        now = self._clock()
        if result.servers and not result.errors:
            entry.good, entry.error = result, None
            entry.due = now + result.expires_in(self.min_ttl, self.max_ttl)
        elif result.servers and entry.good is None:
            # partial (say, AAAA timed out) and nothing better: used, and asked again soon
            entry.good, entry.error = result, "; ".join(result.errors)
            entry.due = now + self.min_ttl
            log.warning(
                "trunk name partly resolved", host=key[0], error=entry.error, retry_in=self.min_ttl
            )
        else:
            entry.error = "; ".join(result.errors) or "DNS has no address for it"
            entry.due = now + self.min_ttl
            log.warning(
                "trunk name not resolved"
                + ("; keeping the last good answer" if entry.good is not None else ""),
                host=key[0],
                error=entry.error,
                retry_in=self.min_ttl,
            )
        after = entry.good.addresses if entry.good is not None else frozenset()
        if after != before:
            entry.changed_at = time.time()
            log.info(
                "trunk name resolved",
                host=key[0],
                addresses=sorted(after),
                targets=[str(t) for t in entry.good.targets(random.Random(0))]
                if entry.good is not None
                else [],
                ttl=entry.good.ttl if entry.good is not None else None,
            )
        return after != before

    # -- what calls and registrations read ----------------------------------------------

    def failover(self, trunk: Trunk) -> Failover:
        """The trunk's targets for one request, in RFC 3263 order (weights drawn anew)."""
        if is_ip(trunk.host):
            return Failover([trunk.address])
        entry = self._entries.get(lookup_key(trunk))
        if entry is None or entry.good is None:
            why = entry.error if entry is not None and entry.error else "not looked up yet"
            return Failover((), f"{trunk.host} did not resolve ({why})")
        targets = entry.good.targets(self._rng)
        if self._failed:
            now = self._clock()
            self._failed = {t: until for t, until in self._failed.items() if until > now}
            targets.sort(key=lambda t: t in self._failed)  # stable: the order otherwise kept
        if self.families is not None:
            targets = [t for t in targets if ipaddress.ip_address(t.host).version in self.families]
            if not targets:
                return Failover((), f"{trunk.host} has no IPv{min(self.families)} address")
        return Failover(targets)

    def failed(self, target: Address) -> None:
        self._failed[target] = self._clock() + FAILED_HOLD

    def send_from(self, host: str) -> None:
        """The PBX sends from ``host`` (its SIP listen address): only targets of that IP
        version are usable (both from ``::``, a dual-stack socket)."""
        ip = ipaddress.ip_address(host)
        self.families = (
            frozenset({4, 6})
            if ip.version == 6 and ip.is_unspecified
            else (frozenset({ip.version}))
        )

    def addresses(self, trunks: Iterable[Trunk]) -> dict[tuple[str, str], frozenset[str]]:
        """Each named trunk's carrier addresses (every SRV target's and the name's)."""
        out: dict[tuple[str, str], frozenset[str]] = {}
        for trunk in trunks:
            entry = self._entries.get(lookup_key(trunk))
            if entry is not None and entry.good is not None:
                out[trunk.key] = entry.good.addresses
        return out

    def describe(self, trunks: Iterable[Trunk]) -> dict[str, dict[str, Any]]:
        """For ``trunk list`` and ``stats``: what each named trunk resolves to now."""
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for trunk in trunks:
            entry = self._entries.get(lookup_key(trunk))
            if entry is None:
                continue
            view: dict[str, Any] = {"addresses": [], "targets": []}
            if entry.good is not None:
                view["addresses"] = sorted(entry.good.addresses)
                view["targets"] = [str(t) for t in entry.good.targets(random.Random(0))]
            view["refresh_in"] = max(0, round(entry.due - now))
            down = [str(t) for t, until in self._failed.items() if until > now]
            if entry.good is not None and down:
                own = {str(t) for t in entry.good.targets(random.Random(0))}
                view["failed"] = sorted(t for t in down if t in own)
            if entry.error:
                view["error"] = entry.error
            out[f"{trunk.tenant}/{trunk.name}"] = view
        return out
