"""One node's part in the cluster: what it shares, what it adopts, and catching up.

Shared in this slice (docs/cluster.md has the whole picture):

* **bans**: a ban made here (the firewall's own, or one an administrator stored with
  the CLI or the API) is written to Redis with its expiry by an atomic script that also
  announces it; every node applies announced bans to its ban table at once and stores
  them in its own database, so that they also survive a restart there. Lifts likewise,
  remembered in Redis for a while so that a node that missed one cannot push the ban
  back.
* **suspensions** (:mod:`pbxwarden.cluster.suspensions`) and **spend**
  (:mod:`pbxwarden.cluster.spend`), for the guard; call limits in
  :mod:`pbxwarden.cluster.calls`.
* **password guessing** (:mod:`pbxwarden.firewall.locks`): each failed authentication
  of an extension is also counted in Redis by a script that adds it, forgets the ones
  past the window and answers the count and the distinct sources; the lock rule stays
  the tracker's own (:meth:`~pbxwarden.firewall.locks.LockTracker.decide`), fed the
  whole cluster's counts. Locks and their lifts are shared like bans.

What stays per node, and why: the per-source flood and failure counters (a flood
is one source hitting one node; sharing each datagram's count would cost more than
the flood), the extension-enumeration counts, TCP/TLS connection limits.

Redis down: each node keeps counting and banning on its own (the local rules run
first anyway; Redis only adds the other nodes' view). Lifts that could not be shared
are kept; when Redis answers again a reconcile round pushes the bans and locks made
meanwhile, adopts the others', and applies the lifts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden.cluster import scripts
from pbxwarden.cluster.alerts import SharedAlerts
from pbxwarden.cluster.callreg import CallRegistry, call_records
from pbxwarden.cluster.calls import HOLD_INTERVAL
from pbxwarden.cluster.connection import RedisLink
from pbxwarden.cluster.events import SharedEvents
from pbxwarden.cluster.location import SharedLocation
from pbxwarden.cluster.rates import SharedAttempts
from pbxwarden.cluster.registry import DatabaseProbe, NodeRegistry, server_load
from pbxwarden.cluster.relay import NodeRelay
from pbxwarden.cluster.spend import SharedSpend
from pbxwarden.cluster.suspensions import SharedSuspensions
from pbxwarden.cluster.takeover import Takeover
from pbxwarden.firewall.engine import Ban
from pbxwarden.firewall.locks import MAX_FAILURES_KEPT, ExtensionLock, LockEvent
from pbxwarden.firewall.nftables import NftablesError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from pbxwarden.server import SipServer
    from pbxwarden.store.db import ExtensionAuth

log = structlog.get_logger("pbxwarden.cluster")

QUEUE_LIMIT = 10_000  # changes waiting to be shared; past it the reconcile round catches up
LIFT_MEMORY = 86400.0  # how long Redis remembers a lift at least (seconds)


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key and channel of one PBX (``cluster.key_prefix``)."""

    prefix: str

    @property
    def bans(self) -> list[str]:
        p = self.prefix
        return [f"{p}bans", f"{p}bans:until", f"{p}unbans", f"{p}unbans:until"]

    @property
    def locks(self) -> str:
        return f"{self.prefix}locks"

    @property
    def suspensions(self) -> str:
        return f"{self.prefix}suspensions"

    @property
    def channel(self) -> str:
        return f"{self.prefix}events"

    @property
    def stream(self) -> str:
        return f"{self.prefix}events:stream"

    def failures(self, tenant: str, number: str) -> str:
        return f"{self.prefix}authfail:{tenant}/{number}"


def ban_record(ban: Ban, node: str) -> dict[str, Any]:
    return {
        "until": ban.until,
        "reason": ban.reason,
        "level": ban.level,
        "created_at": ban.created_at,
        "node": node,
    }


def ban_from(address: str, record: dict[str, Any]) -> Ban:
    return Ban(
        address,
        float(record["until"]),
        str(record.get("reason", ""))[:255],
        int(record.get("level", 1)),
        float(record["created_at"]),
    )


def lock_record(lock: ExtensionLock, node: str) -> dict[str, Any]:
    return {
        "until": lock.until,
        "level": lock.level,
        "created_at": lock.created_at,
        "reason": lock.reason,
        "sources": list(lock.sources),
        "node": node,
    }


class ClusterNode:
    """Started by the server when ``cluster.redis_url`` is set; see the module docstring."""

    def __init__(self, server: SipServer) -> None:
        config = server.config.cluster
        self.server = server
        self.node = config.node
        self.reconcile_interval = config.reconcile_interval
        self.link = RedisLink(config.redis_url, config.timeout, config.node)
        self.link.on_recovered = self._recovered
        self.keys = Keys(config.key_prefix)
        client = self.link.client
        self._ban = client.register_script(scripts.BAN)
        self._unban = client.register_script(scripts.UNBAN)
        self._snapshot = client.register_script(scripts.SNAPSHOT)
        self._count = client.register_script(scripts.COUNT_FAILURE)
        self._set_lock = client.register_script(scripts.SET_LOCK)
        self._outbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._failures: asyncio.Queue[
            tuple[int, tuple[str, str], str, float, bool, float | None]
        ] = asyncio.Queue(QUEUE_LIMIT)
        self._unshared_lifts: dict[str, tuple[float, float]] = {}  # address -> (at, keep)
        self._wake = asyncio.Event()  # reconcile now
        self._resubscribe = False
        # failures counted in Redis are told apart by this process's own id and a
        # sequence number (two nodes given the same name must not overwrite each other's)
        self._uid = f"{self.node}.{secrets.token_hex(4)}"
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self.shared = 0  # changes this node wrote to Redis
        self.adopted = 0  # changes of other nodes applied here
        self.dropped = 0  # changes not queued (queue full): the reconcile round has them
        self.reconciled_at: float | None = None
        self.events = SharedEvents(self.link, self.keys.stream, self.node, server.events)
        # call limits and attempt rates, one script per costly attempt (rates.py)
        self.calls = self.attempts = SharedAttempts(
            config.redis_url,
            config.timeout,
            config.key_prefix,
            config.node,
            fail_closed=config.costly_when_down == "refuse",
        )
        self.alerts = SharedAlerts(self.link, config.key_prefix)  # one notification for all
        # the heartbeat: pbxwarden cluster status, GET /api/v1/cluster (registry.py)
        self.registry = NodeRegistry(
            self.link,
            config.key_prefix,
            config.node,
            server_load(server),
            DatabaseProbe(server.store.engine, max(2.0, config.timeout)).read,
            config.heartbeat_interval,
            config.lost_after,
        )

        # a lost node's open CDRs closed by one survivor (takeover.py)
        self.takeover = Takeover(
            self.link,
            config.key_prefix,
            config.node,
            lambda: self.registry.view,
            server.store.cdr_interrupt_node,
            server.events.publish,
        )
        self.spend = SharedSpend(
            config.redis_url,
            config.timeout,
            config.key_prefix,
            config.node,
            fail_closed=config.costly_when_down == "refuse",
        )
        self.suspensions = SharedSuspensions(
            server, self.link, self.keys.suspensions, self.keys.channel
        )
        # every node's calls in progress, listed and ended from any node (callreg.py)
        self.callreg = CallRegistry(
            self.link,
            config.key_prefix,
            config.node,
            lambda: call_records(server),
            lambda call_id, by: server.calls.end_call(
                call_id, f"ended by an administrator (on node {by})"
            ),
            config.heartbeat_interval,
            config.lost_after,
        )
        # bindings of every node: published here, a replica of the others' (location.py)
        self.location = SharedLocation(
            self.link, server.location, config.key_prefix, config.node, config.reconcile_interval
        )
        # calls to phones registered on another node directly go through it (relay.py)
        self.relay = NodeRelay(
            self.link, config.key_prefix, config.node, lambda: self.registry.view
        )
        self.location.replica.via_node = self.relay.address_of

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Hook into the firewall and the lock tracker, catch up once, start the tasks.

        Never waits longer than a few timeouts: a node whose Redis is down starts alone."""
        fw, tracker = self.server.firewall, self.server.locks.tracker
        fw.on_ban = self.ban_made
        tracker.on_failure = self.failure_counted
        tracker.on_lock = self.lock_changed
        await self.reconcile()
        self.events.start()
        self.registry.start()
        self.location.start()
        self.callreg.start()
        self.server.guard.shared = self.calls  # call limits for the whole PBX
        self.server.guard.shared_attempts = self.attempts  # and rates (rates.py)
        self.server.alert_channels.shared = self.alerts  # sent once (alerts.py)
        self.server.guard.shared_spend = self.spend  # spend caps for the whole PBX
        self.server.guard.shared_suspensions = self.suspensions
        self.server.calls.node_relay = self.relay
        self._tasks.append(asyncio.create_task(self.relay.load()))
        self._tasks.append(asyncio.create_task(self._holding()))
        self._tasks.append(asyncio.create_task(self._taking_over()))
        self._tasks.append(asyncio.create_task(self.spend.run(self.link)))
        self._tasks.append(asyncio.create_task(self.suspensions.pushing()))
        for job in (self.link.watch(), self._subscribe(), self._push(), self._counting()):
            self._tasks.append(asyncio.create_task(job))
        self._tasks.append(asyncio.create_task(self._reconciling()))

    async def stop(self) -> None:
        await self.registry.stop()  # marked stopped in the registry
        await self.events.stop()
        await self.location.stop()
        await self.callreg.stop()
        self.server.guard.shared = None
        self.server.guard.shared_attempts = None
        self.server.alert_channels.shared = None
        self.server.guard.shared_spend = None
        self.server.guard.shared_suspensions = None
        self.server.calls.node_relay = None
        self.server.firewall.on_ban = None
        self.server.locks.tracker.on_failure = None
        self.server.locks.tracker.on_lock = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.link.close()
        self.calls.close()
        self.spend.close()

    async def _holding(self) -> None:
        """This node's calls in progress keep their reservations (a killed node's
        lapse, and the survivors' limits free up)."""
        while True:
            await asyncio.sleep(HOLD_INTERVAL)
            self.calls.hold_all(time.time())

    async def _taking_over(self) -> None:
        """After each heartbeat's view of the nodes: take over the lost ones."""
        while True:
            await asyncio.sleep(self.registry.interval)
            try:
                await self.takeover.round()
            except Exception:
                log.exception("taking over a lost node failed")

    def describe(self) -> dict[str, Any]:
        return {
            "cluster_node": self.node,
            **self.link.describe(),
            "cluster_shared": self.shared,
            "cluster_adopted": self.adopted,
            "cluster_reconciled_at": self.reconciled_at,
            "cluster_events_written": self.events.written,
            "cluster_events_read": self.events.read,
            "cluster_events_dropped": self.events.dropped,
            "cluster_calls_reserved": self.calls.reserved,
            "cluster_calls_refused": self.calls.refused,
            "cluster_calls_redis": "down" if self.calls.down else "up",
            "cluster_rates_refused": self.attempts.rate_refused,
            "cluster_alerts_sent_elsewhere": self.alerts.lost,
            "cluster_heartbeats": self.registry.beats,
            "cluster_takeover_closed": self.takeover.closed,
            **self.spend.describe(),
            "cluster_suspensions_shared": self.suspensions.shared,
            "cluster_suspensions_adopted": self.suspensions.adopted,
            **self.location.describe(),
            **self.relay.describe(),
            **self.callreg.describe(),
        }

    def _recovered(self) -> None:
        self._resubscribe = True  # the subscription may have died with the connection
        self._wake.set()
        self.location.recovered()

    # -- hooks: called synchronously from the SIP path, so they only queue ----------------

    def _queue(self, kind: str, item: Any) -> None:
        try:
            self._outbox.put_nowait((kind, item))
        except asyncio.QueueFull:
            self.dropped += 1

    def ban_made(self, ban: Ban) -> None:
        """The firewall banned a source (flood, guessing, scanner, enumeration)."""
        self._queue("ban", ban)

    def ban_stored(self, ban: Ban) -> None:
        """A ban appeared in the database (the CLI, the API): shared like our own."""
        self._queue("ban", ban)

    def ban_lifted(self, address: str, at: float, until: float) -> None:
        """An administrator lifted a ban here (the CLI or the API removed it)."""
        self._queue("unban", (address, at, until))

    def lock_changed(self, event: LockEvent) -> None:
        self._queue("lock", event)

    def failure_counted(
        self,
        extension_id: int,
        who: tuple[str, str],
        address: str,
        now: float,
        unbannable: bool,
        password_changed_at: float | None,
    ) -> None:
        try:
            self._failures.put_nowait(
                (extension_id, who, address, now, unbannable, password_changed_at)
            )
        except asyncio.QueueFull:
            self.dropped += 1

    # -- sharing what happened here -------------------------------------------------------

    def _reachable(self) -> bool:
        """Worth trying a command: up, or never tried. While down, changes wait for the
        reconcile round rather than each costing a timeout."""
        return self.link.healthy or not self.link.known

    async def _push(self) -> None:
        while True:
            kind, item = await self._outbox.get()
            try:
                if kind == "ban":
                    if self._reachable():
                        await self.share_ban(item)
                elif kind == "unban":
                    address, at, until = item
                    keep = max(until, at + LIFT_MEMORY)
                    if not self._reachable() or not await self.share_lift(address, at, keep):
                        self._unshared_lifts[address] = (at, keep)
                elif kind == "lock" and self._reachable():
                    await self.share_lock(item.lock, item.tenant, item.number)
            except Exception:
                log.exception("sharing a change failed", kind=kind)

    async def share_ban(self, ban: Ban) -> bool:
        record = json.dumps(ban_record(ban, self.node))
        message = json.dumps({"kind": "ban", "address": ban.address, **ban_record(ban, self.node)})
        args: list[str | float] = [ban.address, ban.until, ban.created_at, record, time.time()]
        args += [self.keys.channel, message]
        result = await self.link.run("ban", lambda c: self._ban(keys=self.keys.bans, args=args))
        if result:
            self.shared += 1
        return result is not None

    async def share_lift(self, address: str, at: float, keep: float) -> bool:
        message = json.dumps({"kind": "unban", "address": address, "at": at, "node": self.node})
        args: list[str | float] = [address, at, keep, time.time(), self.keys.channel, message]
        result = await self.link.run("unban", lambda c: self._unban(keys=self.keys.bans, args=args))
        if result:
            self.shared += 1
        return result is not None

    async def share_lock(self, lock: ExtensionLock, tenant: str, number: str) -> bool:
        if not number:
            ext = self._extension_by_id(lock.extension_id)
            if ext is None:
                return True  # deleted meanwhile: nothing to share
            tenant, number = ext.tenant, ext.number
        record = lock_record(lock, self.node)
        message = json.dumps({"kind": "lock", "tenant": tenant, "number": number, **record})
        args: list[str | float] = [f"{tenant}/{number}", lock.created_at, lock.until]
        args += [json.dumps(record), self.keys.channel, message]
        result = await self.link.run(
            "lock", lambda c: self._set_lock(keys=[self.keys.locks], args=args)
        )
        if result:
            self.shared += 1
        return result is not None

    async def _counting(self) -> None:
        """Each failure counted here is counted in Redis too; the tracker's rule decides
        on the cluster's counts (a lock it makes is shared through :meth:`lock_changed`)."""
        tracker = self.server.locks.tracker
        window = tracker.settings.window
        while True:
            ext_id, who, address, at, unbannable, changed = await self._failures.get()
            if not self._reachable() or not who[1]:
                continue  # counted here only: the local rule already ran
            member = f"{self._uid}:{next(self._seq)}|{int(unbannable)}|{address}"
            after = max(at - window, changed or 0.0)
            keys = [self.keys.failures(*who)]
            args: list[str | float] = [at, window, after, member, MAX_FAILURES_KEPT]
            try:
                answer = await self.link.run("count", _call(self._count, keys, args))
                if answer is None:
                    continue
                count, any_unbannable, sources = answer
                tracker.decide(
                    ext_id,
                    who,
                    at,
                    int(count),
                    [str(s) for s in sources],
                    bool(int(any_unbannable)),
                    changed,
                )
            except Exception:
                log.exception("counting a failure in the cluster failed", extension=who[1])

    # -- adopting what other nodes did ----------------------------------------------------

    async def _subscribe(self) -> None:
        while True:
            pubsub = self.link.pubsub()
            try:
                await asyncio.wait_for(pubsub.subscribe(self.keys.channel), self.link.timeout)
                self.link.mark_up()
                self._resubscribe = False
                self._wake.set()  # what was announced while we were not listening
                while not self._resubscribe:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        await self.on_message(str(message["data"]))
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.link.mark_down("SUBSCRIBE", exc)
            except Exception as exc:
                if type(exc).__module__.startswith("redis"):
                    self.link.mark_down("SUBSCRIBE", exc)
                else:
                    log.exception("applying a cluster message failed")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), self.link.timeout)
            await asyncio.sleep(0.5)

    async def on_message(self, data: str) -> None:
        try:
            message = json.loads(data)
            kind = message["kind"]
            origin = str(message.get("node", "?"))
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable cluster message", data=data[:200])
            return
        if kind == "ban":
            self.adopt_ban(ban_from(str(message["address"]), message), origin)
        elif kind == "unban":
            await self.lift_here(str(message["address"]), float(message["at"]), origin)
        elif kind == "lock":
            self.adopt_lock(str(message["tenant"]), str(message["number"]), message, origin)
        elif kind == "suspension":
            await self.suspensions.on_message(message)

    def adopt_ban(self, ban: Ban, origin: str) -> bool:
        """Another node's ban (or one of ours, announced back: then nothing changes)."""
        server = self.server
        now = time.time()
        if not server.firewall.adopt(ban, now):
            return False
        self.adopted += 1
        server.sync.unsaved_bans[ban.address] = ban  # stored here on the next round
        server.transports.drop_source(ban.address)
        log.warning(
            "firewall ban shared",
            address=ban.address,
            reason=ban.reason,
            until=ban.until,
            node=origin,
        )
        server.events.publish(
            "ban",
            {
                "tenant": "provider",
                "address": ban.address,
                "reason": ban.reason,
                "until": ban.until,
                "extension": None,
                "node": origin,
            },
        )
        if server.nft is not None:
            task = asyncio.ensure_future(self._offload({ban.address: ban.until}, now))
            server._tasks.add(task)
            task.add_done_callback(server._tasks.discard)
        return True

    async def _offload(self, bans: dict[str, float], now: float) -> None:
        nft = self.server.nft
        if nft is not None:
            try:
                await asyncio.to_thread(nft.sync, bans, [], now)
            except NftablesError as exc:
                log.error("nftables offload failed", error=str(exc))

    async def lift_here(self, address: str, at: float, origin: str) -> bool:
        """A lift made elsewhere: the ban goes from the database, then from the table
        (in that order, so that a database round in between cannot bring it back)."""
        fw = self.server.firewall
        ban = fw.bans.get(address)
        if ban is None or ban.created_at > at:
            return False  # not banned here, or banned again since
        await asyncio.to_thread(self.server.store.remove_ban, address)
        self.server.sync.unsaved_bans.pop(address, None)
        ban = fw.bans.get(address)
        if ban is None or ban.created_at > at:
            return False
        self.adopted += 1
        return fw.unban(address, f"lifted on node {origin}")

    def adopt_lock(self, tenant: str, number: str, record: dict[str, Any], origin: str) -> bool:
        ext = self._extension(tenant, number)
        if ext is None:
            return False  # not known here (yet)
        try:
            lock = ExtensionLock(
                ext.id,
                float(record["until"]),
                int(record.get("level", 1)),
                float(record["created_at"]),
                str(record.get("reason", "")),
                tuple(str(s) for s in record.get("sources", ())),
            )
        except (KeyError, TypeError, ValueError):
            return False
        now = time.time()
        if not self.server.locks.tracker.adopt(lock, (tenant, number), now):
            return False
        self.adopted += 1
        self.server.lock_sync.keep(lock)  # stored here too: workers, restarts, the CLI
        if lock.active(now, ext.password_changed_at):
            log.warning(
                "extension locked on another node",
                tenant=tenant,
                extension=number,
                until=lock.until,
                reason=lock.reason,
                node=origin,
            )
        return True

    def _extension(self, tenant: str, number: str) -> ExtensionAuth | None:
        realm = self.server.calls.routing.realms.get(tenant)
        return None if realm is None else self.server.directory.get(realm, number)

    def _extension_by_id(self, extension_id: int) -> ExtensionAuth | None:
        return next((e for e in self.server.directory.entries() if e.id == extension_id), None)

    # -- reconcile ------------------------------------------------------------------------

    async def _reconciling(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.reconcile_interval)
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("cluster reconcile failed")

    async def reconcile(self) -> bool:
        """Compare everything shared with what this node has, both ways; False if Redis
        did not answer. Lifts made here go first, so that they are not pulled back."""
        for address, (at, keep) in list(self._unshared_lifts.items()):
            if not await self.share_lift(address, at, keep):
                return False
            del self._unshared_lifts[address]
        now = time.time()
        repeat = self.server.locks.tracker.settings.repeat_memory
        snapshot = await self.link.run(
            "snapshot",
            lambda c: self._snapshot(
                keys=[*self.keys.bans, self.keys.locks], args=[now, now - repeat]
            ),
        )
        if snapshot is None:
            return False
        bans, lifts, locks = (_pairs(part) for part in snapshot)
        fw = self.server.firewall
        for address, text in bans.items():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                record = json.loads(text)
                self.adopt_ban(ban_from(address, record), str(record.get("node", "?")))
        for address, lifted in lifts.items():
            with contextlib.suppress(ValueError):
                await self.lift_here(address, float(lifted), "?")
        for address, ban in list(fw.bans.items()):
            shared = bans.get(address)
            if ban.until > now and (shared is None or _until(shared) < ban.until):
                await self.share_ban(ban)
        tracker = self.server.locks.tracker
        for name, text in locks.items():
            tenant, _, number = name.rpartition("/")
            with contextlib.suppress(ValueError, TypeError):
                record = json.loads(text)
                self.adopt_lock(tenant, number, record, str(record.get("node", "?")))
        by_id = {e.id: e for e in self.server.directory.entries()}
        for ext_id, lock in list(tracker.locks.items()):
            ext = by_id.get(ext_id)
            if ext is None:
                continue
            shared = locks.get(f"{ext.tenant}/{ext.number}")
            if shared is None:
                if lock.until > now:
                    await self.share_lock(lock, ext.tenant, ext.number)
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                record = json.loads(shared)
                theirs = (float(record["created_at"]), -float(record["until"]))
                if (lock.created_at, -lock.until) > theirs:
                    await self.share_lock(lock, ext.tenant, ext.number)
        if not await self.suspensions.reconcile():
            return False
        self.reconciled_at = now
        return True


def _pairs(flat: Any) -> dict[str, str]:
    """A flat HGETALL answer from a script ([k1, v1, k2, v2...]) as a dict."""
    items = [str(x) for x in flat or ()]
    return dict(zip(items[::2], items[1::2], strict=True))


def _until(text: str) -> float:
    try:
        return float(json.loads(text)["until"])
    except (ValueError, KeyError, TypeError):
        return 0.0


def _call(
    script: AsyncScript, keys: list[str], args: list[str | float]
) -> Callable[[Redis], Awaitable[Any]]:
    """A script call for :meth:`RedisLink.run`, its arguments bound now."""
    return lambda client: script(keys=keys, args=args, client=client)
