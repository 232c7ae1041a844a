"""Location across nodes: every node's bindings in Redis, a local replica of the others'.

A phone registered through node A must be callable from a phone on node B. The B2BUA
looks bindings up synchronously (the SIP core is sans-I/O), so node B never asks Redis
per call: it keeps a replica of the other nodes' bindings in memory and
:meth:`~pbxwarden.pbx.location.LocationService.reach` merges it with its own.

In Redis (``cluster.key_prefix``, ``<p>`` below):

* ``<p>loc:<node>``: a hash per node, field ``AOR\\tcontact`` (AOR = ``realm/number``,
  the tenant's realm and the extension, the same on every node), value the binding as
  JSON (contact, expiry, q, source with its ``via`` front, User-Agent, registration
  time, Call-ID and CSeq, node). Each node writes only its own hash, so two nodes
  holding the same contact (a phone that moved after a failover) never remove each
  other's binding.
* ``<p>loc:exp``: one sorted set of ``node\\tAOR\\tcontact`` by expiry; each script
  forgets up to 500 expired bindings first (an expired entry is removed only if its
  record really expired: a refresh may have replaced it).
* ``<p>loc:nodes`` (the nodes that wrote), ``<p>loc:seq`` (a counter every change
  increments), ``<p>loc:epoch`` (a token set when the data set was created: a Redis
  that lost its data has another one, or none).

Every change is one Lua script (``PUBLISH_BINDINGS``) that writes a batch and
``PUBLISH``es it on ``<p>location`` in the same step, numbered with the new ``seq``
and marked with the ``epoch``. The main process's
:class:`~pbxwarden.pbx.location.LocationService` tells each change (its ``observer``:
the registrar in the main process and the registrar workers' reports both land there,
as do administrators' removals); the observer only records it, and a task pushes the
batch (one script call per 200 changes, within milliseconds).
Expiry is not announced: every replica drops an entry at its own expiry time.

Each node applies the others' announcements to its replica (one older than the
snapshot it read is skipped). A gap in ``seq`` (a lost message, a new subscription), a
different ``epoch`` in a message, a ``seq`` that the periodic check
(``cluster.reconcile_interval``) saw and that was still not heard at the next check,
or a Redis that answers again after an outage makes it read the whole set again
(``LOCATION_SNAPSHOT``, parsed in slices so that the SIP loop goes on); a different or
missing ``epoch`` (a Redis restarted empty) makes it write its own bindings again
first (``reset``: the node's hash replaced), so every node's replica is whole once the
reconcile has run.
Redis down: each node goes on with its own bindings and the replica it had, whose
entries expire at their own times.

Which bindings another node can use: those made through a SIP front (``source``
``udp:phone:port via udp:front:port``). Any node reaches such a phone as node A
would, through the front that holds its flow, with ``Route: <sip:front;lr;
received=sip:phone:port>`` (the node's existing front routing, ``server.py``), so a
call from B does not need A at all, even when A is dead. A binding made on A directly
(no front: the phone's NAT binding is A's own socket) is called through A while A is
up: the same Route, with A in the front's place, and signed (``relay.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden.store.db import BindingRow

if TYPE_CHECKING:
    from pbxwarden.cluster.connection import RedisLink
    from pbxwarden.pbx.location import LocationService

log = structlog.get_logger("pbxwarden.cluster")

BATCH = 200  # changes per script call
TRIM = 500  # expired entries one script call forgets at most

_TRIM = """
local function trim(prefix, exp, now)
  local ended = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 500)
  for _, member in ipairs(ended) do
    local tab = string.find(member, '\\t', 1, true)
    if tab then
      local hash = prefix .. string.sub(member, 1, tab - 1)
      local field = string.sub(member, tab + 1)
      local record = redis.call('HGET', hash, field)
      if record then
        local ok, decoded = pcall(cjson.decode, record)
        if (not ok) or tonumber(decoded['expires_at']) <= tonumber(now) then
          redis.call('HDEL', hash, field)
        end
      end
    end
    redis.call('ZREM', exp, member)
  end
end
"""

# KEYS: <p>loc:<node>, <p>loc:exp, <p>loc:nodes, <p>loc:seq, <p>loc:epoch
# ARGV: prefix (<p>loc:), node, now, channel, reset (1: the node's hash is replaced),
#       epoch token (set if none), message (JSON), then field, expires_at, record
#       triples (expires_at 0 and record "": removed)
# Answers {seq, epoch}; publishes "<seq> <epoch> <message>".
PUBLISH_BINDINGS = (
    _TRIM
    + """
local prefix, node, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
trim(prefix, KEYS[2], now)
if redis.call('EXISTS', KEYS[5]) == 0 then
  redis.call('SET', KEYS[5], ARGV[6])
end
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[1])
end
redis.call('SADD', KEYS[3], node)
for i = 8, #ARGV, 3 do
  local field, expires = ARGV[i], tonumber(ARGV[i + 1])
  if expires > 0 then
    redis.call('HSET', KEYS[1], field, ARGV[i + 2])
    redis.call('ZADD', KEYS[2], expires, node .. '\\t' .. field)
  else
    redis.call('HDEL', KEYS[1], field)
    redis.call('ZREM', KEYS[2], node .. '\\t' .. field)
  end
end
local seq = redis.call('INCR', KEYS[4])
local epoch = redis.call('GET', KEYS[5])
redis.call('PUBLISH', ARGV[4], seq .. ' ' .. epoch .. ' ' .. ARGV[7])
return {seq, epoch}
"""
)

# KEYS: <p>loc:exp, <p>loc:nodes, <p>loc:seq, <p>loc:epoch; ARGV: prefix, now
# Answers {seq, epoch or false, node1, {field, record, ...}, node2, ...}.
LOCATION_SNAPSHOT = (
    _TRIM
    + """
local prefix, now = ARGV[1], tonumber(ARGV[2])
trim(prefix, KEYS[1], now)
local out = {tonumber(redis.call('GET', KEYS[3]) or '0'), redis.call('GET', KEYS[4])}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  table.insert(out, node)
  table.insert(out, redis.call('HGETALL', prefix .. node))
end
return out
"""
)

# KEYS: <p>loc:seq, <p>loc:epoch; answers {seq, epoch or false}: the cheap periodic check.
LOCATION_STATE = """
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('GET', KEYS[2])}
"""


def record_of(aor: str, binding: BindingRow, node: str) -> dict[str, Any]:
    return {
        "aor": aor,
        "contact": binding.contact,
        "expires_at": binding.expires_at,
        "q": binding.q,
        "call_id": binding.call_id,
        "cseq": binding.cseq,
        "source": binding.source,
        "user_agent": binding.user_agent,
        "registered_at": binding.registered_at,
        "node": node,
    }


def binding_of(record: dict[str, Any]) -> tuple[str, BindingRow]:
    """(AOR, binding) from a record; the extension id is this node's business (-1: not
    one of ours; nothing on the call path reads it)."""
    q = record.get("q")
    agent = record.get("user_agent")
    return str(record["aor"]), BindingRow(
        -1,
        str(record["contact"]),
        float(record["expires_at"]),
        None if q is None else float(q),
        str(record.get("call_id", "")),
        int(record.get("cseq", 0)),
        str(record["source"]),
        None if agent is None else str(agent),
        float(record.get("registered_at", 0.0)),
    )


def field_of(aor: str, contact: str) -> str:
    return f"{aor}\t{contact}"


class Replica:
    """The other nodes' bindings, in memory: node -> field -> (AOR, binding), with an
    index by AOR for lookups and a heap of expiry times (nothing scanned while idle)."""

    def __init__(self) -> None:
        # a node's SIP address for the bindings made on it directly (relay.py), or None
        self.via_node: Callable[[str], str | None] | None = None
        self.nodes: dict[str, dict[str, tuple[str, BindingRow]]] = {}
        self._by_aor: dict[str, dict[tuple[str, str], BindingRow]] = {}
        self._expiries: list[tuple[float, str, str]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def put(self, node: str, aor: str, binding: BindingRow) -> None:
        field = field_of(aor, binding.contact)
        fields = self.nodes.setdefault(node, {})
        if field not in fields:
            self._count += 1
        fields[field] = (aor, binding)
        self._by_aor.setdefault(aor, {})[(node, binding.contact)] = binding
        heapq.heappush(self._expiries, (binding.expires_at, node, field))
        if len(self._expiries) > 64 and len(self._expiries) > 3 * len(self):
            self._expiries = [
                (b.expires_at, n, f)
                for n, fields in self.nodes.items()
                for f, (_, b) in fields.items()
            ]
            heapq.heapify(self._expiries)

    def remove(self, node: str, field: str) -> None:
        fields = self.nodes.get(node)
        if fields is None:
            return
        entry = fields.pop(field, None)
        if entry is None:
            return
        self._count -= 1
        aor, binding = entry
        at = self._by_aor.get(aor)
        if at is not None:
            at.pop((node, binding.contact), None)
            if not at:
                del self._by_aor[aor]

    def forget_node(self, node: str) -> None:
        for field in list(self.nodes.get(node, {})):
            self.remove(node, field)
        self.nodes.pop(node, None)

    def purge(self, now: float) -> int:
        """Drop the entries expired by ``now`` (only those due are looked at)."""
        removed = 0
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, node, field = heapq.heappop(expiries)
            entry = self.nodes.get(node, {}).get(field)
            if entry is not None and entry[1].expires_at <= now:
                self.remove(node, field)
                removed += 1
        return removed

    def lookup(self, aor: str, now: float) -> list[BindingRow]:
        """The live bindings other nodes hold that this node can call: made through a
        front, or made on a node directly and called through that node (its address in
        the source's ``via``, as a front's). One per contact (the latest registration)
        when two nodes hold it."""
        at = self._by_aor.get(aor)
        if not at:
            return []
        best: dict[str, BindingRow] = {}
        via_node = self.via_node
        for (node, _), binding in at.items():
            if binding.expires_at <= now:
                continue
            if " via " not in binding.source:
                hop = via_node(node) if via_node is not None else None
                if hop is None:
                    continue
                binding = replace(binding, source=f"{binding.source} via {hop}")
            known = best.get(binding.contact)
            if known is None or binding.expires_at > known.expires_at:
                best[binding.contact] = binding
        return list(best.values())


class SharedLocation:
    """This node's part: publish its bindings, keep the replica of the others'."""

    def __init__(
        self, link: RedisLink, location: LocationService, prefix: str, node: str, interval: float
    ) -> None:
        self.link, self.location, self.node, self.interval = link, location, node, interval
        self.prefix = f"{prefix}loc:"
        self.exp, self.nodes_key = f"{self.prefix}exp", f"{self.prefix}nodes"
        self.seq_key, self.epoch_key = f"{self.prefix}seq", f"{self.prefix}epoch"
        self.channel = f"{prefix}location"
        client = link.client
        self._publish = client.register_script(PUBLISH_BINDINGS)
        self._snapshot = client.register_script(LOCATION_SNAPSHOT)
        self._state = client.register_script(LOCATION_STATE)
        self.replica = Replica()
        self._pending: dict[tuple[str, str], BindingRow | None] = {}
        self._wake = asyncio.Event()  # push now
        self._resync = asyncio.Event()  # read everything (and maybe write everything) now
        self._reset = True  # write the whole own set (first start, a Redis that lost it)
        self.seq = 0  # the last change seen (announced or read)
        self._checked: int | None = None  # Redis's seq at the last periodic check
        self.epoch: str | None = None
        self._token = secrets.token_hex(8)
        self._tasks: list[asyncio.Task[None]] = []
        # announcements received while a snapshot is read: (seq, node, reset, changes)
        self._during_sync: list[tuple[int, str, bool, list[Any]]] | None = None
        self.published = 0  # changes written
        self.applied = 0  # changes of other nodes applied here
        self.snapshots = 0
        self.synced_at: float | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.location.observer = self.changed
        self.location.elsewhere = self.replica.lookup
        self._resync.set()
        for job in (self._pushing(), self._subscribing(), self._checking()):
            self._tasks.append(asyncio.create_task(job))

    async def stop(self) -> None:
        self.location.observer = None
        self.location.elsewhere = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def recovered(self) -> None:
        """Redis answers again: read (and, if it lost them, write) everything."""
        self._resync.set()
        self._wake.set()

    def describe(self) -> dict[str, Any]:
        return {
            "cluster_location_published": self.published,
            "cluster_location_applied": self.applied,
            "cluster_location_replica": len(self.replica),
            "cluster_location_snapshots": self.snapshots,
        }

    # -- made here: synchronous, so it only records ------------------------------------------

    def changed(self, aor: str, contact: str, binding: BindingRow | None) -> None:
        self._pending[(aor, contact)] = binding
        self._wake.set()

    async def _pushing(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._resync.is_set():
                with contextlib.suppress(Exception):
                    await self.sync()
            if not (self.link.healthy or not self.link.known):
                continue  # down: the reconcile after the outage writes everything
            try:
                if self._reset:
                    await self.publish_all()
                elif self._pending:
                    await self.push()
            except Exception:
                log.exception("sharing bindings failed")

    async def push(self) -> bool:
        """Write the recorded changes (a failure leaves them for the full write)."""
        while self._pending:
            items = list(itertools.islice(self._pending.items(), BATCH))  # not all: O(n²)
            for key, _ in items:
                del self._pending[key]
            if not await self._write(items, reset=False):
                self._reset = True  # everything again once Redis answers
                return False
        return True

    async def publish_all(self) -> bool:
        """Replace this node's hash with every binding it has (a start, a Redis that lost
        its data or missed changes)."""
        self._pending.clear()
        now = time.time()
        rows: list[tuple[tuple[str, str], BindingRow | None]] = [
            ((aor, b.contact), b) for aor, b in self.location.items() if b.expires_at > now
        ]
        for i in range(0, max(len(rows), 1), BATCH):
            if not await self._write(rows[i : i + BATCH], reset=i == 0):
                self._reset = True
                return False
        self._reset = False
        return True

    async def _write(
        self, items: list[tuple[tuple[str, str], BindingRow | None]], reset: bool
    ) -> bool:
        changes: list[list[Any]] = []
        args: list[str | float] = []
        for (aor, contact), binding in items:
            field = field_of(aor, contact)
            if binding is None:
                changes.append([field, None])
                args += [field, 0, ""]
            else:
                record = json.dumps(record_of(aor, binding, self.node))
                changes.append([field, record])
                args += [field, binding.expires_at, record]
        message = json.dumps({"node": self.node, "reset": reset, "changes": changes})
        head: list[str | float] = [self.prefix, self.node, time.time(), self.channel]
        head += ["1" if reset else "0", self._token, message]
        keys = [f"{self.prefix}{self.node}", self.exp, self.nodes_key, self.seq_key]
        keys.append(self.epoch_key)
        answer = await self.link.run(
            "location", lambda c: self._publish(keys=keys, args=head + args, client=c)
        )
        if answer is None:
            return False
        self.published += len(items)
        epoch = str(answer[1])
        if self.epoch is not None and epoch != self.epoch and not reset:
            # another node wrote first into a Redis that lost the data set: ours is
            # not all there, write everything
            self._reset = True
            self._wake.set()
        self.epoch = epoch
        return True

    # -- made elsewhere --------------------------------------------------------------------

    def on_message(self, data: str) -> None:
        number, _, rest = data.partition(" ")
        epoch, _, text = rest.partition(" ")
        try:
            seq = int(number)
            message = json.loads(text)
            node = str(message["node"])
            changes = message["changes"]
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable location message", data=data[:200])
            return
        if epoch != self.epoch:
            self._resync.set()  # a Redis that lost its data: read (and write) everything
            self._wake.set()
        elif seq <= self.seq:
            return  # in the snapshot already read
        elif seq != self.seq + 1:
            self._resync.set()  # missed some: read everything
            self._wake.set()
        self.seq = seq
        if node == self.node:
            return
        reset = bool(message.get("reset"))
        if self._during_sync is not None:  # applied again to the snapshot being read
            self._during_sync.append((seq, node, reset, changes))
        self._apply(self.replica, node, reset, changes)

    def _apply(self, replica: Replica, node: str, reset: bool, changes: list[Any]) -> None:
        if reset:
            replica.forget_node(node)
        for field, record in changes:
            self.apply(node, str(field), record, replica)

    def apply(
        self, node: str, field: str, record: str | None, replica: Replica | None = None
    ) -> None:
        replica = self.replica if replica is None else replica
        if record is None:
            replica.remove(node, field)
        else:
            try:
                aor, binding = binding_of(json.loads(record))
            except (ValueError, KeyError, TypeError):
                return
            if binding.expires_at > time.time():
                replica.put(node, aor, binding)
            else:
                replica.remove(node, field)
        self.applied += 1

    async def _subscribing(self) -> None:
        while True:
            pubsub = self.link.pubsub()
            try:
                await asyncio.wait_for(pubsub.subscribe(self.channel), self.link.timeout)
                self._resync.set()  # what was announced while not listening
                self._wake.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self.on_message(str(message["data"]))
            except Exception as exc:
                if isinstance(exc, (OSError, TimeoutError)) or type(exc).__module__.startswith(
                    "redis"
                ):
                    self.link.mark_down("SUBSCRIBE location", exc)
                else:
                    log.exception("applying a location message failed")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), self.link.timeout)
            await asyncio.sleep(0.5)

    async def _checking(self) -> None:
        """The periodic check: forget expired entries; read everything if a change
        counted at the last check was never heard, write everything if Redis lost the
        data set."""
        while True:
            await asyncio.sleep(self.interval)
            self.replica.purge(time.time())
            answer = await self.link.run(
                "location state",
                lambda c: self._state(keys=[self.seq_key, self.epoch_key], client=c),
            )
            if answer is None:
                continue
            seq, epoch = int(answer[0]), answer[1]
            if epoch is None or (self.epoch is not None and str(epoch) != self.epoch):
                self._reset = True
                self._resync.set()
            elif self._checked is not None and self.seq < self._checked:
                # a change counted an interval ago still not heard (one in flight now is
                # not a reason: it arrives in milliseconds)
                self._resync.set()
            self._checked = seq
            if self._resync.is_set() or self._reset:
                self._wake.set()

    async def sync(self) -> bool:
        """Read every node's bindings; the replica becomes exactly the other nodes'.
        Announcements that arrive while the snapshot is read are applied to it too (those
        numbered after it), so none is lost between the two connections."""
        self._resync.clear()
        now = time.time()
        self._during_sync = []
        try:
            return await self._sync(now, self._during_sync)
        finally:
            self._during_sync = None

    async def _sync(self, now: float, during: list[tuple[int, str, bool, list[Any]]]) -> bool:
        answer = await self.link.run(
            "location snapshot",
            lambda c: self._snapshot(
                keys=[self.exp, self.nodes_key, self.seq_key, self.epoch_key],
                args=[self.prefix, now],
                client=c,
            ),
        )
        if answer is None:
            self._resync.set()
            return False
        seq, epoch = int(answer[0]), answer[1]
        if epoch is None or (self.epoch is not None and str(epoch) != self.epoch):
            self._reset = True  # a Redis without our bindings: write them (the pusher)
        self.epoch = None if epoch is None else str(epoch)
        fresh = Replica()
        fresh.via_node = self.replica.via_node
        rest = answer[2:]
        listed = set()
        for node, flat in zip(rest[::2], rest[1::2], strict=True):
            node = str(node)
            listed.add(node)
            if node == self.node:
                continue
            items = [str(x) for x in flat or ()]
            for i, text in enumerate(items[1::2]):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    aor, binding = binding_of(json.loads(text))
                    if binding.expires_at > now:
                        fresh.put(node, aor, binding)
                if i % 1000 == 999:
                    await asyncio.sleep(0)  # tens of thousands: the SIP loop goes on
        # A node not listed has not written since Redis lost its data (a restart without
        # persistence): keep what it had (expiring at its own times) until it writes again.
        for node, fields in self.replica.nodes.items():
            if node not in listed:
                for aor, binding in fields.values():
                    if binding.expires_at > now:
                        fresh.put(node, aor, binding)
        for number, node, reset, changes in during:
            if number > seq:
                self._apply(fresh, node, reset, changes)
        self.seq = max([seq, *(number for number, _, _, _ in during)])
        self.replica = fresh
        self.location.elsewhere = fresh.lookup
        self.snapshots += 1
        self.synced_at = now
        return True
