"""The running PBX: wires the stages together in the one direction data flows.

transport -> firewall pre-check -> parse -> transaction layer -> PBX routing -> action.
Everything here is glue and scheduling; the decisions live in the sans-I/O modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden import _core
from pbxwarden.baseline_sync import SPOOL_FILE as BASELINE_SPOOL
from pbxwarden.baseline_sync import BaselineSync
from pbxwarden.config import Config, load_or_create_secret
from pbxwarden.control import serve_control
from pbxwarden.events import EventBus
from pbxwarden.firewall.engine import Firewall, Verdict
from pbxwarden.firewall.geo import open_geo
from pbxwarden.firewall.locks import ExtensionLocks, LockTracker
from pbxwarden.firewall.netwatch import NetworkWatch
from pbxwarden.firewall.nftables import NftablesError, NftablesOffload
from pbxwarden.guard.alerts import AlertDispatcher
from pbxwarden.guard.engine import Guard
from pbxwarden.guard.policy import with_stored
from pbxwarden.latency import Latency
from pbxwarden.lifecycle import ListenError
from pbxwarden.locking import LockSync, lock_settings
from pbxwarden.overload import overload_state
from pbxwarden.pbx.calls import CallManager, CallSettings
from pbxwarden.pbx.cdr import SPOOL_FILE, CdrWriter
from pbxwarden.pbx.directory import Directory
from pbxwarden.pbx.forwarding import FeatureCode
from pbxwarden.pbx.location import LocationService
from pbxwarden.pbx.numbers import emergency_number
from pbxwarden.pbx.registration import (
    RegistrationHandler,
    add_realms,
    make_authenticator,
    make_registrar,
)
from pbxwarden.pbx.trunk_registration import TrunkRegistrations
from pbxwarden.registrar_gate import firewall_settings, registration_route
from pbxwarden.registrar_pool import WorkerPool
from pbxwarden.registrar_protocol import binding_from_event, unframe
from pbxwarden.server_control import ControlCommands
from pbxwarden.server_port import CallPortMixin
from pbxwarden.server_sync import StoreSync
from pbxwarden.sip.digest import DigestServer
from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.message import (
    REASON_PHRASES,
    Request,
    Response,
    error_response_bytes,
    make_response,
    parse_message,
)
from pbxwarden.sip.transaction import (
    Action,
    Address,
    DeliverRequest,
    DeliverResponse,
    SendMessage,
    TimerConfig,
    TransactionError,
    TransactionKey,
    TransactionLayer,
    TransactionTimeout,
    absorbs,
    server_key,
    stamp_via,
)
from pbxwarden.sip.transaction import State as TxState
from pbxwarden.store.credentials import trunk_credential_key
from pbxwarden.store.db import Store
from pbxwarden.transport.connections import ConnectionLimits
from pbxwarden.transport.front import Fronts
from pbxwarden.transport.ingress import Ingress
from pbxwarden.transport.network import (
    FILE_RESERVE,
    SourceKind,
    Transports,
    bind_udp,
    tls_context,
)
from pbxwarden.transport.resolver import TrunkResolver
from pbxwarden.transport.rtp import MediaRelay
from pbxwarden.transport.steering import bind_group

if TYPE_CHECKING:
    from pbxwarden.cluster import ClusterNode
    from pbxwarden.cluster.relay import NodeRelay

log = structlog.get_logger("pbxwarden.server")

# what is implemented (MESSAGE: between extensions, out of a call)
ALLOW = (
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO, PRACK, REFER, MESSAGE, SUBSCRIBE"
)


# At shutdown, how long the phones of calls in progress have to answer our BYEs and
# CANCELs (retransmitted over UDP meanwhile: 0.5, 1.5 and 3.5 s after the first).
SHUTDOWN_GRACE = 4.0


# what a registrar worker's counters add to this process's statistics
_WORKER_COUNTERS = frozenset(
    ("registers_ok", "auth_failures", "parse_errors", "received", "refused")
)


@dataclass
class Stats:
    received: int = 0
    parse_errors: int = 0
    registers_ok: int = 0
    auth_failures: int = 0
    refused: int = 0
    shed: int = 0  # new calls refused with 503 while overloaded


class SipServer(CallPortMixin):
    def __init__(self, config: Config, store: Store, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._control: asyncio.AbstractServer | None = None
        self.config = config
        self.store = store
        sip = config.sip
        self._secret = load_or_create_secret(data_dir)
        realms = store.known_realms() or [sip.realm]
        self.digest: dict[str, DigestServer] = {}
        self._add_realms(realms)
        self.auth = make_authenticator(self.digest, realms, sip)
        self.location = LocationService()
        self.registrar = make_registrar(self.location, sip)
        self.directory = Directory()
        self.tx = TransactionLayer(TimerConfig(sip.t1, sip.t2, sip.t4))
        fw = config.firewall
        self.firewall = Firewall(firewall_settings(config))
        self.fronts = Fronts(config.cluster.fronts)
        self.geo = open_geo(fw.geoip_database)
        self.netwatch = NetworkWatch(
            fw.approve_new_networks, self.geo.country if self.geo is not None else None
        )
        # extension locks: failures per extension from every source (firewall/locks.py)
        self.locks = ExtensionLocks(
            LockTracker(lock_settings(fw)), self.netwatch, self.firewall.is_allowlisted
        )
        self.lock_sync = LockSync(store, self.locks, self.firewall.settings.repeat_memory)
        self.nft: NftablesOffload | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        # 0: taking calls; 1: new calls without credentials get 503 (an INVITE answering
        # our challenge is half of an attempt already admitted); 2: every new call gets 503
        self._overload = 0
        self._lag_probe: asyncio.TimerHandle | None = None
        self._probe_armed = False  # lag is only measured once start-up is over (ready())
        self._probe_received = 0  # stats.received at the previous probe
        self._probe_late = False  # the previous probe fired late
        self._stopping = False
        self._farewells: list[tuple[TransactionKey, bool]] | None = None
        self.cdrs = CdrWriter(store, data_dir / SPOOL_FILE)  # spooled while the database is down
        self.guard = Guard(config.guard)
        # learned baselines stored every minute; on several nodes, each node's own merged
        # with the others' (``baseline_sync``)
        self.baselines = BaselineSync(
            self.guard,
            store,
            config.cluster.node,
            config.cluster.enabled,
            data_dir / BASELINE_SPOOL,
        )
        self.events = EventBus()  # live events for the admin API's stream
        self._live_calls: dict[int, tuple[str, str]] = {}  # CDR token -> (tenant, Call-ID)
        self.alert_channels = AlertDispatcher(config.alerts)
        self.media: MediaRelay | None = None
        if config.media.relay:
            bind, advertise = config.media_addresses()
            self.media = MediaRelay(bind, config.media.port_min, config.media.port_max, advertise)
        self.calls = CallManager(
            self,
            self.auth,
            self.directory,
            self.location,
            self.guard,
            CallSettings(
                config.calls.ring_timeout,
                config.calls.max_duration,
                sip.t1,
                sip.t2,
                config.calls.keepalive,
                config.calls.session_min_se,
                config.features.park,
                config.calls.park_slots,
                config.calls.park_timeout,
                config.features.hours_override,
            ),
            self.media,
        )
        self.calls.features = {
            code: FeatureCode(kind, sets) for code, (kind, sets) in config.features.codes().items()
        }
        self.registration = RegistrationHandler(
            self.auth,
            self.directory,
            self.registrar,
            self.netwatch,
            self.firewall,
            self._record_network,
            self.locks,
        )
        self.transports = Transports(
            self.on_message,
            ConnectionLimits(
                max_connections=sip.max_connections,
                per_source=fw.connections_per_source,
                trusted_per_source=fw.trusted_connections_per_source,
                new_timeout=sip.new_connection_timeout,
                idle_timeout=sip.idle_timeout,
            ),
            classify=self._connection_source,
            over_limit=self._connection_flood,
            reserved_files=FILE_RESERVE
            + (config.media.port_max - config.media.port_min + 1 if config.media.relay else 0),
            shed=self.on_late_call,
            ingress=Ingress(wait=config.calls.admission_wait),
        )
        self.workers: WorkerPool | None = None  # registrar workers, started after binding
        # their sockets of the steered group, and this process's readers of them
        self._worker_sockets: list[socket.socket] = []
        self._worker_readers: list[Any] = []
        self._worker_reading: dict[int, bool] = {}
        self.stats = Stats()
        self.latency = Latency()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._background: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # trunks that authenticate to their carrier: decrypted passwords, registrations
        self._trunk_key = trunk_credential_key(self._secret)
        # trunks by DNS name (RFC 3263): resolved in the background, read from the cache
        dns_config = config.dns
        self.resolver = TrunkResolver(
            dns_config.nameserver_addresses(),
            timeout=dns_config.timeout,
            min_ttl=dns_config.min_ttl,
            max_ttl=dns_config.max_ttl,
        )
        self.calls.locator = self.resolver
        self.trunk_registrations = TrunkRegistrations(
            self, self._now, sip.user_agent, locator=self.resolver
        )
        self.sync = StoreSync(self)  # the database, the guard's outbox, the firewall
        # several nodes as one PBX (cluster.redis_url): bans and lock counts shared
        self.cluster: ClusterNode | None = None
        self.relay: NodeRelay | None = None  # requests through another node signed
        if config.cluster.enabled:
            from pbxwarden.cluster import ClusterNode

            self.cluster = ClusterNode(self)
            self.relay = self.cluster.relay
        self.controls = ControlCommands(self)  # what the CLI asks over the control socket

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answers the CLI over the control socket (:mod:`pbxwarden.server_control`)."""
        return self.controls.handle(request)

    async def control_async(self, request: dict[str, Any]) -> dict[str, Any]:
        """The same, with the calls of every node of a cluster (listed, ended)."""
        return await self.controls.handle_async(request)

    @property
    def overloaded(self) -> bool:
        return self._overload > 0

    def _add_realms(self, realms: list[str]) -> None:
        add_realms(
            self.digest,
            realms,
            self._secret,
            self.config.sip,
            foreign_nonces_unless_register=True,  # registrar workers' nonces
        )

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.media is not None:
            self.media.attach(self._loop)
        spooled = await asyncio.to_thread(self.cdrs.replay)  # left by a stop while it was down
        if spooled:
            log.warning("CDRs spooled while the database was down written", operations=spooled)
        node = self.config.cluster.node if self.config.cluster.enabled else None
        self.cdrs.node = node
        interrupted = await asyncio.to_thread(self.store.cdr_interrupt_open, time.time(), node)
        if interrupted:
            log.warning("calls open at the last stop closed as interrupted", count=interrupted)
        self.cdrs.start()
        rows = await asyncio.to_thread(self.store.load_bindings, time.time())
        self.location.load(rows)  # before any worker starts: each gets its share of these
        host, port = self.config.sip.listen_address
        udp = None
        if "udp" in self.config.sip.transports:
            count = self.config.sip.workers
            try:
                # With workers, one socket each too: the kernel steers REGISTERs to them
                group = bind_group(host, port, count) if count else None
                udp = group[0] if group else bind_udp(host, port)
            except OSError as exc:
                raise ListenError(host, port, "UDP", exc) from None
            if group:
                self._worker_sockets = group[1:]
                self.firewall.changed = set()  # every ban change goes to the workers
            if count:
                # Workers first: a REGISTER read before its worker is up would be challenged
                # here and its answer refused as stale there (a needless round trip). Started
                # now, they load while this process does (on another core).
                self.workers = WorkerPool(
                    self.config.sip.workers,
                    self.config,
                    self._data_dir,
                    udp.fileno(),
                    self._worker_events,
                    lambda: list(self.location.items()),
                    self._worker_sockets,
                    self._read_worker_socket,
                    self._ban_rows,
                )
                await self.workers.start()
        try:
            await self._load_state()
        except BaseException:
            if udp is not None:
                udp.close()  # not listening yet: nobody else closes it
            raise
        self.resolver.send_from(host)  # a trunk name's targets of this IP version only
        if udp is not None:
            if self.workers is not None and not await self.workers.wait_ready(15.0):
                log.warning("registrar workers slow to start; registering here meanwhile")
            await self.transports.listen_udp(host, port, udp)
            for index, sock in enumerate(self._worker_sockets):
                reader = self.transports.read_udp(sock)
                self._worker_readers.append(reader)
                if not self._worker_reading.get(index, True):
                    reader.pause_reading()
        if "tcp" in self.config.sip.transports:
            try:
                await self.transports.listen_stream(host, port)
            except OSError as exc:
                raise ListenError(host, port, "TCP", exc) from None
        tls = self.config.sip.tls
        if tls is not None:
            from pbxwarden.config import ConfigError, parse_hostport

            thost, tport = parse_hostport(tls.listen, 5061)
            try:
                context = tls_context(str(tls.cert_file), str(tls.key_file))
            except OSError as exc:
                raise ConfigError(f"cannot load sip.tls cert_file or key_file: {exc}") from None
            try:
                await self.transports.listen_stream(thost, tport, context)
            except OSError as exc:
                raise ListenError(thost, tport, "TLS", exc) from None
        self.trunk_registrations.start()  # after binding: the Contact is our address
        self._background.append(asyncio.create_task(self.sync.write_back()))
        self._background.append(asyncio.create_task(self.sync.resolve_trunks()))
        self._probe_lag(self._now())
        self._control = await serve_control(self._data_dir, self.controls.handle_async)
        log.info(
            "sip listening",
            addresses={k: f"{h}:{p}" for k, (h, p) in self.transports.bound.items()},
            bindings=len(self.location),
            sip_core=_core.mode(),
        )

    async def _load_state(self) -> None:
        """The directory, routing, networks, bans, locks and the guard's state, from the
        database (while the registrar workers start)."""
        await self.sync.refresh_directory()
        await self.sync.refresh_routing()
        with contextlib.suppress(TimeoutError):  # slow DNS: the background task goes on
            await asyncio.wait_for(self.sync.resolve_once(), 3 * self.config.dns.timeout)
        await self.sync.refresh_networks()
        await self.sync.start_offload()
        await self.sync.sync_firewall()
        await self.lock_sync.sync(self.sync.deliver, self.events.publish)  # stored locks
        if self.cluster is not None:
            await self.cluster.start()  # at most a few timeouts when Redis is down
        await self.baselines.load()
        self.sync.stored_policies = await asyncio.to_thread(self.store.policies)
        if self.sync.stored_policies:
            self.guard.reconfigure(with_stored(self.config.guard, self.sync.stored_policies))

    def ready(self) -> None:
        """Start-up is over (the caller's too: the admin API, ``gc.freeze``): from now on
        a late lag probe means load, not the start-up's own work."""
        self._probe_armed = True
        self._probe_received = self.stats.received
        self._probe_late = False
        if self._lag_probe is not None and self._loop is not None:
            self._lag_probe.cancel()
            self._probe_lag(self._now())

    async def end_calls(self) -> None:
        """The first step of a shutdown: refuse new calls (503), hang up every call (BYE
        to both phones; CANCEL and 480 for those still ringing) and give the phones
        :data:`SHUTDOWN_GRACE` to answer, retransmitting as usual, so that no phone is
        left in a call the PBX forgot. Each record closes with the call's real end."""
        if self._stopping:
            return
        self._stopping = True
        self._overload = 2  # every new call gets 503 from here on
        if self._lag_probe is not None:
            self._lag_probe.cancel()
            self._lag_probe = None
        drain = self.config.calls.drain_timeout
        if drain > 0 and self.calls.active and self._loop is not None:
            # a rolling restart: the front sends new calls elsewhere, these end by themselves
            log.warning("draining: new calls refused", calls=len(self.calls.active), wait=drain)
            deadline = self._now() + drain
            while self.calls.active and self._now() < deadline:
                await asyncio.sleep(0.1)
        farewells: list[tuple[TransactionKey, bool]] = []  # (key, our client transaction)
        self._farewells = farewells  # send_request() adds each BYE and CANCEL
        try:
            for call in self.calls.active:
                if call.answered is None and call.a_key is not None:
                    farewells.append((call.a_key, False))  # our 480 waits for its ACK
                self.calls.end_call(call.id, "server shutting down")
        finally:
            self._farewells = None
        if not farewells or self._loop is None:
            return
        deadline = self._now() + SHUTDOWN_GRACE
        while self._now() < deadline and not all(self._settled(k, c) for k, c in farewells):
            await asyncio.sleep(0.02)

    def _settled(self, key: TransactionKey, client: bool) -> bool:
        """A farewell needs nothing more from us: its final answer came (a request of
        ours), or the phone acknowledged ours (the 480 to a ringing caller)."""
        state = self.tx.state(key)
        if client:
            return state not in (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING)
        return state not in (TxState.PROCEEDING, TxState.COMPLETED)

    async def stop(self) -> None:
        await self.end_calls()
        if self._control is not None:
            self._control.close()
        if self.workers is not None:
            await self.workers.stop()  # their last reports arrive before the final flush
        if self.media is not None:
            self.media.close()
        self.trunk_registrations.stop()  # unregister from carriers, waiting briefly for them
        for _ in range(60):
            if not self.trunk_registrations.pending:
                break
            await asyncio.sleep(0.05)
        if self._tasks:  # forwarding changes and networks still being written
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.baselines.stop()
        except Exception:
            log.exception("saving the guard's baselines failed")
        await self.cdrs.stop()
        await self.alert_channels.aclose()
        if self.cluster is not None:
            await self.cluster.stop()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.transports.close()
        if self.nft is not None:
            with contextlib.suppress(NftablesError):
                await asyncio.to_thread(self.nft.teardown)
        if self._timer is not None:
            self._timer.cancel()
        if self._lag_probe is not None:
            self._lag_probe.cancel()
        await self.sync.flush()

    def on_late_call(self, data: bytes, source: Address) -> None:
        """A new call that waited too long behind calls in progress: 503, after the same
        firewall checks as any message (an emergency call is never shed)."""
        self.on_message(data, source, shed=True)

    def on_message(
        self, data: bytes, source: Address, shed: bool = False, checked: bool = False
    ) -> None:
        """Entry point for every message from every transport. ``checked``: a REGISTER
        a registrar worker read and judged (source, bans, floods, enumeration) already."""
        self.stats.received += 1
        wall = time.time()
        if not checked:
            if self.fronts.addresses:  # relayed by a trusted front: judged by the phone's source
                source = self.fronts.relayed(data, source)
            verdict = self.firewall.check_source(source.host, wall)
            if verdict is not Verdict.ALLOW:
                self._refuse(verdict, data, source)
                return
        if self.workers is not None:
            user = registration_route(data)
            if user is not None:
                if not checked and not self.firewall.is_allowlisted(source.host):
                    identity = user[:64].decode("utf-8", "replace")
                    verdict = self.firewall.observe_identity(source.host, identity, wall)
                    if verdict is not Verdict.ALLOW:
                        self._refuse(verdict, data, source)
                        return
                if self.workers.dispatch(user, data, source):
                    self.transports.confirm(source)
                    return
        try:
            message = parse_message(data)
        except ParseError as exc:
            self.stats.parse_errors += 1
            reply = error_response_bytes(data, exc.status, f"{_phrase(exc.status)} ({exc.reason})")
            if reply is not None:
                self.transports.send(reply, source)
            log.debug("unparseable message", source=str(source), reason=exc.reason)
            return
        now = self._now()
        if isinstance(message, Request):
            verdict = self.firewall.inspect(message, source.host, wall)
            if verdict is not Verdict.ALLOW:
                self._refuse(verdict, data, source)
                return
            self.transports.confirm(source)  # a valid request: the connection may stay
            stamp_via(message, source)
            if (
                (shed or self._overload)
                and message.method == "INVITE"
                and message.to.tag is None
                and (shed or self._overload > 1 or not _has_credentials(message))
                and server_key(message) not in self.tx
                and not self._maybe_emergency(message)
            ):
                # Shed new calls cheaply so that calls in progress can finish: answering
                # them late would only add retransmissions to the overload.
                self.stats.shed += 1
                self.transports.send(
                    make_response(message, 503, headers=[("Retry-After", "5")]).to_bytes(), source
                )
                return
            actions = self.tx.receive_request(message, source, now)
        else:
            actions = self.tx.receive_response(message, now)
        self._run(actions)

    def _maybe_emergency(self, request: Request) -> bool:
        """An INVITE to an emergency number of any tenant's country is never shed."""
        user = request.uri.user
        if not user or len(user) > 6:
            return False
        countries = set(self.calls.routing.countries.values()) or {"US"}
        return any(emergency_number(user, country) for country in countries)

    def _worker_events(self, worker: int, events: list[list[Any]]) -> None:
        """What a registrar worker reports: the firewall's inputs, binding changes (for
        routing and the write-back) and counters."""
        for event in events:
            try:
                kind = event[0]
                if kind == "b":
                    aor, binding = binding_from_event(event)
                    self.location.put(aor, binding)
                elif kind == "u":
                    self.location.remove(str(event[1]), str(event[2]))
                elif kind == "s":
                    self.firewall.auth_succeeded(str(event[1]))
                elif kind == "f":
                    self.firewall.auth_failed(str(event[1]), str(event[2]), float(event[3]))
                elif kind == "lf":  # a failure of a known extension, for its lock
                    _, ext_id, tenant, number, address, at, changed, unbannable = event
                    self.locks.tracker.failed(
                        int(ext_id),
                        (str(tenant), str(number)),
                        str(address),
                        float(at),
                        unbannable=bool(unbannable),
                        password_changed_at=None if changed is None else float(changed),
                    )
                elif kind == "ban":
                    self.firewall.ban(str(event[1]), str(event[2]), time.time())
                elif kind == "o":  # an answer over one of our TCP/TLS connections
                    dest = Address(str(event[1]), str(event[2]), int(event[3]))
                    self.transports.send(bytes(event[4]), dest)
                elif kind == "l":
                    self.latency.merge(event[1], event[2])
                elif kind == "c":
                    for name, n in event[1].items():
                        if name in _WORKER_COUNTERS:
                            setattr(self.stats, name, getattr(self.stats, name) + int(n))
                        if self.workers is not None:
                            if name == "received":
                                self.workers.read += int(n)
                            elif name == "handled":
                                self.workers.handled += int(n)
                elif kind == "d":  # read by a worker but ours (not a REGISTER, or its worker down)
                    data, source = unframe(bytes(event[1]))
                    self.stats.received -= 1  # counted by the worker already
                    if event[3]:
                        self.on_message(data, source, checked=True)
                    else:
                        self.transports.deliver_udp(data, source, float(event[2]))
            except (IndexError, TypeError, ValueError, AttributeError):
                log.error("malformed report from a registrar worker", worker=worker)

    def _read_worker_socket(self, index: int, read: bool) -> None:
        """A worker went down (read its socket here) or came up (leave it to it)."""
        self._worker_reading[index] = read
        if index < len(self._worker_readers):
            reader = self._worker_readers[index]
            if reader.closed:
                return
            if read:
                reader.resume_reading()
            else:
                reader.pause_reading()

    def _ban_rows(self, addresses: Iterable[str] | None = None) -> list[list[Any]]:
        """Bans as the workers take them: in force (until > 0) or lifted (until 0)."""
        bans = self.firewall.bans
        rows: list[list[Any]] = []
        for address in bans if addresses is None else addresses:
            ban = bans.get(address)
            if ban is None:
                rows.append([address, 0.0, "", 0, 0.0])
            else:
                rows.append([address, ban.until, ban.reason, ban.level, ban.created_at])
        return rows

    _LAG_PERIOD = 0.05

    def _probe_lag(self, scheduled: float) -> None:
        """Overload detection, every 50 ms: how late does this timer fire, how much SIP
        waits unread in the kernel's receive buffer, and did any arrive meanwhile?"""
        now = self._now()
        calls = self.config.calls
        changed = self.firewall.changed
        if changed and self.workers is not None:  # within 50 ms in every worker
            self.firewall.changed = set()
            self.workers.broadcast_bans(self._ban_rows(changed))
        if self._probe_armed and not self._stopping:
            lag = now - scheduled
            backlog = self.transports.udp_backlog() or 0
            received = self.stats.received
            busy = received != self._probe_received
            self._probe_received = received
            level = overload_state(
                self._overload,
                lag,
                calls.overload_lag,
                backlog,
                calls.overload_queue,
                busy=busy,
                late_before=self._probe_late,
            )
            self._probe_late = lag > calls.overload_lag
            if bool(level) != bool(self._overload):
                log.warning(
                    "overloaded: shedding new calls" if level else "overload over",
                    lag=round(lag, 3),
                    queued_bytes=backlog,
                )
            self._overload = level
        assert self._loop is not None
        due = now + self._LAG_PERIOD
        self._lag_probe = self._loop.call_at(due, self._probe_lag, due)

    def _refuse(self, verdict: Verdict, data: bytes, source: Address) -> None:
        """Banned: silence by default; 403 if the operator prefers an answer, and always
        to a front (it would take silence for a dead node and fail over, or stop sending
        to this node at all: one banned phone would take the node away from every other)."""
        self.stats.refused += 1
        if verdict is Verdict.REJECT or source.front is not None:
            reply = error_response_bytes(data, 403, "Forbidden")
            if reply is not None:
                self.transports.send(reply, source)

    def _connection_source(self, host: str) -> SourceKind:
        """Asked by the transport for every new TCP/TLS connection, before any read."""
        ban = self.firewall.bans.get(host)
        if ban is not None and ban.until > time.time():
            return SourceKind.BANNED
        return SourceKind.TRUSTED if self.firewall.is_allowlisted(host) else SourceKind.NORMAL

    def _connection_flood(self, host: str, count: int) -> None:
        """A source refused at its per-source connection limit: banned like any flood
        (escalating, stored, mirrored to nftables), its connections closed."""
        limit = self.transports.table.limits.per_source
        reason = f"connection flood (over {limit} TCP/TLS connections)"
        if self.firewall.ban(host, reason, time.time()) is not None:
            closed = self.transports.drop_source(host)
            log.debug("connection flood: source banned", address=host, closed=closed)

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _run(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, SendMessage):
                self.transports.send(action.data(), action.dest)
            elif isinstance(action, DeliverRequest):
                self._dispatch(action.request, action.source, action.key)
            elif isinstance(action, DeliverResponse):
                if not self.trunk_registrations.on_response(action.response, action.key):
                    self.calls.on_response(action.response, action.key)
            elif isinstance(action, TransactionTimeout):
                claimed = self.trunk_registrations.on_timeout(action.key)
                if not claimed:
                    self.calls.on_timeout(action.key)
        self._schedule()

    def _schedule(self) -> None:
        deadline = self.tx.next_deadline()
        if deadline is None or deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._run(self.tx.handle_timers(self._now()))

    def respond(self, key: TransactionKey | None, request: Request, response: Response) -> None:
        if key is None:
            return
        if response.status >= 200:
            self.latency.finish(key, time.perf_counter())
        self.calls.origins.outgoing(response)  # one SDP session per dialog (RFC 3264 8)
        try:
            actions = self.tx.send_response(
                key, response, self._now(), absorb=absorbs(request, response)
            )
        except TransactionError:
            log.debug("transaction ended before the answer", method=request.method)
            return
        self._run(actions)

    # -- routing -------------------------------------------------------------------------

    def _dispatch(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        method = request.method
        if key is not None and method != "ACK":
            self.latency.start(key, method, time.perf_counter())
        if (
            method in ("INVITE", "ACK", "CANCEL", "BYE", "MESSAGE", "SUBSCRIBE")
            or request.to.tag is not None
        ):
            self.calls.on_request(request, source, key)
        elif method == "REGISTER":
            self._register(request, source, key)
        elif method == "OPTIONS":
            self.respond(
                key,
                request,
                make_response(
                    request,
                    200,
                    headers=[
                        ("Allow", ALLOW),
                        ("Accept", "application/sdp"),
                        ("Server", self.config.sip.user_agent),
                    ],
                ),
            )
        elif method in ("INFO", "UPDATE", "NOTIFY", "PRACK"):
            self.respond(key, request, make_response(request, 481))
        else:
            self.respond(
                key,
                request,
                make_response(request, 405 if method in ALLOW else 501, headers=[("Allow", ALLOW)]),
            )

    def _register(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        result = self.registration.handle(request, source, time.time())
        if result.registered:
            self.stats.registers_ok += 1
            if request.to.uri.user:
                self.calls.registration_changed(
                    self.calls.auth.realm_for(request), request.to.uri.user
                )
        if result.auth_failed:
            self.stats.auth_failures += 1
        self.respond(key, request, result.response)

    def _record_network(self, extension_id: int, network: str, wall: float, ok: bool) -> None:
        self.sync.pending_networks.append((extension_id, network, wall, ok))  # next flush

    def _background_write(self, fn: Callable[..., object], *args: object) -> None:
        async def write() -> None:
            try:
                await asyncio.to_thread(fn, *args)
            except Exception:
                log.exception("background database write failed")

        self._tasks.add(task := asyncio.ensure_future(write()))
        task.add_done_callback(self._tasks.discard)


def _has_credentials(request: Request) -> bool:
    headers = request.headers
    return "Authorization" in headers or "Proxy-Authorization" in headers


def _phrase(status: int) -> str:
    return REASON_PHRASES.get(status, "Bad Request")
