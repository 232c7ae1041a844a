"""Registrar workers: REGISTER processing spread over several processes (``sip.workers``).

Why: registrations are most of a hosted PBX's traffic (every phone refreshes every few
minutes, and all of them at once after an outage) and all of it is CPU: parse, digest,
answer. One Python process uses one core. Calls stay in the main process, whose state
(dialogs, the guard's counters, media) is shared by nature; REGISTERs over
UDP, TCP or TLS go to worker ``hash(user) % N``, so the bindings, nonce counts and
retransmissions of one extension always meet the same process.

The flow keeps its one direction: the main process owns the socket and the firewall's
pre-check (bans, flood limit, extension enumeration) and hands the raw datagram with its
source over a ``SOCK_SEQPACKET`` pair. The worker parses, runs its own transaction layer,
authenticates against its own copy of the directory (refreshed from the database like
the main one) and answers through its copy of the UDP socket (over TCP and TLS, whose
connections the main process holds, it hands the answer back). It reports back in
batches what the main process must know: authentication outcomes (brute-force counts
and bans), scanner fingerprints, binding changes (call routing and the write-back to
the database), latency and counters. A worker that is down (starting, crashed, restarting)
costs nothing but speed: the main process handles those registrations itself.

Written by hand because no library does this for SIP: the pieces (subprocess, socket
pairs, marshal) are the standard library's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import marshal
import re
import signal
import socket
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog

from pbxwarden.config import Config, load_or_create_secret
from pbxwarden.firewall.engine import Firewall, FirewallSettings
from pbxwarden.firewall.geo import open_geo
from pbxwarden.firewall.locks import ExtensionLocks, LockTracker
from pbxwarden.firewall.netwatch import NetworkWatch
from pbxwarden.latency import Latency
from pbxwarden.locking import adopt_stored, lock_settings
from pbxwarden.memtrim import BurstTrim
from pbxwarden.pbx.directory import Directory, refresh_directory
from pbxwarden.pbx.location import Binding, LocationService
from pbxwarden.pbx.registrar import aor_key
from pbxwarden.pbx.registration import (
    RegistrationHandler,
    add_realms,
    make_authenticator,
    make_registrar,
    refresh_networks,
)
from pbxwarden.sip.digest import DigestServer
from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.message import REASON_PHRASES, Request, error_response_bytes, parse_message
from pbxwarden.sip.transaction import (
    Action,
    Address,
    DeliverRequest,
    SendMessage,
    TimerConfig,
    TransactionError,
    TransactionKey,
    TransactionLayer,
    absorbs,
    stamp_via,
)
from pbxwarden.store.db import ExtensionAuth, Store
from pbxwarden.store.locks import LockStore
from pbxwarden.transport.network import Alarm
from pbxwarden.transport.resolver import TrunkResolver

log = structlog.get_logger("pbxwarden.workers")

# The To user of a REGISTER, read before parsing (the header's user@host part). Only the
# choice of worker depends on it; the worker parses the message properly.
_TO_RE = re.compile(rb"\n(?:to|t)[ \t]*:[^\r\n]*?sips?:([^@>;\s]+)@([^>;:\s]+)", re.IGNORECASE)
# Reports are marshalled: lists of str, int, float and None between two processes of
# ours over a socket pair nobody else holds (marshal is several times faster than JSON,
# and that is the main process's per-registration cost). A report event stays below a
# SIP message's 64 KB, so a packet of 64 stays below the 4 MB socket buffers.
EVENTS_PER_PACKET = 64
SYNC = b"SYNC\n"  # main -> worker: bindings; every other packet is "TRANSPORT host port\n" SIP
MAX_EVENT_PACKET = 4 << 20
SYNC_TIMEOUT = 10.0  # seconds a starting worker may take to read its bindings
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0


def registration_route(data: bytes) -> bytes | None:
    """The To user of a REGISTER (``user@host`` required), or None for anything else."""
    if not data.startswith(b"REGISTER "):
        return None
    head_end = data.find(b"\r\n\r\n")
    m = _TO_RE.search(data, 0, head_end if head_end >= 0 else len(data))
    return None if m is None else m.group(1)


def worker_for(user: bytes, count: int) -> int:
    """By the user part alone, so that phones of one extension writing its domain
    differently (a name, an address) still meet in one worker. Stable across processes
    and restarts (unlike ``hash()``, which is salted)."""
    return zlib.crc32(user) % count


def _frame(data: bytes, source: Address) -> bytes:
    head = b"%s %s %d" % (source.transport.encode(), source.host.encode(), source.port)
    if source.front is not None:  # relayed by a trusted front: the hop too
        front = source.front
        head += b" %s %s %d" % (front.transport.encode(), front.host.encode(), front.port)
    return head + b"\n" + data


def _unframe(packet: bytes) -> tuple[bytes, Address]:
    head, _, data = packet.partition(b"\n")
    fields = head.split(b" ")
    front = None
    if len(fields) == 6:
        front = Address(fields[3].decode(), fields[4].decode(), int(fields[5]))
    transport, host, port = fields[:3]
    return data, Address(transport.decode(), host.decode(), int(port), front)


# ------------------------------------------------------------------ the main process's side


EventHandler = Callable[[int, list[list[Any]]], None]


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.channel: socket.socket | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.ready = False
        self.restarts = 0


class WorkerPool:
    """Starts, feeds, watches and restarts the registrar workers."""

    def __init__(
        self,
        count: int,
        config: Config,
        data_dir: Path,
        udp_fd: int,
        on_events: EventHandler,
        bindings: Callable[[], Iterable[tuple[str, Binding]]] = tuple,
    ) -> None:
        """``bindings``: the main process's routing copy, each (AOR, binding); a worker
        that reports ready is first given those of its extensions."""
        self.count = count
        self._config_json = config.model_dump_json(by_alias=True).encode()
        self._data_dir = data_dir
        self._udp_fd = udp_fd
        self._on_events = on_events
        self._bindings = bindings
        self._workers = [_Worker(i) for i in range(count)]
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._buffer = memoryview(bytearray(MAX_EVENT_PACKET))
        self.dispatched = 0
        self.dropped = 0  # the worker's queue was full: lost like a datagram

    @property
    def ready(self) -> int:
        return sum(w.ready for w in self._workers)

    async def start(self) -> None:
        for worker in self._workers:
            self._watchers.append(asyncio.create_task(self._keep_running(worker)))

    async def wait_ready(self, timeout: float) -> bool:
        """Until every worker reported ready (registrations are served meanwhile anyway)."""
        deadline = time.monotonic() + timeout
        while self.ready < self.count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.ready == self.count

    async def _spawn(self, worker: _Worker) -> asyncio.subprocess.Process:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        for sock in (ours, theirs):  # room for bursts: a few thousand REGISTERs
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pbxwarden.registrar_workers",
                "--index",
                str(worker.index),
                "--data-dir",
                str(self._data_dir),
                "--udp-fd",
                str(self._udp_fd),
                "--channel-fd",
                str(theirs.fileno()),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(self._udp_fd, theirs.fileno()),
            )
        finally:
            theirs.close()
        assert process.stdin is not None
        process.stdin.write(self._config_json)
        await process.stdin.drain()
        process.stdin.close()
        worker.channel = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable, worker)
        return process

    async def _keep_running(self, worker: _Worker) -> None:
        delay = RESTART_DELAY
        while not self._stopping:
            started = time.monotonic()
            try:
                worker.process = await self._spawn(worker)
            except OSError as exc:
                log.error("cannot start a registrar worker", worker=worker.index, error=str(exc))
            else:
                code = await worker.process.wait()
                self._detach(worker)
                if self._stopping:
                    return
                worker.restarts += 1
                log.error(
                    "registrar worker exited; its registrations are handled here until it is back",
                    worker=worker.index,
                    code=code,
                )
            # One that keeps failing soon after start (a broken install) is retried ever
            # less often; one that ran a while is restarted at once.
            if time.monotonic() - started > MAX_RESTART_DELAY:
                delay = RESTART_DELAY
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    def _detach(self, worker: _Worker) -> None:
        worker.ready = False
        if worker.channel is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(worker.channel.fileno())
            worker.channel.close()
            worker.channel = None

    def _readable(self, worker: _Worker) -> None:
        channel = worker.channel
        buffer = self._buffer
        while channel is not None:
            try:
                size = channel.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                size = 0
            packet = buffer[:size]
            if not size:  # the worker closed its end: it is going away
                worker.ready = False
                with contextlib.suppress(ValueError, RuntimeError):
                    asyncio.get_running_loop().remove_reader(channel.fileno())
                return
            try:
                events = marshal.loads(packet)  # our own child, over a private socket pair
            except (ValueError, EOFError, TypeError):
                log.error("unreadable report from a registrar worker", worker=worker.index)
                continue
            if events and events[0] == ["ready"]:
                # before any REGISTER: the channel keeps order
                if self._sync(worker, channel):
                    worker.ready = True
                    log.info("registrar worker ready", worker=worker.index)
                events = events[1:]
            self._on_events(worker.index, events)

    def _sync(self, worker: _Worker, channel: socket.socket) -> bool:
        """A (re)started worker gets the main process's copy of its share of the bindings
        (the database lags it by a write-back period and misses what was registered while
        the worker was down; and reading it in every worker would slow every start)."""
        rows = [
            binding_event(aor, b.contact, b)
            for aor, b in self._bindings()
            if worker_for(aor.rpartition("/")[2].encode(), self.count) == worker.index
        ]
        # Tens of thousands of bindings are more than the socket buffer holds: wait for
        # the worker to read them (it does so before anything else).
        channel.settimeout(SYNC_TIMEOUT)
        try:
            for i in range(0, max(len(rows), 1), EVENTS_PER_PACKET):
                channel.send(SYNC + marshal.dumps((i == 0, rows[i : i + EVENTS_PER_PACKET])))
        except OSError as exc:  # without its bindings it must not serve: start it again
            log.warning("cannot hand bindings to a registrar worker", error=str(exc))
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.terminate()
            return False
        finally:
            channel.setblocking(False)
        return True

    def dispatch(self, user: bytes, data: bytes, source: Address) -> bool:
        """Hand a REGISTER to its user's worker; False when the caller must handle it."""
        worker = self._workers[worker_for(user, self.count)]
        channel = worker.channel
        if not worker.ready or channel is None:
            return False
        try:
            channel.send(_frame(data, source))
        except (BlockingIOError, InterruptedError):
            self.dropped += 1  # as if the datagram were lost: the phone retransmits
            return True
        except OSError as exc:
            log.error("registrar worker unreachable", worker=worker.index, error=str(exc))
            worker.ready = False
            return False
        self.dispatched += 1
        return True

    async def stop(self) -> None:
        self._stopping = True
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.terminate()
        for worker in self._workers:
            if worker.process is None:
                continue
            try:
                await asyncio.wait_for(worker.process.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
        for task in self._watchers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for worker in self._workers:
            self._detach(worker)

    def describe(self) -> dict[str, int]:
        return {
            "workers": self.count,
            "workers_ready": self.ready,
            "worker_restarts": sum(w.restarts for w in self._workers),
            "worker_dispatched": self.dispatched,
            "worker_dropped": self.dropped,
        }


def binding_event(aor: str, contact: str, binding: Binding | None) -> list[Any]:
    if binding is None:
        return ["u", aor, contact]
    b = binding
    fields = (b.extension_id, contact, b.expires_at, b.q, b.call_id, b.cseq, b.source)
    return ["b", aor, *fields, b.user_agent, b.registered_at]


def binding_from_event(event: Sequence[Any]) -> tuple[str, Binding]:
    _, aor, ext_id, contact, expires_at, q, call_id, cseq, source, agent, since = event
    return str(aor), Binding(
        int(ext_id),
        str(contact),
        float(expires_at),
        None if q is None else float(q),
        str(call_id),
        int(cseq),
        str(source),
        None if agent is None else sys.intern(str(agent)),  # a few models: shared
        float(since),
    )


# ------------------------------------------------------------------------ the worker's side


class _Reporter:
    """Collects what the main process must hear; sent once per burst of work."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self.events: list[list[Any]] = []
        self.counters: dict[str, int] = {}
        self._last: dict[str, str] = {}  # per address, this batch's last outcome
        self._backlog: list[bytes] = []

    # AuthFeedback
    def auth_failed(self, address: str, extension: str, now: float) -> None:
        self._last[address] = "f"
        self.events.append(["f", address, extension[:64], now])

    def auth_succeeded(self, address: str) -> None:
        if self._last.get(address) != "s":  # a run of successes means what one does
            self._last[address] = "s"
            self.events.append(["s", address])

    def lock_failure(self, ext: ExtensionAuth, address: str, now: float, unbannable: bool) -> None:
        """A known extension's failure, for the main process's copy of its lock count."""
        changed = ext.password_changed_at
        self.events.append(
            ["lf", ext.id, ext.tenant, ext.number, address[:64], now, changed, unbannable]
        )

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def binding_changed(self, aor: str, contact: str, binding: Binding | None) -> None:
        self.events.append(binding_event(aor, contact, binding))

    def flush(self) -> None:
        if self.counters:
            self.events.append(["c", self.counters])
            self.counters = {}
        events, self.events = self.events, []
        self._last.clear()
        for i in range(0, len(events), EVENTS_PER_PACKET):
            self._backlog.append(marshal.dumps(events[i : i + EVENTS_PER_PACKET]))
        self.send_backlog()

    def send_backlog(self) -> bool:
        """Send what is queued; False while the main process's queue is full."""
        while self._backlog:
            try:
                self._channel.send(self._backlog[0])
            except (BlockingIOError, InterruptedError):
                return False
            self._backlog.pop(0)
        return True

    @property
    def pending(self) -> bool:
        return bool(self._backlog)


class RegistrarWorker:
    def __init__(
        self,
        index: int,
        config: Config,
        store: Store,
        secret: bytes,
        udp: socket.socket,
        channel: socket.socket,
    ) -> None:
        self.index = index
        self.config = config
        self.store = store
        self._secret = secret
        self._udp = udp
        self._channel = channel
        sip = config.sip
        self.digest: dict[str, DigestServer] = {}
        realms = store.known_realms() or [sip.realm]
        self._add_realms(realms)
        self.auth = make_authenticator(self.digest, realms, sip)
        fw = config.firewall
        self.firewall = Firewall(FirewallSettings(allow=tuple(fw.allow)))
        self.reporter = _Reporter(channel)
        self.location = LocationService(listener=self.reporter.binding_changed)
        self.registrar = make_registrar(self.location, sip)
        self.directory = Directory()
        geo = open_geo(fw.geoip_database)
        self.netwatch = NetworkWatch(
            fw.approve_new_networks, geo.country if geo is not None else None
        )
        self._approved_networks = -1.0  # the newest network change loaded
        # This worker locks the extensions it serves at once (a burst of guesses is
        # answered here); the main process, told of each failure, stores and announces.
        self.locks = ExtensionLocks(
            LockTracker(lock_settings(fw)),
            self.netwatch,
            self.firewall.is_allowlisted,
            self.reporter.lock_failure,
        )
        self._lock_store = LockStore(store)
        self._repeat_memory = FirewallSettings().repeat_memory
        self.registration = RegistrationHandler(
            self.auth,
            self.directory,
            self.registrar,
            self.netwatch,
            self.reporter,
            self._record_network,
            self.locks,
        )
        self.tx = TransactionLayer(TimerConfig(sip.t1, sip.t2, sip.t4))
        self.latency = Latency()  # handed to the main process every second
        self._trim = BurstTrim()  # memory back to the system once a burst is over
        self._loop: asyncio.AbstractEventLoop | None = None
        self._alarm = Alarm(self._on_timer)  # the transaction layer's next timer
        self._network_writes: list[tuple[int, str, float, bool]] = []
        self._stop = asyncio.Event()
        # trunks by DNS name: their resolved addresses are trunk addresses here as in the
        # main process (never a place to register from, unless the extension may)
        dns_config = config.dns
        self.resolver = TrunkResolver(
            dns_config.nameserver_addresses(),
            timeout=dns_config.timeout,
            min_ttl=dns_config.min_ttl,
            max_ttl=dns_config.max_ttl,
        )
        self._resolved_trunk_hosts: frozenset[str] = frozenset()
        self._trunk_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def _add_realms(self, realms: list[str]) -> None:
        # Nonces signed as issuer index + 1: 0 is the main process.
        add_realms(self.digest, realms, self._secret, self.config.sip, issuer=self.index + 1)

    def _record_network(self, extension_id: int, network: str, wall: float, ok: bool) -> None:
        self._network_writes.append((extension_id, network, wall, ok))

    async def run(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        # No bindings from the database: the main process hands over its copy of this
        # worker's share when it hears "ready", before any REGISTER (_apply_sync).
        await self._refresh()
        loop.add_reader(self._channel.fileno(), self._readable)
        self.reporter.events.append(["ready"])
        self._flush()
        refresher = asyncio.create_task(self._refresh_loop())
        resolver = asyncio.create_task(self._resolve_loop())
        await self._stop.wait()
        for task in (refresher, resolver):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        loop.remove_reader(self._channel.fileno())
        self._flush()
        await self._write_networks()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            counts, sums = self.latency.take()
            if counts:
                self.reporter.events.append(["l", counts, sums])
                self._flush()
            try:
                self.location.purge(time.time())
                self._trim.observe(len(self.tx))
                await self._refresh()
                await self._write_networks()
            except Exception:  # the database may be briefly locked; retry next round
                log.exception("registrar worker refresh failed", worker=self.index)

    async def _refresh(self) -> None:
        """The same sources as the main process: realms, extensions, approved networks."""
        self._add_realms(await asyncio.to_thread(self.store.known_realms))
        for ext in await refresh_directory(self.store, self.directory) or []:
            # a new password: the old one's registrations go (the main process ends calls)
            aor = aor_key(ext.realm, ext.number)
            for binding in self.location.lookup(aor, 0.0):
                self.location.remove(aor, binding.contact)
        self._approved_networks = await refresh_networks(
            self.store, self.netwatch, self._approved_networks
        )
        await adopt_stored(self._lock_store, self.locks, self._repeat_memory)
        self.locks.trunk_hosts |= self._resolved_trunk_hosts
        self.locks.trunk_networks = self._trunk_networks
        self.firewall.set_trusted(set(self.locks.trunk_hosts))  # never banned: unbannable

    async def _resolve_loop(self) -> None:
        """The trunks' DNS names looked up as their answers expire, as the main process
        does (its own cache: a worker shares no memory with it)."""
        while True:
            try:
                routing = await asyncio.to_thread(self.store.routing_snapshot)
                trunks = routing.trunks
                self._trunk_networks = routing.inbound_networks()
                await self.resolver.refresh(trunks)
                self._resolved_trunk_hosts = frozenset(
                    a for addresses in self.resolver.addresses(trunks).values() for a in addresses
                )
            except Exception:
                log.exception("registrar worker: resolving trunk names failed", worker=self.index)
            await asyncio.sleep(1.0)

    async def _write_networks(self) -> None:
        """The networks first seen since the last round, in one transaction (after a
        burst: thousands, one per extension)."""
        writes, self._network_writes = self._network_writes, []
        try:
            await asyncio.to_thread(self.store.record_networks, writes)
        except Exception:
            self._network_writes[:0] = writes  # the next round retries them
            raise

    # -- the per-request path ------------------------------------------------------------

    def _readable(self) -> None:
        for _ in range(256):  # then let timers and the reporter run
            try:
                packet = self._channel.recv(70_000)
            except (BlockingIOError, InterruptedError):
                break
            if not packet:  # the main process is gone: free its port for a restart now
                self._udp.close()
                self._stop.set()
                break
            if packet.startswith(SYNC):
                self._apply_sync(packet)
                continue
            data, source = _unframe(packet)
            self.on_datagram(data, source)
        self._flush()

    def _apply_sync(self, packet: bytes) -> None:
        """The main process's bindings of this worker's extensions replace its own."""
        first, rows = marshal.loads(packet[len(SYNC) :])
        if first:
            self.location.clear()
        self.location.load([binding_from_event(row) for row in rows])

    def _flush(self) -> None:
        self.reporter.flush()
        assert self._loop is not None
        if self.reporter.pending:
            self._loop.add_writer(self._channel.fileno(), self._writable)

    def _writable(self) -> None:
        if self.reporter.send_backlog():
            assert self._loop is not None
            self._loop.remove_writer(self._channel.fileno())

    def on_datagram(self, data: bytes, source: Address) -> None:
        try:
            message = parse_message(data)
        except ParseError as exc:
            self.reporter.count("parse_errors")
            phrase = REASON_PHRASES.get(exc.status, "Bad Request")
            reply = error_response_bytes(data, exc.status, f"{phrase} ({exc.reason})")
            if reply is not None:
                self._send(reply, source)
            return
        if not isinstance(message, Request) or message.method != "REGISTER":
            return  # the main process only sends REGISTERs
        marker = self.firewall.scanner_marker(message.headers.get("User-Agent"))
        if marker is not None and not self.firewall.is_allowlisted(source.host):
            self.reporter.events.append(["ban", source.host, f"scanner fingerprint ({marker})"])
            return
        stamp_via(message, source)
        assert self._loop is not None
        self._run(self.tx.receive_request(message, source, self._loop.time()))

    def _send(self, data: bytes, dest: Address) -> None:
        dest = dest.hop
        if dest.transport != "UDP":  # TCP and TLS connections live in the main process
            self.reporter.events.append(["o", dest.transport, dest.host, dest.port, data])
            return
        with contextlib.suppress(OSError):  # a full buffer loses a datagram, as UDP does
            self._udp.sendto(data, (dest.host, dest.port))

    def _run(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, SendMessage):
                self._send(action.data(), action.dest)
            elif isinstance(action, DeliverRequest):
                if action.key is not None:
                    self.latency.start(action.key, "REGISTER", time.perf_counter())
                self._register(action.request, action.source, action.key)
        self._alarm.arm(self.tx.next_deadline())

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._run(self.tx.handle_timers(self._loop.time()))
        self._flush()

    def _register(self, request: Request, source: Address, key: TransactionKey | None) -> None:
        result = self.registration.handle(request, source, time.time())
        if result.registered:
            self.reporter.count("registers_ok")
        if result.auth_failed:
            self.reporter.count("auth_failures")
        if key is None:
            return
        self.latency.finish(key, time.perf_counter())
        assert self._loop is not None
        try:
            actions = self.tx.send_response(
                key,
                result.response,
                self._loop.time(),
                absorb=absorbs(request, result.response),  # a challenge: none kept
            )
        except TransactionError:
            return
        self._run(actions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pbxwarden registrar worker (started by serve)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--udp-fd", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    args = parser.parse_args(argv)
    config = Config.model_validate_json(sys.stdin.buffer.read())
    from pbxwarden.runtime import install_fast_loop, setup_logging, tune_gc

    setup_logging(config)
    udp = socket.socket(fileno=args.udp_fd)
    channel = socket.socket(fileno=args.channel_fd)
    channel.setblocking(False)
    udp.setblocking(False)
    store = Store(config.database_url(args.data_dir))
    try:
        worker = RegistrarWorker(
            args.index, config, store, load_or_create_secret(args.data_dir), udp, channel
        )
        tune_gc()
        install_fast_loop()
        asyncio.run(worker.run())
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
