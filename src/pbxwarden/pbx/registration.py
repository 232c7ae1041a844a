"""Handling one REGISTER from digest check to answer: the same steps whether the main
process or a registrar worker runs them (see :mod:`pbxwarden.registrar_workers`).

Sans-I/O: what must reach the outside (a failed or successful authentication for the
firewall's counters, a network to remember) goes through the two small interfaces
below, so the main process can feed its firewall directly and a worker can forward
the same facts to the main process. Only :func:`refresh_networks`, which both run
between requests, reads the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Protocol

import structlog

from pbxwarden.config import SipConfig
from pbxwarden.firewall.netwatch import NetworkWatch
from pbxwarden.pbx.auth import Authenticator
from pbxwarden.pbx.directory import Directory
from pbxwarden.pbx.location import LocationService
from pbxwarden.pbx.registrar import Registrar, RegistrarPolicy
from pbxwarden.sip.digest import Algorithm, DigestError, DigestServer
from pbxwarden.sip.message import Request, Response, make_response, safe_reason
from pbxwarden.sip.transaction import Address
from pbxwarden.store.db import ExtensionAuth, Store

log = structlog.get_logger("pbxwarden.registration")


def add_realms(
    servers: dict[str, DigestServer],
    realms: list[str],
    secret: bytes,
    sip: SipConfig,
    *,
    issuer: int = 0,
    foreign_nonces_unless_register: bool = False,
) -> None:
    """A digest server for each realm (tenant) not served yet."""
    algorithms = [Algorithm(a) for a in sip.digest_algorithms]
    for realm in realms:
        if realm not in servers:
            servers[realm] = DigestServer(
                secret,
                realm,
                algorithms,
                nonce_lifetime=sip.nonce_lifetime,
                issuer=issuer,
                foreign_nonces_unless_register=foreign_nonces_unless_register,
            )


def make_authenticator(
    servers: dict[str, DigestServer], realms: list[str], sip: SipConfig
) -> Authenticator:
    """The default realm is the configured one when a tenant has it, else the first."""
    default = sip.realm if sip.realm in servers else realms[0]
    return Authenticator(servers, default, sip.user_agent)


def make_registrar(location: LocationService, sip: SipConfig) -> Registrar:
    policy = RegistrarPolicy(
        sip.min_expires, sip.max_expires, sip.default_expires, sip.max_contacts
    )
    return Registrar(location, policy, sip.user_agent)


class AuthFeedback(Protocol):
    """Where authentication outcomes go: brute-force counting and bans (the firewall)."""

    def auth_failed(self, address: str, extension: str, now: float) -> None: ...

    def auth_succeeded(self, address: str) -> None: ...


class LockGate(Protocol):
    """Extension locks and the trunk-address rule (:mod:`pbxwarden.firewall.locks`)."""

    def failed(self, ext: ExtensionAuth, address: str, now: float) -> object: ...

    def refusal(self, ext: ExtensionAuth, address: str, now: float) -> str | None: ...


RecordNetwork = Callable[[int, str, float, bool], None]
"""(extension id, network, wall time, approved): a network to remember, written later."""


class RegistrationResult:
    """Not a dataclass: compiled by mypyc, a dataclass keeps an interpreted __init__."""

    __slots__ = ("auth_failed", "registered", "response")

    def __init__(self, response: Response, registered: bool, auth_failed: bool) -> None:
        self.response: Final = response
        self.registered: Final = registered  # a 200 OK: the bindings changed or were read
        self.auth_failed: Final = auth_failed  # credentials refused (for the statistics)


class RegistrationHandler:
    def __init__(
        self,
        auth: Authenticator,
        directory: Directory,
        registrar: Registrar,
        netwatch: NetworkWatch,
        feedback: AuthFeedback,
        record_network: RecordNetwork,
        locks: LockGate | None = None,
    ) -> None:
        self.auth = auth
        self.locks = locks
        self.directory = directory
        self.registrar = registrar
        self.netwatch = netwatch
        self.feedback = feedback
        self.record_network = record_network

    def handle(self, request: Request, source: Address, wall: float) -> RegistrationResult:
        try:
            credentials = self.auth.credentials(request)
        except DigestError as exc:
            reply = make_response(request, 400, f"Bad Request ({safe_reason(str(exc))})")
            return RegistrationResult(reply, False, False)
        extension = None
        if credentials is not None:
            extension = self.directory.get(self.auth.realm_for(request), credentials.username)
        outcome = self.auth.authenticate(request, credentials, extension, wall)
        if outcome.response is not None:
            failed = credentials is not None and outcome.response.status == 403
            if failed:
                assert credentials is not None
                self.feedback.auth_failed(source.host, credentials.username, wall)
                if extension is not None and self.locks is not None:
                    self.locks.failed(extension, source.host, wall)  # counted per extension
                log.info(
                    "register refused",
                    source=str(source),
                    user=credentials.username[:64],
                    reason=outcome.reason,
                )
            return RegistrationResult(outcome.response, False, failed)
        assert outcome.extension is not None and credentials is not None
        if not outcome.extension.allows(source.host):
            # The right password from the wrong network: likely stolen credentials. Same
            # answer as a wrong password, counted towards a ban, and loudly logged.
            self.feedback.auth_failed(source.host, credentials.username, wall)
            if self.locks is not None:
                self.locks.failed(outcome.extension, source.host, wall)
            log.warning(
                "register from outside the extension's networks",
                source=str(source),
                extension=outcome.extension.number,
                tenant=outcome.extension.tenant,
            )
            return RegistrationResult(self.auth.forbidden(request), False, False)
        if self.locks is not None:
            why = self.locks.refusal(outcome.extension, source.host, wall)
            if why is not None:
                # Locked (or a trunk's address): the right password gets the wrong
                # password's answer and is counted like one, so guessing learns nothing.
                self.feedback.auth_failed(source.host, credentials.username, wall)
                self.locks.failed(outcome.extension, source.host, wall)
                log.info(
                    "register refused",
                    source=str(source),
                    user=credentials.username[:64],
                    reason=why,
                )
                return RegistrationResult(self.auth.forbidden(request), False, True)
        self.feedback.auth_succeeded(source.host)
        if not self._watch_network(outcome.extension, source, wall):
            return RegistrationResult(self.auth.forbidden(request), False, False)
        response = self.registrar.register(request, outcome.extension, source.flow(), wall)
        return RegistrationResult(response, response.status == 200, False)

    def _watch_network(self, ext: ExtensionAuth, source: Address, wall: float) -> bool:
        """Registration watch: alert on (or hold back) a registration from a new network
        or, with a GeoIP database, a new country."""
        allowed = True
        for verdict in self.netwatch.check(ext.id, source.host):
            if verdict.known:
                continue
            if not verdict.first:
                what = "country" if verdict.network.startswith("country:") else "network"
                log.warning(
                    f"registration from a new {what}",
                    tenant=ext.tenant,
                    extension=ext.number,
                    network=verdict.network,
                    source=str(source),
                    known=sorted(self.netwatch.networks(ext.id)),
                    action="allowed" if verdict.allowed else "waiting for approval",
                )
            self.record_network(ext.id, verdict.network, wall, verdict.allowed)
            allowed = allowed and verdict.allowed
        return allowed


# How far back a reader looks again, before the newest change it saw: rows written by
# transactions that committed after that one but were stamped before it (stamped once
# they hold the database's write lock, so by no more than a transaction's length).
NETWORK_MARGIN = 5.0


async def refresh_networks(store: Store, netwatch: NetworkWatch, known: float) -> float:
    """Networks recorded or approved elsewhere (the CLI, the API, the other processes),
    read only when the newest change moved from ``known`` (-1: never read), and then
    only the rows changed since, not every extension's networks. Returns the newest
    change now loaded. The one part here that reads the database."""
    version = await asyncio.to_thread(store.networks_version)
    if version == known:
        return known
    since = None if known < 0 else known - NETWORK_MARGIN
    netwatch.load(await asyncio.to_thread(store.approved_networks, since))
    return version
