"""The registry of calls in progress: any node lists every node's calls and ends any.

An operator (or a tenant) asks one node, through the CLI or the API, for the calls in
progress and expects the whole PBX's answer, and expects "end this call" to work
whichever node carries it. So every node publishes its calls into Redis, and ends a
call of another node by asking that node, which hangs it up as a local end would (BYE
or CANCEL, its CDR closed there with the administrator's reason).

Layout: one hash per node, ``<prefix>calls:<node>`` (the node's own call token -> a
JSON record: Call-ID, tenant, caller, callee, state, start and answer times). The node
writes only what changed since its last write, in one MULTI/EXEC with the key's expiry
(atomic: a reader never sees half a change), on each change (at most every
:data:`MIN_GAP` seconds, so that a burst of calls costs a few writes) and every
``cluster.heartbeat_interval`` to renew the expiry. The expiry is the node's
``cluster.lost_after``: the calls of a killed node vanish within that, and until then
the listing shows them with the node's registry state (``lost``; ``registry.py``). A
write that failed, or a key found gone (Redis restarted empty), makes the next one a
full replace.

Ending another node's call: a request on that node's channel
``<prefix>calls:end:<node>`` (pub/sub: a request nobody hears is not kept to end a call
minutes later), naming a reply list the owner pushes its answer to; the requester
waits for it at most :data:`END_WAIT` seconds in short blocking pops (each within the
client's timeout). No listener, no answer in time, or Redis down: :class:`EndError`
with the HTTP status to answer (503) and the reason; a call the owner does not have:
404.

Redis down: the listing has this node's own calls only, and says so (``scope``
``local`` and a ``note``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from pbxwarden.cluster.registry import _pairs, _scores, node_view, registry_keys

if TYPE_CHECKING:
    from pbxwarden.cluster.connection import RedisLink
    from pbxwarden.server import SipServer

log = structlog.get_logger("pbxwarden.cluster")

END_WAIT = 3.0  # seconds a node waits for a call's owner to confirm that it ended it
MIN_GAP = 0.2  # seconds between two writes of this node's calls (a burst is batched)
REPLY_TTL = 30  # seconds an owner's answer is kept for its requester

# KEYS: nodes hash, seen zset (the registry). ARGV: prefix. Answers {seconds, micros,
# registry as flat HGETALL, seen as flat ZRANGE WITHSCORES, {node, flat HGETALL}...}:
# every registered node's calls, read at one instant.
LIST = """
local t = redis.call('TIME')
local out = {}
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  local calls = redis.call('HGETALL', ARGV[1] .. 'calls:' .. name)
  if #calls > 0 then
    out[#out + 1] = name
    out[#out + 1] = calls
  end
end
return {t[1], t[2], redis.call('HGETALL', KEYS[1]),
        redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'), out}
"""


class EndError(Exception):
    """A call could not be ended elsewhere: ``status`` is the HTTP answer (404, 503)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def call_records(server: SipServer) -> dict[str, dict[str, Any]]:
    """This node's calls in progress as published (token -> record)."""
    return {
        str(c.token): {
            "call_id": c.id,
            "tenant": c.tenant,
            "caller": c.caller_id,
            "callee": c.callee,
            "state": "answered" if c.answered else "ringing",
            "started": c.started,
            "answered": c.answered,
        }
        for c in server.calls.active
    }


def listed(record: dict[str, Any], node: str, node_state: str, now: float) -> dict[str, Any]:
    """A published record as the listing shows it (the columns of a local call)."""
    since = record.get("answered") or record.get("started") or now
    return {
        "call_id": str(record.get("call_id", "")),
        "tenant": str(record.get("tenant", "")),
        "caller": record.get("caller"),
        "callee": record.get("callee"),
        "state": record.get("state"),
        "seconds": int(max(0.0, now - float(since))),
        "node": node,
        "node_state": node_state,
    }


class CallRegistry:
    """Publishes this node's calls, lists every node's, ends calls for other nodes.

    ``local`` answers this node's records now (:func:`call_records`); ``end(call_id,
    by)`` hangs up a call here for node ``by``'s administrator (True if there was one)."""

    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        node: str,
        local: Callable[[], dict[str, dict[str, Any]]],
        end: Callable[[str, str], bool],
        interval: float,
        lost_after: float,
        wait: float = END_WAIT,
    ) -> None:
        self.link, self.prefix, self.node = link, prefix, node
        self.local, self.end_here = local, end
        self.interval, self.lost_after, self.wait = interval, lost_after, wait
        self.key = f"{prefix}calls:{node}"
        self._list = link.client.register_script(LIST)
        self._published: dict[str, str] = {}  # token -> record JSON, as last written
        self._full = True  # the next write replaces the whole hash
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = False  # subscribed to this node's end requests
        self.writes = 0
        self.ended_for_others = 0  # calls ended here at another node's request
        self.ended_elsewhere = 0  # calls this node had another node end

    def channel(self, node: str) -> str:
        return f"{self.prefix}calls:end:{node}"

    def describe(self) -> dict[str, Any]:
        return {
            "cluster_callreg_writes": self.writes,
            "cluster_callreg_published": len(self._published),
            "cluster_callreg_ended_for_others": self.ended_for_others,
            "cluster_callreg_ended_elsewhere": self.ended_elsewhere,
        }

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publishing()),
            asyncio.create_task(self._serving()),
        ]

    async def stop(self) -> None:
        """Stop; this node's calls leave the registry (bounded: one command's timeout)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.link.run("calls stop", lambda c: c.delete(self.key))

    def changed(self) -> None:
        """A call started, was answered or ended here: published shortly (never waits)."""
        self._wake.set()

    # -- publishing ------------------------------------------------------------------

    async def _publishing(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.publish()
            except Exception:
                log.exception("publishing this node's calls failed")
            await asyncio.sleep(MIN_GAP)

    async def publish(self) -> bool:
        """Write what changed (or everything, after a failure) and renew the expiry;
        False if Redis did not take it."""
        now = {k: json.dumps(v, sort_keys=True) for k, v in self.local().items()}
        full = self._full
        if full:
            put, gone = now, []
        else:
            put = {k: v for k, v in now.items() if self._published.get(k) != v}
            gone = [k for k in self._published if k not in now]
        ttl = max(1, int(self.lost_after * 1000))

        async def write(client: Any) -> Any:
            pipe = client.pipeline(transaction=True)
            if full:
                pipe.delete(self.key)
            if put:
                pipe.hset(self.key, mapping=put)
            if gone:
                pipe.hdel(self.key, *gone)
            pipe.pexpire(self.key, ttl)
            return await pipe.execute()

        answer = await self.link.run("calls publish", write)
        if answer is None:
            self._full = True
            return False
        self.writes += 1
        self._published, self._full = now, False
        if now and not int(answer[-1]):  # the key was gone (Redis restarted): all again
            self._full = True
            self._wake.set()
        return True

    # -- listing ---------------------------------------------------------------------

    async def others(self) -> list[dict[str, Any]] | None:
        """Every other node's calls as Redis has them; None if Redis did not answer."""
        answer = await self.link.run(
            "calls list",
            lambda c: self._list(keys=registry_keys(self.prefix), args=[self.prefix]),
        )
        if answer is None:
            return None
        seconds, micros, records, seen, calls = answer
        states = {
            str(n["node"]): str(n["state"])
            for n in node_view(_pairs(records), _scores(seen), int(seconds) + int(micros) / 1e6)
        }
        now = time.time()
        rows: list[dict[str, Any]] = []
        flat = list(calls or ())
        for name, fields in zip(flat[::2], flat[1::2], strict=True):
            name = str(name)
            if name == self.node:
                continue  # ours: the caller has them fresher, from memory
            for text in _pairs(fields).values():
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    record = json.loads(text)
                    rows.append(listed(record, name, states.get(name, "lost"), now))
        return rows

    async def listing(self, own: list[dict[str, Any]]) -> dict[str, Any]:
        """``own`` (this node's rows) and every other node's: ``calls``, ``scope``
        (``cluster``, or ``local`` when Redis is unreachable) and ``note``."""
        mine = [{**row, "node": self.node, "node_state": "up"} for row in own]
        down = self.link.known and not self.link.healthy
        rows = None if down else await self.others()
        if rows is None:
            return {
                "calls": mine,
                "scope": "local",
                "note": f"redis unreachable: only node {self.node}'s calls are listed",
            }
        rows = sorted([*mine, *rows], key=lambda r: (r["node"], -r["seconds"], r["call_id"]))
        return {"calls": rows, "scope": "cluster", "note": None}

    # -- ending a call elsewhere -------------------------------------------------------

    async def end(self, call_id: str, node: str | None = None) -> dict[str, Any]:
        """End ``call_id`` on ``node`` (None: on every node that has it, as listed);
        raises :class:`EndError`."""
        if node is None:
            rows = None if self.link.known and not self.link.healthy else await self.others()
            if rows is None:
                raise EndError(503, "redis unreachable: other nodes' calls cannot be ended")
            owners = sorted({r["node"] for r in rows if r["call_id"] == call_id})
            if not owners:
                raise EndError(404, f"no call {call_id!r} in progress on any node")
        else:
            owners = [node]
        ended, errors = [], []
        for owner in owners:
            try:
                await self.end_on(owner, call_id)
                ended.append(owner)
            except EndError as exc:
                errors.append(exc)
        if not ended:
            raise (
                errors[0]
                if len(errors) == 1
                else EndError(max(e.status for e in errors), "; ".join(str(e) for e in errors))
            )
        return {"ended": call_id, "node": ended[0] if len(ended) == 1 else ended}

    async def end_on(self, owner: str, call_id: str) -> None:
        """Ask ``owner`` to end ``call_id`` and wait for its confirmation."""
        reply = f"{self.prefix}calls:reply:{secrets.token_hex(8)}"
        request = json.dumps(
            {
                "call_id": call_id,
                "reply": reply,
                "by": self.node,
                "deadline": time.time() + self.wait,
            }
        )
        heard = await self.link.run("calls end", lambda c: c.publish(self.channel(owner), request))
        if heard is None:
            raise EndError(503, f"redis unreachable: node {owner} cannot be asked to end it")
        if not int(heard):
            raise EndError(
                503, f"node {owner} does not answer (down or not listening): its call not ended"
            )
        deadline = time.monotonic() + self.wait
        block = max(0.05, min(0.25, self.link.timeout / 2))  # within the socket timeout
        while (left := deadline - time.monotonic()) > 0:
            wait = min(block, left)
            popped = await self.link.run(
                "calls end wait", functools.partial(_pop, key=reply, wait=wait), waits=wait
            )
            if popped is None and not self.link.healthy:
                raise EndError(503, f"redis unreachable while waiting for node {owner}")
            if popped:
                try:
                    answer = json.loads(popped[0])
                except (ValueError, TypeError):
                    answer = {}
                if answer.get("ended"):
                    self.ended_elsewhere += 1
                    return
                raise EndError(404, str(answer.get("error") or f"no call {call_id!r} on {owner}"))
        raise EndError(503, f"node {owner} did not confirm the end within {self.wait:g} s")

    async def _serving(self) -> None:
        """Listen for other nodes' requests to end a call of ours."""
        while True:
            pubsub = self.link.pubsub()
            try:
                await asyncio.wait_for(pubsub.subscribe(self.channel(self.node)), self.link.timeout)
                self.listening = True
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        await self.on_request(str(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, OSError | TimeoutError | ConnectionError) or type(
                    exc
                ).__module__.startswith("redis"):
                    self.link.mark_down("SUBSCRIBE calls", exc)
                else:
                    log.exception("answering a request to end a call failed")
            finally:
                self.listening = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), self.link.timeout)
            await asyncio.sleep(0.5)

    async def on_request(self, data: str) -> bool:
        """End a call of ours for another node and answer it; False if ignored."""
        try:
            request = json.loads(data)
            call_id, reply = str(request["call_id"]), str(request["reply"])
            by, deadline = str(request.get("by", "?"))[:64], float(request["deadline"])
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable request to end a call", data=data[:200])
            return False
        if not reply.startswith(f"{self.prefix}calls:reply:"):
            return False  # we write only where a requester of ours waits
        if time.time() > deadline:
            return False  # the requester gave up: a late end would surprise it
        ended = self.end_here(call_id, by)
        if ended:
            self.ended_for_others += 1
            self.changed()
            log.warning("call ended for another node", call_id=call_id, by_node=by)
        answer = json.dumps(
            {
                "ended": ended,
                "node": self.node,
                "error": None if ended else f"no call {call_id!r} in progress on node {self.node}",
            }
        )

        async def push(client: Any) -> Any:
            pipe = client.pipeline(transaction=True)
            pipe.rpush(reply, answer)
            pipe.expire(reply, REPLY_TTL)
            return await pipe.execute()

        await self.link.run("calls end reply", push)
        return True


async def _pop(client: Any, *, key: str, wait: float) -> list[str]:
    """One bounded BLPOP: the value, or [] if none came within ``wait`` seconds."""
    answer = await client.blpop([key], timeout=wait)
    return [] if answer is None else [str(answer[1])]
