"""The node registry: which nodes make up the PBX, what each runs and how loaded it is.

An operator of several nodes needs one answer to "is the PBX whole?" without logging
into each machine: which nodes are up, which died (SIGKILL, a lost host), which were
stopped on purpose, which version each runs (a rolling restart half done), how busy
each is, and whether each still reaches Redis and the database. So every running node
publishes a heartbeat into Redis every ``cluster.heartbeat_interval`` seconds, and
``pbxwarden cluster status`` (and ``GET /api/v1/cluster``) read them all from Redis
alone: no node need be asked, a dead one cannot answer anyway.

Layout: the hash ``<prefix>nodes`` (node name -> JSON record) and the sorted set
``<prefix>nodes:seen`` (node name -> the time of its last heartbeat). One script writes
both (atomic), with Redis's own clock as the time, so that the age of a heartbeat never
depends on two machines' clocks agreeing; the same script forgets nodes not seen for
:data:`FORGET_AFTER` and answers the whole registry (this node's view, for /metrics).
A node whose last heartbeat is older than its own ``lost_after`` is *lost*; a node
stopped cleanly marks its record *stopped*.

The SIP loop never waits for any of it: the heartbeat is a task on the node's
:class:`~pbxwarden.cluster.connection.RedisLink` (each command bounded by
``cluster.timeout``), its load figures are counters read in microseconds, and the
database probe runs in a thread, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden import __version__

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from pbxwarden.cluster.connection import RedisLink
    from pbxwarden.config import Config
    from pbxwarden.server import SipServer

log = structlog.get_logger("pbxwarden.cluster")

HEARTBEAT_INTERVAL = 2.0  # seconds between heartbeats (cluster.heartbeat_interval)
LOST_AFTER = 10.0  # seconds without a heartbeat before a node is lost (cluster.lost_after)
FORGET_AFTER = 3600.0  # seconds after which a lost or stopped node is forgotten
STATES = ("up", "lost", "stopped")
KEY_SCAN_LIMIT = 200  # SCAN rounds (about 1,000 keys each) when counting keys

# KEYS: nodes hash, seen zset. ARGV: node, record JSON, forget_after, uid.
# Answers: {redis time, 1 if the previous record was another live process's, registry
# as flat HGETALL, seen as flat ZRANGE WITHSCORES}.
HEARTBEAT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local node, forget = ARGV[1], tonumber(ARGV[3])
local other = 0
local old = redis.call('HGET', KEYS[1], node)
if old then
  local ok, rec = pcall(cjson.decode, old)
  local seen = tonumber(redis.call('ZSCORE', KEYS[2], node) or '0')
  if ok and type(rec) == 'table' and rec.uid ~= ARGV[4] and rec.state ~= 'stopped'
     and now - seen < tonumber(rec.lost_after or 10) then
    other = 1
  end
end
redis.call('HSET', KEYS[1], node, ARGV[2])
redis.call('ZADD', KEYS[2], now, node)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - forget)
for _, name in ipairs(gone) do redis.call('HDEL', KEYS[1], name) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - forget)
redis.call('EXPIRE', KEYS[1], math.ceil(forget))
redis.call('EXPIRE', KEYS[2], math.ceil(forget))
return {tostring(now), other, redis.call('HGETALL', KEYS[1]),
        redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')}
"""

# KEYS: nodes hash, seen zset. ARGV: node, uid. Marks the record stopped, if it is still
# this process's (a node of the same name started since keeps its own).
STOPPED = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
local ok, rec = pcall(cjson.decode, old)
if not ok or type(rec) ~= 'table' or rec.uid ~= ARGV[2] then return 0 end
rec.state = 'stopped'
rec.stopped_at = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
redis.call('ZADD', KEYS[2], now, ARGV[1])
return 1
"""


def registry_keys(prefix: str) -> list[str]:
    """The registry's two keys: the records and the last-seen times."""
    return [f"{prefix}nodes", f"{prefix}nodes:seen"]


# -- load figures ---------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (each of its threads may have forked some)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(p) for p in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def tree_cpu_seconds(pid: int, depth: int = 3) -> float:
    """CPU seconds used by ``pid`` and its descendants (registrar workers) so far.

    Without /proc (not Linux), this process's own time only."""
    own = _cpu_seconds(pid)
    if own is None:
        if pid != os.getpid():
            return 0.0
        times = os.times()
        return times.user + times.system
    if depth > 0:
        own += sum(tree_cpu_seconds(child, depth - 1) for child in _children(pid))
    return own


class CpuMeter:
    """Share of one core the process tree used since the previous reading (1.0: one
    core busy all along). A child that exited takes its seconds along: never below 0."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self._at = time.monotonic()
        self._cpu = tree_cpu_seconds(self.pid)

    def read(self) -> float:
        now, cpu = time.monotonic(), tree_cpu_seconds(self.pid)
        elapsed = now - self._at
        share = max(0.0, cpu - self._cpu) / elapsed if elapsed > 0 else 0.0
        self._at, self._cpu = now, cpu
        return round(share, 3)


# -- database health ------------------------------------------------------------------------


def _select_one(engine: Engine) -> dict[str, Any]:
    """Blocking: one round trip to the database, with its kind and version."""
    from sqlalchemy import text

    started = time.monotonic()
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                version = conn.execute(text("SELECT sqlite_version()")).scalar()
            elif engine.dialect.name == "postgresql":
                version = conn.execute(text("SHOW server_version")).scalar()
            else:
                conn.execute(text("SELECT 1"))
                version = None
    except Exception as exc:
        return {"reachable": False, "error": _one_line(exc), "latency_ms": None}
    return {
        "reachable": True,
        "error": None,
        "latency_ms": round((time.monotonic() - started) * 1000, 2),
        "version": None if version is None else str(version),
    }


def check_database(engine: Engine, timeout: float) -> dict[str, Any]:
    """The database's health within ``timeout`` seconds however it fails (a stalled
    server, a firewall dropping packets): the probe runs in a daemon thread."""
    answer: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: answer.append(_select_one(engine)), daemon=True)
    worker.start()
    worker.join(timeout)
    result = answer[0] if answer else _no_answer(timeout)
    return {"kind": engine.dialect.name, "url": _safe_db_url(engine), **result}


def _no_answer(timeout: float) -> dict[str, Any]:
    return {"reachable": False, "error": f"no answer within {timeout:g} s", "latency_ms": None}


class DatabaseProbe:
    """This node's view of its database, refreshed in a thread at most one at a time (a
    hanging database ties up one thread, not one per heartbeat)."""

    def __init__(self, engine: Engine, timeout: float) -> None:
        self.engine, self.timeout = engine, timeout
        self.last: dict[str, Any] = {"reachable": None, "error": None, "latency_ms": None}
        self._pending: asyncio.Future[dict[str, Any]] | None = None
        self._since = 0.0

    def read(self) -> dict[str, Any]:
        """The latest answer; starts the next probe if none is running."""
        pending = self._pending
        if pending is not None and pending.done():
            self._pending = None
            try:
                self.last = pending.result()
            except Exception as exc:  # pragma: no cover - _select_one catches everything
                self.last = {"reachable": False, "error": _one_line(exc), "latency_ms": None}
        elif pending is not None and time.monotonic() - self._since > self.timeout:
            self.last = _no_answer(self.timeout)
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.run_in_executor(None, _select_one, self.engine)
            self._since = time.monotonic()
        return self.last


# -- the heartbeat --------------------------------------------------------------------------


class NodeRegistry:
    """Publishes this node's heartbeat; keeps the latest view of all nodes (/metrics).

    ``load`` answers the node's figures at each heartbeat (calls, contacts, addresses:
    counters only, it runs on the event loop); ``database`` this node's view of its
    database (a :class:`DatabaseProbe`'s ``read``)."""

    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        node: str,
        load: Callable[[], dict[str, Any]],
        database: Callable[[], dict[str, Any]] | None = None,
        interval: float = HEARTBEAT_INTERVAL,
        lost_after: float = LOST_AFTER,
        forget_after: float = FORGET_AFTER,
    ) -> None:
        self.link, self.node, self.load, self.database = link, node, load, database
        self.keys = registry_keys(prefix)
        self.interval, self.lost_after, self.forget_after = interval, lost_after, forget_after
        self.uid = f"{os.getpid()}.{secrets.token_hex(4)}"
        self.started_at = time.time()
        self.cpu = CpuMeter()
        self._beat = link.client.register_script(HEARTBEAT)
        self._stopped = link.client.register_script(STOPPED)
        self._task: asyncio.Task[None] | None = None
        self.beats = 0  # heartbeats written
        self.view: list[dict[str, Any]] = []  # every node, as of this node's last heartbeat
        self.latency_ms: float | None = None  # of the last heartbeat's round trip
        self._other = 0  # consecutive heartbeats that found another process's record

    def start(self) -> None:
        self._task = asyncio.create_task(self._beating())

    async def stop(self) -> None:
        """Stop beating and mark this node stopped (bounded: one command's timeout)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.link.run(
            "registry stop", lambda c: self._stopped(keys=self.keys, args=[self.node, self.uid])
        )

    async def _beating(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception:
                log.exception("cluster heartbeat failed")
            await asyncio.sleep(self.interval)

    def record(self) -> dict[str, Any]:
        """What this node says of itself now."""
        link = self.link
        redis_view = {  # as it was before this heartbeat (which may bring the link back)
            "up": link.healthy or not link.known,
            "since": link.changed_at,
            "failures": link.failures,
            "latency_ms": self.latency_ms,
        }
        return {
            "node": self.node,
            "uid": self.uid,
            "state": "up",
            "version": __version__,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "clock": time.time(),
            "interval": self.interval,
            "lost_after": self.lost_after,
            "cpu": self.cpu.read(),
            **self.load(),
            "redis": redis_view,
            "database": self.database() if self.database is not None else None,
        }

    async def beat(self) -> bool:
        """One heartbeat; False if Redis did not take it."""
        record = json.dumps(self.record(), default=str)
        args: list[str | float] = [self.node, record, self.forget_after, self.uid]
        started = time.monotonic()
        answer = await self.link.run("heartbeat", lambda c: self._beat(keys=self.keys, args=args))
        if answer is None:
            return False
        self.latency_ms = round((time.monotonic() - started) * 1000, 2)
        self.beats += 1
        now, other, records, seen = answer
        self._other = self._other + 1 if int(other) else 0
        if self._other == 2:  # twice running: not merely our own predecessor's record
            log.warning(
                "another running process publishes the same cluster node name: give each "
                "node its own cluster.node",
                node=self.node,
            )
        self.view = node_view(_pairs(records), _scores(seen), float(now))
        return True

    def counts(self) -> dict[str, int]:
        """Nodes per state, as of the last heartbeat (/metrics)."""
        counts = dict.fromkeys(STATES, 0)
        for node in self.view:
            counts[node["state"]] = counts.get(node["state"], 0) + 1
        return counts


def server_load(server: SipServer) -> Callable[[], dict[str, Any]]:
    """The figures a running server publishes in its heartbeat (all counters)."""

    def load() -> dict[str, Any]:
        bound = server.transports.bound
        return {
            "addresses": [f"{kind.lower()}:{_hostport(h, p)}" for kind, (h, p) in bound.items()],
            "calls": len(server.calls.active),
            "contacts": len(server.location),
            "workers": server.workers.ready if server.workers is not None else 0,
            "overloaded": server.overloaded,  # new calls get 503: lag, or stopping
        }

    return load


# -- reading the registry -------------------------------------------------------------------


def node_state(record: dict[str, Any], age: float) -> str:
    if record.get("state") == "stopped":
        return "stopped"
    try:
        lost_after = float(record.get("lost_after") or LOST_AFTER)
    except (TypeError, ValueError):
        lost_after = LOST_AFTER
    return "lost" if age > lost_after else "up"


def node_view(records: dict[str, str], seen: dict[str, float], now: float) -> list[dict[str, Any]]:
    """Every node's record with its ``state``, ``last_seen`` and ``age`` (seconds since
    its last heartbeat, by Redis's clock), by name."""
    nodes = []
    for name in sorted(records):
        try:
            record = json.loads(records[name])
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        last_seen = seen.get(name)
        age = max(0.0, now - last_seen) if last_seen is not None else float("inf")
        record.pop("uid", None)
        if not isinstance(record.get("addresses"), list):
            record["addresses"] = []  # Lua's cjson writes an empty list back as {}
        clock = record.get("clock")
        if isinstance(clock, int | float) and last_seen is not None:
            record["clock_offset"] = round(clock - last_seen, 3)  # this node's clock - Redis's
        nodes.append(
            {
                **record,
                "node": name,
                "state": node_state(record, age),
                "last_seen": last_seen,
                "age": round(age, 3) if last_seen is not None else None,
            }
        )
    return nodes


def _redis_info(client: Any, prefix: str, timeout: float) -> dict[str, Any]:
    """Redis's own health: version, memory, clients, and the keys under our prefix."""
    health: dict[str, Any] = {"reachable": True, "error": None}
    started = time.monotonic()
    client.ping()
    health["latency_ms"] = round((time.monotonic() - started) * 1000, 2)
    with contextlib.suppress(Exception):  # an ACL user may not be allowed INFO
        info = client.info()
        health.update(
            version=info.get("redis_version"),
            uptime_seconds=info.get("uptime_in_seconds"),
            used_memory=info.get("used_memory"),
            used_memory_human=info.get("used_memory_human"),
            maxmemory=info.get("maxmemory"),
            connected_clients=info.get("connected_clients"),
            role=info.get("role"),
        )
    if not prefix:
        health["keys"], health["keys_exact"] = int(client.dbsize()), True
        return health
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
    cursor, keys, rounds = 0, 0, 0
    deadline = time.monotonic() + 4 * timeout
    while True:
        cursor, batch = client.scan(cursor=cursor, match=pattern, count=1000)
        keys += len(batch)
        rounds += 1
        if int(cursor) == 0 or rounds >= KEY_SCAN_LIMIT or time.monotonic() > deadline:
            break
    health["keys"], health["keys_exact"] = keys, int(cursor) == 0
    return health


def read_registry(url: str, prefix: str, timeout: float) -> dict[str, Any]:
    """The whole cluster as Redis knows it, straight from Redis (blocking, each command
    within ``timeout``): ``redis`` (health) and ``nodes``. Never raises for Redis."""
    from redis.exceptions import RedisError

    from pbxwarden.cluster.connection import _safe, sync_client

    client = sync_client(url, timeout, "pbxwarden-status")  # one timeout, no retry
    answer: dict[str, Any] = {"redis": {"url": _safe(url)}, "nodes": []}
    try:
        answer["redis"].update(_redis_info(client, prefix, timeout))
        pipe = client.pipeline(transaction=True)
        nodes, seen = registry_keys(prefix)
        pipe.time()
        pipe.hgetall(nodes)
        pipe.zrange(seen, 0, -1, withscores=True)
        (seconds, micros), records, scores = pipe.execute()
        now = seconds + micros / 1e6
        answer["at"] = now
        answer["nodes"] = node_view(records, {str(n): float(s) for n, s in scores}, now)
    except (RedisError, OSError) as exc:
        answer["redis"].update(reachable=False, error=_one_line(exc))
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return answer


def cluster_status(config: Config, engine: Engine, timeout: float) -> dict[str, Any]:
    """What ``pbxwarden cluster status --json`` prints and ``GET /api/v1/cluster``
    answers: the nodes, Redis's health and the database's."""
    cluster = config.cluster
    status: dict[str, Any] = {
        "configured": cluster.enabled,
        "key_prefix": cluster.key_prefix,
        "nodes": [],
        "summary": dict.fromkeys(STATES, 0),
        "redis": None,
        "database": check_database(engine, timeout),
    }
    if cluster.enabled:
        from pbxwarden.cluster.connection import AVAILABLE

        if AVAILABLE:
            status.update(read_registry(cluster.redis_url, cluster.key_prefix, timeout))
        else:
            status["redis"] = {
                "reachable": False,
                "error": "the Redis client is not installed: pip install 'pbxwarden[cluster]'",
            }
    for node in status["nodes"]:
        status["summary"][node["state"]] += 1
    status["versions"] = sorted({str(n.get("version")) for n in status["nodes"]})
    return status


# -- helpers --------------------------------------------------------------------------------


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def _safe_db_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _pairs(flat: Any) -> dict[str, str]:
    items = [str(x) for x in flat or ()]
    return dict(zip(items[::2], items[1::2], strict=True))


def _scores(flat: Any) -> dict[str, float]:
    return {name: float(score) for name, score in _pairs(flat).items()}
