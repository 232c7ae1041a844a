"""The main process's side of the registrar workers (:mod:`pbxwarden.registrar_workers`,
which says why they exist): starts, feeds, watches and restarts them, hands them
REGISTERs it read (TCP, TLS, and UDP when the kernel cannot steer), and relays the
bans and the readiness each one must know."""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog

from pbxwarden.config import Config
from pbxwarden.pbx.location import Binding
from pbxwarden.registrar_gate import worker_for
from pbxwarden.registrar_protocol import (
    BANS,
    EVENTS_PER_PACKET,
    GO,
    MAX_EVENT_PACKET,
    MAX_RESTART_DELAY,
    PEERS,
    RESTART_DELAY,
    SYNC,
    SYNC_TIMEOUT,
    binding_event,
    frame,
)
from pbxwarden.sip.transaction import Address

log = structlog.get_logger("pbxwarden.workers")

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
        sockets: Sequence[socket.socket] = (),
        read_socket: Callable[[int, bool], None] | None = None,
        bans: Callable[[], list[list[Any]]] = list,
    ) -> None:
        """``bindings``: the main process's routing copy, each (AOR, binding); a worker
        that reports ready is first given those of its extensions.

        ``sockets``: one per worker, of the steered group (transport/steering.py): the
        worker reads REGISTERs from its own, hands those of other workers' users to
        them over a socket pair of each two, and ``read_socket(index, True)`` asks the
        main process to read a worker's socket while that worker is down. ``bans``:
        every ban in force, as :meth:`broadcast_bans` rows, for a worker that starts."""
        self.count = count
        self._sockets = list(sockets)
        self._read_socket = read_socket
        self._bans = bans
        # Each two workers' pair, kept open here so that it outlives a restart of either.
        self._mesh: dict[tuple[int, int], tuple[socket.socket, socket.socket]] = {}
        if self._sockets:
            for i in range(count):
                for j in range(i + 1, count):
                    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    for sock in pair:
                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                    self._mesh[(i, j)] = pair
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
        self.read = 0  # datagrams the workers read from their own sockets (steered)
        self.handled = 0  # REGISTERs the workers handled, however they came

    @property
    def ready(self) -> int:
        return sum(w.ready for w in self._workers)

    @property
    def steered(self) -> bool:
        """The workers read REGISTERs from sockets of their own."""
        return bool(self._sockets)

    def _peer_fds(self, index: int) -> list[str]:
        """``--peer J:FD`` arguments: this worker's end of its pair with each other one."""
        args = []
        for (i, j), (a, b) in self._mesh.items():
            if i == index:
                args += ["--peer", f"{j}:{a.fileno()}"]
            elif j == index:
                args += ["--peer", f"{i}:{b.fileno()}"]
        return args

    def _set_ready(self, worker: _Worker, ready: bool) -> None:
        if worker.ready == ready:
            return
        worker.ready = ready
        if self._sockets:
            if self._read_socket is not None:  # read here while the worker is down
                self._read_socket(worker.index, not ready)
            mask = bytes(w.ready for w in self._workers)
            for other in self._workers:
                if other.ready and other.channel is not None:
                    with contextlib.suppress(OSError):
                        other.channel.send(PEERS + mask)

    def broadcast_bans(self, rows: list[list[Any]]) -> None:
        """Bans (address, until, reason, level, created_at; until 0: lifted) to every
        worker that reads a socket of its own, which must drop those sources at once."""
        if not self._sockets or not rows:
            return
        for worker in self._workers:
            if worker.ready and worker.channel is not None:
                self._send_bans(worker.channel, rows)

    @staticmethod
    def _send_bans(channel: socket.socket, rows: list[list[Any]]) -> None:
        for i in range(0, len(rows), 1024):
            with contextlib.suppress(OSError):  # full: the next change resends nothing lost
                channel.send(BANS + marshal.dumps(rows[i : i + 1024]))

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
        udp_fd = self._udp_fd
        extra: list[str] = []
        fds = []
        if self._sockets:
            udp_fd = self._sockets[worker.index].fileno()
            extra = ["--reads-socket", *self._peer_fds(worker.index)]
            fds = [int(a.rpartition(":")[2]) for a in extra if ":" in a]
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
                str(udp_fd),
                "--channel-fd",
                str(theirs.fileno()),
                *extra,
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(udp_fd, theirs.fileno(), *fds),
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
        self._set_ready(worker, False)
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
                self._set_ready(worker, False)
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
                    self._set_ready(worker, True)
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
            if self._sockets:  # the bans in force, then it may read its socket
                bans = self._bans()
                for i in range(0, len(bans), 1024):
                    channel.send(BANS + marshal.dumps(bans[i : i + 1024]))
                channel.send(GO)
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
            channel.send(frame(data, source))
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
        for pair in self._mesh.values():
            for sock in pair:
                sock.close()
        self._mesh.clear()

    def describe(self) -> dict[str, int]:
        return {
            "workers": self.count,
            "workers_ready": self.ready,
            "worker_restarts": sum(w.restarts for w in self._workers),
            "worker_dispatched": self.dispatched,
            "worker_dropped": self.dropped,
            "worker_read": self.read,
            "worker_handled": self.handled,
        }
