"""Registrar workers: REGISTER processing spread over several processes (``sip.workers``).

Why: registrations are most of a hosted PBX's traffic (every phone refreshes every few
minutes, and all of them at once after an outage) and all of it is CPU: parse, digest,
answer. One Python process uses one core. Calls stay in the main process, whose state
(dialogs, the guard's counters, media) is shared by nature; REGISTERs over
UDP, TCP or TLS go to worker ``hash(user) % N``, so the bindings, nonce counts and
retransmissions of one extension always meet the same process.

Over UDP each worker reads a socket of its own: the port is bound once per process with
``SO_REUSEPORT`` and a BPF program steers REGISTERs to the workers' sockets by source
address and everything else to the main process's (:mod:`pbxwarden.transport.steering`).
A worker runs the main process's pre-check on what it reads (the front's header, bans,
flood limit, enumeration: :mod:`pbxwarden.registrar_gate`), handles its own users'
REGISTERs and hands the others' to their worker over a socket pair between the two;
anything else it read goes to the main process. Bans made anywhere reach every worker
within 50 ms (the main process pushes each change). Without the program (another OS,
an old kernel), and over TCP and TLS, the main process reads, pre-checks and hands the
raw datagram with its source over a ``SOCK_SEQPACKET`` pair, as before.

The worker parses, runs its own transaction layer, authenticates against its own copy
of the directory (refreshed from the database like the main one) and answers through
its UDP socket (over TCP and TLS, whose connections the main process holds, it hands
the answer back). It reports back in batches what the main process must know:
authentication outcomes (brute-force counts and bans), its own bans (floods, scanners,
enumeration), binding changes (call routing and the write-back to the database),
latency and counters. A worker that is down (starting, crashed, restarting) costs
nothing but speed: the main process reads its socket and handles those registrations
itself.

Written by hand because no library does this for SIP: the pieces (subprocess, socket
pairs, marshal) are the standard library's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import marshal
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from pbxwarden.config import Config, load_or_create_secret
from pbxwarden.firewall.engine import Ban, Firewall, FirewallSettings
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
from pbxwarden.registrar_gate import (
    Gate,
    Route,
    firewall_settings,
    registration_route,
    worker_for,
)
from pbxwarden.registrar_pool import WorkerPool
from pbxwarden.registrar_protocol import (
    BANS,
    EVENTS_PER_PACKET,
    GO,
    PEERS,
    SYNC,
    binding_event,
    binding_from_event,
    frame,
    unframe,
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
from pbxwarden.transport.front import Fronts
from pbxwarden.transport.network import Alarm
from pbxwarden.transport.resolver import TrunkResolver

log = structlog.get_logger("pbxwarden.workers")

__all__ = [
    "WorkerPool",
    "binding_event",
    "binding_from_event",
    "registration_route",
    "unframe",
    "worker_for",
]

SO_TIMESTAMPNS = 35  # Linux: the kernel's arrival stamp of a datagram


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
        peers: dict[int, socket.socket] | None = None,
        reads_socket: bool = False,
    ) -> None:
        """``reads_socket``: ``udp`` is this worker's own socket of the steered group
        (REGISTERs arrive on it directly); else it is the main process's, for answers
        only. ``peers``: the socket pair to each other worker, for hand-overs."""
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
        self.firewall = Firewall(firewall_settings(config))
        self.reporter = _Reporter(channel)
        self.peers = peers or {}
        self._reads_socket = reads_socket
        count = max(1, sip.workers)  # 0 in tests and bench/register_path.py: one worker
        self.gate = Gate(index, count, self.firewall, Fronts(config.cluster.fronts))
        self.firewall.on_ban = self._banned_here
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
        for peer in self.peers.values():
            peer.setblocking(False)
            loop.add_reader(peer.fileno(), self._peer_readable, peer)
        if self._reads_socket:
            with contextlib.suppress(OSError):  # the kernel's arrival stamp, as in main
                self._udp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
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
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self._udp.fileno())
        self._flush()
        await self._write_networks()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            counts, sums = self.latency.take()
            if counts:
                self.reporter.events.append(["l", counts, sums])
                self._flush()
            self.firewall.drain_events()  # the main process announces, from the reports
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
            if packet.startswith(BANS):
                self._apply_bans(packet)
                continue
            if packet.startswith(PEERS):
                mask = packet[len(PEERS) :]
                self.gate.peers = frozenset(
                    i for i, up in enumerate(mask) if up and i != self.index
                )
                continue
            if packet == GO:
                if self._reads_socket:
                    assert self._loop is not None
                    self._loop.add_reader(self._udp.fileno(), self._udp_readable)
                continue
            data, source = unframe(packet)
            self.on_datagram(data, source)
        self._flush()

    def _apply_bans(self, packet: bytes) -> None:
        """Bans made, changed or lifted anywhere (the main process relays them all)."""
        now = time.time()
        for address, until, reason, level, created in marshal.loads(packet[len(BANS) :]):
            if until:
                self.firewall.adopt(Ban(address, until, reason, level, created), now)
            else:
                self.firewall.unban(address, "lifted")

    def _banned_here(self, ban: Ban) -> None:
        """A flood or an enumeration seen here: the main process bans it as its own
        (stored, escalated, shared with the other workers and nodes)."""
        self.reporter.events.append(["ban", ban.address, ban.reason])

    def _udp_readable(self) -> None:
        """The steered socket: REGISTERs of every source it hashes to this worker."""
        loop = self._loop
        assert loop is not None
        udp = self._udp
        gate = self.gate
        reporter = self.reporter
        wall = time.time()
        for _ in range(256):  # then let timers, hand-overs and the reporter run
            try:
                data, ancillary, _, addr = udp.recvmsg(65535, 64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP unreachable reported on the socket, and the like
                continue
            if data in (b"\r\n\r\n", b"\r\n", b"\x00\x00\x00\x00"):
                continue  # NAT keep-alive pings
            reporter.count("received")
            source = Address("UDP", addr[0], addr[1])
            route, source, owner = gate.route(data, source, wall)
            if route is Route.HANDLE:
                self.on_datagram(data, source)
            elif route is Route.PEER:
                with contextlib.suppress(OSError):  # full: lost like a datagram
                    self.peers[owner].send(frame(data, source))
            elif route is Route.MAIN:
                age = 0.0
                for level, kind, value in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack_from("@qq", value)
                        age = max(0.0, wall - (sec + nsec / 1e9))
                reporter.events.append(["d", frame(data, source), age, owner >= 0])
            else:
                reporter.count("refused")
                if route is Route.REFUSE:
                    reply = error_response_bytes(data, 403, "Forbidden")
                    if reply is not None:
                        self._send(reply, source)
        self._flush()

    def _peer_readable(self, peer: socket.socket) -> None:
        """REGISTERs of this worker's users that another worker read (and judged)."""
        for _ in range(256):
            try:
                packet = peer.recv(70_000)
            except (BlockingIOError, InterruptedError):
                break
            if not packet:
                assert self._loop is not None
                self._loop.remove_reader(peer.fileno())
                break
            data, source = unframe(packet)
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
        self.reporter.count("handled")
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
            self.firewall.ban(source.host, f"scanner fingerprint ({marker})", time.time())
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


def _die_with_parent() -> None:
    """A worker never outlives its main process. It reads its own socket of the SIP port:
    left behind by a main process killed with SIGKILL, it would go on answering
    REGISTERs there, and hold its share of the port for a restarted server. Its channel's
    end of file stops it when its loop runs; the kernel's death signal (Linux) stops it
    also when it cannot (blocked, stopped)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the main process died before the line above
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(description="pbxwarden registrar worker (started by serve)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--udp-fd", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--reads-socket", action="store_true")
    parser.add_argument("--peer", action="append", default=[], help="INDEX:FD")
    args = parser.parse_args(argv)
    config = Config.model_validate_json(sys.stdin.buffer.read())
    from pbxwarden.runtime import install_fast_loop, setup_logging, tune_gc

    setup_logging(config)
    udp = socket.socket(fileno=args.udp_fd)
    peers = {}
    for peer in args.peer:
        index, _, fd = peer.partition(":")
        peers[int(index)] = socket.socket(fileno=int(fd))
    channel = socket.socket(fileno=args.channel_fd)
    channel.setblocking(False)
    udp.setblocking(False)
    store = Store(config.database_url(args.data_dir))
    try:
        worker = RegistrarWorker(
            args.index,
            config,
            store,
            load_or_create_secret(args.data_dir),
            udp,
            channel,
            peers,
            args.reads_socket,
        )
        tune_gc()
        install_fast_loop()
        asyncio.run(worker.run())
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
