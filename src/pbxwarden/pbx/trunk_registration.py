"""The PBX registering itself to a carrier (RFC 3261 10.2), for trunks with ``register``.

Many carriers only send inbound calls to, and only accept outbound calls from, a PBX
that keeps a registration with them. :class:`TrunkRegistration` is that one binding as
a sans-I/O state machine: fed responses, transaction timeouts and the time, it returns
the REGISTER requests to send and says when it next wants to be woken (a refresh at
50-80 % of the granted expiry, or a retry with exponential backoff). It answers the
registrar's digest challenge once, and again only after a ``stale=TRUE`` one, so a
wrong password is a visible failure, never a loop that gets the PBX banned.

:class:`TrunkRegistrations` keeps one per registering trunk, following the routing
snapshot, through the same port (send, local address, timers) as the B2BUA. A trunk
given by DNS name registers to its first server by RFC 3263 (``TrunkLocator``), with the
name in the Request-URI, From and To (the carrier's domain); after a timeout or a 503
the next attempt goes to the next server.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import structlog

from pbxwarden.pbx.locate import FAILOVER_STATUSES, Failover, StaticLocator, TrunkLocator
from pbxwarden.pbx.routing import Trunk
from pbxwarden.sip.digest import DigestError
from pbxwarden.sip.digest_client import (
    AUTH_HEADERS,
    ClientCredentials,
    DigestClient,
    select_challenge,
    with_credentials,
)
from pbxwarden.sip.message import (
    CSeq,
    Headers,
    Request,
    Response,
    Via,
    generate_branch,
    generate_call_id,
    generate_tag,
    safe_reason,
)
from pbxwarden.sip.transaction import Address, TransactionKey
from pbxwarden.sip.uri import URI, NameAddr

log = structlog.get_logger("pbxwarden.trunks")

MAX_AUTH_ATTEMPTS = 2  # credentials once, and once more only after a stale=TRUE challenge


class RegState(StrEnum):
    IDLE = "idle"  # not started yet
    REGISTERING = "registering"
    REGISTERED = "registered"  # also while a refresh is on its way
    FAILED = "failed"  # waiting to retry (or, without usable credentials, for good)
    UNREGISTERING = "unregistering"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class RegistrationTimers:
    """Seconds. Refreshes are spread over a fraction of the granted expiry so that many
    PBXs behind one carrier do not refresh in step; failures back off exponentially,
    rejected credentials from a longer start (each attempt is a failed login to them)."""

    refresh_low: float = 0.5
    refresh_high: float = 0.8
    min_refresh: float = 1.0
    retry_first: float = 30.0
    auth_retry_first: float = 300.0
    retry_max: float = 3600.0


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class TrunkRegistration:
    """One trunk's registration to its carrier; times are any monotonic clock's seconds."""

    def __init__(
        self,
        trunk: Trunk,
        local: Address,
        *,
        user_agent: str = "pbxwarden",
        timers: RegistrationTimers | None = None,
        jitter: Callable[[], float] = random.random,
        cnonce_factory: Callable[[], str] | None = None,
    ) -> None:
        self.trunk = trunk
        self.local = local
        self.user_agent = user_agent
        self.timers = timers or RegistrationTimers()
        self._jitter = jitter
        self.state = RegState.IDLE
        self.reason = ""  # why the last attempt failed; shown to the operator
        self.granted: int | None = None
        self.expires_at: float | None = None
        self.failures = 0
        self.next_wakeup: float | None = None
        self._call_id = generate_call_id()  # one Call-ID for every REGISTER (RFC 3261 10.2.4)
        self._from_tag = generate_tag()
        self._cseq = 0
        self._pending: Request | None = None
        self._auth_attempts = 0
        self._brief_retries = 0
        self._expires = trunk.register_expires
        self._client: DigestClient | None = None
        if trunk.username is not None and trunk.password is not None:
            self._client = DigestClient(
                ClientCredentials(trunk.username, trunk.password, trunk.realm), cnonce_factory
            )

    # -- inputs ----------------------------------------------------------------------

    def start(self, now: float) -> list[Request]:
        if self._client is None:
            self.state = RegState.FAILED
            self.reason = "no usable password (set the trunk's credentials again)"
            self.next_wakeup = None  # nothing will change until the trunk does
            return []
        self.state = RegState.REGISTERING
        return [self._register(self._expires)]

    def wake(self, now: float) -> list[Request]:
        """Called at :attr:`next_wakeup`: refresh a registration, or retry a failed one."""
        if self.next_wakeup is None or now < self.next_wakeup:
            return []
        self.next_wakeup = None
        if self.state is RegState.FAILED:
            self.state = RegState.REGISTERING
        elif self.state is not RegState.REGISTERED:
            return []
        return [self._register(self._expires)]

    def stop(self, now: float) -> list[Request]:
        """Unregister (Expires: 0) if the carrier may hold a binding of ours; else just stop."""
        self.next_wakeup = None
        if self.state in (RegState.REGISTERED, RegState.REGISTERING):
            self.state = RegState.UNREGISTERING
            return [self._register(0)]
        if self.state is not RegState.UNREGISTERING:
            self.state = RegState.STOPPED
        return []

    def on_response(self, response: Response, now: float) -> list[Request]:
        pending = self._pending
        if (
            pending is None
            or response.status < 200
            or response.call_id != self._call_id
            or response.cseq.number != pending.cseq.number
        ):
            return []
        self._pending = None
        status = response.status
        leaving = self.state is RegState.UNREGISTERING
        if status in AUTH_HEADERS:
            return self._challenged(pending, response, now)
        if leaving:
            self._stopped()
            return []
        if 200 <= status < 300:
            self._registered(pending, response, now)
            return []
        if status == 423 and self._brief_retries < 2:
            # Interval Too Brief: ask again for at least what the registrar wants.
            self._brief_retries += 1
            minimum = response.headers.get("Min-Expires")
            if minimum is not None and minimum.strip().isdigit():
                self._expires = max(self._expires, min(int(minimum), 86400))
                return [self._register(self._expires)]
        reason = f"{status} {safe_reason(response.reason, 60)}"
        return self._fail(f"the carrier refused the registration ({reason})", now)

    def on_timeout(self, cseq: int, now: float) -> list[Request]:
        """The client transaction of the REGISTER with this CSeq got no final answer."""
        if self._pending is None or self._pending.cseq.number != cseq:
            return []
        self._pending = None
        if self.state is RegState.UNREGISTERING:
            self._stopped()
            return []
        return self._fail("no answer from the carrier", now)

    def elsewhere(self, cseq: int, now: float) -> list[Request]:
        """The REGISTER with this CSeq failed at one of the carrier's servers (no answer,
        503) and another server is there: the same registration, fresh, to send there
        (RFC 3263 4.3). Nothing while unregistering: the binding was at the first one."""
        pending = self._pending
        if pending is None or pending.cseq.number != cseq or self.state is RegState.UNREGISTERING:
            return []
        return [self._register(pending.expires if pending.expires is not None else self._expires)]

    def unreachable(self, reason: str, now: float) -> None:
        """The request could not be sent at all (the carrier's name has no address)."""
        self._pending = None
        if self.state is RegState.UNREGISTERING:
            self._stopped()
        else:
            self._fail(reason, now)

    # -- outputs for operators -------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.state is RegState.STOPPED

    def status(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state.value}
        if self.state is RegState.REGISTERED and self.expires_at is not None:
            out["expires_in"] = max(0, int(self.expires_at - now))
        if self.reason and self.state is not RegState.REGISTERED:
            out["reason"] = self.reason
        if self.state is RegState.FAILED and self.next_wakeup is not None:
            out["retry_in"] = max(0, int(self.next_wakeup - now))
        return out

    # -- internals -------------------------------------------------------------------

    def _register(self, expires: int) -> Request:
        """A fresh REGISTER (no credentials: the registrar challenges, we answer)."""
        self._cseq += 1
        self._auth_attempts = 0
        trunk, local = self.trunk, self.local
        assert trunk.username is not None
        aor = URI("sip", user=trunk.username, host=_uri_host(trunk.host))
        params: dict[str, str | None] = (
            {} if local.transport == "UDP" else {"transport": local.transport.lower()}
        )
        # No user part: the carrier's calls then name the DID in the To header, which is
        # where the inbound path looks after the Request-URI.
        contact = NameAddr(URI("sip", host=_uri_host(local.host), port=local.port, params=params))
        request = Request(
            via=[
                Via(
                    local.transport,
                    _uri_host(local.host),
                    local.port,
                    {"branch": generate_branch(), "rport": None},
                )
            ],
            from_=NameAddr(aor, None, {"tag": self._from_tag}),
            to=NameAddr(aor),
            call_id=self._call_id,
            cseq=CSeq(self._cseq, "REGISTER"),
            headers=Headers([("User-Agent", self.user_agent)]),
            max_forwards=70,
            contacts=[contact],
            expires=expires,
            method="REGISTER",
            uri=URI("sip", host=_uri_host(trunk.host), port=trunk.uri_port),
        )
        self._pending = request
        return request

    def _challenged(self, pending: Request, response: Response, now: float) -> list[Request]:
        leaving = self.state is RegState.UNREGISTERING
        if self._auth_attempts > 0 and (
            self._auth_attempts >= MAX_AUTH_ATTEMPTS or not _stale(response)
        ):
            if leaving:
                self._stopped()
                return []
            why = f"the carrier rejected our credentials ({response.status} after authenticating)"
            return self._fail(why, now, credentials=True)
        assert self._client is not None
        try:
            header, value = self._client.answer(response, "REGISTER", str(pending.uri))
        except DigestError as exc:
            if leaving:
                self._stopped()
                return []
            return self._fail(f"cannot answer the carrier's challenge ({exc})", now)
        attempts = self._auth_attempts + 1
        request = with_credentials(pending, header, value)
        self._cseq = request.cseq.number
        self._pending = request
        self._auth_attempts = attempts
        return [request]

    def _registered(self, pending: Request, response: Response, now: float) -> None:
        granted = _granted(response, pending)
        if granted <= 0:
            self._fail("the carrier granted no registration time", now)
            return
        self.state = RegState.REGISTERED
        self.reason = ""
        self.failures = 0
        self._brief_retries = 0
        self.granted = granted
        self.expires_at = now + granted
        t = self.timers
        fraction = t.refresh_low + (t.refresh_high - t.refresh_low) * self._jitter()
        self.next_wakeup = now + max(t.min_refresh, granted * fraction)

    def _fail(self, reason: str, now: float, *, credentials: bool = False) -> list[Request]:
        self.state = RegState.FAILED
        self.reason = reason
        self.failures += 1
        self.expires_at = None
        t = self.timers
        first = t.auth_retry_first if credentials else t.retry_first
        delay = min(first * 2 ** min(self.failures - 1, 20), t.retry_max)
        self.next_wakeup = now + delay
        return []

    def _stopped(self) -> None:
        self.state = RegState.STOPPED
        self.next_wakeup = None
        self.expires_at = None


def _stale(response: Response) -> bool:
    try:
        return select_challenge(response)[0].stale
    except DigestError:
        return False


def _granted(response: Response, request: Request) -> int:
    """Seconds the registrar granted our contact: its ``expires`` param in the 200's
    Contact list, else the Expires header, else what we asked for (RFC 3261 10.2.4)."""
    ours = request.contacts[0].uri
    for contact in response.contacts:
        uri = contact.uri
        if uri.host.lower() == ours.host.lower() and (uri.port or 5060) == (ours.port or 5060):
            value = contact.params.get("expires")
            if value is not None and value.strip().isdigit():
                return int(value)
    if response.expires is not None:
        return response.expires
    return request.expires or 0


# --------------------------------------------------------------------------- manager


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class RegistrationPort(Protocol):
    """What the registrations need from the running server (a subset of the CallPort)."""

    def send_request(self, request: Request, dest: Address) -> TransactionKey: ...
    def local_address(self, transport: str) -> tuple[str, int]: ...
    def schedule(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


class TrunkRegistrations:
    """Every trunk registration of the server.

    Follows the routing snapshot (a trunk added, changed or removed starts, restarts or
    unregisters its registration), claims the responses and timeouts of its own client
    transactions, and keeps one wake-up timer per registration.
    """

    def __init__(
        self,
        port: RegistrationPort,
        clock: Callable[[], float],
        user_agent: str = "pbxwarden",
        timers: RegistrationTimers | None = None,
        locator: TrunkLocator | None = None,
    ) -> None:
        self.port = port
        self.clock = clock
        self.user_agent = user_agent
        self.timers = timers
        self.locator: TrunkLocator = locator or StaticLocator()
        self._servers: dict[int, Failover] = {}  # by id(registration): where it goes
        self._unresolved: dict[tuple[str, str], str] = {}  # named trunks waiting for DNS
        self._trunks: tuple[Trunk, ...] = ()
        self._active: dict[tuple[str, str], TrunkRegistration] = {}
        self._leaving: list[TrunkRegistration] = []  # unregistering after a change
        self._keys: dict[TransactionKey, tuple[TrunkRegistration, int]] = {}
        self._timers: dict[int, Cancellable] = {}
        self._started = False
        self._closing = False

    def start(self) -> None:
        """Begin registering (once the transports are bound: the Contact needs them)."""
        self._started = True
        self.sync(self._trunks)

    def sync(self, trunks: Iterable[Trunk]) -> None:
        self._trunks = tuple(trunks)
        if not self._started or self._closing:
            return
        wanted = {(t.tenant, t.name): t for t in self._trunks if t.register}
        for key, reg in list(self._active.items()):
            if wanted.get(key) != reg.trunk:  # removed, or its settings changed
                del self._active[key]
                self._leaving.append(reg)
                self._send(reg, reg.stop(self.clock()))
        self._unresolved.clear()
        for key, trunk in wanted.items():
            if key not in self._active:
                servers = self.locator.failover(trunk)
                if servers.current is None:  # a name not resolved yet: the next sync
                    self._unresolved[key] = servers.reason
                    continue
                host, port = self.port.local_address(trunk.address.transport)
                reg = TrunkRegistration(
                    trunk,
                    Address(trunk.address.transport, host, port),
                    user_agent=self.user_agent,
                    timers=self.timers,
                )
                self._active[key] = reg
                self._send(reg, reg.start(self.clock()))
                if reg.state is RegState.FAILED:
                    log.warning(
                        "trunk registration impossible", trunk=trunk.name, reason=reg.reason
                    )

    def on_response(self, response: Response, key: TransactionKey) -> bool:
        """True if the response belongs to a trunk registration (and was handled)."""
        entry = self._keys.get(key)
        if entry is None:
            return False
        if response.status >= 200:
            del self._keys[key]
        reg, cseq = entry
        before = reg.state
        if response.status in FAILOVER_STATUSES and self._failed_over(reg, cseq):
            return True
        self._send(reg, reg.on_response(response, self.clock()))
        self._report(reg, before)
        return True

    def on_timeout(self, key: TransactionKey) -> bool:
        entry = self._keys.pop(key, None)
        if entry is None:
            return False
        reg, cseq = entry
        before = reg.state
        if self._failed_over(reg, cseq):
            return True
        self._send(reg, reg.on_timeout(cseq, self.clock()))
        self._report(reg, before)
        return True

    def stop(self) -> None:
        """Unregister everything (clean shutdown); :attr:`pending` says when it is over."""
        self._closing = True
        if not self._started:
            return
        now = self.clock()
        for reg in list(self._active.values()):
            self._leaving.append(reg)
            self._send(reg, reg.stop(now))
        self._active.clear()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    @property
    def pending(self) -> bool:
        """Some unregistration still waits for the carrier's answer."""
        return any(not reg.done for reg in self._leaving)

    def status(self) -> dict[str, dict[str, Any]]:
        now = self.clock()
        out = {f"{t}/{n}": reg.status(now) for (t, n), reg in sorted(self._active.items())}
        for (t, n), reason in sorted(self._unresolved.items()):
            out[f"{t}/{n}"] = {"state": "waiting for DNS", "reason": reason}
        return out

    # -- internals -------------------------------------------------------------------

    def _send(self, reg: TrunkRegistration, requests: list[Request]) -> None:
        for request in requests:
            dest = self._server(reg)
            if dest is None:
                reason = self._servers.pop(id(reg)).reason
                reg.unreachable(reason, self.clock())
                break
            key = self.port.send_request(request, dest)
            self._keys[key] = (reg, request.cseq.number)
        if reg.done:
            self._servers.pop(id(reg), None)
            if reg in self._leaving:
                self._leaving.remove(reg)
        self._arm(reg)

    def _server(self, reg: TrunkRegistration) -> Address | None:
        """Where the registration's requests go: the server it went to last, unless that
        one failed or DNS no longer names it; else the first by RFC 3263."""
        failover = self._servers.get(id(reg))
        fresh = self.locator.failover(reg.trunk)
        if failover is None or failover.current is None or failover.current not in fresh.targets:
            self._servers[id(reg)] = failover = fresh
        return failover.current

    def _failed_over(self, reg: TrunkRegistration, cseq: int) -> bool:
        """Its server did not answer or said 503: the REGISTER goes to the next server at
        once, if there is one (True). After the last, the registration fails as usual and
        its retry starts again from the first server of a fresh ordering."""
        failover = self._servers.get(id(reg))
        failed = failover.current if failover is not None else None
        if failed is not None:
            self.locator.failed(failed)
        if failover is None or failover.next() is None:
            self._servers.pop(id(reg), None)
            return False
        requests = reg.elsewhere(cseq, self.clock())
        if not requests:
            return False
        log.warning(
            "carrier registrar failed; trying the next one",
            trunk=reg.trunk.name,
            failed=str(failed),
            next=str(failover.current),
        )
        self._send(reg, requests)
        return True

    def _arm(self, reg: TrunkRegistration) -> None:
        timer = self._timers.pop(id(reg), None)
        if timer is not None:
            timer.cancel()
        if reg.next_wakeup is None or self._closing:
            return
        delay = max(0.0, reg.next_wakeup - self.clock())
        self._timers[id(reg)] = self.port.schedule(delay, lambda: self._wake(reg))

    def _wake(self, reg: TrunkRegistration) -> None:
        self._timers.pop(id(reg), None)
        if self._active.get((reg.trunk.tenant, reg.trunk.name)) is not reg:
            return
        self._send(reg, reg.wake(self.clock()))

    def _report(self, reg: TrunkRegistration, before: RegState) -> None:
        name = reg.trunk.name
        if reg.state is RegState.REGISTERED and before is not RegState.REGISTERED:
            log.info("trunk registered", trunk=name, expires=reg.granted)
        elif reg.state is RegState.FAILED and before is not RegState.FAILED:
            retry = None if reg.next_wakeup is None else round(reg.next_wakeup - self.clock())
            log.warning("trunk registration failed", trunk=name, reason=reg.reason, retry_in=retry)
        elif reg.state is RegState.STOPPED and before is not RegState.STOPPED:
            log.info("trunk unregistered", trunk=name)
